"""compare_methods: every baseline and the DOC detector on one split, with the tiny backbone and synthetic images."""

from __future__ import annotations

import numpy as np
import pytest

from doc_core.data import OneClassSplit
from doc_core.evaluation.benchmark import COMPARE_METHODS, compare_methods
from doc_core.model import backbones
from doc_core.model.detector import DOCDetector, ScorerConfig
from doc_core.model.training import TrainConfig


@pytest.fixture(scope="module")
def split(make_normal, make_reference, make_anomalous) -> OneClassSplit:
    rng = np.random.default_rng(0)
    ref, ref_labels = make_reference(rng, 20)
    test = np.concatenate([make_normal(rng, 20), make_anomalous(rng, make_normal(rng, 20))])
    return OneClassSplit(train_normal=make_normal(rng, 60), reference=ref, reference_labels=ref_labels,
                         reference_names=("a", "b", "c"), test_images=test, test_labels=np.repeat([0, 1], 20),
                         test_classes=("normal",) * 20 + ("anomaly",) * 20)


@pytest.fixture(scope="module")
def detector(split) -> DOCDetector:
    from doc_core.model.backbones import BackboneConfig

    return DOCDetector(BackboneConfig(name="tiny", input_size=32, weights=None), TrainConfig(epochs=1, batch_size=16),
                       ScorerConfig("knn")).fit_split(split)


def test_every_method_scored_and_timed(split, detector):
    feats = detector.embed(split.test_images)
    stored = detector.score_features(feats)
    out = compare_methods(split, detector, test_scores=stored, test_features=feats, timing_images=16, ae_epochs=1)
    assert [m.name for m in out] == list(COMPARE_METHODS)
    for m in out:
        assert m.scores is not None and m.scores.shape == (40,), m.name
        assert 0.0 <= m.auc <= 1.0 and m.score_ms_per_image > 0, m.name
        assert m.fit_s is not None and m.fit_s >= 0, m.name
    by = {m.name: m for m in out}
    np.testing.assert_array_equal(by["DOC k-NN"].scores, stored)  # the stored scores, not recomputed
    lof = detector.with_scorer(ScorerConfig("lof")).score_features(feats)
    np.testing.assert_allclose(by["DOC LOF"].scores, lof, rtol=1e-5)
    assert by["raw-pixel k-NN"].auc > 0.7  # the planted patches are visible in raw pixels


def test_missing_pretrained_weights_skip_that_method(split, detector, monkeypatch):
    def missing(*args, **kwargs):
        raise backbones.WeightsNotFoundError("no weights here")

    monkeypatch.setattr(DOCDetector, "fit_split", missing)
    out = compare_methods(split, detector, timing_images=8, ae_epochs=1)
    pre = out[1]
    assert pre.name == "pretrained-feature k-NN" and pre.scores is None and pre.auc is None
    assert "no weights here" in pre.note and "skipped" in pre.note
    assert all(m.scores is not None for m in out if m is not pre)
