"""Tests of doc_core.model.detector: end-to-end detection on synthetic images, persistence and scorer swaps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from doc_core import BackboneConfig, DetectorFormatError, DOCDetector, ScorerConfig, TrainConfig
from doc_core.data import OneClassSplit
from doc_core.evaluation.metrics import roc_auc
from doc_core.model.backbones import Backbone

TINY = BackboneConfig(name="tiny", input_size=32, weights=None)


@pytest.fixture(scope="module")
def make_problem(make_normal, make_reference, make_anomalous):
    """Factory ``seed -> (normal, reference, labels, test, y)``: test = 20 normal + 20 with a planted bright patch."""

    def make(seed: int, n_normal: int = 64, per_class: int = 16, n_test: int = 20):
        rng = np.random.default_rng(seed)
        normal = make_normal(rng, n_normal)
        reference, labels = make_reference(rng, per_class)
        test = np.concatenate([make_normal(rng, n_test), make_anomalous(rng, make_normal(rng, n_test))])
        y = np.r_[np.zeros(n_test, int), np.ones(n_test, int)]
        return normal, reference, labels, test, y

    return make


def make_detector(epochs: int = 3, seed: int = 0, scorer: ScorerConfig = ScorerConfig()) -> DOCDetector:
    return DOCDetector(TINY, TrainConfig(batch_size=16, epochs=epochs, learning_rate=1e-3, seed=seed), scorer)


@pytest.fixture(scope="module")
def problem(make_problem):
    return make_problem(0)


@pytest.fixture(scope="module")
def trained(problem) -> DOCDetector:
    normal, reference, labels, _, _ = problem
    return make_detector().fit(normal, reference, labels, ("horizontal", "vertical", "diagonal"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_patches_score_higher(seed, make_problem, problem, trained):
    if seed == 0:
        det, (_, _, _, test, y) = trained, problem
    else:
        normal, reference, labels, test, y = make_problem(seed)
        det = make_detector(seed=seed).fit(normal, reference, labels)
    scores = det.decision_function(test)
    assert scores.shape == (len(test),) and scores.dtype == np.float32
    assert roc_auc(y, scores) >= 0.9
    assert len(det.history_) == 3 * (64 // 16)


def test_fitted_attributes(problem, trained):
    normal = problem[0]
    assert trained.bank_.shape == (64, 32) and trained.bank_.dtype == np.float32
    np.testing.assert_allclose(trained.bank_, trained.embed(normal), rtol=1e-5, atol=1e-6)
    assert trained.reference_names_ == ("horizontal", "vertical", "diagonal")
    assert trained.threshold_ == pytest.approx(np.percentile(trained.train_scores_, 95.0))
    assert trained.fit_seconds_ > 0
    bank = trained.bank_.astype(np.float64)
    d = np.sqrt(((bank[:, None] - bank[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    k = trained.scorer_.k
    loo = np.sort(d, axis=1)[:, :k].mean(axis=1)  # leave-one-out mean distance to the k nearest others
    np.testing.assert_allclose(trained.train_scores_, loo, rtol=1e-3, atol=1e-5)
    assert 0 < np.mean(trained.train_scores_ > trained.threshold_) <= 0.1


def test_predict_uses_threshold(problem, trained):
    test = problem[3]
    scores = trained.decision_function(test)
    original = trained.threshold_
    try:
        trained.threshold_ = float(np.median(scores))
        pred = trained.predict(test)
        assert pred.dtype == np.int64
        np.testing.assert_array_equal(pred, (scores > trained.threshold_).astype(int))
        assert 0 < pred.sum() < len(test)
        trained.threshold_ = float(scores.max())
        assert trained.predict(test).sum() == 0
        trained.threshold_ = -1.0
        assert trained.predict(test).sum() == len(test)
    finally:
        trained.threshold_ = original


def test_inputs_are_checked(trained):
    with pytest.raises(ValueError, match="uint8"):
        trained.decision_function(np.zeros((2, 32, 32, 1), np.float32))
    with pytest.raises(ValueError, match="shape"):
        trained.decision_function(np.zeros((2, 32, 32, 2), np.uint8))
    assert trained.decision_function(np.zeros((2, 32, 32), np.uint8)).shape == (2,)  # (n, h, w) is gray
    with pytest.raises(RuntimeError, match="not fitted"):
        DOCDetector(TINY).decision_function(np.zeros((1, 32, 32, 1), np.uint8))


def test_save_load_round_trip(tmp_path, problem, trained):
    test = problem[3]
    path = trained.save(tmp_path / "det", metadata={"note": "unit test"})
    assert sorted(p.name for p in path.iterdir()) == ["backbone.weights.h5", "bank.npz", "detector.json"]
    loaded = DOCDetector.load(path)
    np.testing.assert_array_equal(loaded.decision_function(test), trained.decision_function(test))
    assert loaded.threshold_ == trained.threshold_
    np.testing.assert_array_equal(loaded.predict(test), trained.predict(test))
    np.testing.assert_array_equal(loaded.bank_, trained.bank_)
    assert loaded.reference_names_ == trained.reference_names_
    assert loaded.history_ == trained.history_
    assert loaded.metadata_ == {"note": "unit test"}
    assert loaded.config_dict() == trained.config_dict()


def test_save_replaces_existing_folder(tmp_path, problem, trained):
    target = tmp_path / "det"
    target.mkdir()
    (target / "stale.txt").write_text("not written by doc_core")
    baseline = make_detector(epochs=0).fit(*problem[:3])
    with pytest.raises(FileExistsError, match="stale.txt.*kept"):  # a folder the tool did not write is kept
        baseline.save(target)
    assert [p.name for p in tmp_path.iterdir()] == ["det"] and [p.name for p in target.iterdir()] == ["stale.txt"]
    baseline.save(target, force=True)
    trained.save(target)  # a detector folder is replaced without force
    assert sorted(p.name for p in target.iterdir()) == ["backbone.weights.h5", "bank.npz", "detector.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["det"]  # no temporary or old folders left behind
    np.testing.assert_array_equal(DOCDetector.load(target).decision_function(problem[3]),
                                  trained.decision_function(problem[3]))


def test_crash_mid_save_keeps_old_detector(tmp_path, monkeypatch, problem, trained):
    target = trained.save(tmp_path / "det")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    other = make_detector(epochs=0).fit(*problem[:3])

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        other.save(target)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["det"]
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    np.testing.assert_array_equal(DOCDetector.load(target).decision_function(problem[3]),
                                  trained.decision_function(problem[3]))


@pytest.fixture
def saved(tmp_path, trained) -> Path:
    return trained.save(tmp_path / "det")


def edit_json(path: Path, **changes) -> None:
    doc = json.loads((path / "detector.json").read_text())
    doc.update(changes)
    (path / "detector.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("missing", ["detector.json", "backbone.weights.h5", "bank.npz"])
def test_load_missing_file(saved, missing):
    (saved / missing).unlink()
    with pytest.raises(DetectorFormatError, match=missing):
        DOCDetector.load(saved)


def test_load_not_a_folder(tmp_path):
    with pytest.raises(DetectorFormatError):
        DOCDetector.load(tmp_path / "nothing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DetectorFormatError):
        DOCDetector.load(tmp_path / "file")


def test_load_invalid_json(saved):
    (saved / "detector.json").write_text("{not json")
    with pytest.raises(DetectorFormatError, match="not valid JSON"):
        DOCDetector.load(saved)
    (saved / "detector.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DetectorFormatError):
        DOCDetector.load(saved)
    (saved / "detector.json").write_text("[1, 2, 3]")
    with pytest.raises(DetectorFormatError, match="format"):
        DOCDetector.load(saved)


@pytest.mark.parametrize("changes,match", [
    ({"format_version": 2}, "version"),
    ({"format_version": None}, "version"),
    ({"format": "something-else"}, "format"),
    ({"config": {"backbone": {"name": "resnet"}}}, "unknown backbone 'resnet'"),
    ({"threshold": "high"}, "'threshold' must be a number"),
    ({"feature_dim": 16}, "memory bank does not fit.*feature_dim says 16"),
])
def test_load_bad_json_content(saved, changes, match):
    edit_json(saved, **changes)
    with pytest.raises(DetectorFormatError, match=match):
        DOCDetector.load(saved)


@pytest.mark.parametrize("bank", [np.zeros((10, 7), np.float32), np.zeros(32, np.float32),
                                  np.zeros((2, 5, 32), np.float32)])
def test_load_bank_of_wrong_shape(saved, bank):
    np.savez(saved / "bank.npz", bank=bank)
    with pytest.raises(DetectorFormatError, match="memory bank"):
        DOCDetector.load(saved)


def test_load_broken_arrays_and_weights(saved):
    np.savez(saved / "bank.npz", other=np.zeros((3, 32)))
    with pytest.raises(DetectorFormatError):
        DOCDetector.load(saved)
    np.save(saved / "bank.npz", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DetectorFormatError):
        DOCDetector.load(saved)


def test_load_corrupt_weights(saved):
    (saved / "backbone.weights.h5").write_bytes(b"not an h5 file")
    with pytest.raises(DetectorFormatError):
        DOCDetector.load(saved)


def test_with_scorer_lof_without_retraining(problem, trained):
    test, y = problem[3], problem[4]
    lof = trained.with_scorer(ScorerConfig("lof", k=10))
    assert lof.backbone_ is trained.backbone_
    np.testing.assert_array_equal(lof.bank_, trained.bank_)
    s_knn, s_lof = trained.decision_function(test), lof.decision_function(test)
    assert not np.allclose(s_knn, s_lof)
    assert roc_auc(y, s_lof) >= 0.8
    assert np.median(lof.train_scores_) == pytest.approx(1.0, abs=0.2)
    assert trained.scorer == ScorerConfig()  # the original is untouched
    back = lof.with_scorer(ScorerConfig("knn"))
    np.testing.assert_array_equal(back.decision_function(test), s_knn)
    with pytest.raises(ValueError, match="unknown scorer"):
        trained.with_scorer(ScorerConfig("isolation_forest"))


def test_faiss_backend_is_saved_and_rebuilt_on_load(tmp_path, problem, trained):
    pytest.importorskip("faiss", reason="faiss-cpu is not installed")
    test = problem[3]
    fast = trained.with_scorer(ScorerConfig(backend="faiss"), threshold=1.234)
    assert fast.threshold_ == 1.234 and fast.scorer_.backend == "faiss"
    np.testing.assert_allclose(fast.decision_function(test), trained.decision_function(test), rtol=1e-4, atol=1e-5)
    loaded = DOCDetector.load(fast.save(tmp_path / "fast"))
    assert loaded.scorer == ScorerConfig(backend="faiss") and hasattr(loaded.scorer_, "index_")
    assert loaded.threshold_ == 1.234
    np.testing.assert_allclose(loaded.decision_function(test), trained.decision_function(test), rtol=1e-4, atol=1e-5)


def test_detectors_saved_before_backends_load_as_exact(saved):
    doc = json.loads((saved / "detector.json").read_text())
    del doc["config"]["scorer"]["backend"]
    (saved / "detector.json").write_text(json.dumps(doc))
    loaded = DOCDetector.load(saved)
    assert loaded.scorer.backend == "exact" and not hasattr(loaded.scorer_, "index_")


@pytest.mark.parametrize("scorer, match", [(ScorerConfig(backend="annoy"), "unknown k-NN backend 'annoy'"),
                                           (ScorerConfig("lof", backend="faiss"), "'lof' scorer has no 'faiss'")])
def test_bad_backend_fails_before_training(problem, scorer, match):
    det = make_detector(scorer=scorer)
    with pytest.raises(ValueError, match=match):
        det.fit(*problem[:3])
    assert not hasattr(det, "history_")


def test_missing_faiss_fails_before_training_with_the_install_command(problem, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    det = make_detector(scorer=ScorerConfig(backend="faiss"))
    with pytest.raises(ImportError, match="faiss-cpu"):
        det.fit(*problem[:3])
    assert not hasattr(det, "history_")


def test_unknown_scorer_fails_before_training(problem):
    det = make_detector(scorer=ScorerConfig("nope"))
    with pytest.raises(ValueError, match="unknown scorer"):
        det.fit(*problem[:3])


def test_epochs_zero_is_pretrained_baseline(problem):
    normal, reference, labels, test, y = problem
    det = make_detector(epochs=0).fit(normal, reference, labels)
    assert det.history_ == []
    np.testing.assert_allclose(det.bank_, Backbone(TINY).embed(normal), rtol=1e-6, atol=1e-7)
    scores = det.decision_function(test)
    assert np.isfinite(scores).all()
    assert det.reference_names_ == ("0", "1", "2")


def test_fit_steps_stop_and_fit_split(problem):
    normal, reference, labels, test, _ = problem
    det = make_detector(epochs=3)
    records = []
    for rec in det.fit_steps(normal, reference, labels):
        records.append(rec)
        if rec.step == 2:
            det.stop()
    assert [r.step for r in records] == [1, 2] and det.history_ == records
    assert det.bank_.shape == (64, 32)  # still a usable detector
    assert det.decision_function(test).shape == (len(test),)
    split = OneClassSplit(train_normal=normal[:32], reference=reference, reference_labels=labels,
                          reference_names=("a", "b", "c"), test_images=test, test_labels=problem[4],
                          test_classes=tuple("x" * len(test)))
    seen = []
    det2 = make_detector(epochs=1).fit_split(split, callback=seen.append)
    assert len(seen) == 2 and det2.reference_names_ == ("a", "b", "c") and det2.bank_.shape == (32, 32)


def test_fit_steps_left_early_still_fits_the_bank(problem):
    """Breaking out of the loop (or closing the generator) after some steps leaves a usable detector."""
    normal, reference, labels, test, _ = problem
    det = make_detector(epochs=3)
    for rec in det.fit_steps(normal, reference, labels):
        if rec.step == 2:
            break
    assert [r.step for r in det.history_] == [1, 2] and rec.steps_total > 2
    assert det.bank_.shape == (64, 32) and np.isfinite(det.threshold_) and det.fit_seconds_ > 0
    np.testing.assert_allclose(det.bank_, det.embed(normal), rtol=1e-5, atol=1e-6)  # the 2-step weights' bank
    assert det.decision_function(test).shape == (len(test),)

    closed = make_detector(epochs=3)
    gen = closed.fit_steps(normal, reference, labels)
    next(gen)
    gen.close()
    assert len(closed.history_) == 1 and closed.bank_.shape == (64, 32)
    assert not np.allclose(closed.bank_, det.bank_)  # one step trained less than two

    untouched = make_detector(epochs=3)
    untouched.fit_steps(normal, reference, labels).close()  # never started: nothing ran
    with pytest.raises(RuntimeError, match="not fitted"):
        untouched.decision_function(test)
