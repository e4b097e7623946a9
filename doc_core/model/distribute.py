"""Data-parallel DOC training under a ``tf.distribute`` strategy (several GPUs, or logical CPU devices in tests).

Each training step splits the target batch and the reference batch into one contiguous slice per replica; every
replica runs the trainable tail (and the head) on its slices and computes the gradients of its share of the loss;
the shares and gradients are summed across replicas and applied once.

The compactness loss stays the paper's formula **on the global batch** (not an average of per-replica losses, which
would use the wrong ``n`` and a per-replica mean). With ``n`` target features ``x_i`` of ``k`` dimensions,
``l_C = c * sum_i |x_i - mean|^2`` with ``c = n / ((n - 1)^2 k)`` and the mean over the whole batch. Replica ``r``
gets the global mean by an all-reduce of its feature sums and computes its share
``c * sum_{i in r} |x_i - stop_gradient(mean)|^2`` with :func:`doc_core.model.losses.compactness_loss` (given the
batch's mean and size). These shares add up to ``l_C``, and so do their gradients: the gradient of ``l_C`` through the
mean vanishes (``sum_i (x_i - mean) = 0``), so stopping it changes nothing. The descriptiveness loss is shared the same
way: each replica's :func:`doc_core.model.losses.descriptiveness_loss` (the mean cross-entropy of its ``n_r`` reference
images) weighted by ``n_r`` over the global reference batch size. Both formulas live only in
:mod:`doc_core.model.losses`. The losses and gradients are therefore those of one device on the same batch, up to float
rounding.

The trainer's variables stay as they are. Created outside the strategy's scope (the usual case, e.g. an explicit
``strategy=`` argument) they are one copy that every replica reads, and the summed gradients are applied once in
cross-replica context. Created inside ``strategy.scope()`` they are mirrored and the optimizer belongs to the
strategy: each replica hands its gradient share to ``apply_gradients`` in replica context, where Keras sums them.
Either way a step whose loss or gradients are not finite is not applied.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from .backbones import preprocess
from .losses import compactness_loss, descriptiveness_loss


def resolve_strategy(strategy: "tf.distribute.Strategy | str | None" = "auto") -> "tf.distribute.Strategy | None":
    """The strategy to train under, or None for the plain single-device step.

    ``"auto"``: the strategy of an enclosing ``strategy.scope()`` if any, else a ``MirroredStrategy`` over the GPUs
    when there are at least two, else None. A strategy object is used as given. Either way a strategy with a single
    replica gives None (the single-device step is the same computation, without the overhead).
    """
    if strategy is None:
        return None
    if isinstance(strategy, str):
        if strategy != "auto":
            raise ValueError(f"strategy must be 'auto', None or a tf.distribute.Strategy, got {strategy!r}")
        if tf.distribute.has_strategy():
            strategy = tf.distribute.get_strategy()
        else:
            gpus = tf.config.list_logical_devices("GPU")
            strategy = tf.distribute.MirroredStrategy([d.name for d in gpus]) if len(gpus) > 1 else None
    if strategy is None or strategy.num_replicas_in_sync < 2:
        return None
    return strategy


def _slices(n: int, parts: int) -> list[slice]:
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def build_distributed_step(trainer, staged: bool, strategy: "tf.distribute.Strategy") -> Callable:
    """A step ``(target_x, ref_x, ref_y) -> (l_D, l_C, total, ok)`` like :meth:`DOCTrainer._build_step`'s, run as
    ``strategy.run`` on one slice of each batch per replica, then reduced (see the module docstring)."""
    backbone, head, opt = trainer.backbone, trainer.head, trainer.optimizer
    lam, max_loss = float(trainer.config.lam), float(trainer.config.max_loss)
    variables = trainer._variables()
    if not backbone.tail.trainable_variables:
        raise ValueError("nothing to train: the backbone has no trainable layers (trainable_from='none')")
    forward = (lambda x: backbone.tail(tf.cast(x, tf.float32), training=False)) if staged else \
        (lambda x: backbone.model(preprocess(x, backbone.config), training=False))
    replicas = strategy.num_replicas_in_sync
    SUM = tf.distribute.ReduceOp.SUM
    made_in_scope = bool(getattr(trainer, "made_in_scope_", False))
    if made_in_scope and not opt.built:
        with strategy.scope():  # slot variables must exist (mirrored) before the first replica-context apply
            opt.build(variables)

    def replica_step(target_x, ref_x, ref_y, n_target, n_ref):
        ctx = tf.distribute.get_replica_context()
        n_local = tf.shape(target_x)[0]
        with tf.GradientTape() as tape:
            feats = forward(tf.concat([target_x, ref_x], axis=0))
            t = tf.cast(feats[:n_local], tf.float32)
            mean = ctx.all_reduce(SUM, tf.reduce_sum(t, axis=0)) / tf.cast(n_target, tf.float32)
            l_c = compactness_loss(t, batch_mean=mean, batch_size=n_target)  # this replica's share
            logits = head(feats[n_local:])
            share = tf.cast(tf.shape(logits)[0], tf.float32) / tf.cast(n_ref, tf.float32)
            # a replica with no reference rows has a NaN mean (0/0) and a share of 0: multiply_no_nan gives 0
            l_d = tf.math.multiply_no_nan(descriptiveness_loss(ref_y, logits), share)
            total = l_d + lam * l_c
        grads = tape.gradient(total, variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
        return l_d, l_c, grads

    def checked(l_d, l_c, grads):
        l_d = strategy.reduce(SUM, l_d, axis=None)
        l_c = strategy.reduce(SUM, l_c, axis=None)
        total = l_d + lam * l_c
        ok = tf.math.is_finite(total) & (total < max_loss)
        for g in grads:
            ok = ok & tf.reduce_all(tf.math.is_finite(g))
        return l_d, l_c, total, ok

    @tf.function(reduce_retracing=True)
    def step(target_x, ref_x, ref_y, n_target, n_ref):
        # variables made outside the strategy: sum the replicas' gradients on the host and apply them once
        l_d, l_c, grads = strategy.run(replica_step, args=(target_x, ref_x, ref_y, n_target, n_ref))
        grads = [strategy.reduce(SUM, g, axis=None) for g in grads]
        l_d, l_c, total, ok = checked(l_d, l_c, grads)
        if ok:  # a bad step is not applied, so the weights stay as they were before it
            opt.apply_gradients(zip(grads, variables))
        return l_d, l_c, total, ok

    @tf.function(reduce_retracing=True)
    def scoped_grads(target_x, ref_x, ref_y, n_target, n_ref):
        l_d, l_c, grads = strategy.run(replica_step, args=(target_x, ref_x, ref_y, n_target, n_ref))
        summed = [strategy.reduce(SUM, g, axis=None) for g in grads]
        return (*checked(l_d, l_c, summed), grads)

    @tf.function(reduce_retracing=True)
    def scoped_apply(grads):
        # an optimizer made under the strategy applies in replica context, where Keras sums the replicas' shares
        strategy.run(lambda g: opt.apply_gradients(zip(g, variables)), args=(grads,))

    def scoped_step(*args):
        l_d, l_c, total, ok, grads = scoped_grads(*args)
        if bool(ok):  # decided on the host: a synchronising apply cannot sit inside a tf.cond
            scoped_apply(grads)
        return l_d, l_c, total, ok

    def distribute(x: tf.Tensor):
        x = np.asarray(x)
        parts = _slices(len(x), replicas)
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(x[parts[ctx.replica_id_in_sync_group]]))

    def run(target_x, ref_x, ref_y):
        if len(target_x) < 2:
            raise ValueError("the compactness loss needs at least 2 target images per step")
        fn = scoped_step if made_in_scope else step
        return fn(distribute(target_x), distribute(ref_x), distribute(ref_y),
                  tf.constant(len(target_x), tf.int32), tf.constant(len(ref_x), tf.int32))

    return run
