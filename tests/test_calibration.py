"""Tests of the calibration slice: held-out normal images that set the detector's threshold (issue 12, point 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from doc_core import BackboneConfig, DetectorFormatError, DOCDetector, ScorerConfig, TrainConfig
from doc_core.model.calibration import MIN_CALIBRATION, calibration_size, calibration_split
from doc_core.scoring.knn import make_scorer

TINY = BackboneConfig(name="tiny", input_size=32, weights=None)
N_NORMAL = 64
N_CAL = 8  # max(ceil(0.1 * 64), 8)


def detector(seed: int = 0, scorer: ScorerConfig = ScorerConfig(), fraction: float = 0.1, minimum: int = N_CAL,
             epochs: int = 0) -> DOCDetector:
    return DOCDetector(TINY, TrainConfig(batch_size=16, epochs=epochs, learning_rate=1e-3, seed=seed), scorer,
                       calibration_fraction=fraction, calibration_min=minimum)


@pytest.fixture(scope="module")
def normal(make_normal):
    return make_normal(np.random.default_rng(7), N_NORMAL)


@pytest.fixture(scope="module")
def fitted(normal):
    """A trained knn detector with k=1, so an image inside the bank scores exactly 0."""
    return detector(scorer=ScorerConfig(k=1), epochs=1).fit(normal, None, None)


# ------------------------------------------------------------------------------------------------------- the split


def test_split_is_disjoint_complete_and_sized():
    for n in (90, 100, 301, 1000):
        s = calibration_split(n, 0.1, MIN_CALIBRATION, seed=3)
        m = max(int(np.ceil(0.1 * n)), MIN_CALIBRATION)
        assert len(s.calibration_index) == m and s.enabled and s.note == ""
        assert not set(s.calibration_index) & set(s.train_index)
        np.testing.assert_array_equal(np.sort(np.r_[s.calibration_index, s.train_index]), np.arange(n))


def test_split_is_seeded():
    a, b, c = (calibration_split(200, 0.1, 30, seed) for seed in (0, 0, 1))
    np.testing.assert_array_equal(a.calibration_index, b.calibration_index)
    assert not np.array_equal(a.calibration_index, c.calibration_index)


def test_split_off_for_zero_and_tiny_data():
    off = calibration_split(500, 0.0)
    assert not off.enabled and "fraction 0" in off.note and len(off.train_index) == 500
    tiny = calibration_split(89, 0.1, 30)  # 30 held out would leave 59 < 60 to train on
    assert not tiny.enabled and "turned off" in tiny.note and "30 of 89" in tiny.note
    np.testing.assert_array_equal(tiny.train_index, np.arange(89))
    assert calibration_split(90, 0.1, 30).enabled
    assert calibration_size(64, 0.1) == (0, calibration_size(64, 0.1)[1])


@pytest.mark.parametrize("fraction, minimum", [(-0.1, 30), (0.6, 30), (float("nan"), 30), (0.1, 0)])
def test_impossible_settings_are_refused(fraction, minimum):
    with pytest.raises(ValueError):
        DOCDetector(TINY, calibration_fraction=fraction, calibration_min=minimum)


# ------------------------------------------------------------------------------------------------------- fitting


def test_slice_is_neither_trained_on_nor_in_the_bank(normal, fitted):
    det = fitted
    assert len(det.calibration_index_) == N_CAL and det.n_calibration == N_CAL
    assert not set(det.calibration_index_) & set(det.train_index_)
    assert det.bank_.shape == (N_NORMAL - N_CAL, 32)
    assert len(det.history_) == (N_NORMAL - N_CAL) // 16  # one epoch over the training images only (64 would be 4)
    np.testing.assert_allclose(det.bank_, det.embed(normal[det.train_index_]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(det.calibration_images_, normal[det.calibration_index_])


def test_slice_does_not_leak_into_the_bank(normal, fitted):
    """With k=1 an image that is in the bank scores 0: every calibration image must score clearly above that."""
    det = fitted
    feats = det.embed(normal[det.calibration_index_])
    np.testing.assert_allclose(det.calibration_features_, feats, rtol=1e-5, atol=1e-6)
    d = np.sqrt(((det.bank_[:, None].astype(np.float64) - feats[None]) ** 2).sum(-1))
    assert d.min() > 1e-4
    assert det.calibration_scores_.min() > 1e-4
    assert np.median(det.calibration_scores_) > np.median(det.train_scores_) * 0.5


def test_threshold_comes_from_calibration_scores(fitted):
    det = fitted
    assert det.calibration_scores_.dtype == np.float32 and det.calibration_scores_.shape == (N_CAL,)
    np.testing.assert_allclose(det.calibration_scores_, det.score_features(det.calibration_features_), rtol=1e-6)
    assert det.threshold_source_ == "calibration"
    assert det.threshold_ == pytest.approx(np.percentile(det.calibration_scores_, 95.0))
    assert det.threshold_ != pytest.approx(np.percentile(det.train_scores_, 95.0))


def test_same_seed_same_slice_other_seed_other_slice(normal, fitted):
    again = detector(seed=0, scorer=ScorerConfig(k=1)).fit(normal, None, None)
    other = detector(seed=1, scorer=ScorerConfig(k=1)).fit(normal, None, None)
    np.testing.assert_array_equal(again.calibration_index_, fitted.calibration_index_)
    assert not np.array_equal(other.calibration_index_, fitted.calibration_index_)


def test_fraction_zero_turns_calibration_off(normal):
    det = detector(fraction=0.0).fit(normal, None, None)
    assert not det.has_calibration and det.calibration_scores_ is None and det.n_calibration == 0
    assert det.bank_.shape[0] == N_NORMAL and det.threshold_source_ == "train"
    assert det.threshold_ == pytest.approx(np.percentile(det.train_scores_, 95.0))


def test_tiny_data_turns_calibration_off_with_a_reason(normal):
    det = detector(minimum=MIN_CALIBRATION).fit(normal, None, None)  # 30 of 64 would leave 34 < 60
    assert not det.has_calibration and det.bank_.shape[0] == N_NORMAL
    assert "turned off" in det.calibration_note_ and det.threshold_source_ == "train"


def test_patch_scorer_calibrates_on_held_out_images(normal):
    det = detector(scorer=ScorerConfig("patch", max_bank_size=500)).fit(normal, None, None)
    assert len(det.train_scores_) == N_NORMAL - N_CAL
    np.testing.assert_allclose(det.calibration_scores_, det.decision_function(normal[det.calibration_index_]),
                               rtol=1e-5)
    assert det.threshold_ == pytest.approx(np.percentile(det.calibration_scores_, 95.0))


# ------------------------------------------------------------------------------------------------------- refresh


def test_refresh_calibration_after_the_bank_grows(fitted):
    det = detector(scorer=ScorerConfig(k=1))
    det.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_")})
    before = det.threshold_
    # the calibration images join the bank (what adding confirmed normals does): with k=1 they now score 0
    det.bank_ = np.vstack([fitted.bank_, fitted.calibration_features_])
    det.scorer_ = make_scorer("knn", 1).fit(det.bank_)
    det.train_scores_ = det.scorer_.training_scores()
    det.refresh_calibration()
    np.testing.assert_allclose(det.calibration_scores_, 0.0, atol=1e-3)
    assert det.threshold_ == pytest.approx(np.percentile(det.calibration_scores_, 95.0))
    assert det.threshold_ < before and det.threshold_source_ == "calibration"
    assert fitted.threshold_ == before  # the fixture's own detector is untouched


def test_refresh_without_calibration_uses_training_scores(normal):
    det = detector(fraction=0.0).fit(normal, None, None)
    det.threshold_ = 123.0
    det.refresh_calibration()
    assert det.threshold_ == pytest.approx(np.percentile(det.train_scores_, 95.0)) and det.threshold_source_ == "train"


def test_with_scorer_carries_the_slice(normal, fitted):
    lof = fitted.with_scorer(ScorerConfig("lof", k=5))
    np.testing.assert_array_equal(lof.calibration_index_, fitted.calibration_index_)
    np.testing.assert_allclose(lof.calibration_scores_, lof.score_features(fitted.calibration_features_), rtol=1e-6)
    assert lof.threshold_ == pytest.approx(np.percentile(lof.calibration_scores_, 95.0))
    assert fitted.with_scorer(ScorerConfig("lof", k=5), threshold=1.5).threshold_source_ == "manual"
    patch = fitted.with_scorer(ScorerConfig("patch", max_bank_size=500), normal=normal)  # all normals given
    assert len(patch.train_scores_) == N_NORMAL - N_CAL  # the slice stays out of the patch bank
    assert patch.threshold_source_ == "calibration" and patch.calibration_scores_.min() > 0


# ------------------------------------------------------------------------------------------------------- saving


def test_save_load_round_trip(tmp_path, fitted):
    fitted.save(tmp_path / "det")
    loaded = DOCDetector.load(tmp_path / "det")
    assert loaded.calibration_fraction == 0.1 and loaded.calibration_min == N_CAL
    assert loaded.threshold_ == fitted.threshold_ and loaded.threshold_source_ == "calibration"
    for name in ("calibration_index_", "train_index_", "calibration_features_", "calibration_scores_"):
        np.testing.assert_allclose(getattr(loaded, name), getattr(fitted, name), rtol=1e-6)
    assert loaded.calibration_images_ is None  # knn detectors keep features only
    loaded.refresh_calibration()
    assert loaded.threshold_ == pytest.approx(fitted.threshold_)


def test_patch_round_trip_keeps_the_images(tmp_path, normal):
    det = detector(scorer=ScorerConfig("patch", max_bank_size=500)).fit(normal, None, None)
    det.save(tmp_path / "p")
    loaded = DOCDetector.load(tmp_path / "p")
    np.testing.assert_array_equal(loaded.calibration_images_, normal[det.calibration_index_])
    loaded.refresh_calibration()
    np.testing.assert_allclose(loaded.calibration_scores_, det.calibration_scores_, rtol=1e-5)


def test_old_format_detector_still_loads(tmp_path, fitted):
    """A detector saved before calibration existed: no calibration.npz, no calibration keys; threshold as saved."""
    fitted.save(tmp_path / "old")
    (tmp_path / "old" / "calibration.npz").unlink()
    doc = json.loads((tmp_path / "old" / "detector.json").read_text())
    for key in ("calibration", "threshold_source"):
        doc.pop(key)
    for key in ("calibration_fraction", "calibration_min"):
        doc["config"].pop(key)
    doc["threshold"] = 0.123
    (tmp_path / "old" / "detector.json").write_text(json.dumps(doc))
    old = DOCDetector.load(tmp_path / "old")
    assert not old.has_calibration and old.calibration_scores_ is None and old.calibration_index_ is None
    assert old.threshold_ == 0.123 and old.threshold_source_ == "train" and old.calibration_fraction == 0.0
    assert "without a calibration slice" in old.calibration_note_
    old.refresh_calibration()
    assert old.threshold_ == pytest.approx(np.percentile(old.train_scores_, 95.0))


def test_overlapping_indices_are_refused(tmp_path, fitted):
    fitted.save(tmp_path / "bad")
    path = tmp_path / "bad" / "calibration.npz"
    arrays = dict(np.load(path))
    arrays["index"] = arrays["train_index"][:N_CAL]  # the slice "is" part of the bank
    np.savez(path, **arrays)
    with pytest.raises(DetectorFormatError, match="split"):
        DOCDetector.load(tmp_path / "bad")


def test_missing_calibration_file_is_a_clear_error(tmp_path, fitted):
    fitted.save(tmp_path / "gone")
    (tmp_path / "gone" / "calibration.npz").unlink()
    with pytest.raises(DetectorFormatError, match="calibration"):
        DOCDetector.load(tmp_path / "gone")
    assert Path(tmp_path / "gone" / "bank.npz").exists()


def test_training_images_leave_the_slice_out(normal, fitted):
    np.testing.assert_array_equal(fitted.training_images(normal), normal[fitted.train_index_])
    assert len(fitted.training_images(normal)) == N_NORMAL - N_CAL
    other = normal[:10]  # not the images fit was given: returned as they are
    assert fitted.training_images(other) is other
