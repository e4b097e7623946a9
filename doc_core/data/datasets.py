"""Dataset sources: a small, JSON-serialisable description of where a one-class split comes from.

A :class:`DatasetSpec` names either the built-in Fashion-MNIST cut by a :class:`~doc_core.data.splits.SplitConfig`, or a
folder of the user's own images laid out as :data:`~doc_core.data.splits.FOLDER_LAYOUT` (a folder on the machine, or a
zip upload extracted by :func:`extract_zip`). The spec is what the app keeps as "the active dataset" and what a saved
run records about its data; :func:`load_dataset` turns it into a :class:`~doc_core.data.splits.OneClassSplit`.

The module also describes a split for display: image counts per class and role (:func:`role_counts`) and a few
sample images per role (:func:`role_samples`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import shutil
import socket
import stat
import struct
import tempfile
import threading
import time
import weakref
import zipfile
import zlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST
from .images import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, DataError, SkippedFile
from .splits import FOLDER_LAYOUT, OneClassSplit, SplitConfig, load_folder_split, make_split

KINDS = ("fashion-mnist", "folder")
# What keeps a folder detector's features descriptive (DatasetSpec.reference):
#   "auto"          the folder's own reference/ when it has one, else "none" (measured: README, "Your own images")
#   "folder"        the folder's reference/ subfolders (at least two classes)
#   "fashion-mnist" the built-in Fashion-MNIST training images, all ten classes, as a labelled reference set
#   "none"          no labelled reference: the preservation loss keeps features close to the pretrained network's
REFERENCE_CHOICES = ("auto", "folder", "fashion-mnist", "none")
FASHION_REFERENCE_SIZE = 6000  # Fashion-MNIST images drawn (seeded, all classes) for reference="fashion-mnist"
ROLES = ("normal training", "reference", "test normal", "test anomaly", "test unlabelled")

# Limits on a zip upload (README, "Limits and safety"). Enough for Fashion-MNIST-sized datasets (70,000 images);
# small enough that a crafted zip can neither fill the disk nor keep the server busy.
MAX_ZIP_ENTRIES = 100_000  # entries of the zip's directory, folders and empty entries included; counted before parsing
MAX_ZIP_BYTES = 2 * 1024**3  # image bytes one zip may unpack to, counted on the bytes actually written
# Bytes written / compressed size, for every member, counted on the bytes actually written. Image files are compressed
# already (PNG, JPEG, GIF, WebP: about 1:1 in a zip) or raw (BMP, TIFF: Fashion-MNIST images enlarged to 224 px
# deflate at most 15:1, measured); only near-blank raw images and crafted members go beyond 100:1 (deflate itself
# reaches about 1,030:1). The former limit of 200:1 let a 162 KB upload unpack to 20 MB.
MAX_ZIP_RATIO = 100
MAX_NAME_BYTES = 255  # one file or folder name in the zip, UTF-8 (the usual file-system limit)
MAX_PATH_BYTES = 1024  # a member's whole path inside the zip, UTF-8
UPLOADS_CAP_ENV = "DOC_UPLOADS_MAX_MB"
DEFAULT_UPLOADS_CAP_MB = 8192  # all sessions' extracted zips together, under uploads_dir()


@dataclass(frozen=True)
class DatasetSpec:
    """Where the images come from.

    Parameters
    ----------
    kind : {"fashion-mnist", "folder"}
    split : SplitConfig
        How Fashion-MNIST is cut (ignored for folders). The default is the reference (Keras write-up) experiment.
    root : str or None
        The folder holding ``train/``, ``reference/`` and optionally ``test/`` (folders only).
    image_size : int
        Folder images are stored resized to (image_size, image_size, 3).
    label : str
        Shown instead of the folder path, e.g. the name of an uploaded zip.
    reference : {"auto", "folder", "fashion-mnist", "none"}
        The reference set of a folder dataset (see :data:`REFERENCE_CHOICES`); ignored for Fashion-MNIST.
    """

    kind: str = "fashion-mnist"
    split: SplitConfig = field(default_factory=SplitConfig.tutorial)
    root: str | None = None
    image_size: int = 96
    label: str = ""
    reference: str = "auto"

    @classmethod
    def fashion_mnist(cls, split: SplitConfig | None = None) -> "DatasetSpec":
        return cls(kind="fashion-mnist", split=split or SplitConfig.tutorial())

    @classmethod
    def folder(cls, root: str | os.PathLike, image_size: int = 96, label: str = "",
               reference: str = "auto") -> "DatasetSpec":
        if reference not in REFERENCE_CHOICES:
            raise ValueError(f"unknown reference {reference!r}; choose one of {', '.join(REFERENCE_CHOICES)}")
        return cls(kind="folder", root=str(root), image_size=int(image_size), label=label, reference=reference)

    @property
    def is_reference_experiment(self) -> bool:
        return self.kind == "fashion-mnist" and self.split == SplitConfig.tutorial()

    def describe(self) -> str:
        """One line for people, e.g. ``Fashion-MNIST: normal Sneaker, anomalies Ankle boot, seed 0``."""
        if self.kind == "folder":
            ref = "" if self.reference == "auto" else f", reference: {self.reference}"
            return f"Own images: {self.label or self.root} ({self.image_size} px{ref})"
        c = self.split
        names = lambda cs: ", ".join(FASHION_MNIST_CLASSES[i] for i in cs)  # noqa: E731
        anomalies = "every other class" if c.anomaly_classes is None else names(c.anomaly_classes)
        text = f"Fashion-MNIST: normal {names(c.normal_classes)}; anomalies {anomalies}"
        if self.is_reference_experiment:
            return text + " (reference experiment)"
        sizes = ([f"{c.n_normal:,} normal training images"] if c.n_normal is not None else []) + \
            ([f"{c.n_reference:,} reference images"] if c.n_reference != SplitConfig().n_reference else [])
        return "; ".join([text] + sizes + [f"seed {c.seed}"])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "split": self.split.to_dict(), "root": self.root, "image_size": self.image_size,
                "label": self.label, "reference": self.reference}

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetSpec":
        kind = str(d.get("kind", "fashion-mnist"))
        if kind not in KINDS:
            raise ValueError(f"unknown dataset kind {kind!r}; expected one of {', '.join(KINDS)}")
        split = SplitConfig.from_dict(d["split"]) if d.get("split") else SplitConfig.tutorial()
        reference = str(d.get("reference", "auto"))  # specs saved before reference choices existed: auto
        if reference not in REFERENCE_CHOICES:
            raise ValueError(f"unknown reference {reference!r}; expected one of {', '.join(REFERENCE_CHOICES)}")
        return cls(kind=kind, split=split, root=d.get("root"), image_size=int(d.get("image_size", 96)),
                   label=str(d.get("label", "")), reference=reference)


def load_dataset(spec: DatasetSpec, fashion: FashionMNIST | None = None) -> tuple[OneClassSplit, list[SkippedFile]]:
    """The split a spec describes, and the files skipped as unreadable (folders only).

    Parameters
    ----------
    fashion : FashionMNIST, optional
        Already loaded Fashion-MNIST arrays (to avoid reading the files again).

    Raises
    ------
    DataError
        Missing data, a bad folder layout, or a split that cannot be cut (e.g. a class both normal and anomalous);
        the message says what to change.
    """
    if spec.kind == "folder":
        if not spec.root:
            raise DataError("no folder given")
        split, skipped = load_folder_split(spec.root, image_size=spec.image_size)
        return with_reference(split, spec.reference, fashion), skipped
    if spec.kind != "fashion-mnist":
        raise DataError(f"unknown dataset kind {spec.kind!r}")
    try:
        return make_split(spec.split, fashion), []
    except DataError:
        raise
    except ValueError as exc:
        raise DataError(str(exc)[:1].upper() + str(exc)[1:] + ".") from exc


def resolve_reference(choice: str, has_folder_reference: bool) -> tuple[str, str]:
    """The reference a folder dataset trains with, and why: ``(one of "folder", "fashion-mnist", "none", reason)``.

    ``"auto"`` takes the folder's own labelled reference set when it has one, else no labelled reference at all
    (the preservation loss): on the magnetic tiles a clothing reference set made DOC's features worse than with no
    reference (README, "Your own images", ``benchmark --protocol magnetic-tile``).
    """
    if choice not in REFERENCE_CHOICES:
        raise DataError(f"unknown reference {choice!r}; choose one of {', '.join(REFERENCE_CHOICES)}")
    if choice == "auto":
        if has_folder_reference:
            return "folder", "the folder has a labelled reference/ set"
        return "none", ("no reference/ folder: features are kept close to the pretrained network's (measured better "
                        "than Fashion-MNIST as a reference on the magnetic tiles)")
    if choice == "folder" and not has_folder_reference:
        raise DataError("reference 'folder' needs a reference/ folder with at least 2 class subfolders; choose "
                        "'auto', 'none' or 'fashion-mnist' instead")
    return choice, "chosen by the user"


def with_reference(split: OneClassSplit, choice: str, fashion: FashionMNIST | None = None,
                   n: int = FASHION_REFERENCE_SIZE, seed: int = 0) -> OneClassSplit:
    """``split`` with the reference set that ``choice`` names (see :func:`resolve_reference`).

    ``"fashion-mnist"`` draws ``n`` Fashion-MNIST training images (seeded, all ten classes) resized to the split's
    image size; ``"none"`` empties the reference set. ``split.info["reference"]`` and ``["reference_reason"]``
    say what was used and why.
    """
    resolved, reason = resolve_reference(choice, len(split.reference_names) >= 2)
    size = split.train_normal.shape[1:3]
    if resolved == "folder":
        ref, labels, names = split.reference, split.reference_labels, split.reference_names
    elif resolved == "none":
        ref, labels, names = np.zeros((0,) + split.train_normal.shape[1:], np.uint8), np.zeros(0, np.int64), ()
    else:
        from .fashion_mnist import load_fashion_mnist
        from .images import resize_image

        fm = fashion or load_fashion_mnist()
        idx = np.sort(np.random.default_rng(seed).choice(len(fm.train_images), min(n, len(fm.train_images)),
                                                         replace=False))
        ref = np.stack([resize_image(np.repeat(fm.train_images[i], 3, axis=-1), size[0]) for i in idx])
        labels, names = fm.train_labels[idx].astype(np.int64), tuple(fm.class_names)
    info = {**split.info, "reference": resolved, "reference_reason": reason}
    return dataclasses.replace(split, reference=ref, reference_labels=labels, reference_names=names, info=info)


def normal_class_label(split: OneClassSplit) -> str:
    """Name of the normal class(es) of a split, e.g. ``Sneaker`` or ``normal`` for a folder."""
    cfg = split.info.get("config") if split.info.get("source") == "fashion-mnist" else None
    if cfg:
        return " + ".join(FASHION_MNIST_CLASSES[int(c)] for c in cfg["normal_classes"])
    return "normal"


def role_counts(split: OneClassSplit) -> list[dict]:
    """Image counts per role and class: rows ``{"role", "class", "count"}`` in role order, classes sorted.

    Normal training images carry no per-image class, so several normal classes are counted together.
    """
    rows = []
    if len(split.train_normal):
        rows.append({"role": "normal training", "class": normal_class_label(split), "count": len(split.train_normal)})
    labels, counts = np.unique(np.asarray(split.reference_labels), return_counts=True)
    rows += [{"role": "reference", "class": split.reference_names[int(i)], "count": int(n)}
             for i, n in zip(labels, counts)]
    classes = np.asarray(split.test_classes, dtype=str)
    for role, value in (("test normal", 0), ("test anomaly", 1), ("test unlabelled", -1)):
        mask = np.asarray(split.test_labels) == value
        names, counts = np.unique(classes[mask], return_counts=True)
        rows += [{"role": role, "class": str(c), "count": int(n)} for c, n in zip(names, counts)]
    return rows


def role_samples(split: OneClassSplit, per_role: int = 12, seed: int = 0) -> dict[str, tuple[np.ndarray, list[str]]]:
    """A few images per role for a preview: ``{role: (images uint8 (k, h, w, c), class names)}``.

    Roles without images are left out. Reference samples cover every reference class (so there may be a few more).
    """
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[np.ndarray, list[str]]] = {}

    def pick(idx: np.ndarray, k: int) -> np.ndarray:
        return np.sort(rng.choice(idx, size=min(k, len(idx)), replace=False)) if len(idx) else idx

    if len(split.train_normal):
        idx = pick(np.arange(len(split.train_normal)), per_role)
        out["normal training"] = (split.train_normal[idx], [normal_class_label(split)] * len(idx))
    if len(split.reference):
        labels = np.asarray(split.reference_labels)
        classes = np.unique(labels)
        per_class = max(1, -(-per_role // max(1, len(classes))))  # ceil: every class shows up
        idx = np.concatenate([pick(np.flatnonzero(labels == c), per_class) for c in classes])
        out["reference"] = (split.reference[idx], [split.reference_names[int(labels[i])] for i in idx])
    for role, value in (("test normal", 0), ("test anomaly", 1), ("test unlabelled", -1)):
        idx = pick(np.flatnonzero(np.asarray(split.test_labels) == value), per_role)
        if len(idx):
            out[role] = (split.test_images[idx], [split.test_classes[int(i)] for i in idx])
    return out


# --------------------------------------------------------------------------------------------------- zip uploads


def uploads_dir() -> Path:
    """Where uploaded zips are extracted: ``$DOC_UPLOADS_DIR`` or a folder in the system's temp directory."""
    env = os.environ.get("DOC_UPLOADS_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / "doc-explorer-uploads"


def _safe_member_path(name: str) -> PurePosixPath | None:
    """The relative path a zip member may be written to, or None to skip it (folders, hidden or macOS files)."""
    p = PurePosixPath(name.replace("\\", "/"))
    if name.endswith("/") or not p.parts:
        return None
    if p.is_absolute() or ".." in p.parts or any(":" in part for part in p.parts):
        raise DataError(f"the zip contains an unsafe path {name!r}; it cannot be extracted")
    if any(part.startswith(".") or part == "__MACOSX" for part in p.parts):
        return None
    return p


def find_dataset_root(folder: str | os.PathLike, max_depth: int = 3) -> Path:
    """The folder at or below ``folder`` (breadth first) that holds ``train/`` (``reference/`` is optional).

    Raises
    ------
    DataError
        When there is none; the message shows the expected layout.
    """
    level = [Path(folder)]
    for _ in range(max_depth + 1):
        for d in level:
            if (d / "train").is_dir():
                return d
        level = sorted(c for d in level for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
    raise DataError("the zip has no folder holding train/.\nExpected layout:\n" + FOLDER_LAYOUT)


# --------------------------------------------------------------------------------------------- folders on the server

SERVER_FOLDERS_ENV = "DOC_SERVER_FOLDERS"
SERVER_FOLDER_REFUSED = ("This folder cannot be used. A dataset folder must exist, be readable by the server and lie "
                         "inside one of the allowed folders.")


def server_folder_roots(value: str | None = None) -> tuple[Path, ...]:
    """The folders under which the dashboard may read a dataset by its path on the server.

    Parameters
    ----------
    value : str, optional
        Folders separated by ``os.pathsep`` (``:`` on Linux); default ``$DOC_SERVER_FOLDERS``, read now. Each is
        resolved (symbolic links followed); entries that are empty or not existing folders are dropped.

    Returns
    -------
    tuple of Path
        Empty (the default, no variable set) means the "folder on the server" option is off.
    """
    value = os.environ.get(SERVER_FOLDERS_ENV, "") if value is None else value
    roots = []
    for entry in value.split(os.pathsep):
        if not entry.strip():
            continue
        try:
            p = Path(os.path.realpath(Path(entry.strip()).expanduser()))
            if p.is_dir() and p not in roots:
                roots.append(p)
        except (OSError, ValueError):
            continue
    return tuple(roots)


def resolve_server_folder(text: str, roots: tuple[str | os.PathLike, ...] | list[str | os.PathLike]) -> Path:
    """The real folder a path typed by a visitor names, if it is a readable folder inside one of ``roots``.

    The path is resolved like ``os.path.realpath`` (``..`` and symbolic links followed, so a link inside a root that
    points outside it is refused); a relative path is taken relative to the first root.

    Returns
    -------
    Path
        The resolved folder.

    Raises
    ------
    DataError
        With the same message, :data:`SERVER_FOLDER_REFUSED`, whether the path lies outside every root, does not
        exist, is not a folder or cannot be read (and when ``roots`` is empty), so the answer tells a visitor
        nothing about which paths exist on the server.
    """
    try:
        real_roots = [Path(os.path.realpath(r)) for r in roots]
        text = str(text).strip()
        if not real_roots or not text:
            raise DataError(SERVER_FOLDER_REFUSED)
        typed = Path(text)
        folder = Path(os.path.realpath(typed if typed.is_absolute() else real_roots[0] / typed))
        inside = any(folder == r or r in folder.parents for r in real_roots)
        if inside and folder.is_dir() and os.access(folder, os.R_OK | os.X_OK):
            return folder
    except (OSError, ValueError):  # e.g. a NUL character or a name too long; DataError is a ValueError
        pass
    raise DataError(SERVER_FOLDER_REFUSED)


def _zip_entry_count(data: bytes) -> int | None:
    """How many entries a zip's directory holds, read from its end record without parsing a single entry.

    The larger of the count the end record declares (the ZIP64 record's when there is one) and the number of
    central-directory signatures in the directory's bytes, so a zip cannot understate it. None when there is no end
    record (then it is no zip). A fast scan of at most the directory's bytes.
    """
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 0xFFFF))
    if end < 0 or end + 22 > len(data):
        return None
    count, cd_size = struct.unpack("<HI", data[end + 10:end + 16])
    dir_end = end
    record = end - 20 - 56  # a ZIP64 end record sits right before its 20-byte locator, as zipfile expects it
    if record >= 0 and data[end - 20:end - 16] == b"PK\x06\x07" and data[record:record + 4] == b"PK\x06\x06":
        count64, cd_size64 = struct.unpack("<QQ", data[record + 32:record + 48])
        count, cd_size, dir_end = max(count, count64), max(cd_size, cd_size64), record
    signatures = data.count(b"PK\x01\x02", max(0, dir_end - cd_size), dir_end)
    return max(count, signatures)


def _check_entry_count(n: int) -> None:
    if n > MAX_ZIP_ENTRIES:
        raise DataError(f"the zip holds {n:,} entries (files, folders and empty entries); at most "
                        f"{MAX_ZIP_ENTRIES:,} are accepted")


def _check_name(name: str, rel: PurePosixPath) -> None:
    """Refuse names the file system could not take (before anything is written)."""
    short = name if len(name) <= 60 else name[:40] + "…" + name[-15:]
    if any(len(os.fsencode(part)) > MAX_NAME_BYTES for part in rel.parts):
        raise DataError(f"the zip contains a name longer than {MAX_NAME_BYTES} bytes ({short!r}); shorten it")
    if len(os.fsencode(rel.as_posix())) > MAX_PATH_BYTES:
        raise DataError(f"the zip contains a path longer than {MAX_PATH_BYTES} bytes ({short!r}); shorten it")


def _plan_members(infos: list[zipfile.ZipInfo], zip_size: int) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """The image members to write and where, after every check that needs no decompression: safe paths, no links,
    name lengths, no name used twice or as both a file and a folder, each member's declared ratio and the declared
    total against the zip's size (``zip_size`` bytes)."""
    members, files, folders = [], set(), set()
    for info in infos:
        rel = _safe_member_path(info.filename)
        if rel is None or rel.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataError(f"the zip contains a symbolic link {info.filename!r}; it cannot be extracted")
        _check_name(info.filename, rel)
        parts = rel.parts
        key = "/".join(parts)
        parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if key in files:
            raise DataError(f"the zip holds two files named {key!r}; it cannot be extracted")
        clash = key if key in folders else next((p for p in parents if p in files), None)
        if clash is not None:
            raise DataError(f"the zip holds both a file and a folder named {clash!r}; it cannot be extracted")
        files.add(key)
        folders.update(parents)
        if info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
            raise DataError(f"{info.filename!r} is compressed suspiciously well (more than {MAX_ZIP_RATIO}:1, like a "
                            "zip bomb); the zip is refused")
        members.append((info, rel))
    if sum(info.file_size for info, _ in members) > MAX_ZIP_RATIO * zip_size:
        raise _archive_ratio_error()
    return members


def _os_error(exc: OSError) -> DataError:
    """A message for people (no server paths) about a file-system error while extracting."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "the server's disk is full"
    elif exc.errno == errno.ENAMETOOLONG:
        why = "a name in the zip is too long for the server's file system"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "the server's upload folder cannot be written"
    else:
        why = f"the server's file system refused it ({exc.strerror or type(exc).__name__})"
    return DataError(f"the zip could not be extracted: {why}; nothing was kept")


def _mib(n: float) -> str:
    return f"{n / 1024**2:,.0f} MiB" if n >= 1024**2 else f"{n / 1024:,.0f} KiB"


def _budget_error(room: int | None, need: int | None = None) -> DataError:
    if room is None or room >= MAX_ZIP_BYTES:
        return DataError(f"the zip expands to more than {MAX_ZIP_BYTES / 1024**3:.0f} GiB of images; at most "
                         f"{MAX_ZIP_BYTES / 1024**3:.0f} GiB are accepted")
    needs = f"this zip needs {_mib(need)}" if need is not None else "this zip needs more"
    return DataError(f"the server's space for uploads is full: {_mib(room)} are left of the "
                     f"{_mib(uploads_cap_bytes())} shared by every session's uploads, and {needs}. Try again "
                     "later (the uploads of closed tabs are removed), or ask whoever runs the server to raise "
                     f"{UPLOADS_CAP_ENV}")


def _archive_ratio_error() -> DataError:
    return DataError(f"the zip unpacks to more than {MAX_ZIP_RATIO} times its own size (like a zip bomb); it is "
                     "refused")


def _extract(data: bytes, base: Path, room: int | None) -> tuple[Path, Path]:
    """:func:`extract_zip`'s work; returns (the extraction folder under ``base``, the dataset root inside it)."""
    n = _zip_entry_count(data)
    if n is None:
        raise DataError("the upload is not a valid zip file (it has no end-of-directory record)")
    _check_entry_count(n)  # before any other work: hashing or parsing 199,000 entries would already cost seconds
    digest = hashlib.sha256(data).hexdigest()[:20]
    target = base / digest
    if target.is_dir():
        return target, find_dataset_root(target)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError, struct.error,
            NotImplementedError) as exc:  # a damaged directory fails in many ways (e.g. a name that is not UTF-8)
        raise DataError(f"the upload is not a valid zip file ({type(exc).__name__}: {exc})") from exc
    budget = MAX_ZIP_BYTES if room is None else min(MAX_ZIP_BYTES, room)
    with zf:
        infos = zf.infolist()
        _check_entry_count(len(infos))
        members = _plan_members(infos, len(data))
        if not members:
            raise DataError("the zip contains no image files (" + ", ".join(IMAGE_EXTENSIONS) + ").\n"
                            "Expected layout:\n" + FOLDER_LAYOUT)
        declared = sum(info.file_size for info, _ in members)
        if declared > budget:
            raise _budget_error(room, declared)
        try:
            base.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(base).free
            if declared + 4096 * len(members) > free:
                raise DataError(f"the server's disk has {_mib(free)} free and this zip needs {_mib(declared)}; "
                                "nothing was extracted")
            tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.tmp-", dir=base))
        except OSError as exc:
            raise _os_error(exc) from exc
        try:
            written = 0
            for info, rel in members:
                out = tmp.joinpath(*rel.parts)
                limit = MAX_ZIP_RATIO * max(info.compress_size, 1)  # the ratio, on the bytes actually written
                size = 0
                try:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(out, "xb") as dst:
                        while chunk := src.read(1 << 20):
                            size += len(chunk)
                            written += len(chunk)
                            if size > limit:
                                raise DataError(f"{info.filename!r} is compressed suspiciously well (it unpacks to "
                                                f"more than {MAX_ZIP_RATIO} times its compressed size, like a zip "
                                                "bomb); the zip is refused")
                            if written > budget:
                                raise _budget_error(room)
                            if written > MAX_ZIP_RATIO * len(data):  # members may claim overlapping compressed bytes
                                raise _archive_ratio_error()
                            dst.write(chunk)
                except DataError:
                    raise
                except OSError as exc:  # a full disk, a name the file system refuses, ...
                    raise _os_error(exc) from exc
                except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError,
                        RuntimeError, ValueError, struct.error) as exc:
                    raise DataError(f"the zip is damaged: {info.filename!r} cannot be extracted ({exc})") from exc
            root = find_dataset_root(tmp)
            try:
                os.replace(tmp, target)
            except OSError:  # another caller extracted the same zip into the same folder meanwhile
                if not target.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _os_error(exc) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target, target / root.relative_to(tmp)


def extract_zip(data: bytes, dest: str | os.PathLike | None = None, *, room: int | None = None) -> Path:
    """Extract a zip of images safely and return the dataset root inside it (see :func:`find_dataset_root`).

    Only image files (by extension) are written. Before anything is parsed, the number of entries is read from the
    zip's end record (at most :data:`MAX_ZIP_ENTRIES`); before anything is written, every member's path is checked
    (no ``..``, absolute paths, drive letters or links; names at most :data:`MAX_NAME_BYTES`, paths at most
    :data:`MAX_PATH_BYTES` bytes; no name used twice or as both a file and a folder) and so are the declared sizes.
    While writing, every member's bytes are counted: none may exceed :data:`MAX_ZIP_RATIO` times its compressed size,
    all together neither :data:`MAX_ZIP_RATIO` times the zip's own size (members may claim overlapping compressed
    bytes) nor :data:`MAX_ZIP_BYTES` (nor ``room``). On any failure nothing is left behind.

    The same bytes always go to the same folder under ``dest`` (default :func:`uploads_dir`), named by their
    SHA-256, so extracting again is free.

    Parameters
    ----------
    data : bytes
        The zip file.
    dest : path, optional
        The folder to extract into (created if needed).
    room : int, optional
        Bytes the shared uploads folder may still take (see :class:`UploadArea`); None for no limit but
        :data:`MAX_ZIP_BYTES`.

    Raises
    ------
    DataError
        Not a zip, damaged, unsafe content, too large or too compressed, a full or read-only disk, or no usable
        layout; the message is for people and names no server path.
    """
    return _extract(data, Path(dest) if dest is not None else uploads_dir(), room)[1]


def describe_zip_limits() -> str:
    """The zip limits in words, for the upload widget."""
    return (f"At most {MAX_ZIP_ENTRIES:,} entries and {MAX_ZIP_BYTES / 1024**3:.0f} GiB of images unpacked; a member "
            f"compressed more than {MAX_ZIP_RATIO}:1 is refused. Images over {MAX_IMAGE_PIXELS:,} pixels are skipped. "
            "A new zip replaces this session's previous one.")


def uploads_cap_bytes() -> int:
    """The most bytes all sessions' extracted zips may take together: ``$DOC_UPLOADS_MAX_MB`` MiB (read now), default
    :data:`DEFAULT_UPLOADS_CAP_MB`.

    Raises
    ------
    DataError
        When the variable is set but is not a positive number.
    """
    value = os.environ.get(UPLOADS_CAP_ENV, "").strip()
    if not value:
        return DEFAULT_UPLOADS_CAP_MB * 1024**2
    try:
        mb = float(value)
    except ValueError:
        mb = -1.0
    if not (mb > 0 and mb < 2**40):
        raise DataError(f"{UPLOADS_CAP_ENV} must be a positive number of MiB, not {value!r}")
    return int(mb * 1024**2)


def folder_bytes(folder: str | os.PathLike) -> int:
    """Total size in bytes of the files under ``folder`` (links are not followed; unreadable parts count 0)."""
    total, stack = 0, [os.fspath(folder)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def is_upload_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` lies in the uploads folder (:func:`uploads_dir`), i.e. is an extracted zip."""
    try:
        return Path(os.path.abspath(path)).is_relative_to(Path(os.path.abspath(uploads_dir())))
    except (OSError, ValueError):
        return False


# Session folders are named session-<host>-<pid>-<random>, so a sweep can tell the folders of a killed server.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_SESSION_NAME = re.compile(r"session-([0-9a-f]{8})-(\d+)-")
_LIVE_AREAS: set[str] = set()  # folders of this process's UploadAreas not cleaned up yet
_UPLOADS_LOCK = threading.Lock()  # one extraction at a time in this process, so the shared cap holds exactly


def _remove_area(path: str) -> None:
    _LIVE_AREAS.discard(path)
    shutil.rmtree(path, ignore_errors=True)


class UploadArea:
    """A private temporary folder for one session's uploads, holding at most one extracted zip.

    The folder (``session-*`` under :func:`uploads_dir`) is deleted by :meth:`cleanup` (the app calls it when the
    browser session disconnects), when the object is garbage collected, or at interpreter exit. Folders left by a
    killed server are removed by :func:`clean_stale_uploads`, which :meth:`extract` runs first.

    Raises
    ------
    DataError
        When the uploads folder cannot be created.
    """

    def __init__(self, base: str | os.PathLike | None = None) -> None:
        base = Path(base) if base is not None else uploads_dir()
        try:
            base.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=f"session-{_HOST}-{os.getpid()}-", dir=base))
        except OSError as exc:
            raise _os_error(exc) from exc
        self._extraction: Path | None = None  # the folder the last successful extract() wrote
        _LIVE_AREAS.add(str(self.path))
        self._finalizer = weakref.finalize(self, _remove_area, str(self.path))

    def extract(self, data: bytes) -> Path:
        """:func:`extract_zip` into this session's folder; returns the dataset root.

        A zip with other bytes than the previous one replaces it: the previous extraction is deleted once the new one
        has succeeded (a failed upload keeps it). Stale folders are swept first, then the new zip must fit in what is
        left of :func:`uploads_cap_bytes` (all sessions together; this session's previous zip does not count).

        Raises
        ------
        DataError
            As :func:`extract_zip`, when the shared cap would be exceeded, or when this area was cleaned up.
        """
        if not self.alive or not self.path.is_dir():
            raise DataError("this session's upload folder was cleaned up; upload the zip again")
        base = self.path.parent
        with _UPLOADS_LOCK:
            clean_stale_uploads(base=base)
            cap = uploads_cap_bytes()
            previous = self._extraction if self._extraction is not None and self._extraction.is_dir() else None
            used = folder_bytes(base) - (folder_bytes(previous) if previous is not None else 0)
            target, root = _extract(data, self.path, room=max(0, cap - used))
            os.utime(self.path)  # in use: not stale
        if previous is not None and previous != target:
            shutil.rmtree(previous, ignore_errors=True)
        self._extraction = target
        return root

    def cleanup(self) -> None:
        """Delete the folder and everything in it (idempotent)."""
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self._finalizer.alive


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def clean_stale_uploads(max_age_s: float = 24 * 3600, base: str | os.PathLike | None = None) -> int:
    """Delete session upload folders nobody uses any more; returns how many.

    A ``session-*`` folder is removed unless it belongs to a live :class:`UploadArea` of this process, when its
    server process (on this machine) has ended, when it is an orphan of this process, or when it was last used more
    than ``max_age_s`` seconds ago (folders of other machines or of an older naming).
    """
    base = Path(base) if base is not None else uploads_dir()
    if not base.is_dir():
        return 0
    removed, now, me = 0, time.time(), os.getpid()
    for p in base.glob("session-*"):
        try:
            if str(p) in _LIVE_AREAS or not p.is_dir() or p.is_symlink():
                continue
            m = _SESSION_NAME.match(p.name)
            ours = m is not None and m.group(1) == _HOST
            gone = ours and (int(m.group(2)) == me or not _pid_running(int(m.group(2))))
            if gone or now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    return removed
