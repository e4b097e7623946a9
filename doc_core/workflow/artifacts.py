"""Reading saved artifacts safely: the tool's JSON files and ``.npz`` arrays, with sizes, depths, types and ranges
checked before anything is trusted.

Run folders and detector folders may come from someone else, be truncated by a crash or be edited by hand. Whatever
they hold, reading them here ends in a value of the expected type and range or in an :class:`ArtifactError` whose
message names the file and the field; never in ``OverflowError``, ``RecursionError`` or a multi-gigabyte allocation.

- :func:`read_json` refuses files over a size cap, nesting deeper than :data:`MAX_JSON_DEPTH` (checked on the raw text
  before parsing), integers longer than :data:`MAX_INT_DIGITS` digits and invalid UTF-8 or JSON. ``NaN``,
  ``Infinity`` and overflowing floats such as ``1e999`` parse (as non-finite floats) so that :class:`Fields` can
  name the field that holds one.
- :class:`Fields` reads typed, range-checked fields out of a parsed JSON object: finite numbers, integers that are
  not booleans, strings of bounded length, choices, optional values.
- :func:`read_npz` reads the arrays of an ``.npz`` file without pickle. Each member's ``.npy`` header (shape, dtype)
  is read and checked first (object and structured dtypes refused, allowed kinds, size under a cap and not more than
  the member really holds, named dimensions equal across members and to known sizes), so a small file whose header
  claims a huge array costs no memory.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from numpy.lib import format as npy_format

MAX_JSON_DEPTH = 32  # the tool's own files nest at most 5 deep
MAX_INT_DIGITS = 18  # any integer the tool writes has fewer digits; Python refuses over 4,300 with a ValueError
MAX_STRING_CHARS = 10_000  # default cap on one string field
MAX_NPZ_MEMBERS = 64
MAX_NPZ_RATIO = 100  # uncompressed : compressed size of one member; the tool writes uncompressed members (1:1)
MAX_ARRAY_MB_ENV = "DOC_MAX_ARRAY_MB"
DEFAULT_MAX_ARRAY_MB = 1024
MAX_STRING_ITEM_CHARS = 4096  # longest string element of a string array (class names, image paths)

_REQUIRED = object()
_STRING_LITERAL = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class ArtifactError(ValueError):
    """A saved file is missing, too large, malformed, or holds a value of the wrong type or range."""


def max_array_bytes() -> int:
    """The largest array (in bytes) :func:`read_npz` loads: ``$DOC_MAX_ARRAY_MB`` MiB, default 1024 MiB."""
    try:
        mb = float(os.environ.get(MAX_ARRAY_MB_ENV) or DEFAULT_MAX_ARRAY_MB)
    except ValueError:
        mb = DEFAULT_MAX_ARRAY_MB
    return int(max(mb, 1) * 2**20)


def short_repr(value: Any, limit: int = 60) -> str:
    """A short repr for messages (never fails, never huge)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_regular_file(path: Path) -> None:
    """Raise FileNotFoundError if missing, ArtifactError unless a regular file (a FIFO or device would block or
    never end)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(mode):
        raise ArtifactError(f"{path} is not a regular file")


# ------------------------------------------------------------------------------------------------------------ JSON


def json_depth(text: str) -> int:
    """Deepest nesting of ``[`` / ``{`` in JSON text, ignoring brackets inside strings; linear time, no recursion."""
    skeleton = _STRING_LITERAL.sub('""', text).encode("utf-8", "replace").translate(None, _NOT_BRACKETS)
    if not skeleton:
        return 0
    b = np.frombuffer(skeleton, np.uint8)
    depth, deepest = 0, 0
    for start in range(0, len(b), 1 << 20):  # 1 Mi brackets at a time keeps memory flat
        chunk = b[start:start + (1 << 20)]
        steps = np.where((chunk == ord("[")) | (chunk == ord("{")), 1, -1).astype(np.int64)
        running = depth + np.cumsum(steps)
        deepest = max(deepest, int(running.max()))
        depth = int(running[-1])
    return deepest


def _parse_int(s: str) -> int:
    if len(s.lstrip("-")) > MAX_INT_DIGITS:
        raise ArtifactError(f"an integer with {len(s.lstrip('-')):,} digits (more than {MAX_INT_DIGITS})")
    return int(s)


def parse_json(text: str, where: str = "JSON", max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON text with the limits of :func:`read_json`; raises :class:`ArtifactError` naming ``where``."""
    depth = json_depth(text)
    if depth > max_depth:
        raise ArtifactError(f"{where} nests {depth} levels deep (at most {max_depth} allowed)")
    try:
        return json.loads(text, parse_int=_parse_int, parse_constant=float)
    except ArtifactError as exc:
        raise ArtifactError(f"{where} is not usable: {exc}") from exc
    except (ValueError, RecursionError, OverflowError) as exc:  # JSONDecodeError is a ValueError
        raise ArtifactError(f"{where} is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from exc


def read_json(path: str | os.PathLike, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Read a JSON file written by this tool, refusing anything that could crash or exhaust the reader.

    Parameters
    ----------
    path : path
    max_bytes : int
        Larger files are refused without being read.
    max_depth : int
        Deeper nesting is refused before parsing (the text is scanned, not parsed, to measure it).

    Returns
    -------
    The parsed value (``dict``, ``list``, ``str``, ``int`` of at most :data:`MAX_INT_DIGITS` digits, ``float``
    (possibly non-finite: ``NaN``, ``Infinity``, ``1e999``), ``bool`` or ``None``).

    Raises
    ------
    FileNotFoundError
        No such file (so callers can tell "missing" from "broken").
    ArtifactError
        Unreadable, too large, not UTF-8, not JSON, too deep, or an over-long integer; the message names the file.
    """
    path = Path(path)
    _check_regular_file(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read ({exc.strerror or exc})") from exc
    if len(data) > max_bytes:
        raise ArtifactError(f"{path} is larger than the limit of {max_bytes:,} bytes for this file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON (not UTF-8 text: {exc.reason} at byte {exc.start})") from exc
    return parse_json(text, str(path), max_depth)


# ------------------------------------------------------------------------------------------------------ typed fields


class Fields:
    """Typed, range-checked reading of one JSON object's fields.

    Parameters
    ----------
    doc : dict
        The parsed object; anything else raises :class:`ArtifactError`.
    where : str
        Prefix of error messages, e.g. ``"run.json"`` or ``"detector.json: config.train"``.

    Every getter takes the key, a ``default`` (omit it for a required field) and limits; it returns a value of the
    stated Python type or raises :class:`ArtifactError` naming ``where`` and the key. Extra keys are ignored.
    """

    def __init__(self, doc: Any, where: str) -> None:
        if not isinstance(doc, dict):
            raise ArtifactError(f"{where} must be a JSON object, got {type(doc).__name__}")
        self.doc, self.where = doc, where

    def _get(self, key: str, default: Any) -> tuple[bool, Any]:
        if key in self.doc:
            return True, self.doc[key]
        if default is _REQUIRED:
            raise ArtifactError(f"{self.where}: the field {key!r} is missing")
        return False, default

    def _fail(self, key: str, wanted: str, value: Any) -> ArtifactError:
        return ArtifactError(f"{self.where}: {key!r} must be {wanted}, got {short_repr(value)}")

    def int(self, key: str, lo: int, hi: int, default: Any = _REQUIRED, optional: bool = False) -> int | None:
        """An integer in ``[lo, hi]`` (a float with an integral value is accepted; booleans are not)."""
        found, v = self._get(key, default)
        if not found or (optional and v is None):
            return v
        if isinstance(v, float) and math.isfinite(v) and v.is_integer() and abs(v) < 2**63:
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise self._fail(key, f"an integer in [{lo:,}, {hi:,}]", v)
        if not lo <= v <= hi:
            raise self._fail(key, f"an integer in [{lo:,}, {hi:,}]", v)
        return int(v)

    def float(self, key: str, lo: float = -math.inf, hi: float = math.inf, default: Any = _REQUIRED,
              optional: bool = False, lo_open: bool = False) -> float | None:
        """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); NaN and infinities are refused."""
        found, v = self._get(key, default)
        if not found or (optional and v is None):
            return v
        span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise self._fail(key, f"a number in {span}", v)
        try:
            v = float(v)
        except OverflowError:
            raise self._fail(key, "a finite number", v) from None
        if not math.isfinite(v):
            raise self._fail(key, "a finite number", v)
        if not (lo < v if lo_open else lo <= v) or v > hi:
            raise self._fail(key, f"a number in {span}", v)
        return v

    def str(self, key: str, default: Any = _REQUIRED, optional: bool = False, max_chars: int = MAX_STRING_CHARS,
            choices: Iterable[str] | None = None, pattern: re.Pattern | None = None) -> str | None:
        """A string of at most ``max_chars`` characters, one of ``choices`` or matching ``pattern`` when given."""
        found, v = self._get(key, default)
        if not found or (optional and v is None):
            return v
        if not isinstance(v, str):
            raise self._fail(key, "a string", v)
        if len(v) > max_chars:
            raise self._fail(key, f"a string of at most {max_chars:,} characters", f"{len(v):,} characters")
        if choices is not None and v not in tuple(choices):
            raise self._fail(key, "one of " + ", ".join(repr(c) for c in choices), v)
        if pattern is not None and not pattern.match(v):
            raise self._fail(key, f"a string matching {pattern.pattern}", v)
        return v

    def bool(self, key: str, default: Any = _REQUIRED) -> bool:
        """``true`` or ``false``."""
        found, v = self._get(key, default)
        if found and not isinstance(v, bool):
            raise self._fail(key, "true or false", v)
        return v

    def dict(self, key: str, default: Any = _REQUIRED, optional: bool = False) -> dict | None:
        """A JSON object (returned as is; read its fields with another :class:`Fields`)."""
        found, v = self._get(key, default)
        if not found or (optional and v is None):
            return v
        if not isinstance(v, dict):
            raise self._fail(key, "a JSON object", v)
        return v

    def section(self, key: str, default: Any = _REQUIRED) -> "Fields":
        """The object at ``key`` as :class:`Fields` (its messages say ``where: key``)."""
        return Fields(self.dict(key, default), f"{self.where}: {key}")

    def list(self, key: str, default: Any = _REQUIRED, max_items: int = 10_000_000) -> list:
        """A JSON array of at most ``max_items`` items (items unchecked)."""
        found, v = self._get(key, default)
        if not found:
            return v
        if not isinstance(v, list):
            raise self._fail(key, "a JSON array", v)
        if len(v) > max_items:
            raise self._fail(key, f"an array of at most {max_items:,} items", f"{len(v):,} items")
        return v

    def str_list(self, key: str, default: Any = _REQUIRED, max_items: int = 100_000,
                 max_chars: int = MAX_STRING_CHARS) -> list[str]:
        """A JSON array of strings."""
        items = self.list(key, default, max_items)
        for i, v in enumerate(items):
            if not isinstance(v, str) or len(v) > max_chars:
                raise self._fail(f"{key}[{i}]", f"a string of at most {max_chars:,} characters", v)
        return list(items)


# ------------------------------------------------------------------------------------------------------------- .npz


@dataclass(frozen=True)
class ArraySpec:
    """What one ``.npz`` member must look like.

    Attributes
    ----------
    shape : tuple of (int or str)
        One entry per axis: an int is an exact size; a str names a dimension that must have the same size in every
        member (and equal a known size, when :func:`read_npz` is given one).
    kinds : str
        Allowed numpy dtype kinds, e.g. ``"f"`` float, ``"iu"`` integers, ``"U"`` unicode strings.
    required : bool
    finite : bool
        For float arrays: refuse NaN and infinite values (checked after loading).
    """

    shape: tuple
    kinds: str
    required: bool = True
    finite: bool = False


def _expected(shape: tuple, known: Mapping[str, tuple[int, str]]) -> str:
    """``(n, k=32)``: the expected shape, with the sizes known so far."""
    axes = [f"{s}={known[s][0]}" if isinstance(s, str) and s in known else str(s) for s in shape]
    return f"({', '.join(axes)}{',' if len(axes) == 1 else ''})"


def _read_npy_header(fp) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = npy_format.read_magic(fp)
    if version == (1, 0):
        return npy_format.read_array_header_1_0(fp)
    if version == (2, 0):
        return npy_format.read_array_header_2_0(fp)
    raise ValueError(f".npy format version {version} is not one this tool writes")


def read_npz(path: str | os.PathLike, specs: Mapping[str, ArraySpec],
             dims: Mapping[str, tuple[int, str]] | None = None, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Read the named arrays of an ``.npz`` file, checking every header before any array is loaded.

    Parameters
    ----------
    path : path
    specs : mapping of member name -> ArraySpec
        Only these members are read; others are ignored.
    dims : mapping of dimension name -> (size, where it comes from), optional
        Known sizes of named dimensions, e.g. ``{"m": (30, "run.json's n_test")}``.
    max_bytes : int, optional
        Largest array accepted, in bytes; default :func:`max_array_bytes`.

    Returns
    -------
    dict of member name -> np.ndarray (missing optional members are left out)

    Raises
    ------
    FileNotFoundError
        No such file.
    ArtifactError
        Not a zip, too many members, a missing member, an object/structured/unexpected dtype, a shape that does not
        fit ``specs``/``dims`` or the other members, an array over ``max_bytes``, a header claiming more data than the
        member holds, truncated data, or non-finite values where ``finite`` is asked; the message names the file.
    """
    path = Path(path)
    cap = max_array_bytes() if max_bytes is None else int(max_bytes)
    known: dict[str, tuple[int, str]] = dict(dims or {})
    _check_regular_file(path)
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise ArtifactError(f"{path} is not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_NPZ_MEMBERS:
            raise ArtifactError(f"{path} holds {len(infos):,} members (at most {MAX_NPZ_MEMBERS} expected)")
        by_name = {i.filename: i for i in infos}
        plan = []
        for name, spec in specs.items():
            info = by_name.get(f"{name}.npy")
            if info is None:
                if spec.required:
                    raise ArtifactError(f"{path} has no array {name!r}")
                continue
            what = f"{path}: array {name!r}"
            if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_NPZ_RATIO * max(info.compress_size, 1):
                raise ArtifactError(f"{what} is compressed more than {MAX_NPZ_RATIO}:1 "
                                    f"({info.compress_size:,} -> {info.file_size:,} bytes)")
            try:
                with zf.open(info) as fp:
                    shape, fortran, dtype = _read_npy_header(fp)
                    data_start = fp.tell()
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
                raise ArtifactError(f"{what} has no valid .npy header ({type(exc).__name__}: {exc})") from exc
            if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None:
                raise ArtifactError(f"{what} has dtype {dtype}, which needs pickle or is structured; it was not loaded")
            if dtype.kind not in spec.kinds:
                raise ArtifactError(f"{what} has dtype {dtype}; expected kind {', '.join(spec.kinds)}")
            if dtype.kind == "U" and dtype.itemsize > 4 * MAX_STRING_ITEM_CHARS:
                raise ArtifactError(f"{what} holds strings of up to {dtype.itemsize // 4:,} characters (at most "
                                    f"{MAX_STRING_ITEM_CHARS:,})")
            if any(d < 0 for d in shape):
                raise ArtifactError(f"{what} has a negative size in its shape {shape}")
            if len(shape) != len(spec.shape):
                raise ArtifactError(f"{what} has shape {shape}, which does not fit the expected "
                                    f"{_expected(spec.shape, known)}")
            for axis, (got, want) in enumerate(zip(shape, spec.shape)):
                if isinstance(want, str):
                    if want in known and known[want][0] != got:
                        size, source = known[want]
                        raise ArtifactError(f"{what} has {got:,} entries along axis {axis} but {source} says "
                                            f"{size:,}; they must match")
                    known.setdefault(want, (got, f"array {name!r}"))
                elif got != want:
                    raise ArtifactError(f"{what} has shape {shape}, which does not fit the expected "
                                        f"{_expected(spec.shape, known)}")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > cap:
                raise ArtifactError(f"{what} would take {nbytes:,} bytes, more than the limit of {cap:,} bytes "
                                    f"(${MAX_ARRAY_MB_ENV} MiB); it was not loaded")
            if data_start + nbytes > info.file_size:
                raise ArtifactError(f"{what}: its header claims {nbytes:,} bytes of data but the file holds only "
                                    f"{max(info.file_size - data_start, 0):,}; it is truncated or tampered with")
            plan.append((name, spec, info))
        out = {}
        for name, spec, info in plan:
            try:
                with zf.open(info) as fp:
                    arr = npy_format.read_array(fp, allow_pickle=False)
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise ArtifactError(f"{path}: array {name!r} is broken ({type(exc).__name__}: {exc})") from exc
            if spec.finite and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise ArtifactError(f"{path}: array {name!r} holds {int(np.sum(~np.isfinite(arr))):,} NaN or "
                                    "infinite values")
            out[name] = arr
    return out
