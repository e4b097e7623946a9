"""Loss functions of Deep One-Class Classification (Perera & Patel, 2019).

Both losses are pure functions of tensors, so they can be tested against brute-force formulas and used inside
``tf.function``.
"""

from __future__ import annotations

import tensorflow as tf


def compactness_loss(features: tf.Tensor, batch_mean: tf.Tensor | None = None,
                     batch_size: tf.Tensor | int | None = None) -> tf.Tensor:
    """Compactness loss ``l_C`` of a batch of target features.

    With ``n`` features ``x_i`` of ``k`` dimensions and ``m_i`` the mean of the *other* ``n - 1`` features,

    ``l_C = 1 / (n k) * sum_i |x_i - m_i|^2 = n^2 / ((n - 1)^2 n k) * sum_i |x_i - mean|^2``.

    The second form is what is computed: one pass, no ``n x n`` intermediate.

    Parameters
    ----------
    features : tf.Tensor, shape (n, k), float
        Features of one batch of target (normal) images; ``n >= 2``.
    batch_mean, batch_size : optional, both or neither
        For one slice of a batch split across devices (:mod:`doc_core.model.distribute`): ``features`` are the slice's
        rows (any number, also 0 or 1), ``batch_mean`` (shape (k,), float; treated as a constant) the mean of the
        whole batch and ``batch_size`` its ``n >= 2``. The sum then runs over the slice only, with the whole batch's
        ``n`` and mean, so the slices' results add up to the batch's ``l_C``, and so do their gradients (the
        gradient through the mean vanishes, as ``sum_i (x_i - mean) = 0``).

    Returns
    -------
    tf.Tensor, shape (), float32
        The non-negative loss (or the slice's share of it); 0 when all features are equal.
    """
    x = tf.cast(features, tf.float32)
    k = tf.cast(tf.shape(x)[1], tf.float32)
    if (batch_mean is None) != (batch_size is None):
        raise ValueError("compactness_loss: give both batch_mean and batch_size, or neither")
    if batch_mean is None:
        n = tf.cast(tf.shape(x)[0], tf.float32)
        centred = x - tf.reduce_mean(x, axis=0, keepdims=True)
    else:
        n = tf.cast(batch_size, tf.float32)
        centred = x - tf.stop_gradient(tf.reshape(tf.cast(batch_mean, tf.float32), (1, -1)))
    tf.debugging.assert_greater_equal(n, 2.0, message="compactness_loss needs a batch of at least 2 features")
    return (n * n) / ((n - 1.0) ** 2 * n * k) * tf.reduce_sum(tf.square(centred))


def descriptiveness_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Descriptiveness loss ``l_D``: mean softmax cross-entropy of the reference head.

    Parameters
    ----------
    labels : tf.Tensor, shape (n,), int
        Reference class indices in ``[0, n_classes)``.
    logits : tf.Tensor, shape (n, n_classes), float
        Unnormalised scores of the head ``h``.

    Returns
    -------
    tf.Tensor, shape (), float32
        Mean cross-entropy in nats; ``log(n_classes)`` for uniform logits.
    """
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32))
    )


def preservation_loss(features: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
    """Feature-preservation loss: the descriptiveness term used when no labelled reference set is at hand.

    Keeps the fine-tuned features of a batch close to the features the *pretrained* network gave the same images, so
    the compactness loss cannot collapse the features into something that no longer describes images:

    ``l_P = 1 / (n k) * sum_i |x_i - a_i|^2``.

    Parameters
    ----------
    features : tf.Tensor, shape (n, k), float
        Features of the batch under the network being trained.
    anchors : tf.Tensor, shape (n, k), float
        Features of the same images under the frozen pretrained network (constants, no gradient).

    Returns
    -------
    tf.Tensor, shape (), float32
        The non-negative loss; 0 when the features have not moved.
    """
    x = tf.cast(features, tf.float32)
    a = tf.stop_gradient(tf.cast(anchors, tf.float32))
    return tf.reduce_mean(tf.square(x - a))
