"""The patch scorer inside DOCDetector: scores, defect maps, scorer swaps, persistence, no-reference training."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from doc_core import BackboneConfig, DetectorFormatError, DOCDetector, ScorerConfig, TrainConfig
from doc_core.evaluation.metrics import roc_auc
from doc_core.model.backbones import DEFAULT_PATCH_LAYERS
from doc_core.scoring.patch import DEFAULT_IMAGE_SCORE

TINY = BackboneConfig(name="tiny", input_size=32, weights=None)
PATCH = ScorerConfig("patch", max_bank_size=400)


def plant(images: np.ndarray, rng: np.random.Generator, size: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Copies with one bright square each, and the squares' masks (n, h, w) bool."""
    out, masks = images.copy(), np.zeros(images.shape[:3], bool)
    for im, m in zip(out, masks):
        y, x = rng.integers(2, images.shape[1] - size - 2, 2)
        im[y:y + size, x:x + size] = 250
        m[y:y + size, x:x + size] = True
    return out, masks


@pytest.fixture(scope="module")
def data(make_normal):
    rng = np.random.default_rng(0)
    normal = make_normal(rng, 48)
    test_normal = make_normal(rng, 12)
    anomalous, masks = plant(make_normal(rng, 12), rng)
    return normal, test_normal, anomalous, masks


@pytest.fixture(scope="module")
def patch_det(data) -> DOCDetector:
    return DOCDetector(TINY, TrainConfig(epochs=0), PATCH).fit(data[0], None, None)


def test_patch_scores_are_the_scorers_on_the_patch_maps(data, patch_det):
    normal, test_normal, anomalous, _ = data
    images = np.concatenate([test_normal, anomalous])
    scores = patch_det.decision_function(images)
    maps = patch_det.backbone_.patch_maps(images, DEFAULT_PATCH_LAYERS["tiny"])
    np.testing.assert_allclose(scores, patch_det.scorer_.score_samples(maps), rtol=1e-5)
    both, feats = patch_det.score_images(images, batch_size=5)
    np.testing.assert_allclose(both, scores, rtol=1e-5)
    np.testing.assert_allclose(feats, patch_det.embed(images), rtol=1e-5)
    assert roc_auc(np.r_[np.zeros(12), np.ones(12)], scores) >= 0.9
    assert patch_det.bank_.shape == (48, patch_det.backbone_.feature_dim)  # pooled features kept for neighbours
    assert len(patch_det.scorer_.bank_) <= 400 and patch_det.train_scores_.shape == (48,)
    assert patch_det.threshold_ == pytest.approx(np.percentile(patch_det.train_scores_, 95), rel=1e-6)
    with pytest.raises(ValueError, match="decision_function"):
        patch_det.score_features(feats)


def test_defect_maps_put_the_planted_square_under_the_hottest_pixels(data, patch_det):
    _, _, anomalous, masks = data
    maps = patch_det.anomaly_maps(anomalous)
    assert maps.shape == anomalous.shape[:3] and maps.dtype == np.float32
    hits = 0
    for m, mask in zip(maps, masks):
        y, x = np.unravel_index(np.argmax(m), m.shape)
        grown = np.zeros_like(mask)
        ys, xs = np.nonzero(mask)
        grown[max(ys.min() - 4, 0):ys.max() + 5, max(xs.min() - 4, 0):xs.max() + 5] = True  # a patch's reach
        hits += bool(grown[y, x])
    assert hits >= 9  # of 12; a random pixel lands in the grown square about 1 time in 5
    assert roc_auc(masks.ravel().astype(int), maps.ravel()) >= 0.8
    assert patch_det.anomaly_maps(anomalous[:2], size=(64, 48)).shape == (2, 64, 48)


def test_maps_need_a_patch_detector_and_scorer_swaps_go_both_ways(data, patch_det):
    normal, test_normal, _, _ = data
    knn = patch_det.with_scorer(ScorerConfig("knn"))
    assert not knn.is_patch and knn.bank_ is patch_det.bank_
    with pytest.raises(ValueError, match="Grad-CAM"):
        knn.anomaly_maps(test_normal)
    with pytest.raises(ValueError, match="normal training images"):
        knn.with_scorer(PATCH)
    back = knn.with_scorer(PATCH, normal=normal)
    np.testing.assert_allclose(back.decision_function(test_normal), patch_det.decision_function(test_normal),
                               rtol=1e-5)


def test_patch_detector_round_trip(tmp_path, data, patch_det):
    _, test_normal, anomalous, _ = data
    images = np.concatenate([test_normal, anomalous])
    path = patch_det.save(tmp_path / "det")
    assert (path / "patch_bank.npz").is_file()
    loaded = DOCDetector.load(path)
    assert loaded.is_patch and loaded.scorer == patch_det.scorer
    np.testing.assert_allclose(loaded.decision_function(images), patch_det.decision_function(images), rtol=1e-5)
    np.testing.assert_array_equal(loaded.train_scores_, patch_det.train_scores_)
    assert loaded.threshold_ == patch_det.threshold_
    (path / "patch_bank.npz").unlink()
    with pytest.raises(DetectorFormatError):
        DOCDetector.load(path)


def test_patch_layers_are_checked(data):
    det = DOCDetector(TINY, TrainConfig(epochs=0), ScorerConfig("patch", patch_layers=("nope",)))
    with pytest.raises(ValueError, match="patch layer 'nope'"):
        det.fit(data[0], None, None)
    assert ScorerConfig.from_dict(ScorerConfig("patch", patch_layers=("conv2_relu",)).to_dict()) == \
        ScorerConfig("patch", patch_layers=("conv2_relu",))
    with pytest.raises(ValueError, match="odd"):
        ScorerConfig.from_dict({"name": "patch", "neighbourhood": 2})


def test_image_score_config_default_round_trip_and_old_files():
    assert ScorerConfig("patch").image_score == "top25" == DEFAULT_IMAGE_SCORE
    for how in ("max", "top10", "top25", "top50", "mean"):
        cfg = ScorerConfig("patch", image_score=how)
        assert ScorerConfig.from_dict(cfg.to_dict()) == cfg
    old = ScorerConfig("patch").to_dict()
    del old["image_score"]  # a detector saved before the option existed was fitted with the largest patch score
    assert ScorerConfig.from_dict(old).image_score == "max"
    with pytest.raises(ValueError, match="image_score"):
        ScorerConfig.from_dict({"name": "patch", "image_score": "median"})


def test_detector_scores_with_its_image_score_rule(data):
    normal, test_normal, anomalous, _ = data
    cfg = ScorerConfig("patch", patch_layers=("conv3_relu",), max_bank_size=300, image_score="max")
    det = DOCDetector(TINY, TrainConfig(epochs=0), cfg, calibration_fraction=0).fit(normal, None, None)
    images = np.concatenate([test_normal[:4], anomalous[:4]])
    patch_scores = det.scorer_.patch_scores(det.backbone_.patch_maps(images, ("conv3_relu",)))
    np.testing.assert_allclose(det.decision_function(images), patch_scores.max(axis=(1, 2)), rtol=1e-5)
    mean = det.with_scorer(replace(cfg, image_score="mean"), normal=normal)
    np.testing.assert_allclose(mean.decision_function(images), patch_scores.mean(axis=(1, 2)), rtol=1e-4)


def test_doc_training_without_reference_then_patch_scoring(data):
    """No labelled reference: the detector trains with the preservation loss and still finds the squares."""
    normal, test_normal, anomalous, _ = data
    det = DOCDetector(TINY, TrainConfig(batch_size=16, epochs=2, seed=0),
                      ScorerConfig("patch", patch_layers=("conv3_relu",), max_bank_size=300)).fit(normal, None, None)
    assert det.reference_names_ == () and len(det.history_) == 2 * 3
    assert all(r.l_d >= 0 for r in det.history_)
    scores = det.decision_function(np.concatenate([test_normal, anomalous]))
    assert roc_auc(np.r_[np.zeros(12), np.ones(12)], scores) >= 0.8
