"""Tests of doc_core.model.losses against brute-force numpy formulas."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from doc_core.model.losses import compactness_loss, descriptiveness_loss, preservation_loss


def loo_compactness(x: np.ndarray) -> float:
    """The paper's definition, computed literally: leave-one-out means, float64."""
    x = np.asarray(x, np.float64)
    n, k = x.shape
    total = 0.0
    for i in range(n):
        m_i = np.delete(x, i, axis=0).mean(axis=0)
        total += np.sum((x[i] - m_i) ** 2)
    return total / (n * k)


@pytest.mark.parametrize("n,k", [(2, 1), (2, 5), (3, 7), (8, 16), (33, 4), (64, 32)])
def test_compactness_matches_leave_one_out(n, k):
    rng = np.random.default_rng(n * 100 + k)
    x = rng.normal(0.5, 2.0, (n, k)).astype(np.float32)
    got = float(compactness_loss(tf.constant(x)))
    np.testing.assert_allclose(got, loo_compactness(x), rtol=1e-5)


def test_compactness_scales_quadratically_and_ignores_shift():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 6)).astype(np.float32)
    base = float(compactness_loss(tf.constant(x)))
    np.testing.assert_allclose(float(compactness_loss(tf.constant(3 * x))), 9 * base, rtol=1e-5)
    np.testing.assert_allclose(float(compactness_loss(tf.constant(x + 100.0))), base, rtol=1e-3)


def test_compactness_zero_for_identical_rows():
    x = np.tile(np.array([[1.5, -2.0, 3.25, 0.0]], np.float32), (7, 1))
    assert float(compactness_loss(tf.constant(x))) == 0.0


def test_compactness_returns_float32_scalar_for_float64_input():
    out = compactness_loss(tf.constant(np.ones((3, 2)), dtype=tf.float64))
    assert out.dtype == tf.float32 and out.shape == ()


@pytest.mark.parametrize("n,k", [(2, 3), (5, 4), (16, 8)])
def test_compactness_gradient_is_analytic(n, k):
    rng = np.random.default_rng(7 + n)
    x64 = rng.normal(size=(n, k))
    x = tf.Variable(x64.astype(np.float32))
    with tf.GradientTape() as tape:
        loss = compactness_loss(x)
    grad = tape.gradient(loss, x).numpy()
    expected = 2 * n * n / ((n - 1) ** 2 * n * k) * (x64 - x64.mean(axis=0))
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


def test_compactness_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    n, k = 4, 3
    x64 = rng.normal(size=(n, k))
    x = tf.Variable(x64.astype(np.float32))
    with tf.GradientTape() as tape:
        loss = compactness_loss(x)
    grad = tape.gradient(loss, x).numpy()
    eps = 1e-6
    numeric = np.zeros_like(x64)
    for i in range(n):
        for j in range(k):
            up, down = x64.copy(), x64.copy()
            up[i, j] += eps
            down[i, j] -= eps
            numeric[i, j] = (loo_compactness(up) - loo_compactness(down)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-6)


def test_compactness_needs_two_rows():
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 2"):
        compactness_loss(tf.constant([[1.0, 2.0, 3.0]]))


def numpy_cross_entropy(labels: np.ndarray, logits: np.ndarray) -> float:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_softmax = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_softmax[np.arange(len(labels)), labels].mean())


@pytest.mark.parametrize("n,c", [(1, 2), (5, 3), (32, 10)])
def test_descriptiveness_matches_numpy(n, c):
    rng = np.random.default_rng(n + c)
    logits = rng.normal(0.0, 3.0, (n, c)).astype(np.float32)
    labels = rng.integers(0, c, n)
    got = float(descriptiveness_loss(tf.constant(labels), tf.constant(logits)))
    np.testing.assert_allclose(got, numpy_cross_entropy(labels, logits), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("c", [2, 7, 10])
def test_descriptiveness_is_log_c_for_zero_logits(c):
    labels = np.arange(12) % c
    got = float(descriptiveness_loss(tf.constant(labels), tf.zeros((12, c))))
    np.testing.assert_allclose(got, np.log(c), rtol=1e-6)


def test_descriptiveness_is_small_for_confident_correct_logits():
    labels = np.array([0, 1, 2])
    logits = 50.0 * np.eye(3, dtype=np.float32)
    assert float(descriptiveness_loss(tf.constant(labels), tf.constant(logits))) < 1e-6


@pytest.mark.parametrize("n,k", [(1, 1), (2, 5), (17, 3)])
def test_preservation_matches_brute_force(n, k):
    rng = np.random.default_rng(n + k)
    x, a = rng.normal(size=(n, k)).astype(np.float32), rng.normal(size=(n, k)).astype(np.float32)
    want = sum(float(np.sum((x[i].astype(np.float64) - a[i]) ** 2)) for i in range(n)) / (n * k)
    np.testing.assert_allclose(float(preservation_loss(tf.constant(x), tf.constant(a))), want, rtol=1e-5)


def test_preservation_is_zero_at_the_anchors_and_its_gradient_pulls_towards_them():
    a = tf.constant([[1.0, -2.0], [0.5, 3.0]])
    assert float(preservation_loss(a, a)) == 0.0
    x = tf.Variable([[2.0, -2.0], [0.5, 1.0]])
    with tf.GradientTape(persistent=True) as tape:
        loss = preservation_loss(x, a)
        anchor_var = tf.Variable(a)
        loss2 = preservation_loss(x, anchor_var)
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), 2 * (x.numpy() - a.numpy()) / 4, rtol=1e-6)
    assert tape.gradient(loss2, anchor_var) is None  # anchors are constants
