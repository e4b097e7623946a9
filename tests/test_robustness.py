"""Issue #5, points 1-4: bad images, hostile uploads, untrusted run folders and faults while saving.

What is already covered elsewhere is not repeated here: EXIF rotation and empty files (test_data), ``../`` and absolute
zip paths, zip symlinks and a highly compressed member (test_datasets), a crash mid-save and corrupt weights or JSON
(test_detector), a failed run save and object arrays in scores.npz (test_runs), NaN/huge losses (test_training,
test_jobs). Killing a process mid-save is in test_faults_kill.py, fuzzing in test_fuzz_loaders.py.
"""

from __future__ import annotations

import errno
import gc
import io
import os
import re
import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from doc_core.data import datasets
from doc_core.data import MAX_IMAGE_PIXELS, DataError, load_folder_split, read_image, read_images
from doc_core.data.datasets import UploadArea, clean_stale_uploads, extract_zip
from doc_core.model.backbones import BackboneConfig
from doc_core.model.detector import DetectorFormatError, DOCDetector
from doc_core.model.training import TrainConfig
from doc_core.workflow import runs
from test_runs import _images, _save, fitted  # noqa: F401 - the runs tests' synthetic images and tiny detector

SIZE = 32
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------ 1. bad images


def _png_bytes(arr: np.ndarray, mode: str | None = None, **save) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, format="PNG", **save)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (the data is a single gray pixel): cheap to write."""
    good = _png_bytes(np.zeros((1, 1), np.uint8))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return good[:8] + chunk + good[8 + 25:]


def _good_images(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Write one file of every awkward-but-valid kind; returns name -> expected RGB colour after loading."""
    folder.mkdir(parents=True, exist_ok=True)
    expect = {}
    # 16-bit gray with a range: normalised to 0..255 (left half low, right half high)
    a16 = np.zeros((20, 20), np.uint16)
    a16[:, 10:] = 60000
    Image.fromarray(a16).save(folder / "gray16.png")
    # palette image
    Image.fromarray(np.full((9, 9, 3), (200, 30, 40), np.uint8)).convert("P").save(folder / "palette.png")
    expect["palette.png"] = (200, 30, 40)
    # palette with a transparent colour: composited on white
    p = Image.new("P", (8, 8), 0)
    p.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    p.save(folder / "palette_transparent.png", transparency=0)
    expect["palette_transparent.png"] = (255, 255, 255)
    # RGBA fully transparent and fully opaque, LA
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = (0, 0, 255)
    Image.fromarray(rgba).save(folder / "rgba_clear.png")
    expect["rgba_clear.png"] = (255, 255, 255)
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(folder / "rgba_opaque.png")
    expect["rgba_opaque.png"] = (0, 0, 255)
    Image.fromarray(np.dstack([np.full((6, 6), 90, np.uint8), np.full((6, 6), 255, np.uint8)])).save(
        folder / "la.png")
    expect["la.png"] = (90, 90, 90)
    # 1x1, gray, CMYK JPEG, a very wide image, GIF, BMP, TIFF, WebP
    Image.fromarray(np.full((1, 1, 3), (5, 250, 5), np.uint8)).save(folder / "one_pixel.png")
    expect["one_pixel.png"] = (5, 250, 5)
    Image.fromarray(np.full((40, 30), 77, np.uint8), "L").save(folder / "gray.png")
    expect["gray.png"] = (77, 77, 77)
    Image.new("CMYK", (16, 16), (0, 0, 0, 0)).save(folder / "cmyk.jpg", quality=95)
    expect["cmyk.jpg"] = (255, 255, 255)
    Image.fromarray(np.full((3, 900, 3), 128, np.uint8)).save(folder / "wide.png")
    expect["wide.png"] = (128, 128, 128)
    for ext in ("gif", "bmp", "tif", "webp"):
        Image.fromarray(np.full((12, 17, 3), 60, np.uint8)).save(folder / f"plain.{ext}", **(
            {"lossless": True} if ext == "webp" else {}))
        expect[f"plain.{ext}"] = (60, 60, 60)
    return expect


def _bad_images(folder: Path) -> list[str]:
    """Write one file of every broken kind; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    good_png = _png_bytes(np.full((30, 30, 3), 99, np.uint8))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    files = {
        "truncated.png": good_png[: len(good_png) // 2],
        "truncated.jpg": buf.getvalue()[: len(buf.getvalue()) // 3],
        "text.png": b"this is not an image\n" * 10,
        "html.jpg": b"<html><body>404</body></html>",
        "zeros.bmp": b"\0" * 500,
        "empty.webp": b"",
        "header_only.png": good_png[:40],
        "huge_10000x10000.png": _png_header_only(10_000, 10_000),
        "bomb_20000x20000.png": _png_header_only(20_000, 20_000),  # over PIL's own decompression-bomb limit
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return sorted(files)


def test_awkward_but_valid_images_load_correctly(tmp_path):
    expect = _good_images(tmp_path)
    for name, colour in expect.items():
        img = read_image(tmp_path / name, SIZE)
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8, name
        assert np.abs(img.reshape(-1, 3).mean(0) - colour).max() <= 3, (name, img.reshape(-1, 3).mean(0))
    g16 = read_image(tmp_path / "gray16.png")
    assert g16.shape == (20, 20, 3) and g16[:, :10].max() == 0 and g16[:, 10:].min() == 255


@pytest.mark.parametrize("name", [
    "truncated.png", "truncated.jpg", "text.png", "html.jpg", "zeros.bmp", "empty.webp", "header_only.png",
    "huge_10000x10000.png", "bomb_20000x20000.png"])
def test_each_bad_file_is_refused_with_its_name(tmp_path, name):
    _bad_images(tmp_path)
    with pytest.raises(DataError) as info:
        read_image(tmp_path / name, SIZE)
    assert name in str(info.value)


def test_huge_images_are_refused_from_the_header_with_the_limit(tmp_path):
    """10,000 x 10,000 is over the limit: refused before decoding (no memory spent), the message says why."""
    (tmp_path / "huge.png").write_bytes(_png_header_only(10_000, 10_000))
    with _no_warning():
        with pytest.raises(DataError, match=r"10000x10000 pixels is more than the limit of 50,000,000"):
            read_image(tmp_path / "huge.png")
    assert MAX_IMAGE_PIXELS == 50_000_000
    (tmp_path / "bomb.png").write_bytes(_png_header_only(20_000, 20_000))
    with pytest.raises(DataError, match="bomb.png.*(limit|too many pixels)"):
        read_image(tmp_path / "bomb.png")


class _no_warning:
    """Context manager: fail on any warning (PIL's DecompressionBombWarning must not leak to the user)."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self._log = self._cm.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        assert not self._log, [str(w.message) for w in self._log]
        return False


def test_one_bad_file_never_loses_the_rest_of_the_dataset(tmp_path):
    root = tmp_path / "data"
    good_train = _good_images(root / "train")
    bad_train = _bad_images(root / "train" / "broken")
    for cls, value in (("a", 30), ("b", 220)):
        (root / "reference" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((10 + i, 14, 3), value, np.uint8)).save(root / "reference" / cls / f"{i}.png")
        (root / "reference" / cls / "bad.jpg").write_bytes(b"nope")
    (root / "test" / "anomaly").mkdir(parents=True)
    Image.fromarray(np.full((50, 20, 3), 250, np.uint8)).save(root / "test" / "anomaly" / "x.png")
    (root / "test" / "anomaly" / "cut.png").write_bytes(_png_bytes(np.zeros((8, 8, 3), np.uint8))[:30])
    with pytest.warns(UserWarning, match="skipped 12 unreadable"):
        split, skipped = load_folder_split(root, image_size=SIZE)
    assert len(split.train_normal) == len(good_train) + 1  # + gray16.png
    assert len(split.reference) == 6 and split.reference_names == ("a", "b")
    assert len(split.test_images) == 1 and split.info["test_paths"] == ["test/anomaly/x.png"]
    names = sorted(Path(s.path).name for s in skipped)
    assert names == sorted(bad_train + ["bad.jpg", "bad.jpg", "cut.png"])
    for s in skipped:  # every message names its file
        assert Path(s.path).name in s.reason and s.reason
    assert split.info["skipped"][0]["path"] and split.train_normal.dtype == np.uint8


def test_mixed_sizes_are_stacked_at_one_size(tmp_path):
    paths = []
    for i, (h, w) in enumerate([(1, 1), (5, 300), (300, 5), (64, 64), (33, 31)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((h, w, 3), 10 * i, np.uint8)).save(paths[-1])
    arr, ok, skipped = read_images(paths, SIZE)
    assert arr.shape == (5, SIZE, SIZE, 3) and ok == paths and skipped == []


# ------------------------------------------------------------------------------------------------ 2. uploads


def _zip(files: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


_PNG = _png_bytes(np.full((12, 12, 3), 120, np.uint8))
LAYOUT = {"train/a.png": _PNG, "train/b.png": _PNG, "reference/x/1.png": _PNG, "reference/y/1.png": _PNG}


def _files_outside(base: Path, dest: Path) -> list[Path]:
    return [p for p in base.rglob("*") if not p.is_relative_to(dest)]


@pytest.mark.parametrize("name", [
    "train/../../evil.png", "..\\evil.png", "train\\..\\..\\evil.png", "C:/evil.png", "C:evil.png",
    "//server/share/evil.png", "/etc/evil.png", "train/./../../../evil.png",
])
def test_zip_paths_cannot_leave_the_target(tmp_path, name):
    dest = tmp_path / "uploads"
    with pytest.raises(DataError, match="unsafe path"):
        extract_zip(_zip({**LAYOUT, name: _PNG}), dest)
    assert not _files_outside(tmp_path, dest)
    assert not dest.exists() or not [p for p in dest.rglob("*") if p.is_file()]


def test_zip_entry_count_and_size_limits_are_enforced(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "MAX_ZIP_ENTRIES", 5)
    with pytest.raises(DataError, match=r"6 entries .*at most 5"):
        extract_zip(_zip({**LAYOUT, "train/c.png": _PNG, "train/d.png": _PNG}), tmp_path)
    monkeypatch.setattr(datasets, "MAX_ZIP_ENTRIES", 1000)
    monkeypatch.setattr(datasets, "MAX_ZIP_BYTES", 3 * len(_PNG))
    with pytest.raises(DataError, match="expands to more than"):
        extract_zip(_zip(LAYOUT), tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    limits = datasets.describe_zip_limits()
    assert "1,000 entries" in limits and "50,000,000 pixels" in limits


def test_zip_that_lies_about_its_sizes_writes_no_more_than_declared(tmp_path):
    """Sizes are checked from the directory; zipfile never returns more bytes than declared (CRC then fails)."""
    payload = os.urandom(200_000)
    data = bytearray(_zip({**LAYOUT, "train/big.png": payload}, zipfile.ZIP_STORED))
    # patch the declared uncompressed and compressed sizes of train/big.png (local header and central directory)
    small = struct.pack("<I", 1000)
    for sig, offset in ((b"PK\x03\x04", 18), (b"PK\x01\x02", 20)):
        for m in re.finditer(re.escape(sig), bytes(data)):
            start = m.start()
            name_off = start + (30 if sig == b"PK\x03\x04" else 46)
            if data[name_off:name_off + 13] == b"train/big.png":
                data[start + offset:start + offset + 4] = small  # compressed size
                data[start + offset + 4:start + offset + 8] = small  # uncompressed size
    with pytest.raises(DataError):
        extract_zip(bytes(data), tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_corrupt_member_data_is_a_clear_error_and_leaves_nothing(tmp_path):
    data = bytearray(_zip(LAYOUT, zipfile.ZIP_STORED))
    i = bytes(data).index(_PNG[20:40])
    data[i:i + 20] = b"X" * 20  # CRC mismatch when extracted
    with pytest.raises(DataError, match="zip"):
        extract_zip(bytes(data), tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_each_session_gets_its_own_upload_folder_removed_at_the_end(tmp_path):
    data = _zip(LAYOUT)
    first, second = UploadArea(tmp_path), UploadArea(tmp_path)
    r1, r2 = first.extract(data), second.extract(data)
    assert r1 != r2 and r1.is_relative_to(first.path) and r2.is_relative_to(second.path)
    assert first.extract(data) == r1  # a rerun does not extract again
    first.cleanup()
    assert not first.path.exists() and r2.is_dir()
    with pytest.raises(DataError, match="upload the zip again"):
        first.extract(data)
    path = second.path
    del second  # a Streamlit session's state is dropped when the session ends
    gc.collect()
    assert not path.exists()


def test_upload_folders_left_by_a_killed_server_are_removed(tmp_path):
    stale, fresh = tmp_path / "session-old", tmp_path / "session-new"
    for d in (stale, fresh):
        (d / "x").mkdir(parents=True)
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    (tmp_path / "keep-me").mkdir()
    assert clean_stale_uploads(24 * 3600, tmp_path) == 1
    assert not stale.exists() and fresh.is_dir() and (tmp_path / "keep-me").is_dir()


# ------------------------------------------------------------------------------------------------ 3. untrusted runs


class _Exploit:
    """Unpickling this would create the marker file: proof that code from the folder ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickles_in_a_run_folder_are_never_executed(fitted, tmp_path):
    marker = tmp_path / "code-ran"
    good = _save(fitted, tmp_path / "runs", run_id="good")
    bad = _save(fitted, tmp_path / "runs", run_id="bad")
    evil = np.array([_Exploit(marker)], dtype=object)
    np.savez(bad.path / "scores.npz", scores=evil, labels=evil, classes=evil, train_scores=evil)
    np.savez(bad.path / "features.npz", features=evil)
    np.savez(bad.path / "detector" / "bank.npz", bank=evil)
    with pytest.raises(runs.RunError, match="scores.npz"):
        runs.load_scores("bad", tmp_path / "runs")
    with pytest.raises(runs.RunError, match="features.npz"):
        runs.load_features("bad", tmp_path / "runs")
    with pytest.raises(runs.RunError, match="bank.npz: array 'bank' has dtype object"):
        runs.load_detector("bad", tmp_path / "runs")
    assert not marker.exists()
    # the other run is untouched and still loads
    assert [r.run_id for r in runs.list_runs(tmp_path / "runs")] and runs.load_detector("good", tmp_path / "runs")
    assert len(runs.load_scores(good.run_id, tmp_path / "runs").scores) == len(fitted[2])  # every test score


def test_no_code_path_can_unpickle_or_load_a_full_keras_model():
    """Loading reads weights (HDF5 arrays), .npz with allow_pickle=False and JSON; nothing that runs code."""
    sources = sorted((ROOT / "doc_core").rglob("*.py"))  # every subpackage
    assert len(sources) > 30 and ROOT / "doc_core" / "model" / "detector.py" in sources
    for src in sources:
        text = src.read_text()
        name = src.relative_to(ROOT).as_posix()
        for bad in ("import pickle", "pickle.load", "allow_pickle=True", "load_model(", "safe_mode=False",
                    "torch.load", "joblib", "eval(", "exec("):
            assert bad not in text, f"{name} uses {bad!r}"
        for line in text.splitlines():
            if "np.load(" in line:
                assert "allow_pickle=False" in line, f"{name}: {line.strip()}"


@pytest.mark.parametrize("damage", ["truncate_weights", "truncate_bank", "truncate_scores", "truncate_run_json",
                                    "wrong_run_id", "remove_detector_json", "bad_backbone_config"])
def test_tampered_or_truncated_runs_give_a_clear_error_and_leave_others_alone(fitted, tmp_path, damage):
    where = tmp_path / "runs"
    good = _save(fitted, where, run_id="good")
    bad = _save(fitted, where, run_id="bad")
    p = bad.path

    def cut(f: Path) -> None:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    if damage == "truncate_weights":
        cut(p / "detector" / "backbone.weights.h5")
    elif damage == "truncate_bank":
        cut(p / "detector" / "bank.npz")
    elif damage == "truncate_scores":
        cut(p / "scores.npz")
    elif damage == "truncate_run_json":
        cut(p / "run.json")
    elif damage == "wrong_run_id":
        (p / "run.json").write_text((p / "run.json").read_text().replace('"bad"', '"good"'))
    elif damage == "remove_detector_json":
        (p / "detector" / "detector.json").unlink()
    else:
        doc = (p / "detector" / "detector.json").read_text().replace('"tiny"', '"../../../etc/evil"')
        (p / "detector" / "detector.json").write_text(doc)
    with pytest.raises(runs.RunError) as info:
        runs.get_run("bad", where)
        runs.load_scores("bad", where)
        runs.load_detector("bad", where)
    assert "bad" in str(info.value)
    listed = [r.run_id for r in runs.list_runs(where)]
    assert "good" in listed
    assert runs.load_detector("good", where).threshold_ == pytest.approx(good.default_threshold)


# ------------------------------------------------------------------------------------------------ 4. faults


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where_it_fails", ["weights", "bank", "scores", "run_json"])
def test_a_full_disk_while_saving_is_a_clear_error_and_no_corrupt_run(fitted, tmp_path, monkeypatch, where_it_fails):
    where = tmp_path / "runs"
    _save(fitted, where, run_id="earlier")
    det = fitted[0]
    if where_it_fails == "weights":
        monkeypatch.setattr(det.backbone_.model, "save_weights", _enospc)
    elif where_it_fails == "bank":
        import doc_core.model.detector as detector_mod

        monkeypatch.setattr(detector_mod.np, "savez", _enospc)
    elif where_it_fails == "scores":
        real = np.savez

        def savez(file, *a, **k):
            if str(file).endswith("scores.npz"):
                _enospc()
            return real(file, *a, **k)

        monkeypatch.setattr(runs.np, "savez", savez)
    else:
        monkeypatch.setattr(runs, "_write_json_atomic", _enospc)
    with pytest.raises(runs.RunError, match="disk .* is full.*nothing was written"):
        _save(fitted, where, run_id="new")
    monkeypatch.undo()
    assert sorted(p.name for p in where.iterdir()) == ["earlier"]  # no half-written or hidden temp folder
    assert [r.run_id for r in runs.list_runs(where)] == ["earlier"]
    runs.load_detector("earlier", where)


def test_a_full_disk_while_replacing_a_detector_keeps_the_old_one(fitted, tmp_path, monkeypatch):
    det = fitted[0]
    det.save(tmp_path / "det", metadata={"version": 1})
    monkeypatch.setattr(det.backbone_.model, "save_weights", _enospc)
    with pytest.raises(OSError, match="No space left.*detector already there is kept") as info:
        det.save(tmp_path / "det", metadata={"version": 2})
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert DOCDetector.load(tmp_path / "det").metadata_ == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det"]


def test_a_save_killed_between_its_two_renames_restores_the_previous_detector(fitted, tmp_path):
    det = fitted[0]
    det.save(tmp_path / "det", metadata={"version": 1})
    os.replace(tmp_path / "det", tmp_path / ".det.old-123-456")  # state right after the first rename
    assert DOCDetector.load(tmp_path / "det").metadata_ == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det"]
    with pytest.raises(DetectorFormatError):
        DOCDetector.load(tmp_path / "never-saved")


def test_temporary_folders_left_by_a_killed_save_are_cleaned_up_later(fitted, tmp_path):
    where = tmp_path / "runs"
    where.mkdir()
    old, young = where / ".x.tmp-abc", where / ".y.tmp-def"
    for d in (old, young, where / ".z.deleted-1-2"):
        (d / "detector").mkdir(parents=True)
    t = time.time() - 2 * 24 * 3600
    os.utime(old, (t, t))
    os.utime(where / ".z.deleted-1-2", (t, t))
    assert runs.list_runs(where) == []  # never listed
    _save(fitted, where, run_id="next")  # a later save removes the stale ones, not the young one
    assert sorted(p.name for p in where.iterdir()) == [".y.tmp-def", "next"]


def test_a_nan_loss_stops_training_with_a_message_and_saves_nothing(tmp_path, monkeypatch):
    import tensorflow as tf

    import doc_core.model.training as training
    from doc_core.data import OneClassSplit
    from doc_core.workflow.jobs import FAILED, TrainingJob

    real = training.compactness_loss
    monkeypatch.setattr(training, "compactness_loss", lambda f: real(f) * tf.constant(float("nan")))
    rng = np.random.default_rng(0)
    split = OneClassSplit(train_normal=_images(rng, 32, 60), reference=_images(rng, 32, 150),
                          reference_labels=np.repeat([0, 1], 16), reference_names=("a", "b"),
                          test_images=_images(rng, 4, 60), test_labels=np.array([0, 0, 1, 1]),
                          test_classes=("n", "n", "a", "a"))
    job = TrainingJob(split, BackboneConfig(name="tiny", input_size=SIZE), TrainConfig(epochs=2, batch_size=8),
                      runs_dir=tmp_path / "runs").start()
    assert job.join(120)
    snap = job.snapshot()
    assert snap.status == FAILED and snap.run is None
    assert snap.error.startswith("Training diverged at epoch 1, step 1") and "l_C=nan" in snap.error
    assert runs.list_runs(tmp_path / "runs") == [] and not (tmp_path / "runs").exists()
