"""Confirmed normals join the bank: DOCDetector.with_added_normals against brute force, and the run level
(doc_core.workflow.bank_growth): re-scoring, undo to the same bytes, duplicates, thresholds, damage, labels."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from doc_core import BackboneConfig, DOCDetector, ScorerConfig, TrainConfig
from doc_core.scoring.patch import aggregate_patch_scores, neighbourhood_average
from doc_core.workflow import bank_growth as bg
from doc_core.workflow import runs
from doc_core.workflow.labels import LabelStore, image_key

TINY = BackboneConfig(name="tiny", input_size=32, weights=None)
NO_CAL = {"calibration_fraction": 0.0}


def _detector(scorer: ScorerConfig, normal: np.ndarray, **kw) -> DOCDetector:
    return DOCDetector(TINY, TrainConfig(epochs=0), scorer, **kw).fit(normal, None, None)


def _loo_knn(bank: np.ndarray, k: int) -> np.ndarray:
    d = np.sqrt(((bank[:, None, :].astype(np.float64) - bank[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


def _knn(queries: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - bank[None, :, :]) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


@pytest.fixture(scope="module")
def images(make_normal, make_anomalous):
    rng = np.random.default_rng(0)
    normal = make_normal(rng, 40)
    test_normal = make_normal(rng, 12)
    test_anomalous = make_anomalous(rng, make_normal(rng, 8))
    return normal, test_normal, test_anomalous


# ------------------------------------------------------------------------------------------------ the detector


def test_knn_bank_grows_and_scores_match_brute_force(images):
    normal, test_normal, _ = images
    det = _detector(ScorerConfig("knn", k=3), normal, **NO_CAL)
    bank0, scores0, thr0 = det.bank_.copy(), det.train_scores_.copy(), det.threshold_
    grown = det.with_added_normals(test_normal[:5])
    feats = det.embed(test_normal[:5])
    bank = np.concatenate([bank0, feats])
    np.testing.assert_allclose(grown.bank_, bank, rtol=1e-6)
    loo = _loo_knn(bank, 3)
    np.testing.assert_allclose(grown.train_scores_, loo, rtol=1e-4, atol=1e-5)
    assert grown.threshold_ == pytest.approx(np.percentile(loo, 95), rel=1e-4)
    # the added images score at their leave-one-out level, not 0 against their own copy
    assert np.all(grown.score_features(feats) < grown.train_scores_[-5:])  # scored with their own copy: lower
    # the original is untouched and the backbone shared
    np.testing.assert_array_equal(det.bank_, bank0)
    np.testing.assert_array_equal(det.train_scores_, scores0)
    assert det.threshold_ == thr0 and grown.backbone_ is det.backbone_
    # given features are used as they are
    again = det.with_added_normals(test_normal[:5], features=feats)
    np.testing.assert_array_equal(again.bank_, np.concatenate([bank0, feats]).astype(np.float32))
    with pytest.raises(ValueError, match="features must have shape"):
        det.with_added_normals(test_normal[:5], features=feats[:2])


def test_lof_bank_grows(images):
    normal, test_normal, _ = images
    det = _detector(ScorerConfig("lof", k=5), normal, **NO_CAL)
    grown = det.with_added_normals(test_normal[:4])
    assert len(grown.bank_) == 44 and len(grown.train_scores_) == 44
    assert grown.threshold_ == pytest.approx(np.percentile(grown.train_scores_, 95), rel=1e-6)


def test_threshold_comes_from_the_calibration_slice_after_growth(make_normal):
    rng = np.random.default_rng(3)
    normal = make_normal(rng, 60)
    det = _detector(ScorerConfig("knn", k=2), normal, calibration_fraction=0.2, calibration_min=5)
    assert det.has_calibration
    grown = det.with_added_normals(make_normal(rng, 6))
    cal = _knn(det.calibration_features_, grown.bank_, 2)
    np.testing.assert_allclose(grown.calibration_scores_, cal, rtol=1e-4, atol=1e-5)
    assert grown.threshold_ == pytest.approx(np.percentile(cal, 95), rel=1e-4)
    assert grown.threshold_source_ == "calibration"


def test_patch_bank_grows_bounded_with_leave_one_image_out_scores(images):
    normal, test_normal, _ = images
    det = _detector(ScorerConfig("patch", max_bank_size=300), normal, **NO_CAL)
    sc = det.scorer_
    h, w = sc.map_shape_
    grown = det.with_added_normals(test_normal[:4])
    g = grown.scorer_
    expect_kept = math.ceil(4 * h * w * len(sc.bank_) / (40 * h * w) - 1e-9)
    assert len(g.bank_) == len(sc.bank_) + expect_kept
    np.testing.assert_array_equal(g.bank_[:len(sc.bank_)], sc.bank_)
    assert g.n_train_ == 44 and set(g.bank_image_[len(sc.bank_):]) <= {40, 41, 42, 43}
    # brute force: each added image's patch distances to the bank patches of the other images, aggregated by the
    # scorer's image-score rule (the rule itself is checked against brute force in test_patch_scoring)
    assert g.image_score == sc.image_score == "top25"
    layers = det.backbone_.patch_layers(det.scorer.patch_layers)
    maps = neighbourhood_average(det.backbone_.patch_maps(test_normal[:4], layers), sc.neighbourhood)
    for j in range(4):
        others = g.bank_[g.bank_image_ != 40 + j]
        expect = aggregate_patch_scores(_knn(maps[j].reshape(h * w, -1), others, 1)[None], "top25")[0]
        assert g.train_scores_[40 + j] == pytest.approx(expect, rel=1e-4, abs=1e-5)
    np.testing.assert_array_equal(g.train_scores_[:40], sc.train_scores_)
    assert grown.bank_.shape == (44, det.bank_.shape[1])
    assert grown.threshold_ == pytest.approx(np.percentile(grown.train_scores_, 95), rel=1e-6)
    assert len(sc.bank_) == len(det.scorer_.bank_)  # the original is unchanged


def test_grown_detector_survives_save_and_load(images, tmp_path):
    normal, test_normal, anomalous = images
    for scorer in (ScorerConfig("knn", k=2), ScorerConfig("patch", max_bank_size=300)):
        grown = _detector(scorer, normal, **NO_CAL).with_added_normals(test_normal[:3])
        grown.save(tmp_path / scorer.name)
        back = DOCDetector.load(tmp_path / scorer.name)
        test = np.concatenate([test_normal, anomalous])
        np.testing.assert_allclose(back.decision_function(test), grown.decision_function(test), rtol=1e-5)
        np.testing.assert_allclose(back.train_scores_, grown.train_scores_, rtol=1e-5)
        assert back.threshold_ == grown.threshold_


# ---------------------------------------------------------------------------------------------------- the run


def _save_run(root, det, test, labels, run_id="r1"):
    if det.is_patch:
        scores, feats = det.score_images(test)
    else:
        feats = det.embed(test)
        scores = det.score_features(feats)
    classes = ["n" if y == 0 else "a" for y in labels]
    runs.save_run(det, scores, labels, classes, feats, dataset={"kind": "synthetic"}, runs_dir=root, run_id=run_id)
    return run_id


@pytest.fixture(scope="module")
def knn_det(images):
    return _detector(ScorerConfig("knn", k=2), images[0], **NO_CAL)


@pytest.fixture
def run(tmp_path, images, knn_det):
    _, test_normal, anomalous = images
    test = np.concatenate([test_normal, anomalous])
    labels = np.r_[np.zeros(len(test_normal)), np.ones(len(anomalous))].astype(np.int64)
    return tmp_path, _save_run(tmp_path, knn_det, test, labels), test


def _files(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_add_rescores_the_run_and_undo_restores_the_same_bytes(run):
    root, rid, test = run
    run_path = root / rid
    before_files = {k: v for k, v in _files(run_path).items() if not k.startswith("run.json")}
    before_summary = runs.get_run(rid, root)
    before = runs.load_scores(rid, root)
    top = np.argsort(-before.scores[before.labels == 0])[:3]  # the highest-scoring test normals
    change = bg.add_normals(rid, test[top], None, runs_dir=root, test_images=test)
    assert change.action == "add" and change.n_added == 3 and change.n_skipped == 0 and change.version == 1
    assert change.bank_before == 40 and change.bank_after == 43
    assert change.added_keys == tuple(image_key(im) for im in test[top])
    after = runs.load_scores(rid, root)
    det = runs.load_detector(rid, root)
    feats = runs.load_features(rid, root)
    # the added images score at their leave-one-out level in the grown bank
    loo = _loo_knn(det.bank_, 2)[-3:]
    np.testing.assert_allclose(after.scores[top], loo, rtol=1e-4, atol=1e-5)
    others = np.setdiff1d(np.arange(len(test)), top)
    np.testing.assert_allclose(after.scores[others], _knn(feats[others], det.bank_, 2), rtol=1e-4, atol=1e-5)
    assert np.all(after.scores <= before.scores + 1e-6)  # a larger bank only brings images closer
    summary = runs.get_run(rid, root)
    assert summary.default_threshold == pytest.approx(det.threshold_) == change.default_threshold_after
    assert change.threshold_source == "train"
    assert change.flagged_before == int((before.scores > before_summary.default_threshold).sum())
    assert change.flagged_after == int((after.scores > summary.default_threshold).sum())
    assert change.flagged_before - change.no_longer_flagged + change.newly_flagged == change.flagged_after
    assert len(after.train_scores) == 43 and "Added 3 images" in change.describe()
    assert [c.version for c in bg.bank_history(rid, root)] == [1]
    assert change.added_test_indices == tuple(top.tolist())
    assert bg.bank_row_images(rid, 43, root).tolist() == [-1] * 40 + top.tolist()
    # undo: the same bytes as before, the history empty, the saved previous version gone
    undo = bg.undo_bank_change(rid, root)
    assert undo.action == "undo" and undo.version == 0 and undo.n_added == 3 and undo.bank_after == 40
    assert {k: v for k, v in _files(run_path).items() if not k.startswith(("run.json", "bank_history"))} \
        == before_files
    restored = runs.get_run(rid, root)
    assert restored.default_threshold == before_summary.default_threshold and restored.auc == before_summary.auc
    assert bg.bank_history(rid, root) == []
    assert not [p for p in (run_path / bg.BANK_DIR).iterdir() if p.name.startswith(bg.SNAPSHOT_PREFIX)]
    with pytest.raises(bg.BankHistoryError, match="no change to undo"):
        bg.undo_bank_change(rid, root)


def test_two_changes_undo_one_at_a_time_and_duplicates_are_skipped(run):
    root, rid, test = run
    s0 = (root / rid / "scores.npz").read_bytes()
    c1 = bg.add_normals(rid, test[[0, 1, 1]], runs_dir=root, test_indices=[0, 1, 1])
    assert c1.n_added == 2 and c1.n_skipped == 1
    s1 = (root / rid / "scores.npz").read_bytes()
    c2 = bg.add_normals(rid, test[[1, 2, 3]], runs_dir=root, test_images=test)
    assert (c2.n_added, c2.n_skipped, c2.version, c2.bank_before, c2.bank_after) == (2, 1, 2, 42, 44)
    none = bg.add_normals(rid, test[[0, 3]], runs_dir=root, test_images=test)
    assert none.action == "none" and none.n_added == 0 and none.version == 2
    assert [c.n_added for c in bg.bank_history(rid, root)] == [2, 2]
    bg.undo_bank_change(rid, root)
    assert (root / rid / "scores.npz").read_bytes() == s1
    bg.undo_bank_change(rid, root)
    assert (root / rid / "scores.npz").read_bytes() == s0


def test_saved_thresholds_manual_kept_train_percentile_recomputed(run):
    root, rid, test = run
    runs.save_threshold(rid, 0.123, "manual", runs_dir=root)
    c = bg.add_normals(rid, test[:2], runs_dir=root, test_images=test)
    assert c.operating_threshold_before == c.operating_threshold_after == 0.123
    assert "manual threshold is kept" in c.operating_note
    assert runs.get_run(rid, root).threshold["value"] == 0.123
    bg.undo_bank_change(rid, root)
    runs.save_threshold(rid, 1.0, "train_percentile", param=90.0, runs_dir=root)
    c = bg.add_normals(rid, test[:2], runs_dir=root, test_images=test)
    saved = runs.get_run(rid, root).threshold
    train = runs.load_scores(rid, root).train_scores
    assert saved["policy"] == "train_percentile" and saved["param"] == 90.0
    assert saved["value"] == pytest.approx(np.percentile(train, 90), rel=1e-5) == c.operating_threshold_after
    assert "recomputed" in c.operating_note and "leave-one-out" in c.operating_note
    bg.undo_bank_change(rid, root)
    assert runs.get_run(rid, root).threshold["value"] == 1.0  # put back
    # a threshold someone chose after the change is kept by the undo
    bg.add_normals(rid, test[:2], runs_dir=root, test_images=test)
    runs.save_threshold(rid, 0.5, "manual", runs_dir=root)
    bg.undo_bank_change(rid, root)
    assert runs.get_run(rid, root).threshold["value"] == 0.5


def test_damaged_or_missing_previous_version_gives_a_clear_error_and_breaks_nothing(run):
    root, rid, test = run
    bg.add_normals(rid, test[:2], runs_dir=root, test_images=test)
    snap = root / rid / bg.BANK_DIR / "before-0001"
    current = (root / rid / "scores.npz").read_bytes()
    (snap / "scores.npz").write_bytes(b"not a zip")
    with pytest.raises(bg.BankHistoryError, match="damaged.*nothing was changed"):
        bg.undo_bank_change(rid, root)
    assert (root / rid / "scores.npz").read_bytes() == current
    assert len(bg.bank_history(rid, root)) == 1
    runs.load_scores(rid, root)
    runs.load_detector(rid, root)
    shutil.rmtree(snap)
    with pytest.raises(bg.BankHistoryError, match="missing"):
        bg.undo_bank_change(rid, root)
    runs.load_detector(rid, root)
    # a damaged history file: a clear error from the bank functions, the run itself still loads
    (root / rid / bg.BANK_DIR / bg.HISTORY_FILE).write_text("{not json")
    with pytest.raises(bg.BankHistoryError, match="history is damaged"):
        bg.bank_history(rid, root)
    with pytest.raises(bg.BankHistoryError):
        bg.add_normals(rid, test[:2], runs_dir=root, test_images=test)
    assert runs.load_scores(rid, root).scores.shape == (len(test),)
    assert rid in [r.run_id for r in runs.list_runs(root)]


def test_a_change_that_fails_half_way_is_rolled_back(run, monkeypatch):
    root, rid, test = run
    before = _files(root / rid)
    real = bg._write_history

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bg, "_write_history", boom)
    with pytest.raises(OSError):
        bg.add_normals(rid, test[:2], runs_dir=root, test_images=test)
    monkeypatch.setattr(bg, "_write_history", real)
    after = _files(root / rid)
    assert {k: v for k, v in after.items() if not k.startswith("run.json")} == \
        {k: v for k, v in before.items() if not k.startswith("run.json")}
    assert runs.get_run(rid, root).default_threshold == pytest.approx(json.loads(before["run.json"])["default_threshold"])
    assert bg.bank_history(rid, root) == []
    # a change killed after its snapshot was written (no history entry) is rolled back by the next call
    bg.add_normals(rid, test[:2], runs_dir=root, test_images=test)
    (root / rid / bg.BANK_DIR / bg.HISTORY_FILE).unlink()
    assert bg.bank_history(rid, root) == []
    assert (root / rid / "scores.npz").read_bytes() == before["scores.npz"]


def test_bad_input_is_refused(run):
    root, rid, test = run
    with pytest.raises(ValueError, match="uint8"):
        bg.add_normals(rid, test.astype(np.float32), runs_dir=root)
    with pytest.raises(ValueError, match="keys"):
        bg.add_normals(rid, test[:2], ["a"], runs_dir=root)
    with pytest.raises(ValueError, match="test_indices"):
        bg.add_normals(rid, test[:2], runs_dir=root, test_indices=[0, 999])
    with pytest.raises(runs.RunError):
        bg.add_normals("no-such-run", test[:2], runs_dir=root)


def test_labelled_normals_are_found_by_image_key_and_added(run):
    root, rid, test = run
    store = LabelStore(runs_dir=root)
    keys = [image_key(im) for im in test]
    store.set_many(rid, [(keys[2], "normal"), (keys[5], "normal"), (keys[13], "anomaly"), ("f" * 64, "normal")])
    todo = bg.labelled_normals(rid, test, store=store, runs_dir=root)
    assert todo.keys == (keys[2], keys[5]) and todo.test_indices.tolist() == [2, 5]
    np.testing.assert_array_equal(todo.images, test[[2, 5]])
    assert (todo.n_labelled, todo.n_in_bank, todo.n_not_found) == (3, 0, 1)
    change = bg.add_labelled_normals(rid, test, runs_dir=root)  # the runs folder's own store
    assert change.n_added == 2 and change.added_keys == (keys[2], keys[5])
    todo = bg.labelled_normals(rid, test, runs_dir=root)
    assert len(todo) == 0 and todo.n_in_bank == 2
    with pytest.raises(ValueError, match="already in the bank"):
        bg.add_labelled_normals(rid, test, runs_dir=root)
    bg.undo_bank_change(rid, root)
    assert len(bg.labelled_normals(rid, test, runs_dir=root)) == 2


def test_patch_run_needs_its_test_images_and_undoes(tmp_path, images):
    normal, test_normal, anomalous = images
    det = _detector(ScorerConfig("patch", max_bank_size=300), normal, **NO_CAL)
    test = np.concatenate([test_normal, anomalous])
    labels = np.r_[np.zeros(len(test_normal)), np.ones(len(anomalous))].astype(np.int64)
    rid = _save_run(tmp_path, det, test, labels)
    s0 = (tmp_path / rid / "scores.npz").read_bytes()
    with pytest.raises(ValueError, match="test_images"):
        bg.add_normals(rid, test[:2], runs_dir=tmp_path)
    assert bg.bank_history(rid, tmp_path) == []  # nothing half-written
    change = bg.add_normals(rid, test[:2], runs_dir=tmp_path, test_images=test)
    assert change.patch_bank_after > change.patch_bank_before and change.bank_after == 42
    grown = runs.load_detector(rid, tmp_path)
    after = runs.load_scores(rid, tmp_path)
    np.testing.assert_allclose(after.scores[:2], grown.train_scores_[-2:], rtol=1e-6)
    np.testing.assert_allclose(after.scores[2:], grown.decision_function(test[2:]), rtol=1e-5)
    assert "Patch bank" in change.describe()
    bg.undo_bank_change(rid, tmp_path)
    assert (tmp_path / rid / "scores.npz").read_bytes() == s0


def test_run_with_a_calibration_slice_stores_its_new_scores_and_moves_label_free_thresholds(tmp_path, make_normal):
    rng = np.random.default_rng(5)
    det = _detector(ScorerConfig("knn", k=2), make_normal(rng, 60), calibration_fraction=0.2, calibration_min=5)
    test = np.concatenate([make_normal(rng, 10), make_normal(rng, 4) // 2])
    labels = np.r_[np.zeros(10), np.ones(4)].astype(np.int64)
    rid = _save_run(tmp_path, det, test, labels)
    runs.save_threshold(rid, 9.0, "target_fpr", param=0.1, runs_dir=tmp_path)
    cal_before = runs.load_scores(rid, tmp_path).calibration_scores
    change = bg.add_normals(rid, test[:3], runs_dir=tmp_path, test_images=test)
    assert change.threshold_source == "calibration"
    grown = runs.load_detector(rid, tmp_path, use_saved_threshold=False)
    stored = runs.load_scores(rid, tmp_path)
    np.testing.assert_allclose(stored.calibration_scores, grown.calibration_scores_, rtol=1e-6)
    assert np.all(stored.calibration_scores <= cal_before + 1e-6)
    assert grown.threshold_ == pytest.approx(np.percentile(stored.calibration_scores, 95), rel=1e-5)
    saved = runs.get_run(rid, tmp_path).threshold
    assert saved["policy"] == "target_fpr" and saved["value"] == pytest.approx(change.operating_threshold_after)
    assert np.mean(stored.calibration_scores > saved["value"]) <= 0.1 and "calibration" in change.operating_note
    bg.undo_bank_change(rid, tmp_path)
    np.testing.assert_array_equal(runs.load_scores(rid, tmp_path).calibration_scores, cal_before)
    assert runs.get_run(rid, tmp_path).threshold["value"] == 9.0


def test_patch_detector_with_a_calibration_slice_grows_and_reloads(tmp_path, make_normal):
    rng = np.random.default_rng(7)
    det = _detector(ScorerConfig("patch", max_bank_size=300), make_normal(rng, 60), calibration_fraction=0.2,
                    calibration_min=5)
    assert det.has_calibration and det.calibration_images_ is not None
    grown = det.with_added_normals(make_normal(rng, 3))
    cal = grown.decision_function(det.calibration_images_)
    np.testing.assert_allclose(grown.calibration_scores_, cal, rtol=1e-5)
    assert grown.threshold_source_ == "calibration"
    assert grown.threshold_ == pytest.approx(np.percentile(cal, 95), rel=1e-5)
    assert np.all(grown.calibration_scores_ <= det.calibration_scores_ + 1e-6)
    grown.save(tmp_path / "det")
    back = DOCDetector.load(tmp_path / "det")
    assert back.threshold_ == grown.threshold_ and len(back.scorer_.bank_) == len(grown.scorer_.bank_)
    np.testing.assert_allclose(back.calibration_scores_, grown.calibration_scores_, rtol=1e-6)
