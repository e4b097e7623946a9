"""Issue #5, point 6: 60,000 training images train and score batch by batch, without whole-set float copies.

Images stay ``uint8`` at their stored size; resizing and normalisation happen per batch inside TensorFlow, and the
features are written into one preallocated array. ``tracemalloc`` sees every NumPy allocation (TensorFlow's own
buffers are per batch), so its peak bounds what the Python side holds at once.
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from doc_core.model.backbones import Backbone, BackboneConfig
from doc_core.model.detector import DOCDetector, ScorerConfig
from doc_core.model.training import TRUNK_CACHE_ENV, TrainConfig, trunk_cache_limit

N_NORMAL, N_REFERENCE, N_TEST = 50_000, 10_000, 10_000


def _train_and_score(normal, reference, labels, test):
    cfg = BackboneConfig(name="tiny", input_size=32, weights=None)
    det = DOCDetector(cfg, TrainConfig(epochs=1, batch_size=64), ScorerConfig("knn", k=2, max_bank_size=5_000))
    tracemalloc.start()
    try:
        steps = 0
        for _ in det.fit_steps(normal, reference, labels, ("a", "b", "c", "d")):
            steps += 1
            if steps == 20:  # 20 steps prove the loop streams batches; the rest of the epoch is the same
                det.stop()
        scores = det.decision_function(test)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    n_cal = det.n_calibration  # the held-out calibration slice (10 %) is in no bank
    assert n_cal == len(normal) // 10 and det.bank_.shape[0] == len(normal) - n_cal
    assert scores.shape == (len(test),) and np.isfinite(scores).all()
    return det, peak


@pytest.mark.slow
@pytest.mark.parametrize("cache_mb", [None, "16"])
def test_sixty_thousand_images_train_and_score_without_whole_set_float_copies(monkeypatch, cache_mb):
    """With the default cache budget the frozen layers' float16 output is kept (bounded by the budget); with a
    small budget nothing proportional to the data set is held besides the uint8 images and the feature bank."""
    if cache_mb is None:
        monkeypatch.delenv(TRUNK_CACHE_ENV, raising=False)
    else:
        monkeypatch.setenv(TRUNK_CACHE_ENV, cache_mb)
    rng = np.random.default_rng(0)
    normal = rng.integers(0, 255, (N_NORMAL, 28, 28, 1), dtype=np.uint8)
    reference = rng.integers(0, 255, (N_REFERENCE, 28, 28, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(4), N_REFERENCE // 4)
    test = rng.integers(0, 255, (N_TEST, 28, 28, 1), dtype=np.uint8)
    one_float_copy = (N_NORMAL + N_REFERENCE) * 32 * 32 * 3 * 4  # one resized float32 copy of the training set
    t0 = time.perf_counter()
    det, peak = _train_and_score(normal, reference, labels, test)
    bank = det.bank_.nbytes
    cache = det.backbone_.trunk_cache_bytes(N_NORMAL + N_REFERENCE)
    if cache_mb is None:
        assert cache <= trunk_cache_limit() and peak < cache + 2 * bank + 160 * 1024**2, (peak, cache, bank)
    else:
        assert cache > trunk_cache_limit()  # so the frozen layers ran per batch
        assert peak < 2 * bank + 160 * 1024**2, (peak, bank)  # + one kNN block's working memory
    assert peak < one_float_copy / 2, (peak, one_float_copy)
    print(f"\n60,000 training + 10,000 test images, cache budget {cache_mb or 'default'} MiB: tracemalloc peak "
          f"{peak / 1024**2:.0f} MiB (frozen-layer cache {cache / 1024**2:.0f} MiB, bank {bank / 1024**2:.0f} MiB; "
          f"one float copy would be {one_float_copy / 1024**2:.0f} MiB), {time.perf_counter() - t0:.1f} s")


def test_streaming_the_frozen_layers_trains_like_the_cache(monkeypatch):
    rng = np.random.default_rng(2)
    normal = rng.integers(0, 255, (64, 28, 28, 1), dtype=np.uint8)
    reference = rng.integers(0, 255, (64, 28, 28, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(2), 32)
    losses = []
    for mb in ("2048", "0"):
        monkeypatch.setenv(TRUNK_CACHE_ENV, mb)
        det = DOCDetector(BackboneConfig(name="tiny", input_size=32, weights=None),
                          TrainConfig(epochs=2, batch_size=16))
        det.fit(normal, reference, labels)
        losses.append([(r.l_d, r.l_c) for r in det.history_])
    np.testing.assert_allclose(losses[0], losses[1], rtol=2e-3, atol=1e-4)


def test_embed_and_trunk_features_fill_one_preallocated_array():
    """No list of per-batch arrays concatenated at the end (that held two copies of the features at once)."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (3_000, 16, 16, 1), dtype=np.uint8)
    b = Backbone(BackboneConfig(name="tiny", input_size=32, weights=None))
    b.embed(images[:10])  # trace the step function first
    tracemalloc.start()
    try:
        feats = b.embed(images, batch_size=100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert feats.shape == (3_000, b.feature_dim) and feats.dtype == np.float32
    assert peak < 1.3 * feats.nbytes + 1024**2, (peak, feats.nbytes)
    assert b.embed(images[:0]).shape == (0, b.feature_dim)
