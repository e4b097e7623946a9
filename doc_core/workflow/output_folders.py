"""Folders the tool writes as a whole (a saved detector, an edge bundle): checked first, then renamed into place.

Rules
-----
* A folder at the destination is replaced only when it is empty or is one this tool wrote: its metadata file
  (``detector.json`` / ``bundle.json``) names the tool's own format and the folder holds nothing but the files the
  tool writes. Anything else (someone's documents, a file, a link) is refused with :class:`OutputExistsError` and
  kept untouched, unless the caller passes ``force=True``.
* The new content is written to a hidden sibling ``.<name>.tmp-*`` and renamed into place. The previous folder is
  first renamed to ``.<name>.old-*`` and deleted only once the new one is in place; if that second rename fails it is
  put back at once (and :func:`restore_previous` puts it back after a crash between the two renames).
* Hidden siblings left by a killed process are removed by :func:`remove_stale` once older than
  :data:`STALE_AGE_S` (young ones may belong to a save in progress).
* :func:`check_writable` proves, before a long computation, that the destination's parent takes a new file and has
  room for an estimated size, so a read-only or full disk fails at once instead of after training.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

STALE_AGE_S = 24 * 3600.0
"""Hidden temporary siblings older than this (seconds) are leftovers of a killed process and are removed."""

_MAX_METADATA_BYTES = 64 * 2**20  # a metadata file larger than this is not one the tool wrote


def write_file_atomic(path: str | os.PathLike, write: Callable[[IO], None], *, text: bool = False,
                      newline: str | None = None) -> Path:
    """Write one file so that readers see the old file or the whole new one, never a part: ``write(f)`` fills a
    hidden temporary sibling (``.<name>.tmp-*``, binary, or UTF-8 text when ``text``), which is flushed, fsynced and
    renamed onto ``path``. On any error the temporary file is removed and ``path`` is left as it was.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with (os.fdopen(fd, "w", encoding="utf-8", newline=newline) if text else os.fdopen(fd, "wb")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class OutputExistsError(FileExistsError):
    """The destination holds something this tool did not write; it was kept. ``errno`` is ``EEXIST``."""


@dataclass(frozen=True)
class OutputKind:
    """What a folder written by this tool looks like.

    Parameters
    ----------
    label : str
        Name used in messages, e.g. ``"detector"``.
    metadata_file : str
        The JSON file whose ``"format"`` field names the tool's format, e.g. ``"detector.json"``.
    format_name : str
        The value of that ``"format"`` field.
    required : frozenset of str
        Files a complete folder holds (a previous folder is restored only when complete).
    allowed : frozenset of str
        Every name the folder may hold (``required`` included), or ``fnmatch`` patterns of them (e.g.
        ``"*_gradcam.png"``); any other entry makes the folder foreign.
    """

    label: str
    metadata_file: str
    format_name: str
    required: frozenset[str]
    allowed: frozenset[str]

    def owns(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` is a real folder (no link) written by this tool, holding only names in ``allowed``."""
        path = Path(path)
        try:
            if path.is_symlink() or not path.is_dir():
                return False
            if any(name not in self.allowed and not any(fnmatch.fnmatchcase(name, pat) for pat in self.allowed)
                   for name in os.listdir(path)):
                return False
            meta = path / self.metadata_file
            if meta.is_symlink() or not meta.is_file() or meta.stat().st_size > _MAX_METADATA_BYTES:
                return False
            doc = json.loads(meta.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            return False
        return isinstance(doc, dict) and doc.get("format") == self.format_name

    def complete(self, path: Path) -> bool:
        """Whether ``path`` is owned and holds every required file."""
        return self.owns(path) and all((path / f).is_file() for f in self.required)


def stale_patterns(path: str | os.PathLike) -> tuple[str, str]:
    """Glob patterns of the hidden siblings a save to ``path`` creates: ``.<name>.tmp-*`` and ``.<name>.old-*``."""
    name = Path(path).name
    return f".{name}.tmp-*", f".{name}.old-*"


def remove_stale(folder: str | os.PathLike, patterns: tuple[str, ...], max_age_s: float = STALE_AGE_S) -> int:
    """Remove entries of ``folder`` whose name matches one of ``patterns`` and that are older than ``max_age_s``.

    Age is the entry's own modification time (a link is not followed). A folder is removed with its contents, a file
    or link is unlinked (a link's target is never touched). Entries that vanish or cannot be removed are skipped.

    Returns
    -------
    int
        How many entries were removed.
    """
    removed, now = 0, time.time()
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        if not any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            continue
        p = Path(folder) / name
        try:
            if now - p.lstat().st_mtime <= max_age_s:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed += 1
        except OSError:
            continue
    return removed


def _describe_foreign(path: Path, kind: OutputKind) -> str | None:
    """What is at ``path`` that ``kind`` does not own, in words; None when there is nothing or it may be replaced."""
    if path.is_symlink():
        return "a symbolic link"
    if not path.exists():
        return None
    if not path.is_dir():
        return f"a file of {path.stat().st_size:,} bytes"
    names = sorted(os.listdir(path))
    if not names or kind.owns(path):
        return None
    files = folders = 0
    for _, dirs, fs in os.walk(path):
        files, folders = files + len(fs), folders + len(dirs)
        if files + folders > 100_000:
            break
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    a_kind = ("an " if kind.label[:1] in "aeiou" else "a ") + kind.label
    owner = f"is not {a_kind} written by doc_core" if not (path / kind.metadata_file).is_file() else \
        f"holds content doc_core did not write besides {a_kind}"
    return f"a folder that {owner} ({_count(files, 'file')}, {_count(folders, 'folder')}: {shown})"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def check_target(path: str | os.PathLike, kind: OutputKind, force: bool = False) -> str | None:
    """Refuse to replace anything at ``path`` that this tool did not write.

    Parameters
    ----------
    path : path
        The destination folder.
    kind : OutputKind
        What the tool writes there.
    force : bool
        Allow replacing anything.

    Returns
    -------
    str or None
        With ``force``, a description of the foreign content that will be replaced (for the user); None when nothing
        foreign is there.

    Raises
    ------
    OutputExistsError
        Something foreign is at ``path`` and ``force`` is False; nothing was changed.
    """
    path = Path(path)
    foreign = _describe_foreign(path, kind)
    if foreign is None or force:
        return foreign
    raise OutputExistsError(errno.EEXIST, f"{path} holds {foreign}; it was kept and nothing was written. Choose a new "
                            f"or empty folder, or pass --force (force=True) to replace it")


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: str | os.PathLike, needed_bytes: int = 0) -> None:
    """Check that ``path`` can be written: a probe file is created and removed beside it, and free space is compared.

    The probe goes into ``path``'s parent, or the nearest existing folder above it (nothing is created).

    Parameters
    ----------
    path : path
        The destination folder.
    needed_bytes : int
        A conservative estimate of what will be written; 0 skips the free-space check.

    Raises
    ------
    OSError
        ``errno`` says why: e.g. ``EACCES`` or ``EROFS`` (the parent takes no new file), ``ENOSPC`` (less free space
        than ``needed_bytes``), ``ENOTDIR`` (the parent is a file). The message names the folder.
    """
    path = Path(path)
    parent = _existing_ancestor(path.parent)
    if not parent.is_dir():
        raise OSError(errno.ENOTDIR, f"{parent} is a file, so {path} cannot be created")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write in {parent} ({exc.strerror or exc}), so nothing can be saved to "
                      f"{path}; choose a folder you can write to") from exc
    if needed_bytes > 0:
        free = shutil.disk_usage(parent).free
        if free < needed_bytes:
            raise OSError(errno.ENOSPC, f"only {free / 1e6:,.1f} MB are free in {parent}, but saving to {path} needs "
                          f"about {needed_bytes / 1e6:,.1f} MB; free some space or choose another folder")


def restore_previous(path: str | os.PathLike, kind: OutputKind) -> bool:
    """Undo a save killed between its two renames: put the newest complete ``.<name>.old-*`` back at ``path``.

    Does nothing when ``path`` exists. Returns whether a previous folder was put back.
    """
    path = Path(path)
    if os.path.lexists(path):
        return False
    try:
        olds = sorted(path.parent.glob(stale_patterns(path)[1]), key=lambda p: p.lstat().st_mtime, reverse=True)
    except OSError:
        return False
    for old in olds:
        if kind.complete(old):
            try:
                os.replace(old, path)
            except OSError:
                return False
            return True
    return False


def prepare_save(path: str | os.PathLike, kind: OutputKind, force: bool = False) -> None:
    """Before writing to ``path``: refuse foreign content, restore a previous folder, sweep stale siblings.

    Creates ``path``'s parent folders. Raises :class:`OutputExistsError` as :func:`check_target` does.
    """
    path = Path(path)
    check_target(path, kind, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    restore_previous(path, kind)  # a previous folder is never swept away as "stale"
    remove_stale(path.parent, stale_patterns(path))


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except OSError:
            pass


def install_folder(tmp: Path, path: Path, kind: OutputKind | None = None, force: bool = False) -> None:
    """Move a completely written folder ``tmp`` to ``path``, replacing what is there.

    With ``kind``, what is at ``path`` is checked again first (:func:`check_target`), so a foreign folder that
    appeared during a long computation is not replaced either. The previous entry is renamed to a hidden
    ``.<name>.old-*`` sibling and deleted only after ``tmp`` is in place; if that rename fails, it is put back, so a
    failure or crash at any moment leaves either the previous or the new folder (see :func:`restore_previous`).
    """
    if kind is not None:
        check_target(path, kind, force)
    old = None
    if os.path.lexists(path):
        old = path.with_name(f".{path.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            try:
                os.replace(old, path)
            except OSError:
                pass
        raise
    if old is not None:
        _remove(old)
