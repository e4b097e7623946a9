"""Issue #5, point 4: a process killed (SIGKILL) at a random moment while it saves leaves no half-written run.

A child process trains a tiny detector once, then saves it over and over (``DOCDetector.save`` to one folder and
``save_run`` into a runs folder) while the test kills it at a random moment; afterwards the detector folder must load
(the previous or the new version) and every run that ``list_runs`` shows must load completely. A second test kills
the real command line (``python -m doc_core train --out``) at random points of its run.
"""

from __future__ import annotations

import gzip
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from doc_core.data import FASHION_MNIST_FILES
from doc_core.model.detector import DOCDetector
from doc_core.workflow import runs

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}

SAVE_LOOP = r"""
import sys
import numpy as np
from doc_core.model.backbones import BackboneConfig
from doc_core.model.detector import DOCDetector, ScorerConfig
from doc_core.model.training import TrainConfig
from doc_core.workflow import runs

det_dir, runs_dir, attempt = sys.argv[1], sys.argv[2], sys.argv[3]
rng = np.random.default_rng(0)
img = lambda n, v: np.clip(rng.integers(0, 40, (n, 32, 32, 1)) + v, 0, 255).astype(np.uint8)
det = DOCDetector(BackboneConfig(name="tiny", input_size=32), TrainConfig(epochs=1, batch_size=8), ScorerConfig("knn", k=2))
det.fit(img(16, 60), np.concatenate([img(8, 120), img(8, 200)]), np.repeat([0, 1], 8), ("a", "b"))
test = img(6, 90)
feats = det.embed(test)
scores = det.score_features(feats)
i = 0
while True:
    i += 1
    det.save(det_dir, metadata={"i": i})
    runs.save_run(det, scores, [0, 0, 0, 1, 1, 1], ["n"] * 3 + ["a"] * 3, feats, runs_dir=runs_dir, run_id=f"a{attempt}-r{i}")
    print("saved", i, flush=True)
"""


def _check_runs(runs_dir: Path) -> int:
    listed = runs.list_runs(runs_dir)
    for r in listed:  # every visible run is complete
        runs.load_detector(r.run_id, runs_dir)
        assert len(runs.load_scores(r.run_id, runs_dir).scores) == 6
        assert runs.load_features(r.run_id, runs_dir).shape[0] == 6
    visible = [p.name for p in runs_dir.iterdir() if not p.name.startswith(".")]
    assert sorted(visible) == sorted(r.run_id for r in listed), "a visible run folder is incomplete"
    return len(listed)


@pytest.mark.slow
def test_sigkill_at_random_moments_while_saving_leaves_old_or_complete_state(tmp_path):
    rnd = random.Random(int(os.environ.get("DOC_KILL_SEED", "5")))
    det_dir, runs_dir = tmp_path / "det", tmp_path / "runs"
    kills = 0
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(det_dir), str(runs_dir), str(attempt)], cwd=ROOT, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            line = proc.stdout.readline()  # first complete save
            assert line.startswith("saved"), f"the child failed to start: {line!r}"
            time.sleep(rnd.uniform(0.0, 0.8))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            kills += 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        det = DOCDetector.load(det_dir)  # the previous or the new detector: never a half-written one
        assert det.metadata_["i"] >= 1
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["det", "runs"]
        assert _check_runs(runs_dir) >= 1
    assert kills == 3


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.mark.slow
def test_sigkill_of_the_train_command_leaves_no_half_written_detector(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "fmnist"
    data.mkdir()
    ytr, yte = np.repeat(np.arange(10), 60), np.repeat(np.arange(10), 5)
    arrays = {"train_images": rng.integers(0, 255, (len(ytr), 28, 28)), "train_labels": ytr,
              "test_images": rng.integers(0, 255, (len(yte), 28, 28)), "test_labels": yte}
    for key, name in FASHION_MNIST_FILES.items():
        _write_idx(data / name, arrays[key])
    out = tmp_path / "det"
    cmd = [sys.executable, "-m", "doc_core", "train", "--data-dir", str(data), "--backbone", "tiny", "--input-size",
           "32", "--weights", "none", "--epochs", "1", "--batch-size", "16", "--n-reference", "100", "--out",
           str(out)]
    t0 = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=300)
    full = time.monotonic() - t0
    first = DOCDetector.load(out)
    rnd = random.Random(7)
    for frac in (rnd.uniform(0.6, 1.0), rnd.uniform(0.85, 1.05)):  # late: around the save at the end
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(frac * full)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        det = DOCDetector.load(out)  # the earlier detector or the complete new one
        assert det.threshold_ > 0 and det.bank_.shape == first.bank_.shape
