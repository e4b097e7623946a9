"""Tests of doc_core.model.training on the tiny backbone and small synthetic images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from doc_core.model.backbones import Backbone, preprocess
from doc_core.model.losses import compactness_loss
from doc_core.model import training
from doc_core.model.training import DOCTrainer, StepRecord, TrainConfig, TrainingDivergedError, smooth


@pytest.fixture
def sets(make_normal, make_reference):
    rng = np.random.default_rng(0)
    target = make_normal(rng, 32)
    reference, labels = make_reference(rng, 8)
    return target, reference, labels


def snapshot(trainer: DOCTrainer) -> list[np.ndarray]:
    return [v.numpy().copy() for v in trainer.backbone.model.weights + trainer.head.weights]


def run(tiny_config, sets, **cfg) -> DOCTrainer:
    trainer = DOCTrainer(Backbone(tiny_config), 3, TrainConfig(**{"batch_size": 8, "epochs": 1, **cfg}))
    return trainer.fit(*sets)


def test_steps_yield_records(tiny_config, sets):
    trainer = DOCTrainer(Backbone(tiny_config), 3, TrainConfig(batch_size=8, epochs=2, learning_rate=1e-3, lam=0.1))
    messages = []
    records = list(trainer.steps(*sets, on_prepare=messages.append))
    assert len(records) == 8 and trainer.history == records  # 32 targets / 8 per batch, 2 epochs
    assert [r.step for r in records] == list(range(1, 9))
    assert [r.epoch for r in records] == [1] * 4 + [2] * 4
    assert all(isinstance(r, StepRecord) and r.steps_total == 8 for r in records)
    for r in records:
        assert math.isfinite(r.l_d) and math.isfinite(r.l_c) and r.l_c >= 0 and r.l_d > 0
        assert r.total == pytest.approx(r.l_d + 0.1 * r.l_c, rel=1e-5)
        assert r.images_per_s > 0
    assert np.all(np.diff([r.elapsed_s for r in records]) >= 0)
    assert records[0].to_dict()["step"] == 1
    assert messages and "frozen layers" in messages[0]


def test_first_step_losses_match_independent_computation(tiny_config, sets):
    """The reported l_C of the first step is the compactness of the features of the images in that batch."""
    target, reference, labels = sets
    trainer = DOCTrainer(Backbone(tiny_config), 3, TrainConfig(batch_size=32, epochs=1))
    feats = trainer.backbone.model(preprocess(tf.constant(target), trainer.backbone.config)).numpy()
    expected_l_c = float(compactness_loss(tf.constant(feats)))
    first = next(trainer.steps(target, reference, labels))
    assert first.l_c == pytest.approx(expected_l_c, rel=2e-2)  # trunk activations are cached as float16


def test_only_tail_and_head_change(tiny_config, sets):
    trainer = DOCTrainer(Backbone(tiny_config), 3, TrainConfig(batch_size=8, epochs=1, learning_rate=1e-2))
    conv1 = trainer.backbone.model.get_layer("conv1").kernel.numpy().copy()
    conv3 = trainer.backbone.model.get_layer("conv3").kernel.numpy().copy()
    head = trainer.head.kernel.numpy().copy()
    trainer.fit(*sets)
    np.testing.assert_array_equal(trainer.backbone.model.get_layer("conv1").kernel.numpy(), conv1)
    assert not np.allclose(trainer.backbone.model.get_layer("conv3").kernel.numpy(), conv3)
    assert not np.allclose(trainer.head.kernel.numpy(), head)


def test_stop_from_callback_ends_early(tiny_config, sets):
    trainer = DOCTrainer(Backbone(tiny_config), 3, TrainConfig(batch_size=8, epochs=3))
    seen = []

    def callback(rec):
        seen.append(rec.step)
        if rec.step == 2:
            trainer.stop()

    trainer.fit(*sets, callback=callback)
    assert seen == [1, 2] and len(trainer.history) == 2 and trainer.stopped


def test_same_seed_same_losses(tiny_config, sets):
    a = run(tiny_config, sets, epochs=2, learning_rate=1e-3, seed=3)
    b = run(tiny_config, sets, epochs=2, learning_rate=1e-3, seed=3)
    c = run(tiny_config, sets, epochs=2, learning_rate=1e-3, seed=4)
    la = [(r.l_d, r.l_c) for r in a.history]
    np.testing.assert_allclose(la, [(r.l_d, r.l_c) for r in b.history], rtol=1e-5, atol=1e-7)
    assert not np.allclose(la, [(r.l_d, r.l_c) for r in c.history], rtol=1e-5)


def test_compactness_decreases_when_it_dominates(tiny_config, make_normal, make_reference):
    """With a huge lambda, training shrinks the spread of the normal features (measured on the whole set)."""
    rng = np.random.default_rng(1)
    target = make_normal(rng, 32)
    reference, labels = make_reference(rng, 8)
    trainer = DOCTrainer(Backbone(tiny_config), 3,
                         TrainConfig(lam=1e4, learning_rate=1e-3, batch_size=16, epochs=8, seed=0))

    def spread() -> float:
        return float(compactness_loss(tf.constant(trainer.backbone.embed(target))))

    before = spread()
    trainer.fit(target, reference, labels)
    l_c = [r.l_c for r in trainer.history]
    assert spread() < 0.5 * before
    assert np.mean(l_c[-4:]) < 0.5 * np.mean(l_c[:2])


def test_max_loss_stops_on_first_step_without_changing_weights(tiny_config, sets):
    trainer = DOCTrainer(Backbone(tiny_config), 3, TrainConfig(batch_size=8, epochs=2, max_loss=1e-6))
    before = snapshot(trainer)
    with pytest.raises(TrainingDivergedError, match="step 1"):
        trainer.fit(*sets)
    assert trainer.history == []
    for a, b in zip(before, snapshot(trainer)):
        np.testing.assert_array_equal(a, b)


def test_huge_learning_rate_diverges_and_keeps_last_good_weights(tiny_config, sets):
    trainer = DOCTrainer(Backbone(tiny_config), 3,
                         TrainConfig(optimizer="sgd", learning_rate=1e8, batch_size=8, epochs=5))
    snapshots = []
    with pytest.raises(TrainingDivergedError, match="diverged"):
        trainer.fit(*sets, callback=lambda rec: snapshots.append(snapshot(trainer)))
    assert len(snapshots) == len(trainer.history) >= 1
    for a, b in zip(snapshots[-1], snapshot(trainer)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs", [{"batch_size": 1}, {"epochs": -1}, {"learning_rate": 0.0},
                                    {"learning_rate": float("nan")}, {"lam": -0.1}, {"optimizer": "rmsprop"}])
def test_invalid_train_config_raises(tiny_config, kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs).validate()
    with pytest.raises(ValueError):
        DOCTrainer(Backbone(tiny_config), 3, TrainConfig(**kwargs))


def test_invalid_training_inputs_raise(tiny_config, sets):
    target, reference, labels = sets
    with pytest.raises(ValueError, match="2 reference classes"):
        DOCTrainer(Backbone(tiny_config), 1)
    trainer = DOCTrainer(Backbone(tiny_config), 3, TrainConfig(batch_size=8))
    with pytest.raises(ValueError, match="2 target"):
        trainer.fit(target[:1], reference, labels)
    with pytest.raises(ValueError, match="2 reference"):
        trainer.fit(target, reference[:1], labels[:1])
    with pytest.raises(ValueError, match="length"):
        trainer.fit(target, reference, labels[:-1])
    with pytest.raises(ValueError, match="reference_labels"):
        trainer.fit(target, reference, labels + 1)
    frozen = Backbone(tiny_config.__class__(**{**tiny_config.to_dict(), "trainable_from": "none"}))
    with pytest.raises(ValueError, match="nothing to train"):
        DOCTrainer(frozen, 3, TrainConfig(batch_size=8)).fit(target, reference, labels)


def test_train_config_round_trip():
    cfg = TrainConfig(lam=0.5, learning_rate=3e-4, optimizer="sgd", weight_decay=1e-4, batch_size=16, epochs=2)
    assert TrainConfig.from_dict({**cfg.to_dict(), "extra": 1}) == cfg


def test_smooth():
    rng = np.random.default_rng(0)
    v = rng.normal(size=30)
    for alpha in (0.1, 0.5, 1.0):
        out = smooth(v, alpha)
        assert out.shape == v.shape
        for i in range(len(v)):  # bias-corrected EMA = weighted mean with weights (1 - alpha)^(i - j)
            w = (1 - alpha) ** (i - np.arange(i + 1))
            assert out[i] == pytest.approx(np.sum(w * v[:i + 1]) / np.sum(w), rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(smooth([3.0] * 10), 3.0)
    assert smooth([7.0])[0] == pytest.approx(7.0)
    np.testing.assert_array_equal(smooth(v, 1.0), v)


def test_the_passes_before_the_first_step_report_progress_per_batch(tiny_config, sets, monkeypatch):
    """on_progress(stage, done, total): the frozen layers over target then reference images, batch by batch, from 0
    to all of them, before any step; without a labelled reference set also the pretrained features."""
    monkeypatch.setattr(training, "PREPARE_BATCH_SIZE", 8)
    target, reference, labels = sets
    assert (len(target), len(reference)) == (32, 24)  # 4 + 3 batches of 8
    events: list[tuple] = []
    trainer = DOCTrainer(Backbone(tiny_config), 3, TrainConfig(batch_size=8, epochs=1))
    for rec in trainer.steps(target, reference, labels, on_progress=lambda *e: events.append(e)):
        events.append(("step", rec.step))
    frozen = [e for e in events if e[0] == training.STAGE_FROZEN]
    assert frozen == [(training.STAGE_FROZEN, done, 56) for done in range(0, 57, 8)]
    assert events.index(frozen[-1]) < events.index(("step", 1))
    events.clear()
    preserve = DOCTrainer(Backbone(tiny_config), 0, TrainConfig(batch_size=8, epochs=1))
    list(preserve.steps(target, None, None, on_progress=lambda *e: events.append(e)))
    assert [e for e in events if e[0] == training.STAGE_FROZEN][-1] == (training.STAGE_FROZEN, 32, 32)  # no copy
    assert [e for e in events if e[0] == training.STAGE_ANCHORS] == \
        [(training.STAGE_ANCHORS, done, 32) for done in (0, 8, 16, 24, 32)]


def test_without_reference_the_first_l_d_is_zero_and_features_stay_near_the_pretrained_ones(tiny_config, sets):
    """n_reference_classes=0: l_D is the preservation loss on the target images, 0 before the first update."""
    target, _, _ = sets
    trainer = DOCTrainer(Backbone(tiny_config), 0, TrainConfig(batch_size=8, epochs=3, learning_rate=1e-2, lam=1.0))
    before = trainer.backbone.embed(target)
    head = trainer.head.kernel.numpy().copy()
    records = list(trainer.steps(target, None, None))
    assert len(records) == 12
    assert records[0].l_d == pytest.approx(0.0, abs=1e-6)  # cached float16 trunk vs anchors from the same cache
    assert all(r.l_d >= 0 for r in records) and any(r.l_d > 0 for r in records[1:])
    np.testing.assert_array_equal(trainer.head.kernel.numpy(), head)  # no head without reference classes
    after = trainer.backbone.embed(target)
    assert not np.allclose(after, before)
    # the same run with lambda 0 only preserves: the features stay (nearly) where they were
    keep = DOCTrainer(Backbone(tiny_config), 0, TrainConfig(batch_size=8, epochs=3, learning_rate=1e-2, lam=0.0))
    keep.fit(target, None, None)
    moved_keep = np.abs(keep.backbone.embed(target) - before).mean()
    assert moved_keep < 0.5 * np.abs(after - before).mean()


def test_without_reference_unlabelled_reference_images_are_the_anchors(tiny_config, sets):
    target, reference, _ = sets
    trainer = DOCTrainer(Backbone(tiny_config), 0, TrainConfig(batch_size=8, epochs=1))
    records = list(trainer.steps(target, reference, None))
    assert len(records) == 4 and records[0].l_d == pytest.approx(0.0, abs=1e-6)
