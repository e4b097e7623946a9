"""Issue 10, finding 1: ``train --out`` and ``export --out`` never replace what the tool did not write.

A folder holding someone's files is refused (and kept byte for byte) unless ``--force``; a detector or bundle the tool
wrote is replaced atomically; a read-only parent or too little free space fails before any training step; an
``OSError`` is one ``error:`` line with exit status 1; hidden leftovers of a killed save are swept a day later.
Tiny backbone, tiny synthetic Fashion-MNIST files (60 images per class).
"""

from __future__ import annotations

import collections
import errno
import gzip
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from doc_core.cli import main
from doc_core.data import FASHION_MNIST_FILES
from doc_core.model.backbones import BackboneConfig
from doc_core.model.detector import DOCDetector
from doc_core.model.training import TrainConfig
from doc_core.workflow import output_folders
from doc_core.workflow.output_folders import OutputExistsError, remove_stale

TINY = ["--backbone", "tiny", "--input-size", "32", "--weights", "none", "--epochs", "1", "--batch-size", "16"]
DAY = 24 * 3600


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("fmnist")
    ytr, yte = np.repeat(np.arange(10), 60), np.repeat(np.arange(10), 5)
    arrays = {"train_images": rng.integers(0, 255, (len(ytr), 28, 28)), "train_labels": ytr,
              "test_images": rng.integers(0, 255, (len(yte), 28, 28)), "test_labels": yte}
    for key, name in FASHION_MNIST_FILES.items():
        _write_idx(folder / name, arrays[key])
    return folder


@pytest.fixture(scope="module")
def detector(make_normal, make_reference) -> DOCDetector:
    rng = np.random.default_rng(0)
    ref, ref_y = make_reference(rng, 12)
    return DOCDetector(BackboneConfig(name="tiny", input_size=32, weights=None),
                       TrainConfig(epochs=1, batch_size=16)).fit(make_normal(rng, 48), ref, ref_y)


@pytest.fixture
def trainer_calls(monkeypatch) -> list:
    """Records every call of DOCDetector.fit_steps (the training loop) and runs the real one."""
    calls, real = [], DOCDetector.fit_steps

    def spy(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DOCDetector, "fit_steps", spy)
    return calls


def _train(fmnist: Path, out: Path, *extra: str) -> int:
    return main(["train", "--data-dir", str(fmnist), "--n-reference", "100", *TINY, "--out", str(out), *extra])


def _foreign(folder: Path) -> dict[str, bytes]:
    """Someone's folder: thesis.txt and sub/data.csv; returns its snapshot."""
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.txt").write_text("four years of work\n")
    (folder / "sub" / "data.csv").write_bytes(b"a,b\n1,2\n")
    return _snapshot(folder)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>") for p in folder.rglob("*")}


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_train_refuses_a_foreign_folder_and_keeps_every_file(fmnist, tmp_path, capsys, trainer_calls):
    out = tmp_path / "thesis"
    before = _foreign(out)
    assert _train(fmnist, out) == 1
    [line] = _error_lines(capsys.readouterr().err)
    assert "thesis.txt" in line and "--force" in line and "kept" in line
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["thesis"]  # no probe, temporary or old sibling
    assert trainer_calls == []  # refused before any training step

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert _train(fmnist, a_file) == 1 and a_file.read_text() == "mine"
    assert "a file of 4 bytes" in _error_lines(capsys.readouterr().err)[0]


def test_export_refuses_a_foreign_folder_and_keeps_every_file(detector, tmp_path, capsys, monkeypatch):
    from doc_core.edge import export

    det_dir = detector.save(tmp_path / "det")
    out = tmp_path / "thesis"
    before = _foreign(out)
    converted = []
    monkeypatch.setattr(export, "tflite_model", lambda *a, **k: converted.append(1) or b"")
    assert main(["export", "--detector", str(det_dir), "--out", str(out)]) == 1
    [line] = _error_lines(capsys.readouterr().err)
    assert "thesis.txt" in line and "--force" in line
    with pytest.raises(OutputExistsError):  # the library refuses as well, before converting anything
        export.export_bundle(detector, out)
    with pytest.raises(OutputExistsError):  # and a detector folder is no bundle
        export.export_bundle(detector, det_dir)
    assert converted == [] and _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det", "thesis"]


def test_force_replaces_a_foreign_folder_and_says_what_it_replaced(fmnist, tmp_path, capsys):
    out = tmp_path / "thesis"
    _foreign(out)
    assert _train(fmnist, out, "--force") == 0
    captured = capsys.readouterr()
    assert "thesis.txt" in json.loads(captured.out)["replaced"]
    assert "--force: replaced a folder that is not a detector" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["backbone.weights.h5", "bank.npz", "detector.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["thesis"]
    DOCDetector.load(out)


def test_an_empty_or_detector_folder_is_replaced_without_force(fmnist, tmp_path, capsys, trainer_calls):
    out = tmp_path / "det"
    out.mkdir()  # an empty folder may be used
    assert _train(fmnist, out) == 0
    first = DOCDetector.load(out)
    capsys.readouterr()
    assert _train(fmnist, out, "--seed", "7") == 0  # a detector this tool saved is replaced
    assert "replaced" not in json.loads(capsys.readouterr().out)
    assert DOCDetector.load(out).train.seed == 7 != first.train.seed
    assert [p.name for p in tmp_path.iterdir()] == ["det"] and len(trainer_calls) == 2


def test_a_failed_final_rename_keeps_the_previous_detector(detector, tmp_path, monkeypatch):
    out = detector.save(tmp_path / "det", metadata={"version": 1})
    before = _snapshot(out)
    real = os.replace

    def replace(src, dst):
        if ".tmp-" in Path(src).name:  # the new folder cannot be moved into place
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(output_folders.os, "replace", replace)
    with pytest.raises(OSError, match="Input/output"):
        detector.save(out, metadata={"version": 2})
    monkeypatch.undo()
    assert _snapshot(out) == before  # put back at once, not left as a hidden .old-* sibling
    assert [p.name for p in tmp_path.iterdir()] == ["det"]
    assert DOCDetector.load(out).metadata_ == {"version": 1}


def test_a_read_only_parent_fails_before_any_training_step(fmnist, tmp_path, capsys, monkeypatch, trainer_calls):
    real = output_folders.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if Path(dir) == tmp_path:  # as on a read-only mount (tests run as root, so chmod would not stop a write)
            raise OSError(errno.EROFS, "Read-only file system", str(Path(dir) / "probe"))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(output_folders.tempfile, "mkstemp", mkstemp)
    assert _train(fmnist, tmp_path / "det") == 1
    [line] = _error_lines(capsys.readouterr().err)
    assert f"cannot write in {tmp_path}" in line and "Read-only file system" in line
    assert trainer_calls == [] and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into a 0555 folder")
def test_a_chmod_0555_parent_fails_before_any_training_step(fmnist, tmp_path, capsys, trainer_calls):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert _train(fmnist, parent / "det") == 1
    finally:
        parent.chmod(0o755)
    assert len(_error_lines(capsys.readouterr().err)) == 1 and trainer_calls == []


def test_too_little_free_space_fails_before_any_training_step(fmnist, tmp_path, capsys, monkeypatch, trainer_calls):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(output_folders.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 50_000, 50_000))
    assert _train(fmnist, tmp_path / "det") == 1
    [line] = _error_lines(capsys.readouterr().err)
    assert "0.1 MB are free" in line and "needs about" in line
    assert trainer_calls == [] and list(tmp_path.iterdir()) == []


def test_a_full_disk_while_saving_is_one_error_line(fmnist, tmp_path, capsys, monkeypatch):
    import doc_core.model.detector as detector_module

    def savez(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(detector_module.np, "savez", savez)
    assert _train(fmnist, tmp_path / "det") == 1
    err = capsys.readouterr().err
    assert _error_lines(err) == [err.strip().splitlines()[-1]]
    assert "No space left on the disk while saving the detector" in err and "[Errno" not in err
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_other_os_errors_are_one_error_line(detector, tmp_path, capsys):
    det_dir = detector.save(tmp_path / "det")
    from PIL import Image

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "x.png")
    assert main(["score", "--detector", str(det_dir), str(tmp_path / "x.png"),
                 "--out", str(tmp_path / "missing" / "s.json")]) == 1
    [line] = _error_lines(capsys.readouterr().err)
    assert line == f"error: No such file or directory: {tmp_path / 'missing' / 's.json'}"


def test_stale_siblings_older_than_a_day_are_swept_by_a_later_save(detector, tmp_path):
    stale = [tmp_path / ".det.tmp-killed", tmp_path / ".det.old-1-2"]
    kept = [tmp_path / ".det.tmp-young", tmp_path / ".other.tmp-old", tmp_path / "det.tmp-not-hidden"]
    for d in stale + kept:
        (d / "sub").mkdir(parents=True)
    (tmp_path / ".det.old-3-4").write_text("a replaced file")  # --force can leave a file behind too
    stale.append(tmp_path / ".det.old-3-4")
    t = time.time() - 2 * DAY
    for p in stale + [tmp_path / ".other.tmp-old"]:
        os.utime(p, (t, t))
    detector.save(tmp_path / "det")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["det"] + [p.name for p in kept])


def test_remove_stale_never_follows_a_link(tmp_path):
    target = tmp_path / "precious"
    (target / "inner").mkdir(parents=True)
    (tmp_path / ".det.old-9").symlink_to(target)
    t = time.time() - 2 * DAY
    os.utime(tmp_path / ".det.old-9", (t, t), follow_symlinks=False)
    assert remove_stale(tmp_path, (".det.old-*",)) == 1
    assert (target / "inner").is_dir() and not (tmp_path / ".det.old-9").exists()


def test_a_bundle_is_replaced_without_force_and_a_foreign_folder_with_it(detector, tmp_path, capsys):
    pytest.importorskip("ai_edge_litert")
    det_dir = detector.save(tmp_path / "det")
    out = tmp_path / "edge"
    _foreign(out)
    args = ["export", "--detector", str(det_dir), "--out", str(out)]
    assert main([*args, "--force"]) == 0
    assert "thesis.txt" in json.loads(capsys.readouterr().out)["replaced"]
    assert not (out / "thesis.txt").exists() and (out / "bundle.json").is_file()
    (out / "__pycache__").mkdir()  # left by importing the bundle's scorer.py
    stale, young = tmp_path / ".edge.tmp-killed", tmp_path / ".edge.old-1-2"
    stale.mkdir()
    young.mkdir()
    os.utime(stale, (time.time() - 2 * DAY,) * 2)
    assert main(args) == 0  # the tool's own bundle: replaced without --force
    assert "replaced" not in json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".edge.old-1-2", "det", "edge"]
    assert sorted(p.name for p in out.iterdir()) == ["bank.npy", "bundle.json", "model.tflite", "scorer.py"]
