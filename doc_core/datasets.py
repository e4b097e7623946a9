"""Dataset sources: a small, JSON-serialisable description of where a one-class split comes from.

A :class:`DatasetSpec` names either the built-in Fashion-MNIST cut by a :class:`~doc_core.data.SplitConfig`, or a
folder of the user's own images laid out as :data:`~doc_core.data.FOLDER_LAYOUT` (a folder on the machine, or a zip
upload extracted by :func:`extract_zip`). The spec is what the app keeps as "the active dataset" and what a saved run
records about its data; :func:`load_dataset` turns it into a :class:`~doc_core.data.OneClassSplit`.

The module also describes a split for display: image counts per class and role (:func:`role_counts`) and a few
sample images per role (:func:`role_samples`).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import struct
import tempfile
import time
import weakref
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .data import (FASHION_MNIST_CLASSES, FOLDER_LAYOUT, IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, DataError, FashionMNIST,
                   OneClassSplit, SkippedFile, SplitConfig, load_folder_split, make_split)

KINDS = ("fashion-mnist", "folder")
ROLES = ("normal training", "reference", "test normal", "test anomaly", "test unlabelled")

# Limits on a zip upload: enough for tens of thousands of images, small enough that a zip bomb cannot fill the disk.
MAX_ZIP_FILES = 200_000
MAX_ZIP_BYTES = 4 * 1024**3
MAX_ZIP_RATIO = 200  # uncompressed / compressed size of one member


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
    """

    kind: str = "fashion-mnist"
    split: SplitConfig = field(default_factory=SplitConfig.tutorial)
    root: str | None = None
    image_size: int = 96
    label: str = ""

    @classmethod
    def fashion_mnist(cls, split: SplitConfig | None = None) -> "DatasetSpec":
        return cls(kind="fashion-mnist", split=split or SplitConfig.tutorial())

    @classmethod
    def folder(cls, root: str | os.PathLike, image_size: int = 96, label: str = "") -> "DatasetSpec":
        return cls(kind="folder", root=str(root), image_size=int(image_size), label=label)

    @property
    def is_reference_experiment(self) -> bool:
        return self.kind == "fashion-mnist" and self.split == SplitConfig.tutorial()

    def describe(self) -> str:
        """One line for people, e.g. ``Fashion-MNIST: normal Sneaker, anomalies Ankle boot, seed 0``."""
        if self.kind == "folder":
            return f"Own images: {self.label or self.root} ({self.image_size} px)"
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
                "label": self.label}

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetSpec":
        kind = str(d.get("kind", "fashion-mnist"))
        if kind not in KINDS:
            raise ValueError(f"unknown dataset kind {kind!r}; expected one of {', '.join(KINDS)}")
        split = SplitConfig.from_dict(d["split"]) if d.get("split") else SplitConfig.tutorial()
        return cls(kind=kind, split=split, root=d.get("root"), image_size=int(d.get("image_size", 96)),
                   label=str(d.get("label", "")))


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
        return load_folder_split(spec.root, image_size=spec.image_size)
    if spec.kind != "fashion-mnist":
        raise DataError(f"unknown dataset kind {spec.kind!r}")
    try:
        return make_split(spec.split, fashion), []
    except DataError:
        raise
    except ValueError as exc:
        raise DataError(str(exc)[:1].upper() + str(exc)[1:] + ".") from exc


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
    """The folder at or below ``folder`` (breadth first) that holds both ``train/`` and ``reference/``.

    Raises
    ------
    DataError
        When there is none; the message shows the expected layout.
    """
    level = [Path(folder)]
    for _ in range(max_depth + 1):
        for d in level:
            if (d / "train").is_dir() and (d / "reference").is_dir():
                return d
        level = sorted(c for d in level for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
    raise DataError("the zip has no folder holding both train/ and reference/.\nExpected layout:\n" + FOLDER_LAYOUT)


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


def extract_zip(data: bytes, dest: str | os.PathLike | None = None) -> Path:
    """Extract a zip of images safely and return the dataset root inside it (see :func:`find_dataset_root`).

    Only image files (by extension) are written; paths that would leave the destination, links and oversized or
    suspiciously compressed members are refused. The same bytes always go to the same folder under ``dest``
    (default :func:`uploads_dir`), named by their SHA-256, so extracting again is free.

    Raises
    ------
    DataError
        Not a zip, unsafe content, too large, or no usable layout.
    """
    digest = hashlib.sha256(data).hexdigest()[:20]
    base = Path(dest) if dest is not None else uploads_dir()
    target = base / digest
    if target.is_dir():
        return find_dataset_root(target)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError, struct.error,
            NotImplementedError) as exc:  # a damaged directory fails in many ways (e.g. a name that is not UTF-8)
        raise DataError(f"the upload is not a valid zip file ({type(exc).__name__}: {exc})") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_FILES:
            raise DataError(f"the zip holds {len(infos)} entries; at most {MAX_ZIP_FILES} are accepted")
        total = 0
        members = []
        for info in infos:
            rel = _safe_member_path(info.filename)
            if rel is None or rel.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                raise DataError(f"the zip contains a symbolic link {info.filename!r}; it cannot be extracted")
            total += info.file_size
            if total > MAX_ZIP_BYTES:
                raise DataError(f"the zip expands to more than {MAX_ZIP_BYTES / 1024**3:.0f} GiB")
            if info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO:
                raise DataError(f"{info.filename!r} is compressed suspiciously well; the zip is refused")
            members.append((info, rel))
        if not members:
            raise DataError("the zip contains no image files (" + ", ".join(IMAGE_EXTENSIONS) + ").\n"
                            "Expected layout:\n" + FOLDER_LAYOUT)
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.tmp-", dir=base))
        try:
            for info, rel in members:
                out = tmp.joinpath(*rel.parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                try:
                    # zipfile never yields more than the declared size, which was checked above
                    with zf.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError,
                        RuntimeError, ValueError, struct.error) as exc:
                    raise DataError(f"the zip is damaged: {info.filename!r} cannot be extracted ({exc})") from exc
            root = find_dataset_root(tmp)
            try:
                os.replace(tmp, target)
            except OSError:  # another session extracted the same zip meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target / root.relative_to(tmp)


def describe_zip_limits() -> str:
    """The zip limits in words, for the upload widget."""
    return (f"At most {MAX_ZIP_FILES:,} entries and {MAX_ZIP_BYTES / 1024**3:.0f} GiB of images unpacked; a member "
            f"compressed more than {MAX_ZIP_RATIO}:1 is refused. Images over {MAX_IMAGE_PIXELS:,} pixels are skipped.")


class UploadArea:
    """A private temporary folder for one session's uploads, removed when the session ends.

    The folder (``session-*`` under :func:`uploads_dir`) is deleted by :meth:`cleanup`, when the object is garbage
    collected (a Streamlit session's state is dropped when the session ends), or at interpreter exit. Folders left by
    a killed server are removed by :func:`clean_stale_uploads`.
    """

    def __init__(self, base: str | os.PathLike | None = None) -> None:
        base = Path(base) if base is not None else uploads_dir()
        base.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="session-", dir=base))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def extract(self, data: bytes) -> Path:
        """:func:`extract_zip` into this session's folder; returns the dataset root."""
        if not self.path.is_dir():
            raise DataError("this session's upload folder was cleaned up; upload the zip again")
        os.utime(self.path)  # in use: not stale
        return extract_zip(data, self.path)

    def cleanup(self) -> None:
        """Delete the folder and everything in it (idempotent)."""
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self._finalizer.alive


def clean_stale_uploads(max_age_s: float = 24 * 3600, base: str | os.PathLike | None = None) -> int:
    """Delete session upload folders untouched for ``max_age_s`` seconds (left by a killed server); returns how many."""
    base = Path(base) if base is not None else uploads_dir()
    if not base.is_dir():
        return 0
    removed, now = 0, time.time()
    for p in base.glob("session-*"):
        try:
            if p.is_dir() and not p.is_symlink() and now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    return removed
