"""Joint DOC training: one ``tf.GradientTape`` step on ``L = l_D + lambda * l_C`` per pair of batches.

The target batch and the reference batch go through the shared backbone ``g`` in a single forward pass; the
reference features also go through the head ``h``. Frozen layers are run once up front (their activations are
cached as float16), so every epoch only runs the trainable tail.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

import keras

from ..workflow.artifacts import ArtifactError, Fields
from .backbones import Backbone, preprocess
from .losses import compactness_loss, descriptiveness_loss, preservation_loss


TRUNK_CACHE_ENV = "DOC_TRUNK_CACHE_MB"
TRUNK_CACHE_DEFAULT_MB = 2048


def trunk_cache_limit() -> int:
    """Most bytes the frozen-layer cache may take (``$DOC_TRUNK_CACHE_MB``, default 2048 MiB).

    Below it, the frozen layers run once over every training image and their float16 output is kept (fast epochs);
    above it, they run again on each batch, so memory stays flat however many images there are.
    """
    try:
        return int(float(os.environ.get(TRUNK_CACHE_ENV, TRUNK_CACHE_DEFAULT_MB)) * 1024**2)
    except ValueError:
        return TRUNK_CACHE_DEFAULT_MB * 1024**2


# Images per batch of the passes before the first step (frozen layers, pretrained features).
PREPARE_BATCH_SIZE = 256
# Stage names passed to ``on_progress`` by DOCTrainer.steps (DOCDetector.fit_steps adds its own after training).
STAGE_FROZEN, STAGE_ANCHORS = "frozen layers", "pretrained features"
ProgressCallback = Callable[[str, int, int], None]


class TrainingDivergedError(RuntimeError):
    """A loss became NaN/infinite or exploded; the weights are those from before the bad step."""


# Largest accepted value of each TrainConfig setting (checked by TrainConfig.validate and when loading a saved one).
TRAIN_LIMITS = {"lam": 1e6, "learning_rate": 1e9, "weight_decay": 10.0, "batch_size": 65_536, "epochs": 10_000,
                "seed": 2**32 - 1, "max_loss": 1e30}


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of DOC training.

    Parameters
    ----------
    lam : float
        Weight ``lambda`` of the compactness loss. The paper uses 0.1; 1.0 was better on a validation split cut from
        the Fashion-MNIST training set (tutorial and one-vs-rest alike), with ``learning_rate`` 1e-3 and 3 epochs.
    learning_rate : float
    optimizer : {"adam", "sgd"}
        ``adam`` becomes AdamW when ``weight_decay > 0``; ``sgd`` uses momentum 0.9.
    weight_decay : float
    batch_size : int
        Images per target batch and per reference batch (each); at least 2.
    epochs : int
        Passes over the target set; the reference set is cycled alongside.
    seed : int
        Seeds the head's initialisation and the batch order.
    max_loss : float
        A total loss above this stops training as diverged.
    """

    lam: float = 1.0
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    batch_size: int = 64
    epochs: int = 3
    seed: int = 0
    max_loss: float = 1e4

    def validate(self, where: str = "train config") -> None:
        """Raise ValueError (an :class:`doc_core.workflow.artifacts.ArtifactError`) naming the first setting of the
        wrong type or outside its range (see :data:`TRAIN_LIMITS`); ``where`` starts the message."""
        self._values(asdict(self), where)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "train config") -> "TrainConfig":
        """The config saved by :meth:`to_dict`; missing keys take their defaults, unknown keys are ignored.

        Raises
        ------
        ValueError (ArtifactError)
            ``d`` is not a dict, or a value has the wrong type or is out of range; the message names it.
        """
        return cls(**cls._values(d, where))

    @classmethod
    def _values(cls, d: dict, where: str) -> dict:
        """Every setting of ``d`` (or its default) as its Python type, checked against :data:`TRAIN_LIMITS`."""
        f, lim = Fields(d, where), TRAIN_LIMITS
        dflt = {k: v.default for k, v in cls.__dataclass_fields__.items()}
        bs = d.get("batch_size")
        if isinstance(bs, int) and not isinstance(bs, bool) and bs < 2:
            raise ArtifactError(f"{where}: batch_size must be at least 2 (the compactness loss needs pairs), got {bs}")
        return {"lam": f.float("lam", 0.0, lim["lam"], default=dflt["lam"]),
                "learning_rate": f.float("learning_rate", 0.0, lim["learning_rate"], default=dflt["learning_rate"],
                                         lo_open=True),
                "optimizer": f.str("optimizer", default=dflt["optimizer"], choices=("adam", "sgd")),
                "weight_decay": f.float("weight_decay", 0.0, lim["weight_decay"], default=dflt["weight_decay"]),
                "batch_size": f.int("batch_size", 2, lim["batch_size"], default=dflt["batch_size"]),
                "epochs": f.int("epochs", 0, lim["epochs"], default=dflt["epochs"]),
                "seed": f.int("seed", 0, lim["seed"], default=dflt["seed"]),
                "max_loss": f.float("max_loss", 0.0, lim["max_loss"], default=dflt["max_loss"], lo_open=True)}


@dataclass(frozen=True)
class StepRecord:
    """What one training step reports; ``step`` counts from 1 across epochs, ``epoch`` from 1."""

    epoch: int
    step: int
    steps_total: int
    l_d: float
    l_c: float
    total: float
    images_per_s: float
    elapsed_s: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "step record") -> "StepRecord":
        """A record saved by :meth:`to_dict` (history.json, detector.json), every field of its type; losses finite.

        Raises
        ------
        ValueError (ArtifactError)
            A missing field, a wrong type, a non-finite loss or a negative count, rate or time.
        """
        f = Fields(d, where)
        big = 10**12
        return cls(epoch=f.int("epoch", 0, big), step=f.int("step", 0, big), steps_total=f.int("steps_total", 0, big),
                   l_d=f.float("l_d"), l_c=f.float("l_c"), total=f.float("total"),
                   images_per_s=f.float("images_per_s", 0.0), elapsed_s=f.float("elapsed_s", 0.0))


def _make_optimizer(cfg: TrainConfig) -> keras.optimizers.Optimizer:
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(cfg.learning_rate, momentum=0.9, weight_decay=cfg.weight_decay or None)
    if cfg.weight_decay > 0:
        return keras.optimizers.AdamW(cfg.learning_rate, weight_decay=cfg.weight_decay)
    return keras.optimizers.Adam(cfg.learning_rate)


class DOCTrainer:
    """Runs DOC training of a :class:`Backbone` on target and reference images.

    Use :meth:`steps` to get one :class:`StepRecord` per step (for live curves), :meth:`fit` to run to the end, and
    :meth:`stop` (from any thread) to end after the current step. The backbone's weights are updated in place.

    Parameters
    ----------
    backbone : Backbone
    n_reference_classes : int
        Number of reference classes (outputs of the head ``h``).
    config : TrainConfig
    strategy : tf.distribute.Strategy, "auto" or None
        Data-parallel training over several devices (see :mod:`doc_core.model.distribute`: same losses and gradients as
        one device, the compactness loss computed on the global batch). ``"auto"`` (default) uses the strategy of an
        enclosing ``strategy.scope()``, else a ``MirroredStrategy`` when two or more GPUs are visible; a strategy
        with one replica, or None, trains on one device as before.

    Attributes
    ----------
    strategy_ : tf.distribute.Strategy or None
        The strategy actually used (None: single device).
    """

    def __init__(self, backbone: Backbone, n_reference_classes: int, config: TrainConfig = TrainConfig(),
                 strategy: "tf.distribute.Strategy | str | None" = "auto") -> None:
        from .distribute import resolve_strategy

        config.validate()
        self.strategy = strategy
        self.strategy_ = resolve_strategy(strategy)
        # 0 reference classes: no labelled reference set; l_D is then the preservation loss (features of the
        # reference images, or of the target images when there are none, stay close to the pretrained network's)
        self.descriptive = "preserve" if n_reference_classes == 0 else "classify"
        if self.descriptive == "preserve" and self.strategy_ is not None:
            raise ValueError("training without a labelled reference set runs on one device; pass strategy=None")
        # the optimizer (below) belongs to the strategy when made inside its scope; the step must then apply per replica
        self.made_in_scope_ = self.strategy_ is not None and tf.distribute.has_strategy() \
            and tf.distribute.get_strategy() is self.strategy_
        if n_reference_classes == 1 or n_reference_classes < 0:
            raise ValueError("the descriptiveness loss needs at least 2 reference classes (or 0: no labelled "
                             "reference set, features kept close to the pretrained network's)")
        self.backbone = backbone
        self.config = config
        # seeded initialisers rather than Keras' global seed, so jobs training at once in one process stay reproducible
        self.head = keras.layers.Dense(max(n_reference_classes, 1), name="reference_head",
                                       kernel_initializer=keras.initializers.GlorotUniform(seed=config.seed))
        self.head.build((None, backbone.feature_dim))
        self.optimizer = _make_optimizer(config)
        self._stop = threading.Event()
        self.history: list[StepRecord] = []

    def stop(self) -> None:
        """Ask training to end after the step in progress (thread-safe)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _variables(self) -> list[tf.Variable]:
        head = list(self.head.trainable_variables) if self.descriptive == "classify" else []
        return list(self.backbone.tail.trainable_variables) + head

    def _build_step(self, staged: bool) -> Callable:
        backbone, head, lam, opt = self.backbone, self.head, float(self.config.lam), self.optimizer
        variables = self._variables()
        if not backbone.tail.trainable_variables:
            raise ValueError("nothing to train: the backbone has no trainable layers (trainable_from='none')")
        forward = (lambda x: backbone.tail(tf.cast(x, tf.float32), training=False)) if staged else \
            (lambda x: backbone.model(preprocess(x, backbone.config), training=False))
        max_loss = float(self.config.max_loss)
        preserve = self.descriptive == "preserve"

        @tf.function(reduce_retracing=True)
        def step(target_x, ref_x, ref_y):
            # ref_y: reference class indices (classify) or the pretrained features of ref_x (preserve)
            n = tf.shape(target_x)[0]
            with tf.GradientTape() as tape:
                feats = forward(tf.concat([target_x, ref_x], axis=0))
                l_c = compactness_loss(feats[:n])
                l_d = preservation_loss(feats[n:], ref_y) if preserve else descriptiveness_loss(ref_y, head(feats[n:]))
                total = l_d + lam * l_c
            grads = tape.gradient(total, variables)
            ok = tf.math.is_finite(total) & (total < max_loss)
            for g in grads:
                ok = ok & tf.reduce_all(tf.math.is_finite(g))
            if ok:  # a bad step is not applied, so the weights stay as they were before it
                opt.apply_gradients(zip(grads, variables))
            return l_d, l_c, total, ok

        return step

    def steps(self, target: np.ndarray, reference: np.ndarray, reference_labels: np.ndarray,
              on_prepare: Callable[[str], None] | None = None,
              on_progress: ProgressCallback | None = None) -> Iterator[StepRecord]:
        """Train, yielding a record after every step.

        Parameters
        ----------
        target : np.ndarray, uint8, shape (n, h, w, c)
            Normal training images; ``n >= batch_size`` is not required but ``n >= 2`` is.
        reference : np.ndarray, uint8, shape (r, h, w, c), or None
            Reference images. Without a labelled reference set (``n_reference_classes=0``) they may be unlabelled
            images of any kind, or None to use the target images themselves for the preservation loss.
        reference_labels : np.ndarray, int, shape (r,), or None
            In ``[0, n_reference_classes)``; ignored (may be None) without a labelled reference set.
        on_prepare : callable, optional
            Called with a short message before the frozen layers are run over both sets.
        on_progress : callable, optional
            ``on_progress(stage, done, total)`` as each pass before the first step begins (``done`` 0) and after each
            of its batches: ``stage`` is
            :data:`STAGE_FROZEN` (the frozen layers over the target then the reference images; ``done`` counts
            images of both) or :data:`STAGE_ANCHORS` (the pretrained features kept by the preservation loss).

        Raises
        ------
        TrainingDivergedError
            When a loss is NaN/infinite or above ``max_loss``.
        """
        cfg = self.config
        preserve = self.descriptive == "preserve"
        if preserve:
            if reference is None or len(reference) == 0:
                reference = target
            reference_labels = np.zeros(len(reference), np.int64)  # replaced by anchors below
        if len(target) < 2:
            raise ValueError(f"DOC training needs at least 2 target images, got {len(target)}")
        if len(reference) < 2:
            raise ValueError(f"DOC training needs at least 2 reference images, got {len(reference)}")
        if len(reference) != len(reference_labels):
            raise ValueError("reference and reference_labels differ in length")
        n_classes = self.head.units
        if reference_labels.min() < 0 or reference_labels.max() >= n_classes:
            raise ValueError(f"reference_labels must be in [0, {n_classes})")
        n_cached = len(target) + (0 if reference is target else len(reference))
        staged = self.backbone.trunk is not None and self.backbone.trunk_cache_bytes(n_cached) <= trunk_cache_limit()
        if staged:
            if on_prepare:
                on_prepare(f"running the frozen layers over {n_cached} images")

            def tell(offset: int) -> Callable[[int], None] | None:  # images done in this set -> in both sets
                return (lambda done: on_progress(STAGE_FROZEN, offset + done, n_cached)) if on_progress else None

            if on_progress:
                on_progress(STAGE_FROZEN, 0, n_cached)

            target_in = self.backbone.trunk_features(target, PREPARE_BATCH_SIZE, tell(0))
            ref_in = target_in if reference is target else \
                self.backbone.trunk_features(reference, PREPARE_BATCH_SIZE, tell(len(target)))
        else:
            target_in, ref_in = target, reference
        if preserve:  # the pretrained features of every reference image, before any weight changes
            if on_prepare:
                on_prepare(f"computing the pretrained features of {len(reference)} images")
            told = (lambda done: on_progress(STAGE_ANCHORS, done, len(reference))) if on_progress else None
            if told:
                told(0)
            anchors = self._anchors(ref_in, told) if staged else \
                self.backbone.embed(reference, PREPARE_BATCH_SIZE, told)
        if self.strategy_ is None:
            step = self._build_step(staged)
        else:
            from .distribute import build_distributed_step

            step = build_distributed_step(self, staged, self.strategy_)
        t0 = time.perf_counter()
        rng = np.random.default_rng(cfg.seed)
        bs = min(cfg.batch_size, len(target))
        rbs = min(cfg.batch_size, len(reference))
        per_epoch = max(1, len(target) // bs)  # the last partial batch is dropped: l_C wants full batches
        total_steps = per_epoch * cfg.epochs
        ref_order, ref_pos = rng.permutation(len(reference)), 0
        labels = anchors.astype(np.float32) if preserve else np.asarray(reference_labels, np.int32)
        global_step = 0
        for epoch in range(1, cfg.epochs + 1):
            order = rng.permutation(len(target))
            for b in range(per_epoch):
                if self._stop.is_set():
                    return
                t_step = time.perf_counter()
                if ref_pos + rbs > len(reference):
                    ref_order, ref_pos = rng.permutation(len(reference)), 0
                ridx = np.sort(ref_order[ref_pos:ref_pos + rbs])
                ref_pos += rbs
                tidx = np.sort(order[b * bs:(b + 1) * bs])
                l_d, l_c, total, ok = step(tf.convert_to_tensor(target_in[tidx]), tf.convert_to_tensor(ref_in[ridx]),
                                           tf.convert_to_tensor(labels[ridx]))
                global_step += 1
                l_d, l_c, total = float(l_d), float(l_c), float(total)
                if not bool(ok):
                    raise TrainingDivergedError(
                        f"training diverged at epoch {epoch}, step {global_step}: l_D={l_d:.4g}, l_C={l_c:.4g}, "
                        f"total={total:.4g} (limit {cfg.max_loss:g}). The weights are kept from the step before. "
                        "Try a lower learning rate or a smaller lambda.")
                now = time.perf_counter()
                rec = StepRecord(epoch=epoch, step=global_step, steps_total=total_steps, l_d=l_d, l_c=l_c, total=total,
                                 images_per_s=(bs + rbs) / max(now - t_step, 1e-9), elapsed_s=now - t0)
                self.history.append(rec)
                yield rec

    def _anchors(self, ref_in: np.ndarray, progress: Callable[[int], None] | None) -> np.ndarray:
        """The tail's features of cached trunk activations (r, ...) -> float32 (r, k), batch by batch."""
        bs, parts = PREPARE_BATCH_SIZE, []
        for i in range(0, len(ref_in), bs):
            parts.append(self.backbone.tail(tf.cast(ref_in[i:i + bs], tf.float32), training=False).numpy())
            if progress is not None:
                progress(min(i + bs, len(ref_in)))
        return np.concatenate(parts)

    def fit(self, target: np.ndarray, reference: np.ndarray, reference_labels: np.ndarray,
            callback: Callable[[StepRecord], None] | None = None) -> "DOCTrainer":
        """Run :meth:`steps` to the end (or until :meth:`stop`); returns self."""
        for rec in self.steps(target, reference, reference_labels):
            if callback is not None:
                callback(rec)
        return self


def smooth(values: list[float] | np.ndarray, alpha: float = 0.1) -> np.ndarray:
    """Exponential moving average (bias-corrected) of a loss curve, for display; same length as ``values``."""
    v = np.asarray(values, dtype=np.float64)
    out = np.empty_like(v)
    acc = 0.0
    for i, x in enumerate(v):
        acc = (1 - alpha) * acc + alpha * x
        out[i] = acc / (1 - (1 - alpha) ** (i + 1))
    return out
