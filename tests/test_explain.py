"""Tests of doc_core.explain.gradcam: Grad-CAM of the k-NN anomaly score and heatmap overlays, on the tiny backbone."""

from __future__ import annotations

import numpy as np
import pytest

from doc_core import BackboneConfig, DOCDetector, ScorerConfig, TrainConfig
from doc_core.explain import GradCAM, explainable_layers, overlay

TINY = BackboneConfig(name="tiny", input_size=32, weights=None)
PATCH = 6


@pytest.fixture(scope="module")
def detector(make_normal, make_reference) -> DOCDetector:
    rng = np.random.default_rng(0)
    reference, labels = make_reference(rng, 16)
    det = DOCDetector(TINY, TrainConfig(batch_size=16, epochs=3, seed=0))
    return det.fit(make_normal(rng, 64), reference, labels)


def patched(make_normal, seed: int, n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Normal images with a bright square at a random place in each, and the squares' masks (n, 32, 32)."""
    rng = np.random.default_rng(seed)
    images = make_normal(rng, n)
    masks = np.zeros(images.shape[:3], bool)
    for im, mask in zip(images, masks):
        y, x = rng.integers(0, 32 - PATCH + 1, 2)
        im[y:y + PATCH, x:x + PATCH] = 250
        mask[y:y + PATCH, x:x + PATCH] = True
    return images, masks


def test_shapes_dtypes_and_range(detector, make_normal):
    cam = GradCAM(detector)
    assert cam.layer == "conv3_relu" and cam.map_shape == (4, 4, 32) and cam.matches_detector
    images, _ = patched(make_normal, 0, n=10)
    heat, scores = cam.explain(images, batch_size=4)
    assert heat.shape == (10, 32, 32) and heat.dtype == np.float32
    assert scores.shape == (10,) and scores.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert np.allclose(heat.max(axis=(1, 2)), 1.0)  # normalised per image (none of these maps is all zero)
    again, _ = cam.explain(images, batch_size=64)
    np.testing.assert_allclose(again, heat, atol=1e-5)


def test_heatmaps_at_the_input_size_for_gray_and_rgb(detector):
    rng = np.random.default_rng(1)
    cam = GradCAM(detector)
    gray = rng.integers(0, 255, (3, 28, 20), dtype=np.uint8)  # (n, h, w) gray, not the network's size
    heat, scores = cam.explain(gray)
    assert heat.shape == (3, 28, 20) and scores.shape == (3,)
    rgb = rng.integers(0, 255, (2, 40, 40, 3), dtype=np.uint8)
    assert cam.explain(rgb)[0].shape == (2, 40, 40)
    empty_heat, empty_scores = cam.explain(np.zeros((0, 28, 28, 1), np.uint8))
    assert empty_heat.shape == (0, 28, 28) and empty_scores.shape == (0,)
    with pytest.raises(ValueError, match="uint8"):
        cam.explain(gray.astype(np.float32))


def test_scores_equal_decision_function(detector, make_normal):
    images, _ = patched(make_normal, 2, n=12)
    images = np.concatenate([images, make_normal(np.random.default_rng(3), 12)])
    _, scores = GradCAM(detector).explain(images, batch_size=7)
    np.testing.assert_allclose(scores, detector.decision_function(images), rtol=1e-4, atol=1e-5)


def test_other_scorer_explains_the_knn_score(detector, make_normal):
    lof = detector.with_scorer(ScorerConfig("lof", k=10))
    cam = GradCAM(lof)
    assert not cam.matches_detector and cam.k == 5
    images = make_normal(np.random.default_rng(4), 5)
    _, scores = cam.explain(images)
    np.testing.assert_allclose(scores, detector.with_scorer(ScorerConfig("knn", k=5)).decision_function(images),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_heat_lies_on_the_planted_patch(detector, make_normal, seed):
    """A bright patch is the anomaly: on average over the patch it is hotter than the rest, in every image."""
    images, masks = patched(make_normal, seed)
    heat, _ = GradCAM(detector).explain(images)
    inside = np.array([h[m].mean() for h, m in zip(heat, masks)])
    outside = np.array([h[~m].mean() for h, m in zip(heat, masks)])
    assert np.mean(inside > outside) >= 0.9
    assert inside.mean() > 1.5 * outside.mean()


@pytest.mark.parametrize("seed", [20, 21])
def test_finer_layer_peaks_on_the_patch(detector, make_normal, seed):
    """With the stride-4 map the hottest pixel lies on the patch or within 4 pixels of it in nearly every image."""
    images, masks = patched(make_normal, seed)
    heat, _ = GradCAM(detector, layer="conv2_relu").explain(images)
    near = []
    for h, m in zip(heat, masks):
        y, x = np.unravel_index(h.argmax(), h.shape)
        ys, xs = np.nonzero(m)
        near.append(ys.min() - 4 <= y <= ys.max() + 4 and xs.min() - 4 <= x <= xs.max() + 4)
    assert np.mean(near) >= 0.9


def test_layers(detector):
    assert explainable_layers(detector) == ["conv1", "conv1_relu", "conv2", "conv2_relu", "conv3", "conv3_relu"]
    assert GradCAM(detector, layer="conv1").map_shape == (16, 16, 8)
    with pytest.raises(ValueError, match="not a layer"):
        GradCAM(detector, layer="no_such_layer")
    with pytest.raises(ValueError, match="comes after the feature layer"):
        GradCAM(detector, layer="feature_pool")
    with pytest.raises(ValueError, match="input layer"):
        GradCAM(detector, layer=detector.backbone_.model.layers[0].name)
    with pytest.raises(RuntimeError, match="not fitted"):
        GradCAM(DOCDetector(TINY))


def test_overlay_shapes_and_opacity():
    rng = np.random.default_rng(5)
    gray = rng.integers(0, 255, (28, 28), dtype=np.uint8)
    heat = rng.random((7, 7)).astype(np.float32)
    for image in (gray, gray[..., None], np.repeat(gray[..., None], 3, axis=-1)):
        out = overlay(image, heat, 0.5)
        assert out.shape == (28, 28, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay(gray, heat, 0.0), np.repeat(gray[..., None], 3, axis=-1))
    hot = overlay(np.zeros((4, 4), np.uint8), np.ones((4, 4)), 1.0)
    assert hot[0, 0, 0] > 100 and hot[0, 0, 2] < 50  # JET's 1.0 is red, in RGB order
    for bad in (-0.1, 1.5, float("nan"), "x"):
        with pytest.raises(ValueError, match="opacity"):
            overlay(gray, heat, bad)
    with pytest.raises(ValueError, match="uint8"):
        overlay(gray.astype(np.float32), heat)
    with pytest.raises(ValueError, match="heatmap"):
        overlay(gray, np.full((28, 28), np.nan))


def test_map_to_unit_uses_one_fixed_scale():
    from doc_core.explain import map_to_unit

    maps = np.array([[0.5, 1.0], [2.0, 3.5]], np.float32)
    np.testing.assert_allclose(map_to_unit(maps, 1.0, 3.0), [[0.0, 0.0], [0.5, 1.0]])
    assert map_to_unit(maps, 1.0, 3.0).dtype == np.float32
    flat = np.full((2, 2), 0.9, np.float32)  # a normal image: below low everywhere, stays cool (not stretched to 1)
    assert map_to_unit(flat, 1.0, 3.0).max() == 0.0
    with pytest.raises(ValueError, match="low < high"):
        map_to_unit(maps, 2.0, 2.0)
