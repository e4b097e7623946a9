"""``python -m doc_core bank add|undo|history`` on a tiny run of a folder dataset with labels in its runs folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from doc_core import BackboneConfig, DOCDetector, ScorerConfig, TrainConfig
from doc_core.cli import main
from doc_core.data.datasets import DatasetSpec, load_dataset
from doc_core.workflow import runs
from doc_core.workflow.labels import LabelStore, image_key


@pytest.fixture
def tiny_run(tmp_path, make_normal, make_anomalous) -> tuple[Path, str, np.ndarray]:
    """(runs folder, run id, test images) of a run trained on a folder dataset (train/, test/normal, test/anomaly)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    groups = {"train": make_normal(rng, 40), "test/normal": make_normal(rng, 8),
              "test/anomaly": make_anomalous(rng, make_normal(rng, 6))}
    for sub, images in groups.items():
        (root / sub).mkdir(parents=True)
        for i, im in enumerate(images):
            Image.fromarray(im[..., 0]).save(root / sub / f"img_{i:02d}.png")
    spec = DatasetSpec.folder(root, image_size=32, reference="none")
    split, _ = load_dataset(spec)
    det = DOCDetector(BackboneConfig(name="tiny", input_size=32, weights=None), TrainConfig(epochs=0),
                      ScorerConfig("knn", k=2), calibration_fraction=0.0).fit(split.train_normal, None, None)
    feats = det.embed(split.test_images)
    runs_dir = tmp_path / "runs"
    runs.save_run(det, det.score_features(feats), split.test_labels, split.test_classes, feats,
                  dataset=spec.to_dict(), runs_dir=runs_dir, run_id="tiny")
    return runs_dir, "tiny", split.test_images


def test_bank_add_history_undo(tiny_run, capsys):
    runs_dir, rid, test = tiny_run
    scores0 = (runs_dir / rid / "scores.npz").read_bytes()
    assert main(["bank", "history", "--run", rid, "--runs", str(runs_dir)]) == 0
    assert "as trained (version 0)" in capsys.readouterr().out
    assert main(["bank", "add", "--run", rid, "--runs", str(runs_dir)]) == 2  # nothing labelled yet
    assert "nothing to add" in capsys.readouterr().err
    normal = np.flatnonzero(runs.load_scores(rid, runs_dir).labels == 0)[:3]
    LabelStore(runs_dir=runs_dir).set_many(rid, [(image_key(test[i]), "normal") for i in normal]
                                           + [(image_key(test[-1]), "anomaly")])
    assert main(["bank", "add", "--run", rid, "--runs", str(runs_dir), "--json"]) == 0
    cap = capsys.readouterr()
    change = json.loads(cap.out)
    assert "3 to add, 0 already in the bank, 0 not among its 14 test images" in cap.err
    assert change["action"] == "add" and change["n_added"] == 3 and change["bank_after"] == 43
    assert change["added_keys"] == [image_key(test[i]) for i in normal]
    assert main(["bank", "add", "--run", rid, "--runs", str(runs_dir)]) == 2  # all of them are in the bank now
    assert "3 already in the bank" in capsys.readouterr().err
    assert main(["bank", "history", "--run", rid, "--runs", str(runs_dir)]) == 0
    assert "version 1: added 3 images" in capsys.readouterr().out
    assert main(["bank", "undo", "--run", rid, "--runs", str(runs_dir)]) == 0
    out = capsys.readouterr().out
    assert "Undone" in out and "3 images left the normal bank" in out
    assert (runs_dir / rid / "scores.npz").read_bytes() == scores0
    assert main(["bank", "undo", "--run", rid, "--runs", str(runs_dir)]) == 2
    assert "no change to undo" in capsys.readouterr().err


def test_bank_text_output_and_errors(tiny_run, capsys):
    runs_dir, rid, test = tiny_run
    LabelStore(runs_dir=runs_dir).set(rid, image_key(test[0]), "normal")
    assert main(["bank", "add", "--run", rid, "--runs", str(runs_dir)]) == 0
    out = capsys.readouterr().out
    assert "Added 1 images to the normal bank" in out and "Flagged test images" in out
    assert main(["bank", "add", "--run", "no-such-run", "--runs", str(runs_dir)]) == 2
    assert "no run" in capsys.readouterr().err
