"""Issue #10, point 5: zips and uploads.

Every failure of an extraction is a DataError that leaves nothing behind (name clashes, over-long names, a full disk,
other file-system errors); the ratio and size budgets hold for every member and are counted on the bytes written; the
number of entries is read from the zip's end record before anything is parsed; a new upload replaces the session's
previous one; all sessions' uploads share a cap; the Score page decodes each upload once; a session's folder goes
when its browser session ends.
"""

from __future__ import annotations

import errno
import io
import os
import re
import struct
import time
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from doc_core.data import datasets
from doc_core.data import DataError
from doc_core.data.datasets import (MAX_ZIP_RATIO, UploadArea, clean_stale_uploads, extract_zip, folder_bytes,
                               uploads_cap_bytes)
from test_app import assert_clean, empty_runs_dir, fashion, open_app, runs_dir, tiny_run_dir  # noqa: F401
from ui import nav, state


def _png(value: int = 120, size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()
LAYOUT = {"train/a.png": PNG, "train/b.png": PNG, "reference/x/1.png": PNG, "reference/y/1.png": PNG}


def _zip(files: dict[str, bytes] | list[tuple[str, bytes]], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in (files.items() if isinstance(files, dict) else files):
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buf.getvalue()


def _leftovers(base: Path) -> list[Path]:
    """Files and temporary folders left under ``base``."""
    if not base.exists():
        return []
    return [p for p in base.rglob("*") if p.is_file() or ".tmp-" in p.name]


# ------------------------------------------------------------------------------------------------ clear errors


@pytest.mark.parametrize("names, clash", [
    (["train/a.png", "train/a.png/b.png"], "train/a.png"),  # a file, then a folder of the same name
    (["train/a.png/b.png", "train/a.png"], "train/a.png"),  # a folder, then a file
    (["train/x.png/y.png/z.png", "train/x.png/y.png"], "train/x.png/y.png"),
])
def test_a_file_and_a_folder_with_the_same_name_is_a_clear_error(tmp_path, names, clash):
    with pytest.raises(DataError, match=f"both a file and a folder named '{re.escape(clash)}'"):
        extract_zip(_zip({**LAYOUT, **{n: PNG for n in names}}), tmp_path)
    assert not _leftovers(tmp_path)


def test_a_name_used_twice_is_a_clear_error(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        data = _zip([*LAYOUT.items(), ("train/a.png", PNG)])
    with pytest.raises(DataError, match="two files named 'train/a.png'"):
        extract_zip(data, tmp_path)
    assert not _leftovers(tmp_path)


@pytest.mark.parametrize("name, message", [
    ("train/" + "n" * 300 + ".png", "name longer than 255 bytes"),
    ("train/" + "é" * 130 + ".png", "name longer than 255 bytes"),  # 130 characters, 260 bytes of UTF-8
    ("train/" + "/".join(["d" * 200] * 6) + "/x.png", "path longer than 1024 bytes"),
])
def test_over_long_names_are_a_clear_error(tmp_path, name, message):
    with pytest.raises(DataError, match=message):
        extract_zip(_zip({**LAYOUT, name: PNG}), tmp_path)
    assert not _leftovers(tmp_path)


def test_a_name_the_file_system_refuses_is_a_clear_error(tmp_path, monkeypatch):
    """Without the name check, the file system's own refusal (ENAMETOOLONG) is still a message, not a traceback."""
    monkeypatch.setattr(datasets, "MAX_NAME_BYTES", 10_000)
    with pytest.raises(DataError, match="too long for the server's file system; nothing was kept"):
        extract_zip(_zip({**LAYOUT, "train/" + "n" * 300 + ".png": PNG}), tmp_path)
    assert not _leftovers(tmp_path)


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written (a disk filling up mid-extraction)."""

    def __init__(self, f, state):
        self._f, self._state = f, state

    def write(self, b):
        if self._state["room"] < len(b):
            raise OSError(errno.ENOSPC, "No space left on device")
        self._state["room"] -= len(b)
        return self._f.write(b)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.mark.parametrize("err, message", [
    (errno.ENOSPC, "the server's disk is full; nothing was kept"),
    (errno.EIO, r"the server's file system refused it \(.*\); nothing was kept"),
])
def test_a_full_disk_during_extraction_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch, err, message):
    state = {"room": 3 * len(PNG)}  # the third or fourth image does not fit any more

    def failing_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if err != errno.ENOSPC:
            f.close()
            raise OSError(err, os.strerror(err))
        return _FullDisk(f, state)

    monkeypatch.setattr(datasets, "open", failing_open, raising=False)
    base = tmp_path / "uploads"
    with pytest.raises(DataError, match=message):
        extract_zip(_zip(LAYOUT), base)
    assert not _leftovers(base)


def test_a_disk_too_full_for_the_zip_is_refused_before_writing(tmp_path, monkeypatch):
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DataError, match="disk has 1 KiB free"):
        extract_zip(_zip(LAYOUT), tmp_path)
    assert not _leftovers(tmp_path)


def test_an_upload_folder_that_cannot_be_written_is_a_clear_error(tmp_path, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(DataError, match="upload folder cannot be written"):
        extract_zip(_zip(LAYOUT), tmp_path)
    with pytest.raises(DataError, match="upload folder cannot be written"):
        UploadArea(tmp_path)


# ------------------------------------------------------------------------------------------------ budgets


def _member_with_ratio(low: float, high: float) -> bytes:
    """Bytes whose deflated size gives a ratio in [low, high): random bytes, then zeros (found by bisection)."""
    head = np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    lo, hi = 0, 4_000_000
    while lo < hi:
        zeros = (lo + hi) // 2
        data = head + bytes(zeros)
        ratio = _ratio(data)
        if low <= ratio < high:
            return data
        lo, hi = (zeros + 1, hi) if ratio < low else (lo, zeros)
    raise AssertionError(f"no member with a ratio in [{low}, {high})")


def _ratio(data: bytes) -> float:
    info = zipfile.ZipFile(io.BytesIO(_zip({"m.png": data}))).infolist()[0]
    return info.file_size / info.compress_size


def test_the_ratio_limit_holds_for_every_member(tmp_path):
    refused = _member_with_ratio(MAX_ZIP_RATIO + 0.01, MAX_ZIP_RATIO + 2)
    accepted = _member_with_ratio(MAX_ZIP_RATIO - 2, MAX_ZIP_RATIO)
    found = _member_with_ratio(128.5, 130)  # the 129:1 member of the adversarial test
    for member in (refused, found):
        with pytest.raises(DataError, match="compressed suspiciously well"):
            extract_zip(_zip({**LAYOUT, "train/c.png": member}), tmp_path / "refused")
        assert not _leftovers(tmp_path / "refused")
    root = extract_zip(_zip({**LAYOUT, "train/c.png": accepted}), tmp_path / "accepted")
    assert (root / "train" / "c.png").read_bytes() == accepted


def test_the_ratio_is_counted_on_the_bytes_written_not_only_on_the_directory(tmp_path, monkeypatch):
    """With the directory's checks skipped, the streamed count alone refuses a 1000:1 member."""
    def no_header_checks(infos, zip_size):
        return [(i, PurePosixPath(i.filename)) for i in infos if i.filename.endswith(".png")]

    monkeypatch.setattr(datasets, "_plan_members", no_header_checks)
    bomb = bytes(3_000_000)
    assert _ratio(bomb) > 900
    with pytest.raises(DataError, match="compressed suspiciously well"):
        extract_zip(_zip({**LAYOUT, "train/bomb.png": bomb}), tmp_path)
    assert not _leftovers(tmp_path)


def _central_directory_offsets(data: bytes, name: bytes) -> list[int]:
    return [m.start() for m in re.finditer(re.escape(b"PK\x01\x02"), data)
            if data[m.start() + 46:m.start() + 46 + len(name)] == name]


def test_members_claiming_the_same_compressed_bytes_cannot_exceed_the_zip_ratio(tmp_path):
    """Each member's directory entry claims 35 KB of compressed data (86:1 each), but all of them share the same
    40 KB of real bytes: together they would unpack to 270 times the zip's size."""
    pad = np.random.default_rng(0).integers(0, 256, 40_000, dtype=np.uint8).tobytes()
    bombs = {f"train/bomb{i}.png": bytes(3_000_000) for i in range(5)}
    data = bytearray(_zip({**LAYOUT, "pad.bin": pad, **bombs}))
    for name in bombs:
        (at,) = _central_directory_offsets(bytes(data), name.encode())
        data[at + 20:at + 24] = struct.pack("<I", 35_000)  # the claimed compressed size
    total = sum(len(b) for b in bombs.values())
    assert total > MAX_ZIP_RATIO * len(data) and all(len(b) < MAX_ZIP_RATIO * 35_000 for b in bombs.values())
    with pytest.raises(DataError, match="times its own size"):
        extract_zip(bytes(data), tmp_path)
    assert not _leftovers(tmp_path)


def _many_empty_entries(n: int, zip64: bool = False) -> bytes:
    """A zip of ``n`` empty stored entries (with a ZIP64 end record when n > 65535 or asked), written directly: fast."""
    local, central = [], []
    offset = 0
    crc = zlib.crc32(b"")
    for i in range(n):
        name = f"e/{i:06d}.png".encode()
        local.append(struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, 0, 0, len(name), 0) + name)
        central.append(struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc, 0, 0, len(name), 0, 0, 0,
                                   0, 0, offset) + name)
        offset += 30 + len(name)
    cd = b"".join(central)
    body = b"".join(local)
    cd_offset, cd_size = len(body), len(cd)
    tail = b""
    if n > 0xFFFF or zip64:
        z64 = struct.pack("<4sQ2H2I4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, cd_size, cd_offset)
        locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, cd_offset + cd_size, 1)
        tail = z64 + locator
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, min(n, 0xFFFF), min(n, 0xFFFF), cd_size, cd_offset, 0)
    return body + cd + tail + end


def test_the_entry_builder_writes_a_zip_python_reads():
    for zip64 in (False, True):  # zipfile reads the ZIP64 record whenever its locator is there
        data = _many_empty_entries(3, zip64)
        assert [i.filename for i in zipfile.ZipFile(io.BytesIO(data)).infolist()] == [f"e/{i:06d}.png" for i in range(3)]
        assert datasets._zip_entry_count(data) == 3


def test_199000_empty_entries_are_refused_before_any_parsing(tmp_path, monkeypatch):
    data = _many_empty_entries(199_000)

    def no_parsing(*args, **kwargs):
        raise AssertionError("the zip's directory was parsed")

    monkeypatch.setattr(datasets.zipfile, "ZipFile", no_parsing)
    monkeypatch.setattr(datasets.hashlib, "sha256", no_parsing)
    with pytest.raises(DataError, match="199,000 entries .*at most 100,000"):
        extract_zip(data, tmp_path)
    # an end record that understates the count does not help: the directory's signatures are counted too
    end = data.rindex(b"PK\x05\x06")
    lying = bytearray(data)
    lying[end + 8:end + 12] = struct.pack("<2H", 10, 10)
    z64 = data.rindex(b"PK\x06\x06")
    lying[z64 + 24:z64 + 40] = struct.pack("<2Q", 10, 10)
    with pytest.raises(DataError, match="199,000 entries"):
        extract_zip(bytes(lying), tmp_path)
    assert not _leftovers(tmp_path)


# ------------------------------------------------------------------------------------------------ upload areas


def _sized_zip(fill: int, seed: int) -> bytes:
    """The layout plus ``fill`` bytes of incompressible "image" data: an extraction of a known size."""
    noise = np.random.default_rng(seed).integers(0, 256, fill, dtype=np.uint8).tobytes()
    return _zip({**LAYOUT, "train/noise.png": noise})


def test_a_new_upload_replaces_the_sessions_previous_one(tmp_path):
    area = UploadArea(tmp_path)
    roots = [area.extract(_sized_zip(100_000, seed)) for seed in range(3)]
    assert [r.is_dir() for r in roots] == [False, False, True]
    assert [p.name for p in area.path.iterdir()] == [roots[-1].name]
    assert 100_000 < folder_bytes(area.path) < 110_000  # one extraction, not three
    assert area.extract(_sized_zip(100_000, 2)) == roots[-1]  # the same zip again: nothing to do
    with pytest.raises(DataError):  # a failed upload keeps the previous one
        area.extract(_zip({"images/a.png": PNG}))  # no train/ folder anywhere
    assert roots[-1].is_dir()


def test_all_sessions_share_a_cap_on_the_uploads_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.UPLOADS_CAP_ENV, str(250_000 / 1024**2))  # 250 kB
    assert uploads_cap_bytes() == 250_000
    first, second = UploadArea(tmp_path), UploadArea(tmp_path)
    first.extract(_sized_zip(150_000, 0))
    with pytest.raises(DataError, match="space for uploads is full"):
        second.extract(_sized_zip(150_000, 1))
    assert not _leftovers(second.path)
    first.extract(_sized_zip(150_000, 2))  # replacing one's own upload: the previous one does not count
    first.cleanup()
    second.extract(_sized_zip(150_000, 1))  # room again once the first session has ended

    # a stale folder (left by a killed server) is swept before the cap is checked
    stale = tmp_path / "session-old"
    (stale / "x").mkdir(parents=True)
    (stale / "x" / "big.png").write_bytes(bytes(200_000))
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    second.extract(_sized_zip(150_000, 3))
    assert not stale.exists()

    monkeypatch.setenv(datasets.UPLOADS_CAP_ENV, "lots")
    with pytest.raises(DataError, match="DOC_UPLOADS_MAX_MB must be a positive number"):
        second.extract(_sized_zip(1000, 4))


def test_folders_of_ended_server_processes_are_swept_at_once(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(done.stdout)
    host = datasets._HOST
    dead = tmp_path / f"session-{host}-{dead_pid}-abc"  # its server has exited
    orphan = tmp_path / f"session-{host}-{os.getpid()}-abc"  # this process's, but no live UploadArea holds it
    alive = tmp_path / f"session-{host}-{os.getppid()}-abc"  # another live process's
    other_host = tmp_path / f"session-00000000-{dead_pid}-abc"  # another machine's: only age counts
    for d in (dead, orphan, alive, other_host):
        d.mkdir()
    live = UploadArea(tmp_path)
    assert clean_stale_uploads(24 * 3600, tmp_path) == 2
    assert not dead.exists() and not orphan.exists()
    assert alive.is_dir() and other_host.is_dir() and live.path.is_dir()


# ------------------------------------------------------------------------------------------------ the app


def _noise_png(seed: int, size: int = 300) -> bytes:
    """A PNG no other test uploads (the decode cache is shared by the whole test process)."""
    rng = np.random.default_rng([seed, os.getpid(), time.time_ns() % 2**32])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_the_score_page_decodes_each_upload_once(runs_dir, monkeypatch):  # noqa: F811
    from doc_core.explain import gallery

    calls = []
    decode = gallery.decode_upload
    monkeypatch.setattr(gallery, "decode_upload", lambda *a, **k: calls.append(a[1]) or decode(*a, **k))
    at = open_app(nav.SCORE)
    at.get("file_uploader")[0].upload("one.png", _noise_png(1)).upload("two.png", _noise_png(2)) \
        .upload("bad.png", b"junk " + os.urandom(8)).run()
    assert not at.exception
    assert sorted(calls) == ["bad.png", "one.png", "two.png"]
    for opacity in (0.2, 0.8):  # two reruns: the slider moves
        at.slider(key=state.UP_OPACITY).set_value(opacity).run()
        assert not at.exception
    assert sorted(calls) == ["bad.png", "one.png", "two.png"]  # decoded once each, the broken file included
    assert "bad.png" in "\n".join(w.value for w in at.warning)


def _layout_zip(label: str) -> bytes:
    files = {f"{label}/{k}": v for k, v in LAYOUT.items()} | {f"{label}/test/normal/n.png": _png(90),
                                                               f"{label}/test/anomaly/o.png": _png(250)}
    return _zip(files)


def test_the_dataset_page_keeps_one_upload_and_removes_it_when_the_session_ends(empty_runs_dir, tmp_path,  # noqa: F811
                                                                                monkeypatch):
    from streamlit.runtime.caching import clear_session_resource_cache

    uploads = tmp_path / "uploads"
    monkeypatch.setenv("DOC_UPLOADS_DIR", str(uploads))
    at = open_app(nav.DATASET)
    at.get("button_group")[0].set_value(state.SOURCE_ZIP).run()
    for label in ("first", "second", "third"):
        at.get("file_uploader")[0].upload(f"{label}.zip", _layout_zip(label)).run()
        assert_clean(at)
        assert at.session_state[state.DATASET].label == f"{label}.zip"
    (session,) = [p for p in uploads.iterdir() if p.name.startswith("session-")]
    (extraction,) = list(session.iterdir())
    assert (extraction / "third" / "train").is_dir()

    # what Streamlit does when a browser session disconnects (a closed tab): clear the session's resources (AppTest's
    # session id is fixed)
    clear_session_resource_cache("test session id")
    assert not session.exists()

    at.switch_page(nav.HOME).run()  # the session comes back (a reconnect): its dataset is gone, it says so
    assert not at.exception
    assert at.session_state[state.DATASET].kind == "fashion-mnist"
    assert "no longer on the server" in "\n".join(i.value for i in at.info)


@pytest.mark.browser
@pytest.mark.slow
def test_a_closed_tab_removes_its_upload_folder_at_once(tmp_path):
    """The real thing: `streamlit run`, a Chromium tab uploads a zip, the tab is closed, the folder goes promptly
    (before, it waited for Streamlit to forget the disconnected session, two minutes or more, and for garbage
    collection)."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip(f"{chromium} is missing: install Debian's chromium package (scripts/setup.sh does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from app_server import fashion_or_skip, running_app

    fashion_or_skip()
    uploads = tmp_path / "uploads"

    def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)

    def extraction() -> list[Path]:
        return [d for s in uploads.glob("session-*") for d in s.iterdir()] if uploads.is_dir() else []

    with running_app(tmp_path, tmp_path / "runs") as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--headless", "--no-sandbox",
                                                                          "--disable-gpu"])
        try:
            context = browser.new_context()
            page = context.new_page()
            page.set_default_timeout(90_000)
            page.goto(f"{url}/dataset")
            page.get_by_text(state.SOURCE_ZIP, exact=True).click()
            page.locator('input[type="file"]').set_input_files(
                files=[{"name": "shapes.zip", "mimeType": "application/zip", "buffer": _layout_zip("shapes")}])
            wait_for(lambda: any((d / "shapes" / "train").is_dir() for d in extraction()), "the extraction")
            (session,) = list(uploads.glob("session-*"))
            context.close()  # the tab is closed: its websocket disconnects
            wait_for(lambda: not session.exists(), "the session folder to be removed")
        finally:
            browser.close()
