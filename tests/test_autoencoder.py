"""The convolutional autoencoder baseline: shapes, signs, determinism, and that it finds planted anomalies."""

from __future__ import annotations

import random

import numpy as np
import pytest
import tensorflow as tf

from doc_core.evaluation.autoencoder import ConvAutoencoder
from doc_core.evaluation.metrics import roc_auc


@pytest.fixture(scope="module")
def data(make_normal, make_anomalous):
    rng = np.random.default_rng(0)
    train = make_normal(rng, 200)
    test_normal = make_normal(rng, 40)
    test_anomalous = make_anomalous(rng, make_normal(rng, 40))
    return train, np.concatenate([test_normal, test_anomalous]), np.repeat([0, 1], 40)


@pytest.fixture(scope="module")
def fitted(data):
    return ConvAutoencoder(image_size=32, epochs=5, batch_size=32).fit(data[0])


def test_fit_returns_self_and_records_history(fitted):
    assert isinstance(fitted, ConvAutoencoder)
    assert len(fitted.history_) == 5 and fitted.history_[-1] < fitted.history_[0]
    assert fitted.fit_seconds_ > 0


def test_scores_are_reconstruction_errors_higher_for_anomalies(fitted, data):
    _, test, labels = data
    scores = fitted.score_samples(test)
    assert scores.shape == (80,) and scores.dtype == np.float32 and (scores >= 0).all()
    rec = fitted.reconstruct(test[:3])
    assert rec.shape == (3, 32, 32, 1) and rec.min() >= 0 and rec.max() <= 1
    np.testing.assert_allclose(scores[:3], ((rec - test[:3] / 255.0) ** 2).mean(axis=(1, 2, 3)), rtol=1e-4)
    assert roc_auc(labels, scores) > 0.9


def test_same_seed_same_scores_and_rgb_and_resize(fitted, data):
    train, test, _ = data
    again = ConvAutoencoder(image_size=32, epochs=5, batch_size=32).fit(train)
    np.testing.assert_allclose(again.score_samples(test), fitted.score_samples(test), rtol=1e-5, atol=1e-7)
    rgb = np.repeat(test[:4], 3, axis=-1)
    np.testing.assert_allclose(fitted.score_samples(rgb), fitted.score_samples(test[:4]), rtol=1e-3, atol=1e-6)
    small = ConvAutoencoder(image_size=16, epochs=1).fit(train[:20])
    assert small.prepare(test[:2]).shape == (2, 16, 16, 1)
    assert small.score_samples(test[:2]).shape == (2,)


def test_seeded_without_touching_the_global_random_state(data):
    """Same seed, identical scores; the process's random state (Python, numpy, TensorFlow) is neither reseeded nor
    drawn from, so autoencoders fitted beside training jobs do not disturb them."""
    train, test, _ = data

    def draws():
        return random.random(), np.random.random(), tf.random.uniform([3]).numpy().tolist()

    def reseed():
        random.seed(11)
        np.random.seed(11)
        tf.random.set_seed(11)

    reseed()
    expected = draws()
    reseed()
    first = ConvAutoencoder(image_size=16, epochs=2, batch_size=16, seed=4).fit(train[:64])
    assert draws() == expected
    second = ConvAutoencoder(image_size=16, epochs=2, batch_size=16, seed=4).fit(train[:64])
    np.testing.assert_array_equal(second.score_samples(test), first.score_samples(test))
    assert second.history_ == first.history_
    other = ConvAutoencoder(image_size=16, epochs=2, batch_size=16, seed=5).fit(train[:64])
    assert not np.allclose(other.score_samples(test), first.score_samples(test))


def test_input_errors():
    with pytest.raises(ValueError, match="multiple of 4"):
        ConvAutoencoder(image_size=30).fit(np.zeros((4, 30, 30, 1), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        ConvAutoencoder().prepare(np.zeros((4, 28, 28, 1), np.float32))
    with pytest.raises(RuntimeError, match="not fitted"):
        ConvAutoencoder().score_samples(np.zeros((2, 28, 28, 1), np.uint8))
