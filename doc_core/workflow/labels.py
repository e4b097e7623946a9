"""Analysts' labels: *normal*, *anomaly* or *unsure* per run and image, kept in an embedded SQLite database.

One database file serves a whole runs folder: ``<runs dir>/labels.sqlite`` by default, ``$DOC_LABELS_DB`` when set,
or the path given to :class:`LabelStore`. A label is keyed by the run and by the image's content hash
(:func:`image_key`), so the same image is recognised again in any run and any session. The standard library's
:mod:`sqlite3` stores it; nothing else is needed.

- **Several writers.** The database is in WAL mode (readers never wait for writers); every change is one
  ``BEGIN IMMEDIATE`` transaction, which waits for the write lock (busy timeout) and is retried a few times, so browser
  sessions, threads and processes writing at once lose no label.
- **A schema with a version.** The table ``schema_version`` records every migration applied; :data:`MIGRATIONS` is the
  ordered list of functions that bring a database from one version to the next, run in one transaction each when
  a store opens an older file. A file written by a newer version is refused, not changed.
- **Data, never code.** Nothing is unpickled or executed; a file whose schema holds anything this module did not
  create (triggers, views, other tables) is refused before anything is written, and a file that is not a labels
  database at all, or is damaged (random bytes, truncated), gives one :class:`LabelStoreError` naming the file.
  Nothing else in the runs folder depends on this file, so the runs keep working whatever happens to it.

CSV export and import (:meth:`LabelStore.export_csv`, :meth:`LabelStore.import_csv`) carry the labels between
machines; an import checks every row first and writes all of them in one transaction or none.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import re
import sqlite3
import stat
import time
import unicodedata
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .artifacts import ArtifactError, short_repr
from .output_folders import write_file_atomic

LABELS = ("normal", "anomaly", "unsure")
LABELS_DB_ENV = "DOC_LABELS_DB"
LABELS_DB_NAME = "labels.sqlite"
# the same as doc_core.workflow.runs.RUNS_DIR_ENV and RUN_ID_PATTERN (a test checks); spelled out here so that the
# label store and `python -m doc_core label` import neither TensorFlow nor the detector
RUNS_DIR_ENV = "DOC_RUNS_DIR"
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
IMAGE_KEY_PATTERN = re.compile(r"^[0-9a-f]{64}$")
MAX_NOTE_CHARS = 1000
MAX_SOURCE_CHARS = 1024
MAX_WHO_CHARS = 100
MAX_IMPORT_ROWS = 1_000_000
CSV_COLUMNS = ("run_id", "image_key", "label", "note", "source", "updated_at", "who")
APPLICATION_ID = 0x444F434C  # "DOCL" in the SQLite header: this file is a DOC Explorer labels database
BUSY_TIMEOUT_S = 10.0  # how long one attempt waits for another writer's lock
RETRIES = 5  # attempts of one transaction before giving up

_SQLITE_BUSY = {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_BUSY_SNAPSHOT", "SQLITE_BUSY_RECOVERY", "SQLITE_LOCKED_SHAREDCACHE"}
# errors of the file system rather than of the file's content: exit status 1 in the CLI
_SQLITE_OS = ("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_PERM", "SQLITE_BUSY",
              "SQLITE_LOCKED")
_FORMULA_START = re.compile(r"'*[=+\-@\t\r]")  # what a spreadsheet would run as a formula


class LabelStoreError(ArtifactError):
    """The labels database cannot be used (damaged, not a labels database, newer version, locked, read-only), or a
    CSV file to import is invalid; the message names the file (and the line).

    Attributes
    ----------
    os_error : bool
        True when the file system is the problem (read-only, full, no permission, locked by another program) rather
        than the file's content or the input.
    """

    def __init__(self, message: str, *, os_error: bool = False) -> None:
        super().__init__(message)
        self.os_error = os_error


@dataclass(frozen=True)
class LabelRecord:
    """One analyst's label of one image in one run.

    Attributes
    ----------
    run_id : str
    image_key : str
        :func:`image_key` of the image: 64 lower-case hex digits.
    label : {"normal", "anomaly", "unsure"}
    note : str or None
        Free text, at most :data:`MAX_NOTE_CHARS` characters.
    source : str or None
        Where the image came from, e.g. ``test:17`` (index in the run's test set) or a file path.
    updated_at : str
        ISO 8601 UTC time of the last change, e.g. ``2025-01-31T09:15:02.123456+00:00``.
    who : str or None
        Who or which session set it, when known.
    """

    run_id: str
    image_key: str
    label: str
    note: str | None = None
    source: str | None = None
    updated_at: str = ""
    who: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ keys and checks


def image_key(image: np.ndarray) -> str:
    """The content hash that identifies an image in the label store.

    SHA-256 of the shape and the raw bytes of the image in C order, so every copy of the same pixels (a slice, a
    Fortran-ordered copy, the same image loaded in another session or run) gets the same key, and a single different
    pixel gives another one.

    Parameters
    ----------
    image : np.ndarray, uint8, shape (H, W) or (H, W, C)
        One image as the tool stores it. ``(H, W)`` and ``(H, W, 1)`` are the same grey image and get the same key.

    Returns
    -------
    str
        64 lower-case hex digits.
    """
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise TypeError(f"image_key takes a uint8 image as the tool stores it, not {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or min(a.shape) < 1:
        raise ValueError(f"image_key takes one image of shape (H, W) or (H, W, C), not {a.shape}")
    h = hashlib.sha256(b"doc-image-v1:%d,%d,%d:" % a.shape)
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _check_run_id(run_id: Any) -> str:
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
        raise ValueError(f"{short_repr(run_id)} is not a valid run id (letters, digits, '_', '.', '-'; at most 100)")
    return run_id


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not IMAGE_KEY_PATTERN.match(key):
        raise ValueError(f"{short_repr(key)} is not an image key (64 lower-case hex digits, see image_key)")
    return key


def _check_label(label: Any) -> str:
    if label not in LABELS:
        raise ValueError(f"{short_repr(label)} is not a label; use one of {', '.join(LABELS)}")
    return label


def _check_text(value: Any, what: str, limit: int) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text, not {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"{what} is {len(value)} characters long; at most {limit} are kept")
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cs") and c not in "\t\n\r"), None)
    if bad is not None:
        raise ValueError(f"{what} holds the control character {bad!r}")
    return value


def _check_time(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError(f"updated_at {short_repr(value)} is not a time")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError as exc:
        raise ValueError(f"updated_at {short_repr(value)} is not an ISO 8601 time") from exc
    if t.tzinfo is None:
        raise ValueError(f"updated_at {short_repr(value)} has no time zone (write e.g. 2025-01-31T09:15:02+00:00)")
    return t.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _record(run_id: Any, key: Any, label: Any, note: Any = None, source: Any = None, updated_at: Any = None,
            who: Any = None) -> LabelRecord:
    """A checked record; ``updated_at`` None means now."""
    return LabelRecord(_check_run_id(run_id), _check_key(key), _check_label(label),
                       _check_text(note, "note", MAX_NOTE_CHARS), _check_text(source, "source", MAX_SOURCE_CHARS),
                       _utc_now() if updated_at is None else _check_time(updated_at),
                       _check_text(who, "who", MAX_WHO_CHARS))


def _escape_cell(text: str | None) -> str:
    """A CSV cell a spreadsheet shows as text: one ``'`` before a leading ``= + - @``, tab or CR (undone on import)."""
    if text is None:
        return ""
    return "'" + text if _FORMULA_START.match(text) else text


def _unescape_cell(text: str) -> str:
    return text[1:] if text.startswith("'") and _FORMULA_START.match(text[1:]) else text


# -------------------------------------------------------------------------------------------------------- schema


def _v1(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    conn.execute("CREATE TABLE labels (run_id TEXT NOT NULL, image_key TEXT NOT NULL, "
                 "label TEXT NOT NULL CHECK (label IN ('normal', 'anomaly', 'unsure')), note TEXT, source TEXT, "
                 "updated_at TEXT NOT NULL, PRIMARY KEY (run_id, image_key)) WITHOUT ROWID")


def _v2(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE labels ADD COLUMN who TEXT")
    conn.execute("CREATE INDEX labels_by_image ON labels (image_key)")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1, _v2)
"""Migration ``i`` brings a database from version ``i`` to ``i + 1`` (version 0: an empty file)."""
SCHEMA_VERSION = len(MIGRATIONS)
_OWN_OBJECTS = {("table", "schema_version"), ("table", "labels"), ("index", "labels_by_image")}


def default_labels_path(runs_dir: str | os.PathLike | None = None) -> Path:
    """``$DOC_LABELS_DB`` if set, else ``<runs dir>/labels.sqlite``.

    Parameters
    ----------
    runs_dir : path, optional
        The runs folder; default ``$DOC_RUNS_DIR`` or ``./runs`` (as :func:`doc_core.workflow.runs.default_runs_dir`).
    """
    env = os.environ.get(LABELS_DB_ENV)
    if env and runs_dir is None:
        return Path(env)
    root = Path(runs_dir) if runs_dir is not None else Path(os.environ.get(RUNS_DIR_ENV) or "runs")
    return root / LABELS_DB_NAME


# --------------------------------------------------------------------------------------------------------- store


class LabelStore:
    """Labels of images per run in one SQLite file, safe for several writers at once.

    Every method opens its own short connection, so one store may be shared by threads, and any number of stores (in
    other processes too) may use the same file. Reading a file that does not exist yet gives no labels and creates
    nothing; the first write creates it (and its folder).

    Parameters
    ----------
    path : path, optional
        The database file. Default: ``$DOC_LABELS_DB`` if set, else ``<runs_dir>/labels.sqlite``.
    runs_dir : path, optional
        The runs folder whose default database is used (default ``$DOC_RUNS_DIR`` or ``./runs``); when given, it
        takes precedence over ``$DOC_LABELS_DB``.
    timeout : float
        Seconds one attempt waits for another writer's lock (there are :data:`RETRIES` attempts).
    """

    def __init__(self, path: str | os.PathLike | None = None, *, runs_dir: str | os.PathLike | None = None,
                 timeout: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path) if path is not None else default_labels_path(runs_dir)
        self.timeout = float(timeout)
        self._ready = False

    def __repr__(self) -> str:
        return f"LabelStore({str(self.path)!r})"

    # ---------------------------------------------------------------------------------------------- connections

    def _error(self, exc: BaseException, doing: str) -> LabelStoreError:
        name = getattr(exc, "sqlite_errorname", "") or ""
        text = str(exc) or type(exc).__name__
        if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT") or "not a database" in text or "malformed" in text:
            return LabelStoreError(f"{self.path} is damaged or not a labels database ({text}) while {doing}; move "
                                   "it aside to start a new one (the runs are not affected)")
        os_error = isinstance(exc, OSError) or name.startswith(_SQLITE_OS)
        return LabelStoreError(f"{self.path}: {text} while {doing}", os_error=os_error)

    def _exists(self) -> bool:
        try:
            mode = self.path.stat().st_mode
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise LabelStoreError(f"{self.path} cannot be read ({exc.strerror or exc})", os_error=True) from exc
        if not stat.S_ISREG(mode):
            raise LabelStoreError(f"{self.path} is not a regular file, so it cannot be a labels database")
        return True

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        """A new connection with the schema ready, or None when the file does not exist and ``create`` is False."""
        if not self._exists():
            if not create:
                return None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LabelStoreError(f"cannot create the folder of {self.path} ({exc.strerror or exc})",
                                      os_error=True) from exc
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._error(exc, "opening it") from exc
        try:
            conn.execute("PRAGMA trusted_schema = OFF")  # no SQL functions with side effects from the file's schema
            if not self._ready:
                self._prepare(conn)
                self._ready = True
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Check that the file is a healthy labels database of a known version, then migrate it and switch on WAL."""
        def check(c: sqlite3.Connection) -> int:
            objects = {(t, n) for t, n in c.execute("SELECT type, name FROM sqlite_schema")
                       if not n.startswith("sqlite_autoindex_")}
            app_id = c.execute("PRAGMA application_id").fetchone()[0]
            if not objects:
                return 0
            if app_id != APPLICATION_ID or not objects <= _OWN_OBJECTS or ("table", "schema_version") not in objects:
                raise LabelStoreError(f"{self.path} is an SQLite database but not a DOC Explorer labels database "
                                      "(other tables, views or triggers); it was not changed")
            version = c.execute("SELECT max(version) FROM schema_version").fetchone()[0]
            if not isinstance(version, int) or version < 1:
                raise LabelStoreError(f"{self.path} has no valid schema version")
            if version > SCHEMA_VERSION:
                raise LabelStoreError(f"{self.path} is a labels database of version {version}, written by a newer "
                                      f"DOC Explorer; this one reads up to version {SCHEMA_VERSION}")
            return version

        def health(c: sqlite3.Connection) -> int:
            problems = [r[0] for r in c.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise LabelStoreError(f"{self.path} is damaged ({'; '.join(problems[:3])}); move it aside to start a "
                                      "new one (the runs are not affected)")
            return check(c)

        version = self._transaction(conn, health, "checking it", immediate=False)
        if version < SCHEMA_VERSION:
            self._set_wal(conn)

            def migrate(c: sqlite3.Connection) -> None:
                current = check(c)  # again, under the write lock: another process may have migrated meanwhile
                for v in range(current, SCHEMA_VERSION):
                    MIGRATIONS[v](c)
                    c.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (v + 1, _utc_now()))
                c.execute(f"PRAGMA application_id = {APPLICATION_ID}")

            self._transaction(conn, migrate, f"migrating it to version {SCHEMA_VERSION}")

    def _set_wal(self, conn: sqlite3.Connection) -> None:
        for attempt in range(RETRIES):
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorname", "") not in _SQLITE_BUSY or attempt == RETRIES - 1:
                    raise self._error(exc, "switching it to WAL mode") from exc
                time.sleep(random.uniform(0.02, 0.2) * (attempt + 1))

    def _transaction(self, conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], Any], doing: str,
                     immediate: bool = True) -> Any:
        """Run ``work`` in one transaction (``BEGIN IMMEDIATE`` for writes), retried when another writer holds the
        lock longer than the busy timeout."""
        for attempt in range(RETRIES):
            try:
                conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
                try:
                    result = work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return result
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorname", "") in _SQLITE_BUSY and attempt < RETRIES - 1:
                    time.sleep(random.uniform(0.02, 0.2) * (attempt + 1))
                    continue
                raise self._error(exc, doing) from exc
            except sqlite3.Error as exc:
                raise self._error(exc, doing) from exc
        raise AssertionError("unreachable")

    def _run(self, work: Callable[[sqlite3.Connection], Any], doing: str, write: bool, empty: Any = None) -> Any:
        conn = self._connect(create=write)
        if conn is None:
            return empty
        try:
            return self._transaction(conn, work, doing, immediate=write)
        finally:
            conn.close()

    def _rows(self, cursor: Iterable[Sequence[Any]]) -> list[LabelRecord]:
        out = []
        for row in cursor:
            try:
                out.append(_record(*row))
            except (ValueError, TypeError) as exc:
                raise LabelStoreError(f"{self.path} holds an invalid label row ({exc})") from exc
        return out

    # -------------------------------------------------------------------------------------------------- the API

    @property
    def schema_version(self) -> int:
        """The file's schema version after opening (0 when the file does not exist yet)."""
        version = self._run(lambda c: c.execute("SELECT max(version) FROM schema_version").fetchone()[0],
                            "reading its version", write=False, empty=0)
        return int(version)

    def set(self, run_id: str, image_key: str, label: str, note: str | None = None, source: str | None = None,
            who: str | None = None) -> LabelRecord:
        """Set (or replace) the label of one image in one run; returns the stored record."""
        rec = _record(run_id, image_key, label, note, source, None, who)
        self._write([rec], "saving a label")
        return rec

    def set_many(self, run_id: str, items: Iterable[Mapping[str, Any] | Sequence[Any]], who: str | None = None) -> int:
        """Set the labels of several images of one run in one transaction: all of them or, on an error, none.

        Parameters
        ----------
        run_id : str
        items : iterable
            Each a mapping with ``image_key``, ``label`` and optionally ``note``, ``source``, or a tuple
            ``(image_key, label[, note[, source]])``.
        who : str, optional

        Returns
        -------
        int
            How many labels were written.
        """
        now = _utc_now()
        records = []
        for i, item in enumerate(items):
            if isinstance(item, Mapping):
                unknown = set(item) - {"image_key", "label", "note", "source"}
                if unknown:
                    raise ValueError(f"item {i}: unknown fields {sorted(unknown)}")
                key, label, note, source = (item.get("image_key"), item.get("label"), item.get("note"),
                                            item.get("source"))
            else:
                if not 2 <= len(item) <= 4:
                    raise ValueError(f"item {i}: expected (image_key, label[, note[, source]]), got {len(item)} values")
                key, label, note, source = (*item, None, None)[:4]
            try:
                records.append(_record(run_id, key, label, note, source, now, who))
            except ValueError as exc:
                raise ValueError(f"item {i}: {exc}") from exc
        self._write(records, "saving labels")
        return len(records)

    def _write(self, records: list[LabelRecord], doing: str) -> None:
        if not records:
            return
        rows = [(r.run_id, r.image_key, r.label, r.note, r.source, r.updated_at, r.who) for r in records]
        self._run(lambda c: c.executemany(
            "INSERT INTO labels (run_id, image_key, label, note, source, updated_at, who) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (run_id, image_key) DO UPDATE SET label = excluded.label, note = excluded.note, "
            "source = excluded.source, updated_at = excluded.updated_at, who = excluded.who", rows), doing, write=True)

    _SELECT = "SELECT run_id, image_key, label, note, source, updated_at, who FROM labels"

    def get(self, run_id: str, image_key: str) -> LabelRecord | None:
        """The label of one image in one run, or None."""
        args = (_check_run_id(run_id), _check_key(image_key))
        rows = self._run(lambda c: self._rows(c.execute(self._SELECT + " WHERE run_id = ? AND image_key = ?", args)),
                         "reading a label", write=False, empty=[])
        return rows[0] if rows else None

    def labels(self, run_id: str | None) -> list[LabelRecord]:
        """Every label of one run (``None``: of every run), ordered by run, then most recent first."""
        if run_id is None:
            query, args = self._SELECT + " ORDER BY run_id, updated_at DESC, image_key", ()
        else:
            query, args = self._SELECT + " WHERE run_id = ? ORDER BY updated_at DESC, image_key", (_check_run_id(run_id),)
        return self._run(lambda c: self._rows(c.execute(query, args)), "reading labels", write=False, empty=[])

    def find(self, image_key: str) -> list[LabelRecord]:
        """The labels of one image in every run, most recent first (the same image recognised in another run)."""
        args = (_check_key(image_key),)
        return self._run(lambda c: self._rows(c.execute(self._SELECT + " WHERE image_key = ? ORDER BY updated_at DESC",
                                                        args)), "reading labels", write=False, empty=[])

    def delete(self, run_id: str, image_key: str) -> bool:
        """Remove the label of one image in one run; returns whether there was one."""
        args = (_check_run_id(run_id), _check_key(image_key))
        if not self._exists():
            return False
        return self._run(lambda c: c.execute("DELETE FROM labels WHERE run_id = ? AND image_key = ?", args).rowcount > 0,
                         "deleting a label", write=True)

    def counts(self, run_id: str | None) -> dict[str, int]:
        """How many images of a run (``None``: of every run) carry each label: ``{"normal": n, "anomaly": n,
        "unsure": n}``."""
        if run_id is None:
            query, args = "SELECT label, count(*) FROM labels GROUP BY label", ()
        else:
            query, args = "SELECT label, count(*) FROM labels WHERE run_id = ? GROUP BY label", (_check_run_id(run_id),)
        rows = self._run(lambda c: c.execute(query, args).fetchall(), "counting labels", write=False, empty=[])
        out = dict.fromkeys(LABELS, 0)
        out.update({label: int(n) for label, n in rows if label in out})
        return out

    def run_ids(self) -> list[str]:
        """The runs that have labels, sorted."""
        rows = self._run(lambda c: c.execute("SELECT DISTINCT run_id FROM labels ORDER BY run_id").fetchall(),
                         "listing runs", write=False, empty=[])
        return [r[0] for r in rows]

    # ------------------------------------------------------------------------------------------------------ CSV

    def export_csv(self, path_or_file: str | os.PathLike | IO[str], run_id: str | None = None, *,
                   overwrite: bool = False) -> int:
        """Write the labels of one run (``None``: every run) as CSV with the columns :data:`CSV_COLUMNS`.

        Text cells that a spreadsheet would take for a formula (starting with ``= + - @``) get a leading ``'``, which
        :meth:`import_csv` removes again, so the round trip is exact.

        Parameters
        ----------
        path_or_file : path or text file
            A path is written atomically (a temporary file renamed into place) and an existing file is refused
            (``FileExistsError``) unless ``overwrite``.
        run_id : str, optional
        overwrite : bool

        Returns
        -------
        int
            How many labels were written.
        """
        records = self.labels(run_id)
        if not isinstance(path_or_file, (str, os.PathLike)):
            _write_csv(path_or_file, records)
            return len(records)
        target = Path(path_or_file)
        if not overwrite and (target.exists() or target.is_symlink()):
            raise FileExistsError(f"{target} exists; it is kept (choose another name, or overwrite it explicitly)")
        write_file_atomic(target, lambda f: _write_csv(f, records), text=True, newline="")
        return len(records)

    def import_csv(self, path_or_file: str | os.PathLike | IO[str]) -> int:
        """Read labels from a CSV file (as :meth:`export_csv` writes it) and store them, replacing the labels of the
        same (run, image).

        Every row is checked before anything is written, and all rows are written in one transaction: a bad row
        raises :class:`LabelStoreError` naming the file and the line, and leaves the database unchanged.

        The header must name ``run_id``, ``image_key`` and ``label``; ``note``, ``source``, ``updated_at`` and
        ``who`` are optional (a missing or empty ``updated_at`` means now). Other columns and a (run, image) given
        twice are refused.

        Returns
        -------
        int
            How many labels were imported.
        """
        if isinstance(path_or_file, (str, os.PathLike)):
            name = str(path_or_file)
            if Path(path_or_file).exists() and not Path(path_or_file).is_file():
                raise LabelStoreError(f"{name} is not a regular file")
            try:
                with open(path_or_file, encoding="utf-8-sig", newline="") as f:
                    records = _read_csv(f, name)
            except UnicodeDecodeError as exc:
                raise LabelStoreError(f"{name} is not UTF-8 text (byte {exc.start})") from exc
        else:
            name = getattr(path_or_file, "name", "<CSV>")
            records = _read_csv(path_or_file, str(name))
        self._write(records, f"importing {name}")
        return len(records)


def _write_csv(f: IO[str], records: list[LabelRecord]) -> None:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in records:
        w.writerow([r.run_id, r.image_key, r.label, _escape_cell(r.note), _escape_cell(r.source), r.updated_at,
                    _escape_cell(r.who)])


def _read_csv(f: IO[str], name: str) -> list[LabelRecord]:
    reader = csv.reader(f)
    try:
        header = next(reader, None)
        if header is None:
            raise LabelStoreError(f"{name} is empty (expected a header: {','.join(CSV_COLUMNS)})")
        header = [h.strip() for h in header]
        unknown = [h for h in header if h not in CSV_COLUMNS]
        missing = [h for h in ("run_id", "image_key", "label") if h not in header]
        if unknown or missing or len(set(header)) != len(header):
            raise LabelStoreError(f"{name}, line 1: the header must name run_id, image_key, label and optionally "
                                  f"note, source, updated_at, who, each once"
                                  + (f"; unknown: {', '.join(map(repr, unknown))}" if unknown else "")
                                  + (f"; missing: {', '.join(missing)}" if missing else ""))
        records: list[LabelRecord] = []
        seen: dict[tuple[str, str], int] = {}
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # blank line
            if len(row) != len(header):
                raise LabelStoreError(f"{name}, line {line}: {len(row)} cells, the header has {len(header)}")
            if len(records) >= MAX_IMPORT_ROWS:
                raise LabelStoreError(f"{name}: more than {MAX_IMPORT_ROWS:,} labels; split the file")
            cells = dict(zip(header, row))
            text = {k: _unescape_cell(cells[k]) if cells.get(k) else None for k in ("note", "source", "who")}
            try:
                rec = _record(cells["run_id"].strip(), cells["image_key"].strip(), cells["label"].strip(),
                              text["note"], text["source"], (cells.get("updated_at") or "").strip() or None,
                              text["who"])
            except ValueError as exc:
                raise LabelStoreError(f"{name}, line {line}: {exc}; nothing was imported") from exc
            first = seen.setdefault((rec.run_id, rec.image_key), line)
            if first != line:
                raise LabelStoreError(f"{name}, line {line}: run {rec.run_id} and image {rec.image_key[:12]}... were "
                                      f"already labelled on line {first}; nothing was imported")
            records.append(rec)
    except csv.Error as exc:
        raise LabelStoreError(f"{name}, line {reader.line_num}: {exc}; nothing was imported") from exc
    return records
