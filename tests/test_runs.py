"""doc_core.workflow.runs: saving, listing, loading, thresholds and deleting runs; atomic, pickle-free, safe ids."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from doc_core.model.backbones import BackboneConfig
from doc_core.model.detector import DOCDetector, ScorerConfig
from doc_core.model.training import TrainConfig
from doc_core.workflow import runs

SIZE = 32


def _images(rng: np.random.Generator, n: int, level: int) -> np.ndarray:
    base = rng.integers(0, 40, size=(n, SIZE, SIZE, 1))
    base[:, 8:24, 8:24] += level
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def fitted():
    """A tiny detector trained for a few steps on synthetic images, and its test set."""
    rng = np.random.default_rng(0)
    normal = _images(rng, 40, 60)
    reference = np.concatenate([_images(rng, 20, 120), _images(rng, 20, 200)])
    ref_labels = np.repeat([0, 1], 20)
    test = np.concatenate([_images(rng, 15, 60), _images(rng, 15, 215)])
    labels = np.repeat([0, 1], 15)
    classes = ["square"] * 15 + ["bright square"] * 15
    det = DOCDetector(BackboneConfig(name="tiny", input_size=SIZE), TrainConfig(epochs=1, batch_size=8),
                      ScorerConfig("knn", k=2))
    det.fit(normal, reference, ref_labels, ("mid", "bright"))
    feats = det.embed(test)
    return det, feats, det.score_features(feats), labels, classes


def _save(fitted, runs_dir, **kw):
    det, feats, scores, labels, classes = fitted
    return runs.save_run(det, scores, labels, classes, feats, dataset={"kind": "synthetic", "description": "squares"},
                         runs_dir=runs_dir, **kw)


def test_default_runs_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(runs.RUNS_DIR_ENV, raising=False)
    assert runs.default_runs_dir() == runs.Path("runs")
    monkeypatch.setenv(runs.RUNS_DIR_ENV, str(tmp_path))
    assert runs.default_runs_dir() == tmp_path


def test_save_list_load_round_trip(fitted, tmp_path):
    det, feats, scores, labels, classes = fitted
    summary = _save(fitted, tmp_path, name="first run")
    assert summary.path == tmp_path / summary.run_id
    assert {p.name for p in summary.path.iterdir()} == {"run.json", "detector", "scores.npz", "features.npz",
                                                         "history.json"}
    assert 0.0 <= summary.auc <= 1.0 and summary.average_precision is not None
    assert summary.steps == summary.steps_total == len(det.history_) > 0
    assert summary.config == det.config_dict()
    assert summary.default_threshold == pytest.approx(det.threshold_)

    listed = runs.list_runs(tmp_path)
    assert [r.run_id for r in listed] == [summary.run_id]
    assert listed[0] == summary

    stored = runs.load_scores(summary.run_id, tmp_path)
    np.testing.assert_allclose(stored.scores, scores, rtol=1e-6)
    np.testing.assert_array_equal(stored.labels, labels)
    assert list(stored.classes) == classes and stored.paths is None and stored.has_labels
    np.testing.assert_allclose(runs.load_features(summary.run_id, tmp_path), feats, rtol=1e-6)
    assert [r.step for r in runs.load_history(summary.run_id, tmp_path)] == [r.step for r in det.history_]

    loaded = runs.load_detector(summary.run_id, tmp_path)
    np.testing.assert_allclose(loaded.score_features(feats), scores, rtol=1e-5, atol=1e-6)


def test_runs_are_listed_newest_first_and_broken_ones_skipped(fitted, tmp_path):
    a = _save(fitted, tmp_path, run_id="20250101-000000-a")
    b = _save(fitted, tmp_path, run_id="20250102-000000-b")
    doc = json.loads((b.path / "run.json").read_text())
    (b.path / "run.json").write_text(json.dumps({**doc, "created": "2999-01-01T00:00:00+00:00"}))
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{not json")
    (tmp_path / ".20250103-000000-c.tmp-xyz").mkdir()  # a save in progress
    assert [r.run_id for r in runs.list_runs(tmp_path)] == [b.run_id, a.run_id]
    with pytest.raises(runs.RunError):
        runs.get_run("broken", tmp_path)


def test_missing_runs_folder_lists_nothing(tmp_path):
    assert runs.list_runs(tmp_path / "nowhere") == []


@pytest.mark.parametrize("bad", ["../etc", "a/b", ".hidden", "", "x" * 200, "/abs"])
def test_run_ids_cannot_escape_the_runs_folder(tmp_path, bad):
    with pytest.raises(runs.RunError):
        runs.get_run(bad, tmp_path)
    with pytest.raises(runs.RunError):
        runs.delete_run(bad, tmp_path)


def test_save_threshold_is_recorded_and_used_by_load_detector(fitted, tmp_path):
    det, feats, scores, *_ = fitted
    summary = _save(fitted, tmp_path)
    assert summary.threshold is None and summary.operating_threshold == summary.default_threshold
    updated = runs.save_threshold(summary.run_id, 0.5, "target_fpr", 0.05, runs_dir=tmp_path)
    assert updated.threshold["value"] == 0.5 and updated.threshold["policy"] == "target_fpr"
    assert updated.threshold["param"] == 0.05 and updated.threshold["scorer"] == det.scorer.to_dict()
    assert runs.get_run(summary.run_id, tmp_path).threshold == updated.threshold
    assert runs.load_detector(summary.run_id, tmp_path).threshold_ == 0.5
    assert runs.load_detector(summary.run_id, tmp_path, use_saved_threshold=False).threshold_ == \
        pytest.approx(det.threshold_)

    lof = ScorerConfig("lof", k=5)
    runs.save_threshold(summary.run_id, 1.3, "manual", scorer=lof, runs_dir=tmp_path)
    loaded = runs.load_detector(summary.run_id, tmp_path)
    assert loaded.scorer == lof and loaded.threshold_ == 1.3
    np.testing.assert_allclose(loaded.score_features(feats), det.with_scorer(lof).score_features(feats), rtol=1e-5)
    # the write is atomic: no temporary files are left behind
    assert sorted(p.name for p in summary.path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("value, policy", [(float("nan"), "manual"), (1.0, "magic")])
def test_save_threshold_rejects_bad_values(fitted, tmp_path, value, policy):
    summary = _save(fitted, tmp_path)
    with pytest.raises(ValueError):
        runs.save_threshold(summary.run_id, value, policy, runs_dir=tmp_path)


def test_rename_and_delete(fitted, tmp_path):
    summary = _save(fitted, tmp_path)
    assert runs.rename_run(summary.run_id, "  better   name ", tmp_path).name == "better name"
    runs.delete_run(summary.run_id, tmp_path)
    assert runs.list_runs(tmp_path) == [] and list(tmp_path.iterdir()) == []
    with pytest.raises(runs.RunError):
        runs.delete_run(summary.run_id, tmp_path)


def test_failed_save_leaves_no_run(fitted, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(runs, "_write_json_atomic", boom)
    with pytest.raises(OSError):
        _save(fitted, tmp_path)
    assert runs.list_runs(tmp_path) == [] and list(tmp_path.iterdir()) == []


def test_run_files_hold_no_pickles(fitted, tmp_path):
    summary = _save(fitted, tmp_path)
    for name in ("scores.npz", "features.npz"):
        with np.load(summary.path / name, allow_pickle=False) as z:  # would raise on object arrays
            for key in z.files:
                assert z[key].dtype != object


def test_tampered_scores_are_reported(fitted, tmp_path):
    summary = _save(fitted, tmp_path)
    n = summary.n_test
    np.savez(summary.path / "scores.npz", scores=np.zeros(3), labels=np.zeros(2), classes=np.array(["a"] * 3),
             train_scores=np.zeros(3))
    with pytest.raises(runs.RunError, match=f"'scores' has 3 entries along axis 0 but run.json's n_test says {n}"):
        runs.load_scores(summary.run_id, tmp_path)
    # the arrays are checked against each other too, from their headers
    np.savez(summary.path / "scores.npz", scores=np.zeros(n), labels=np.zeros(n - 1, int), classes=np.array(["a"] * n),
             train_scores=np.zeros(3))
    with pytest.raises(runs.RunError, match=f"'labels' has {n - 1} entries .* says {n}; they must match"):
        runs.load_scores(summary.run_id, tmp_path)
    np.savez(summary.path / "scores.npz", scores=np.zeros(n), labels=np.full(n, 7), classes=np.array(["a"] * n),
             train_scores=np.zeros(3))
    with pytest.raises(runs.RunError, match="labels must be -1, 0 or 1"):
        runs.load_scores(summary.run_id, tmp_path)
    # an object array (which would need pickle) is refused, not loaded
    np.savez(summary.path / "scores.npz", scores=np.array([object()], dtype=object), labels=np.zeros(1),
             classes=np.array(["a"]), train_scores=np.zeros(1))
    with pytest.raises(runs.RunError):
        runs.load_scores(summary.run_id, tmp_path)


def test_unlabelled_test_set_has_no_auc(fitted, tmp_path):
    det, feats, scores, labels, classes = fitted
    summary = runs.save_run(det, scores, np.full(len(scores), -1), classes, None, runs_dir=tmp_path,
                            test_paths=[f"test/{i}.png" for i in range(len(scores))])
    assert summary.auc is None and summary.average_precision is None
    stored = runs.load_scores(summary.run_id, tmp_path)
    assert not stored.has_labels and stored.paths[0] == "test/0.png"
    assert runs.load_features(summary.run_id, tmp_path) is None


def test_mismatched_lengths_are_refused(fitted, tmp_path):
    det, feats, scores, labels, classes = fitted
    with pytest.raises(ValueError):
        runs.save_run(det, scores[:-1], labels, classes, runs_dir=tmp_path)
    assert not os.listdir(tmp_path) or runs.list_runs(tmp_path) == []


def test_scores_csv(fitted, tmp_path):
    det, feats, scores, labels, classes = fitted
    summary = runs.save_run(det, scores, labels, classes, runs_dir=tmp_path,
                            test_paths=[f"test/{i}.png" for i in range(len(scores))])
    stored = runs.load_scores(summary.run_id, tmp_path)
    threshold = float(np.median(scores))
    text = runs.scores_csv(stored, threshold=threshold, comment="run x\nscorer knn")
    lines = text.splitlines()
    assert lines[:3] == ["# run x", "# scorer knn", "index,path,class,true_label,score,predicted"]
    assert len(lines) == 3 + len(scores)
    first = lines[3].split(",")
    assert first[:4] == ["0", "test/0.png", "square", "normal"]
    assert first[5] == ("anomaly" if stored.scores[0] > threshold else "normal")
    flagged = sum(line.endswith(",anomaly") for line in lines[3:])
    assert flagged == int(np.sum(stored.scores > threshold))
    plain = runs.scores_csv(stored, scores=np.zeros(len(scores)))
    assert plain.splitlines()[0] == "index,path,class,true_label,score" and plain.splitlines()[1].endswith(",0")
    with pytest.raises(ValueError):
        runs.scores_csv(stored, scores=np.zeros(3))


def test_calibration_scores_are_stored_with_the_run(fitted, tmp_path):
    """A run of a detector with a calibration slice keeps the slice's scores; older runs read as None."""
    det, feats, scores, labels, classes = fitted
    assert det.calibration_scores_ is None  # 40 normal images: too few, calibration was turned off
    summary = _save(fitted, tmp_path / "old")
    assert runs.load_scores(summary.run_id, tmp_path / "old").calibration_scores is None
    assert runs.load_scores(summary.run_id, tmp_path / "old").n_calibration == 0
    rng = np.random.default_rng(1)
    cal_det = DOCDetector(BackboneConfig(name="tiny", input_size=SIZE), TrainConfig(epochs=0), ScorerConfig("knn", k=2),
                          calibration_min=10).fit(_images(rng, 40, 60), None, None)
    summary = runs.save_run(cal_det, scores, labels, classes, feats, runs_dir=tmp_path / "new")
    stored = runs.load_scores(summary.run_id, tmp_path / "new")
    assert stored.n_calibration == 10 and stored.calibration_scores.dtype == np.float32
    np.testing.assert_allclose(stored.calibration_scores, cal_det.calibration_scores_)
    assert summary.default_threshold == pytest.approx(np.percentile(stored.calibration_scores, 95.0))
    assert summary.config["calibration_fraction"] == 0.1 and summary.config["calibration_min"] == 10
    assert runs.load_detector(summary.run_id, tmp_path / "new").n_calibration == 10
    assert summary.n_calibration == 10 and summary.calibration["threshold_source"] == "calibration"
    assert runs.get_run(summary.run_id, tmp_path / "new") == summary
    # a run.json written before calibration existed: no "calibration" key
    doc = json.loads((summary.path / "run.json").read_text())
    del doc["calibration"]
    (summary.path / "run.json").write_text(json.dumps(doc))
    old = runs.get_run(summary.run_id, tmp_path / "new")
    assert old.n_calibration == 0 and old.calibration["threshold_source"] == "train"
    assert "leave-one-out" in old.calibration["note"]
