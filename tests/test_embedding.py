"""Tests of doc_core.explain.embedding: t-SNE maps, the explorer's three feature sets and the nearest normal images."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from doc_core import BackboneConfig, DOCDetector, ScorerConfig, TrainConfig, WeightsNotFoundError
from doc_core.explain.embedding import (FEATURE_SET_LABELS, FEATURE_SETS, feature_sets, nearest_normal,
                                        pretrained_backbone, raw_pixel_features, tsne_2d)
from doc_core.scoring import knn_distances

TINY = BackboneConfig(name="tiny", input_size=32, weights=None)


def clusters(seed: int, per: int = 40, dim: int = 20, spread: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Three tight unit-variance Gaussian clusters around random centres (``spread`` apart per axis); (x, labels)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, spread, (3, dim))
    x = np.concatenate([c + rng.normal(0, 1, (per, dim)) for c in centers]).astype(np.float32)
    return x, np.repeat(np.arange(3), per)


def separated(emb: np.ndarray, labels: np.ndarray) -> bool:
    """Every point's 5 nearest neighbours in the map are of its own cluster."""
    _, idx = knn_distances(emb, emb, 5, exclude_self=True)
    return bool(np.all(labels[idx] == labels[:, None]))


@pytest.fixture(scope="module")
def detector(make_normal, make_reference) -> DOCDetector:
    rng = np.random.default_rng(0)
    reference, labels = make_reference(rng, 8)
    return DOCDetector(TINY, TrainConfig(batch_size=8, epochs=1, seed=0)).fit(make_normal(rng, 24), reference, labels)


def test_tsne_shape_dtype_and_determinism():
    x, _ = clusters(0)
    a = tsne_2d(x, seed=3)
    assert a.shape == (120, 2) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, tsne_2d(x, seed=3))
    assert not np.allclose(a, tsne_2d(x, seed=4))


@pytest.mark.parametrize("seed", [0, 1])
def test_separated_clusters_stay_separated(seed):
    x, labels = clusters(seed)
    assert separated(tsne_2d(x, seed=seed), labels)


def test_scikit_learn_fallback(monkeypatch):
    monkeypatch.setitem(sys.modules, "openTSNE", None)  # makes `import openTSNE` raise ImportError
    x, labels = clusters(2, per=20)
    emb = tsne_2d(x, seed=0)
    assert emb.shape == (60, 2) and emb.dtype == np.float32
    assert separated(emb, labels)


def test_tsne_edge_cases():
    assert tsne_2d(np.zeros((0, 5))).shape == (0, 2)
    assert tsne_2d(np.ones((1, 5))).tolist() == [[0.0, 0.0]]
    assert not tsne_2d(np.ones((30, 5))).any()  # identical points: zeros, not NaN
    small = tsne_2d(np.random.default_rng(0).normal(size=(4, 3)))  # perplexity capped, PCA to 3 dims
    assert small.shape == (4, 2) and np.isfinite(small).all()
    with pytest.raises(ValueError, match="2-D"):
        tsne_2d(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        tsne_2d(np.full((5, 2), np.nan))


def test_feature_sets(detector, make_normal):
    images = make_normal(np.random.default_rng(1), 7)
    sets = feature_sets(detector, images)
    assert tuple(sets) == FEATURE_SETS and set(FEATURE_SET_LABELS) == set(FEATURE_SETS)
    assert sets["raw"].shape == (7, 32 * 32) and sets["raw"].max() <= 1.0
    np.testing.assert_allclose(sets["raw"], raw_pixel_features(images))
    assert sets["pretrained"].shape == sets["doc"].shape == (7, detector.backbone_.feature_dim)
    assert all(v.dtype == np.float32 for v in sets.values())
    np.testing.assert_allclose(sets["doc"], detector.embed(images), rtol=1e-5, atol=1e-6)
    # the tiny backbone's pretrained weights are its seeded initialisation; DOC training has moved away from it
    assert not np.allclose(sets["pretrained"], sets["doc"], atol=1e-3)
    again = feature_sets(detector, images, pretrained=pretrained_backbone(detector))
    np.testing.assert_allclose(again["pretrained"], sets["pretrained"], rtol=1e-5, atol=1e-6)


def test_missing_pretrained_weights_are_named(detector, tmp_path):
    det = DOCDetector(BackboneConfig(name="mobilenet_v2", input_size=32, weights=str(tmp_path / "gone.weights.h5")))
    det.bank_ = detector.bank_  # enough of a fitted detector for this check
    with pytest.raises(WeightsNotFoundError, match="pretrained .*gone.weights.h5"):
        pretrained_backbone(det)


def test_nearest_normal_indexes_the_training_images(detector):
    sub = detector.with_scorer(ScorerConfig("knn", max_bank_size=10))
    queries = detector.bank_[[3, 17]] + 1e-4
    dist, idx = nearest_normal(sub, queries, n=3)
    assert dist.shape == idx.shape == (2, 3) and idx.dtype == np.int64
    assert idx[:, 0].tolist() == [3, 17]  # rows of the full bank, even though the scorer keeps only 10 of them
    assert np.all(np.diff(dist, axis=1) >= 0)
    assert nearest_normal(detector, queries, n=1000)[1].shape == (2, len(detector.bank_))
    with pytest.raises(ValueError, match="shape"):
        nearest_normal(detector, np.zeros((2, 3), np.float32))
