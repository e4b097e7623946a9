"""doc_core.workflow.jobs: background training with live records, stop, errors, saving, and jobs side by side."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from doc_core.data import OneClassSplit
from doc_core.model.backbones import BackboneConfig
from doc_core.model.training import STAGE_FROZEN, StepRecord, TrainConfig
from doc_core.workflow import runs
from doc_core.workflow.jobs import (FAILED, STOPPED, SUCCEEDED, JobRegistry, TrainingJob, estimate_seconds_left,
                                    step_seconds, steps_per_epoch)

SIZE = 32
TINY = BackboneConfig(name="tiny", input_size=SIZE)


def _images(rng: np.random.Generator, n: int, level: int) -> np.ndarray:
    base = rng.integers(0, 40, size=(n, SIZE, SIZE, 1))
    base[:, 8:24, 8:24] += level
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def split() -> OneClassSplit:
    rng = np.random.default_rng(0)
    return OneClassSplit(
        train_normal=_images(rng, 64, 60), reference=np.concatenate([_images(rng, 32, 120), _images(rng, 32, 200)]),
        reference_labels=np.repeat([0, 1], 32), reference_names=("mid", "bright"),
        test_images=np.concatenate([_images(rng, 20, 60), _images(rng, 20, 215)]), test_labels=np.repeat([0, 1], 20),
        test_classes=("square",) * 20 + ("bright square",) * 20, name="synthetic squares")


def _wait(job: TrainingJob, timeout: float = 120) -> None:
    assert job.join(timeout), f"job still {job.snapshot().status} after {timeout} s"


def test_job_trains_in_the_background_and_saves_a_run(split, tmp_path):
    job = TrainingJob(split, TINY, TrainConfig(epochs=2, batch_size=16), dataset={"description": "squares"},
                      name="background", runs_dir=tmp_path)
    assert job.snapshot().status == "queued"
    job.start()
    seen = []
    while not job.done:
        snap = job.snapshot(since=len(seen))
        seen += snap.records
        assert 0.0 <= snap.fraction <= 1.0
        time.sleep(0.02)
    snap = job.snapshot()
    seen += job.snapshot(since=len(seen)).records
    assert snap.status == SUCCEEDED and snap.error is None and snap.phase == "done"
    assert [r.step for r in seen] == list(range(1, 9)) == [r.step for r in snap.records]
    assert snap.steps_total == 8 == steps_per_epoch(64, 16) * 2 and not snap.stopped_early
    assert all(isinstance(r, StepRecord) and np.isfinite(r.total) for r in snap.records)
    assert snap.finished >= snap.started and snap.elapsed_s > 0
    run = snap.run
    assert run is not None and run.name == "background" and run.auc is not None
    assert run.dataset["description"] == "squares" and run.dataset["name"] == "synthetic squares"
    assert run.dataset["counts"]["test anomaly"] == 20
    assert [r.run_id for r in runs.list_runs(tmp_path)] == [run.run_id]
    assert len(runs.load_scores(run.run_id, tmp_path).scores) == 40
    assert job.split is None  # the arrays are let go once the job ends


def test_stop_keeps_the_model_trained_so_far(split, tmp_path):
    job = TrainingJob(split, TINY, TrainConfig(epochs=500, batch_size=16), runs_dir=tmp_path).start()
    while job.snapshot().n_records < 3 and not job.done:
        time.sleep(0.01)
    job.stop()
    _wait(job)
    snap = job.snapshot()
    assert snap.status == SUCCEEDED and snap.stopped_early and snap.stop_requested
    assert 3 <= snap.n_records < snap.steps_total == 2000
    assert snap.run.stopped_early and snap.run.steps == snap.n_records and snap.run.steps_total == 2000


def test_stop_before_the_first_step_saves_nothing(split, tmp_path):
    job = TrainingJob(split, TINY, TrainConfig(epochs=50, batch_size=16), runs_dir=tmp_path)
    job.stop()
    job.start()
    _wait(job)
    snap = job.snapshot()
    assert snap.status == STOPPED and snap.run is None and snap.n_records == 0
    assert runs.list_runs(tmp_path) == []


def test_divergence_is_reported_in_words(split, tmp_path):
    job = TrainingJob(split, TINY, TrainConfig(epochs=2, batch_size=16, max_loss=1e-3), runs_dir=tmp_path).start()
    _wait(job)
    snap = job.snapshot()
    assert snap.status == FAILED and snap.run is None
    assert snap.error.startswith("Training diverged") and "learning rate" in snap.error
    assert runs.list_runs(tmp_path) == []


def test_bad_backbone_settings_fail_cleanly(split, tmp_path):
    job = TrainingJob(split, BackboneConfig(name="tiny", input_size=SIZE, trainable_from="no_such_layer"),
                      TrainConfig(epochs=1, batch_size=16), runs_dir=tmp_path).start()
    _wait(job)
    snap = job.snapshot()
    assert snap.status == FAILED and "no_such_layer" in snap.error


def test_invalid_train_config_is_refused_up_front(split):
    with pytest.raises(ValueError):
        TrainingJob(split, TINY, TrainConfig(batch_size=1))


def test_pretrained_baseline_without_training(split, tmp_path):
    job = TrainingJob(split, TINY, TrainConfig(epochs=0), runs_dir=tmp_path).start()
    _wait(job)
    snap = job.snapshot()
    assert snap.status == SUCCEEDED and snap.n_records == 0 and snap.run.steps == 0


def test_without_saving(split, tmp_path):
    job = TrainingJob(split, TINY, TrainConfig(epochs=1, batch_size=16), save=False, runs_dir=tmp_path).start()
    _wait(job)
    assert job.snapshot().status == SUCCEEDED and job.snapshot().run is None and runs.list_runs(tmp_path) == []
    assert job.detector is not None  # the fitted detector stays available to the caller


def test_two_jobs_at_once_keep_their_own_state(split, tmp_path):
    registry = JobRegistry()
    a = registry.start(lambda: TrainingJob(split, TINY, TrainConfig(epochs=3, batch_size=16, seed=1), name="a",
                                           runs_dir=tmp_path))
    b = registry.start(lambda: TrainingJob(split, TINY, TrainConfig(epochs=1, batch_size=32, seed=2), name="b",
                                           runs_dir=tmp_path))
    assert a.job_id != b.job_id and registry.get(a.job_id) is a and registry.get(b.job_id) is b
    _wait(a)
    _wait(b)
    sa, sb = a.snapshot(), b.snapshot()
    assert (sa.status, sb.status) == (SUCCEEDED, SUCCEEDED)
    assert (sa.steps_total, sb.steps_total) == (12, 2)
    assert [r.step for r in sa.records] == list(range(1, 13)) and [r.step for r in sb.records] == [1, 2]
    assert {r.name for r in runs.list_runs(tmp_path)} == {"a", "b"}
    assert registry.running() == [] and registry.get("nope") is None and registry.get(None) is None


def test_snapshots_can_be_read_from_many_threads(split, tmp_path):
    job = TrainingJob(split, TINY, TrainConfig(epochs=5, batch_size=16), save=False).start()
    errors = []

    def poll():
        try:
            while not job.done:
                snap = job.snapshot()
                assert len(snap.records) == snap.n_records
                assert [r.step for r in snap.records] == list(range(1, snap.n_records + 1))
        except AssertionError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=poll) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and job.snapshot().status == SUCCEEDED


def test_registry_forgets_old_finished_jobs(split):
    registry = JobRegistry(keep_finished_s=0.0)
    old = registry.start(lambda: TrainingJob(split, TINY, TrainConfig(epochs=0), save=False))
    _wait(old)
    time.sleep(0.01)
    registry.add(TrainingJob(split, TINY, TrainConfig(epochs=0), save=False))
    assert registry.get(old.job_id) is None


def test_steps_per_epoch():
    assert steps_per_epoch(6000, 64) == 93
    assert steps_per_epoch(10, 64) == 1
    assert steps_per_epoch(1, 64) == 0


# ------------------------------------------------------------------------------------------------ patch and auto


def test_patch_scorer_job_scores_images_and_keeps_pooled_features(split, tmp_path):
    from doc_core.model.detector import ScorerConfig

    job = TrainingJob(split, TINY, TrainConfig(epochs=1, batch_size=16), ScorerConfig("patch", max_bank_size=500),
                      runs_dir=tmp_path).start()
    _wait(job)
    snap = job.snapshot()
    assert snap.status == SUCCEEDED, snap.error
    run = snap.run
    assert run.scorer.name == "patch" and run.selection is None and snap.selection is None
    stored = runs.load_scores(run.run_id, tmp_path)
    det = runs.load_detector(run.run_id, tmp_path)
    np.testing.assert_allclose(stored.scores, det.decision_function(split.test_images), rtol=1e-4, atol=1e-5)
    feats = runs.load_features(run.run_id, tmp_path)
    assert feats.shape == (40, det.bank_.shape[1])  # pooled features, for the explorer
    np.testing.assert_allclose(feats, det.embed(split.test_images), rtol=1e-4, atol=1e-5)


def test_unknown_preset_is_refused(split):
    with pytest.raises(ValueError, match="preset"):
        TrainingJob(split, TINY, TrainConfig(epochs=1), preset="best")
    with pytest.raises(ValueError, match="unknown anomaly kind"):
        TrainingJob(split, TINY, TrainConfig(epochs=1), preset="auto", anomalies="dents")


def test_auto_preset_selects_on_training_normals_only_and_saves_the_evidence(split, tmp_path, monkeypatch):
    """The auto preset hands select_configuration the normal training images (never a test image or label),
    trains what it chose on all of them, and saves the selection table with the run."""
    from doc_core.workflow import selection as selection_module

    real = selection_module.select_configuration
    seen = {}

    def spy(normal, candidates, reference=None, reference_labels=None, reference_names=None, seed=0,
            on_progress=None, **calibration):
        seen.update(normal=np.array(normal), names=[c.name for c in candidates], reference=reference, **calibration)
        return real(normal, candidates, reference, reference_labels, reference_names, seed=seed,
                    on_progress=on_progress, **calibration)

    monkeypatch.setattr(selection_module, "select_configuration", spy)
    phases = []
    job = TrainingJob(split, TINY, TrainConfig(epochs=1, batch_size=16), preset="auto", runs_dir=tmp_path).start()
    while not job.done:
        phases.append(job.snapshot(since=1 << 62).phase)
        time.sleep(0.01)
    snap = job.snapshot()
    assert snap.status == SUCCEEDED, snap.error
    np.testing.assert_array_equal(seen["normal"], split.train_normal)  # the training normals, exactly
    assert seen["reference"] is split.reference
    assert seen["calibration_fraction"] == 0.1  # so that selection drops the detector's calibration slice first
    assert "selecting" in phases
    sel = snap.run.selection
    assert sel == snap.selection and sel["chosen"] == next(r["name"] for r in sel["rows"] if r["chosen"])
    assert [r["name"] for r in sel["rows"]] == seen["names"] and sum(r["chosen"] for r in sel["rows"]) == 1
    assert sel["n_fit"] + sel["n_holdout"] == len(split.train_normal)
    assert all(r["val_auroc"] is None or 0.0 <= r["val_auroc"] <= 1.0 for r in sel["rows"])
    # the run was trained with the chosen configuration, and the table survives a reload from disk
    chosen = next(c for c in selection_module.auto_candidates(TINY, TrainConfig(epochs=1, batch_size=16))
                  if c.name == sel["chosen"])
    run = runs.get_run(snap.run.run_id, tmp_path)
    assert run.selection == sel
    assert run.scorer == chosen.scorer and run.train["epochs"] == chosen.train.epochs
    assert len(runs.load_scores(run.run_id, tmp_path).scores) == 40


def test_auto_preset_ignores_test_labels(split, tmp_path):
    """Permuting the test labels changes nothing the auto preset chooses or measures."""
    import dataclasses

    flipped = dataclasses.replace(split, test_labels=1 - split.test_labels)
    tables = []
    for s in (split, flipped):
        job = TrainingJob(s, TINY, TrainConfig(epochs=1, batch_size=16), preset="auto", save=False).start()
        _wait(job)
        assert job.snapshot().status == SUCCEEDED, job.snapshot().error
        tables.append(job.snapshot().selection)
    strip = lambda t: [(r["name"], r["val_auroc"], r["val_auroc_by_kind"], r["chosen"]) for r in t["rows"]]  # noqa
    assert strip(tables[0]) == strip(tables[1]) and tables[0]["chosen"] == tables[1]["chosen"]


def test_stop_while_selecting_saves_nothing(split, tmp_path):
    job = TrainingJob(split, TINY, TrainConfig(epochs=1, batch_size=16), preset="auto", runs_dir=tmp_path)
    job.stop()
    job.start()
    _wait(job)
    snap = job.snapshot()
    assert snap.status == STOPPED and snap.run is None and snap.selection is None
    assert runs.list_runs(tmp_path) == []


def test_runs_saved_before_the_selection_field_still_load(split, tmp_path):
    import json

    job = TrainingJob(split, TINY, TrainConfig(epochs=0), runs_dir=tmp_path).start()
    _wait(job)
    run = job.snapshot().run
    doc = json.loads((run.path / "run.json").read_text())
    del doc["selection"]  # as written before the field existed
    (run.path / "run.json").write_text(json.dumps(doc))
    assert runs.get_run(run.run_id, tmp_path).selection is None
    doc["selection"] = {"rows": [{"name": "x", "val_auroc": 2.0}], "chosen": "x", "n_fit": 1, "n_holdout": 1}
    (run.path / "run.json").write_text(json.dumps(doc))
    with pytest.raises(runs.RunError, match="val_auroc"):
        runs.get_run(run.run_id, tmp_path)


# ------------------------------------------------------------------------------------------------ progress and time left


class _Recording(TrainingJob):
    """A job that keeps the snapshot taken right after every progress report and every step."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.seen: list = []

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        super()._on_progress(stage, done, total)
        self.seen.append(self.snapshot(since=1 << 62))

    def _on_step(self, rec: StepRecord) -> None:
        super()._on_step(rec)
        self.seen.append(self.snapshot(since=1 << 62))

    def _on_maps_progress(self, fraction: float, eta: float, message: str) -> None:
        super()._on_maps_progress(fraction, eta, message)
        self.seen.append(self.snapshot(since=1 << 62))


def test_every_stage_has_its_own_progress_and_the_job_one_time_left(split, tmp_path, monkeypatch):
    """The frozen-layer pass moves its bar batch by batch (it once sat empty for 35 s), every stage is named, and the
    time left is one finite number from the first training step on that ends lower than it started."""
    from doc_core.model import training

    monkeypatch.setattr(training, "PREPARE_BATCH_SIZE", 16)  # 64 normal + 64 reference images: 8 batches
    job = _Recording(split, TINY, TrainConfig(epochs=2, batch_size=16), runs_dir=tmp_path).start()
    _wait(job)
    assert job.snapshot().status == SUCCEEDED, job.snapshot().error
    seen = job.seen
    stages = list(dict.fromkeys(s.stage for s in seen))
    assert stages == ["Running the frozen layers", "Training", "Embedding the normal training images",
                      "Scoring the test images", "Computing the explorer's maps"]
    frozen = [s for s in seen if s.stage == "Running the frozen layers"]
    fractions = [s.fraction for s in frozen]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert sum(0.0 < f < 1.0 for f in fractions) == 7  # after each batch but the last
    assert all(s.phase == "preparing" and "of 128 images" in s.message for s in frozen)
    assert all(math.isnan(s.eta_s) for s in frozen)  # no step time yet: unknown, not a guess
    train = [s for s in seen if s.phase == "training"]
    assert [s.n_records for s in train] == list(range(1, 9))
    assert [s.fraction for s in train] == [i / 8 for i in range(1, 9)]
    etas = [s.eta_s for s in train]
    assert all(math.isfinite(e) and e >= 0 for e in etas) and etas[-1] < etas[0]
    after = [s for s in seen if s.phase in ("memory bank", "scoring", "maps")]
    assert all(math.isfinite(s.eta_s) and s.eta_s >= 0 for s in after)
    scoring = [s.fraction for s in seen if s.phase == "scoring"]
    assert scoring[0] == 0.0 and scoring[-1] == 1.0
    assert math.isnan(job.snapshot().eta_s)  # finished: nothing left to estimate


def test_step_seconds_leave_out_the_first_step():
    def rec(step: int, elapsed: float) -> StepRecord:
        return StepRecord(epoch=1, step=step, steps_total=10, l_d=1.0, l_c=0.1, total=1.1, images_per_s=1.0,
                          elapsed_s=elapsed)

    assert math.isnan(step_seconds([]))
    assert step_seconds([rec(1, 5.0)]) == 5.0  # one step: its time, tracing included
    assert step_seconds([rec(1, 5.0), rec(2, 6.0), rec(3, 7.5)]) == pytest.approx(1.25)  # tracing left out


def test_time_left_adds_the_stages_still_to_come_at_measured_rates():
    later = {"embedding": 200, "patch maps": 0, "scoring": 100}
    # training: 6 steps of 2 s, then 300 images at the frozen layers' 100 images/s (nothing else measured yet)
    assert estimate_seconds_left("training", 4, 10, math.nan, 2.0, {STAGE_FROZEN: 100.0}, later) == pytest.approx(15)
    # a measured embedding rate replaces that stand-in
    rates = {STAGE_FROZEN: 100.0, "embedding": 50.0}
    assert estimate_seconds_left("training", 4, 10, math.nan, 2.0, rates, later) == pytest.approx(12 + 6)
    assert estimate_seconds_left("training", 10, 10, math.nan, 2.0, rates, later) == pytest.approx(6)
    # inside a stage: its own rate for what is left of it, then the next stages
    assert estimate_seconds_left("embedding", 100, 200, 50.0, 2.0, rates, later) == pytest.approx(2 + 2)
    assert estimate_seconds_left("scoring", 50, 100, 25.0, 2.0, rates, later) == pytest.approx(2)
    patch = {**later, "patch maps": 200}
    assert estimate_seconds_left("embedding", 200, 200, 50.0, 2.0, rates, patch) == pytest.approx(4 + 2)
    assert estimate_seconds_left("saving", 1, 1, math.nan, 2.0, rates, later) == 0.0
    # the explorer's maps come last: their images at the measured rate, plus their t-SNE (tail_s)
    maps = {**later, "maps": 100}
    assert estimate_seconds_left("saving", 1, 1, math.nan, 2.0, rates, maps, 9.0) == pytest.approx(2 + 9)
    assert estimate_seconds_left("scoring", 50, 100, 25.0, 2.0, rates, maps, 9.0) == pytest.approx(2 + 2 + 9)
    assert estimate_seconds_left("scoring", 50, 100, 25.0, 2.0, rates, later, 9.0) == pytest.approx(2)  # no maps
    # unknown, not guessed: before the first step, while selecting, without any rate for what comes after training
    for stage in (STAGE_FROZEN, "selecting", "building", "starting"):
        assert math.isnan(estimate_seconds_left(stage, 1, 2, 10.0, 2.0, rates, later))
    assert math.isnan(estimate_seconds_left("training", 4, 10, math.nan, math.nan, rates, later))
    assert math.isnan(estimate_seconds_left("training", 4, 10, math.nan, 2.0, {}, later))
    assert math.isnan(estimate_seconds_left("embedding", 0, 200, math.nan, 2.0, {}, later))
    # a stage whose first batch is not measured yet runs at the stand-in rate
    assert estimate_seconds_left("embedding", 0, 200, math.nan, 2.0, {STAGE_FROZEN: 100.0}, later) == pytest.approx(3)


def test_job_holds_out_the_calibration_slice_and_says_so(split, tmp_path):
    rng = np.random.default_rng(5)
    big = OneClassSplit(train_normal=_images(rng, 100, 60), reference=split.reference,
                        reference_labels=split.reference_labels, reference_names=split.reference_names,
                        test_images=split.test_images, test_labels=split.test_labels, test_classes=split.test_classes,
                        name="more squares")
    job = TrainingJob(big, TINY, TrainConfig(epochs=0), runs_dir=tmp_path).start()
    _wait(job)
    snap = job.snapshot()
    assert snap.status == SUCCEEDED and "30 normal images held out" in snap.message
    run = snap.run
    assert run.n_calibration == 30 and run.calibration["threshold_source"] == "calibration"
    stored = runs.load_scores(run.run_id, tmp_path)
    assert stored.n_calibration == 30
    assert run.default_threshold == pytest.approx(np.percentile(stored.calibration_scores, 95.0))
    off = TrainingJob(big, TINY, TrainConfig(epochs=0), runs_dir=tmp_path, calibration_fraction=0.0)
    _wait(off.start())
    assert off.snapshot().run.n_calibration == 0 and "fraction 0" in off.snapshot().message
    with pytest.raises(ValueError, match="calibration fraction"):
        TrainingJob(big, TINY, TrainConfig(epochs=0), calibration_fraction=0.9)
