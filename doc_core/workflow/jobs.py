"""Background training jobs: DOC training in a thread that a UI can watch, stop and collect.

A :class:`TrainingJob` runs :meth:`DOCDetector.fit_steps` on a daemon thread, keeps every :class:`StepRecord` in a
thread-safe buffer, reports its phase, progress and errors through :meth:`TrainingJob.snapshot`, and when training
ends scores the test set, saves the run with :mod:`doc_core.workflow.runs` and then computes the Embedding explorer's
default maps into the run folder (:mod:`doc_core.explain.explorer_maps`; a bonus: if that fails the run is kept). With ``preset="auto"`` it first chooses
the configuration without labels (:func:`doc_core.workflow.selection.select_configuration` on the normal training
images only) and saves that evidence with the run. Nothing here knows about a UI framework: a front end polls
``snapshot()`` (for example once a second) and calls ``stop()``.

:class:`JobRegistry` is a process-wide, thread-safe table of jobs by id, so a front end can find a job again after
its page was reloaded, and can tell how many jobs run at once.

Jobs run in threads of one process, so whatever else runs in that process must not reset TensorFlow/Keras global state
or force garbage collections while a job traces its ``tf.function``s (Streamlit does both after every script run unless
told otherwise; the app's ``ui/runtime.py`` turns that off).
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable


from ..data.images import DataError
from ..data.splits import OneClassSplit
from ..model.backbones import BackboneConfig, WeightsNotFoundError
from ..model.calibration import DEFAULT_CALIBRATION_FRACTION, calibration_size
from ..model.detector import DOCDetector, ScorerConfig
from ..model.training import STAGE_ANCHORS, STAGE_FROZEN, StepRecord, TrainConfig, TrainingDivergedError
from .runs import RunSummary, save_run

log = logging.getLogger(__name__)

# Status: where the job is in its life. Phase: what it is doing while running.
QUEUED, RUNNING, SUCCEEDED, FAILED, STOPPED = "queued", "running", "succeeded", "failed", "stopped"
FINISHED = (SUCCEEDED, FAILED, STOPPED)
PHASES = ("starting", "selecting", "preparing", "training", "memory bank", "scoring", "saving", "maps", "done")
# "manual": train the configuration given; "auto": choose it first from doc_core.workflow.selection.auto_candidates
PRESETS = ("manual", "auto")
# Stages (JobSnapshot.stage): what runs now, in words; each has its own progress (JobSnapshot.fraction).
STAGE_NAMES = {"starting": "Starting", "selecting": "Choosing the configuration", "building": "Building the backbone",
               STAGE_FROZEN: "Running the frozen layers", STAGE_ANCHORS: "Computing the pretrained features",
               "training": "Training", "embedding": "Embedding the normal training images",
               "patch maps": "Computing the patch maps of the normal images", "scoring": "Scoring the test images",
               "saving": "Saving the run", "maps": "Computing the explorer's maps", "done": "Done"}
# The phase (JobSnapshot.phase) each stage belongs to.
_PHASE_OF = {"starting": "starting", "selecting": "selecting", "building": "preparing", STAGE_FROZEN: "preparing",
             STAGE_ANCHORS: "preparing", "training": "training", "embedding": "memory bank",
             "patch maps": "memory bank", "scoring": "scoring", "saving": "saving", "maps": "maps", "done": "done"}


class _Cancelled(Exception):
    """Raised inside the worker to abandon scoring after stop() when no training step was done."""


@dataclass
class _Meter:
    """The progress reports of one stage: when it began, and (time, done) of its first and latest report."""

    t0: float
    first: tuple[float, int] | None = None
    last: tuple[float, int] | None = None

    def report(self, t: float, done: int) -> None:
        if done <= 0:
            return
        if self.first is None:
            self.first = (t, done)
        self.last = (t, done)

    def rate(self) -> float:
        """Units (images) per second: between the first and the latest report, since the first batch also pays for
        tracing and warm-up; from the stage's start when there was one report; NaN before any."""
        if self.first is None or self.last is None:
            return math.nan
        (t1, d1), (t2, d2) = self.first, self.last
        if d2 > d1 and t2 > t1:
            return (d2 - d1) / (t2 - t1)
        return d2 / (t2 - self.t0) if t2 > self.t0 else math.nan


def step_seconds(records: list[StepRecord]) -> float:
    """Mean seconds per training step: between the first and the latest step (the first one also traces the step
    function), or the first step's time alone; NaN without records."""
    if not records:
        return math.nan
    first, last = records[0], records[-1]
    if last.step > first.step:
        return (last.elapsed_s - first.elapsed_s) / (last.step - first.step)
    return first.elapsed_s / max(first.step, 1)


def estimate_seconds_left(stage: str, done: int, total: int, stage_rate: float, step_s: float,
                          rates: dict[str, float], later: dict[str, int], tail_s: float = 0.0) -> float:
    """Seconds left of a job: what is left of the current stage at its measured rate, plus the stages still to come.

    Parameters
    ----------
    stage : str
        The current stage (a key of :data:`STAGE_NAMES`).
    done, total : int
        Its progress (training: steps; the other stages: images).
    stage_rate : float
        Its measured rate (units per second; unused for training, which uses ``step_s``).
    step_s : float
        Mean seconds per training step (:func:`step_seconds`).
    rates : dict
        Measured images per second of the stages run so far, by stage.
    later : dict
        Images each stage after training will process, by stage ("embedding", "patch maps", "scoring", "maps": the
        images the explorer's pretrained map embeds; 0 or absent when it does not run).
    tail_s : float
        Seconds of the last stage ("maps") not counted in images (its t-SNE), added before that stage begins (the
        caller estimates the maps stage itself once it runs).

    Returns
    -------
    float
        Non-negative seconds; NaN while unknown: before the first training step (no step time yet), or when no
        rate is known for the stages after training. A stage after training that has not run yet (or whose first
        batch is not done) is estimated from the first measured image rate among, in order: embedding, scoring, the
        frozen layers (the trunk only: too fast) and training (forward and backward passes: too slow).
    """
    after = ("embedding", "patch maps", "scoring", "maps")
    forward = next((r for k in ("embedding", "scoring", STAGE_FROZEN, "training")
                    if (r := rates.get(k, math.nan)) > 0), math.nan)
    if stage == "training":
        if not math.isfinite(step_s):
            return math.nan
        left, rest = max(total - done, 0) * step_s, after
    elif stage == "saving":
        left, rest = 0.0, ("maps",)
    elif stage in after[:-1]:  # before its first batch is measured, the stage runs at the stand-in rate too
        left, rest = 0.0, after[after.index(stage) + 1:]
        if done < total:
            rate = stage_rate if stage_rate > 0 else forward
            if not (rate > 0):
                return math.nan
            left = (total - done) / rate
    else:
        return math.nan
    todo = sum(later.get(s, 0) for s in rest)
    if todo:
        if not (forward > 0):
            return math.nan
        left += todo / forward
    return left + (tail_s if "maps" in rest and later.get("maps", 0) else 0.0)


@dataclass(frozen=True)
class JobSnapshot:
    """A consistent view of a job at one moment (safe to read from any thread).

    Attributes
    ----------
    job_id, name : str
    status : {"queued", "running", "succeeded", "failed", "stopped"}
        ``stopped``: stopped before any training step, nothing saved. A job stopped later still saves its
        (shorter-trained) detector and ends ``succeeded`` with ``stopped_early`` set.
    phase : {"starting", "selecting", "preparing", "training", "memory bank", "scoring", "saving", "done"}
        ``selecting``: the ``auto`` preset fits and compares its candidates (``fraction`` counts candidates).
    message : str
        What is happening now, for people.
    records : tuple of StepRecord
        The steps since the ``since`` passed to :meth:`TrainingJob.snapshot` (all by default).
    n_records : int
        Steps done so far (all of them, whatever ``since`` was).
    steps_total : int
        Steps planned (0 until training starts).
    fraction : float
        Progress of the current stage in [0, 1] (frozen layers, embedding, scoring: images; training: steps).
    eta_s : float
        THE estimate of the seconds left until the job ends (every front end shows this number; none computes its
        own), as of the last progress report; NaN while unknown (before the first training step, and while the
        ``auto`` preset selects). See :meth:`TrainingJob.snapshot`.
    stop_requested, stopped_early : bool
    error : str or None
        Why the job failed, in words.
    run : RunSummary or None
        The saved run, once ``status == "succeeded"``.
    selection : dict or None
        The ``auto`` preset's evidence (:meth:`doc_core.workflow.selection.Selection.to_dict`) once it has chosen; None
        for manual settings.
    started, finished : float
        ``time.time()`` stamps (``finished`` is NaN while running).
    stage : str
        The name of what runs now, for people (a value of :data:`STAGE_NAMES`, e.g. "Running the frozen layers").
    """

    job_id: str
    name: str
    status: str
    phase: str
    message: str
    records: tuple[StepRecord, ...]
    n_records: int
    steps_total: int
    fraction: float
    eta_s: float
    stop_requested: bool
    stopped_early: bool
    error: str | None
    run: RunSummary | None
    started: float
    finished: float
    selection: dict | None = None
    stage: str = ""

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    @property
    def elapsed_s(self) -> float:
        end = self.finished if self.done and self.finished == self.finished else time.time()
        return max(0.0, end - self.started)


class TrainingJob:
    """Train a DOC detector on a split in the background, then score the test set and save the run.

    Parameters
    ----------
    split : OneClassSplit
        Its arrays are only read.
    backbone : BackboneConfig
    train : TrainConfig
    scorer : ScorerConfig
        With a patch scorer the test images are scored by their patch scores (``scorer.image_score``)
        (:meth:`DOCDetector.score_images`); their pooled features are still saved for the explorer.
    preset : {"manual", "auto"}
        ``auto`` first runs :func:`doc_core.workflow.selection.select_configuration` on the split's normal training
        images (never the test set) over :func:`doc_core.workflow.selection.auto_candidates` built from ``backbone`` and
        ``train`` (``scorer`` is ignored), then trains the chosen configuration on all normal training images.
    anomalies : {"any", "defects", "objects"}
        ``auto`` only: what the anomalies are like, if known (:data:`doc_core.workflow.selection.ANOMALY_KINDS`);
        restricts the candidates to patch or to global scoring.
    calibration_fraction : float
        Share of the normal training images held out to set the threshold (:mod:`doc_core.model.calibration`; 0 =
        none). ``auto`` selection never sees that slice.
    dataset : dict, optional
        Description of the data stored with the run (e.g. ``DatasetSpec.to_dict()``).
    name : str, optional
        Name of the saved run.
    runs_dir : path, optional
        Default: :func:`doc_core.workflow.runs.default_runs_dir` at the time the job saves.
    save : bool
        Save the run when training ends (tests may turn it off).
    maps : bool
        After saving, compute the explorer's default maps into the run folder (stage "maps"). Their failure is logged
        and said in ``message``; the run stays saved and the job ``succeeded``.

    Use :meth:`start`, then poll :meth:`snapshot`; :meth:`stop` ends training after the current step.
    """

    def __init__(self, split: OneClassSplit, backbone: BackboneConfig = BackboneConfig(),
                 train: TrainConfig = TrainConfig(), scorer: ScorerConfig = ScorerConfig(), *,
                 preset: str = "manual", dataset: dict | None = None, name: str | None = None, runs_dir=None,
                 save: bool = True, maps: bool = True, job_id: str | None = None,
                 calibration_fraction: float = DEFAULT_CALIBRATION_FRACTION, anomalies: str = "any") -> None:
        from .selection import check_anomaly_kind

        train.validate()
        calibration_size(0, calibration_fraction)  # ValueError for an impossible fraction, before anything starts
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        self.anomalies = check_anomaly_kind(anomalies)
        self.job_id = job_id or secrets.token_hex(6)
        self.split = split
        self._n_normal, self._n_test = len(split.train_normal), len(split.test_images)
        self.backbone = backbone
        self.train = train
        self.scorer = scorer
        self.preset = preset
        self.calibration_fraction = float(calibration_fraction)
        self.dataset = dict(dataset or {})
        self.name = name or ""
        self.runs_dir = runs_dir
        self.save = save
        self.maps = maps
        self.maps_note: str | None = None  # why the explorer's maps were not saved, once that is known
        self.detector: DOCDetector | None = None
        self._lock = threading.Lock()
        self._records: list[StepRecord] = []
        self._status, self._stage, self._message = QUEUED, "starting", "waiting to start"
        self._meter = _Meter(time.time())
        self._rates: dict[str, float] = {}
        self._eta = math.nan
        self._fraction, self._steps_total = 0.0, 0
        self._error: str | None = None
        self._run: RunSummary | None = None
        self._selection: dict | None = None
        self._stop = threading.Event()
        self._stopped_early = False
        self._started, self._finished = time.time(), float("nan")
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ control

    def start(self) -> "TrainingJob":
        """Start the worker thread (once); returns self."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("this job was already started")
            self._status, self._started = RUNNING, time.time()
            self._thread = threading.Thread(target=self._work, name=f"doc-training-{self.job_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the job to end training after the current step (thread-safe, returns at once).

        The detector trained so far is still scored and saved; stopped before the first step, nothing is saved.
        """
        self._stop.set()
        det = self.detector
        if det is not None:
            det.stop()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker; True if it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.done

    @property
    def done(self) -> bool:
        with self._lock:
            return self._status in FINISHED

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def records(self) -> list[StepRecord]:
        """A copy of every step record so far."""
        with self._lock:
            return list(self._records)

    def snapshot(self, since: int = 0) -> JobSnapshot:
        """The job's state now, with the step records from index ``since`` on.

        ``eta_s`` is the one estimate of the time left (:func:`estimate_seconds_left`), computed when the job last
        reported progress (every batch of images, every training step): snapshots taken between two reports carry the
        same number, so every view of the job shows the same time left.
        """
        with self._lock:
            return JobSnapshot(
                job_id=self.job_id, name=self.name, status=self._status, phase=_PHASE_OF[self._stage],
                message=self._message, records=tuple(self._records[since:]), n_records=len(self._records),
                steps_total=self._steps_total, fraction=self._fraction,
                eta_s=math.nan if self._status in FINISHED else self._eta,
                stop_requested=self._stop.is_set(), stopped_early=self._stopped_early, error=self._error,
                run=self._run, started=self._started, finished=self._finished, selection=self._selection,
                stage=STAGE_NAMES[self._stage])

    # ------------------------------------------------------------------------------------------ worker

    def _set(self, **kw) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, f"_{k}", v)

    def _check_cancel(self) -> None:
        """Abandon the job if stop() came before the first training step (nothing worth saving yet)."""
        if self._stop.is_set() and not self._records:
            raise _Cancelled()

    def _enter(self, stage: str, message: str, fraction: float = 0.0) -> None:
        """Start a stage: its name, a message, its progress from ``fraction``, a fresh meter."""
        with self._lock:
            self._stage, self._message, self._fraction = stage, message, fraction
            self._meter = _Meter(time.time())

    def _on_prepare(self, message: str) -> None:
        self._check_cancel()

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        """A batch of ``stage`` is done: ``done`` of ``total`` images (also called with 0 as a stage begins)."""
        self._check_cancel()
        now = time.time()
        with self._lock:
            if stage != self._stage:
                self._stage, self._meter = stage, _Meter(now)
            self._meter.report(now, done)
            rate = self._meter.rate()
            if rate > 0:
                self._rates[stage] = rate
            self._fraction = min(done / max(total, 1), 1.0)
            self._message = f"{STAGE_NAMES.get(stage, stage)}: {done:,} of {total:,} images"
            self._eta = estimate_seconds_left(stage, done, total, rate, step_seconds(self._records), self._rates,
                                              self._later, self._tail_s)

    def _on_step(self, rec: StepRecord) -> None:
        with self._lock:
            self._records.append(rec)
            self._steps_total = rec.steps_total
            self._stage, self._fraction = "training", rec.step / max(rec.steps_total, 1)
            self._message = (f"Training · epoch {rec.epoch} of {self.train.epochs} · "
                             f"step {rec.step:,} of {rec.steps_total:,}")
            self._rates["training"] = rec.images_per_s
            self._eta = estimate_seconds_left("training", rec.step, rec.steps_total, math.nan,
                                              step_seconds(self._records), self._rates, self._later, self._tail_s)

    @property
    def _later(self) -> dict[str, int]:
        """Images each stage after training processes (the patch scorer maps the normal images, and scores each
        test image by a pooled and a patch pass; the maps stage embeds its points with the pretrained backbone)."""
        patch = self.scorer.name == "patch"
        n_normal, n_test = self._n_normal, self._n_test
        return {"embedding": n_normal, "patch maps": n_normal if patch else 0, "scoring": n_test * (2 if patch else 1),
                "maps": self._map_points}

    @property
    def _map_points(self) -> int:
        """Points of the maps stage (0 when it does not run)."""
        from ..explain.explorer_maps import DEFAULT_MAX_POINTS

        return min(self._n_test, DEFAULT_MAX_POINTS) if (self.maps and self.save and self._n_test) else 0

    @property
    def _tail_s(self) -> float:
        """The maps stage's t-SNE time, a prior until it is measured (three maps)."""
        from ..explain.explorer_maps import TSNE_SECONDS_PER_POINT

        return 3 * self._map_points * TSNE_SECONDS_PER_POINT

    def _on_maps_progress(self, fraction: float, eta: float, message: str) -> None:
        """The maps stage reports: ``fraction`` of its three maps done, the seconds left, what it does now."""
        self._set(fraction=fraction, eta=eta, message=message)

    def _maps_stage(self, det: DOCDetector, split: OneClassSplit, feats, run: RunSummary) -> None:
        """The last stage: the explorer's default maps, saved in the run folder. The run is already saved: any failure
        here is logged and kept in ``self.maps_note``, never raised."""
        from ..explain.embedding import TSNECancelled
        from ..explain.explorer_maps import (COMPUTE_ORDER, DEFAULT_MAX_POINTS, DEFAULT_WITH_TRAIN, MapInputs,
                                             compute_maps, save_maps)

        self._enter("maps", f"Computing the explorer's maps: {self._map_points:,} points, 3 maps")
        t0 = time.time()
        prior = estimate_seconds_left("saving", 1, 1, math.nan, math.nan, self._rates, self._later, self._tail_s)
        prior = prior if math.isfinite(prior) else self._tail_s
        self._set(eta=prior)

        def progress(feature_set: str, fraction: float) -> bool:
            done = (COMPUTE_ORDER.index(feature_set) + min(max(fraction, 0.0), 1.0)) / len(COMPUTE_ORDER)
            spent = time.time() - t0
            eta = spent * (1 - done) / done if done >= 0.05 else max(prior - spent, 0.0)
            name = {"raw": "raw pixels", "doc": "DOC features", "pretrained": "pretrained features"}[feature_set]
            self._on_maps_progress(done, eta, f"Computing the explorer's maps: map "
                                             f"{COMPUTE_ORDER.index(feature_set) + 1} of 3 ({name}), {fraction:.0%}")
            return self._stop.is_set()

        try:
            maps = compute_maps(MapInputs(split, det.backbone, test_features=feats, bank=det.bank_,
                                          train_index=getattr(det, "train_index_", None)),
                                DEFAULT_MAX_POINTS, DEFAULT_WITH_TRAIN, progress)
            save_maps(run.path, maps)
        except TSNECancelled:  # stop() during the maps: the explorer computes them when it is opened
            log.info("training job %s: the explorer's maps were stopped; the run is saved without them", self.job_id)
        except Exception as exc:  # noqa: BLE001 - the maps are a bonus: the run is saved already
            self.maps_note = f"{type(exc).__name__}: {exc}"
            log.warning("training job %s: the explorer's maps could not be computed (the run is saved without "
                        "them): %s", self.job_id, exc, exc_info=True)

    def _select(self, split: OneClassSplit) -> dict:
        """The ``auto`` preset: choose the configuration on the normal training images, and adopt it."""
        from .selection import auto_candidates, select_configuration

        candidates = auto_candidates(self.backbone, self.train, anomalies=self.anomalies)
        seen = 0

        def on_progress(message: str) -> None:
            nonlocal seen
            self._check_cancel()  # stop() while selecting: abandon before the next candidate
            self._set(fraction=seen / len(candidates), message=f"Choosing the configuration: {message}")
            seen += 1

        self._enter("selecting", f"Choosing the configuration: {len(candidates)} candidates on synthetic defects")
        try:
            selection = select_configuration(split.train_normal, candidates, split.reference,
                                             split.reference_labels, split.reference_names, seed=self.train.seed,
                                             on_progress=on_progress,  # never sees the threshold's calibration slice
                                             calibration_fraction=self.calibration_fraction,
                                             anomalies=self.anomalies)
        except RuntimeError as exc:  # every candidate failed
            raise ValueError(f"automatic selection failed: {exc}") from exc
        self._check_cancel()
        chosen = selection.chosen
        self.backbone, self.train, self.scorer = chosen.backbone, chosen.train, chosen.scorer
        doc = selection.to_dict()
        self._set(selection=doc, fraction=1.0, message=f"Chosen: {chosen.name}")
        return doc

    def _work(self) -> None:
        split = self.split
        end: dict = {"status": FAILED, "error": "The training thread was interrupted.", "message": "Failed"}
        try:
            selection = self._select(split) if self.preset == "auto" else None
            det = DOCDetector(self.backbone, self.train, self.scorer, calibration_fraction=self.calibration_fraction)
            self.detector = det
            self._enter("building", "Building the backbone")
            for rec in det.fit_steps(split.train_normal, split.reference, split.reference_labels,
                                     split.reference_names, on_prepare=self._on_prepare,
                                     on_progress=self._on_progress):
                self._on_step(rec)
                if self._stop.is_set():
                    det.stop()
            self._check_cancel()
            stopped_early = self._stop.is_set() and len(self._records) < self._steps_total
            self._set(stopped_early=stopped_early)
            n_test = len(split.test_images)
            self._on_progress("scoring", 0, n_test)
            progress = lambda done: self._on_progress("scoring", done, n_test)  # noqa: E731
            if det.is_patch:  # scored by its patches; pooled features kept for the explorer
                scores, feats = det.score_images(split.test_images, progress=progress)
            else:
                feats = det.embed(split.test_images, progress=progress)
                scores = det.score_features(feats)
            run = None
            if self.save:
                self._enter("saving", "Saving the run", fraction=1.0)
                self._set(eta=estimate_seconds_left("saving", 1, 1, math.nan, math.nan, self._rates, self._later,
                                                    self._tail_s))
                run = save_run(det, scores, split.test_labels, split.test_classes, feats,
                               dataset={**self.dataset, "name": split.name, "counts": split.summary()},
                               name=self.name or None, steps_total=self._steps_total, stopped_early=stopped_early,
                               total_seconds=time.time() - self._started,
                               test_paths=split.info.get("test_paths"), runs_dir=self.runs_dir,
                               selection=selection)
            if run is not None and self._map_points and not self._stop.is_set():  # stopped: end now, no maps
                self._maps_stage(det, split, feats, run)
            if run is not None:
                self.detector = None  # it is on disk now; a finished job should not hold a model in memory
            held = (f"; {det.n_calibration} normal images held out to set the threshold" if det.n_calibration
                    else f"; {det.calibration_note_}" if det.calibration_note_ else "")
            end = dict(status=SUCCEEDED, run=run, fraction=1.0,
                       message=("Stopped early; the model trained so far was saved" if stopped_early else "Finished")
                       + held
                       + (f" (the explorer's maps were not saved: {self.maps_note})" if self.maps_note else ""))
        except _Cancelled:
            end = dict(status=STOPPED, message="Stopped before training started; nothing was saved")
            self.detector = None
        except (TrainingDivergedError, WeightsNotFoundError, DataError, ValueError, MemoryError) as exc:
            log.warning("training job %s failed: %s", self.job_id, exc)
            end = dict(status=FAILED, error=_explain(exc), message="Failed")
            self.detector = None
        except Exception as exc:  # noqa: BLE001 - the worker must never die silently
            log.error("training job %s crashed:\n%s", self.job_id, traceback.format_exc())
            end = dict(status=FAILED, error=f"Unexpected error ({type(exc).__name__}): {exc}", message="Failed")
            self.detector = None
        finally:
            self.split = None  # let the arrays go once the job is over
            self._set(stage="done", finished=time.time(), **end)


def _explain(exc: Exception) -> str:
    if isinstance(exc, MemoryError):
        return "Out of memory. Use fewer images, a smaller input size or a smaller batch."
    if isinstance(exc, WeightsNotFoundError):
        return "Pretrained weights are missing. " + str(exc)
    msg = str(exc)
    return msg[:1].upper() + msg[1:]


# ------------------------------------------------------------------------------------------------------- registry


@dataclass
class JobRegistry:
    """A thread-safe table of training jobs by id, shared by every session of one process.

    Finished jobs are forgotten ``keep_finished_s`` seconds after they end (their runs are on disk).
    """

    keep_finished_s: float = 3600.0
    _jobs: dict[str, TrainingJob] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, job: TrainingJob) -> TrainingJob:
        with self._lock:
            self._prune()
            self._jobs[job.job_id] = job
        return job

    def get(self, job_id: str | None) -> TrainingJob | None:
        if not job_id:
            return None
        with self._lock:
            return self._jobs.get(job_id)

    def running(self) -> list[TrainingJob]:
        """Jobs not finished yet, oldest first."""
        with self._lock:
            return [j for j in self._jobs.values() if not j.done]

    def start(self, factory: Callable[[], TrainingJob]) -> TrainingJob:
        """Create a job with ``factory``, register it and start it."""
        return self.add(factory()).start()

    def _prune(self) -> None:
        now = time.time()
        for job_id, job in list(self._jobs.items()):
            snap = job.snapshot(since=1 << 62)
            if snap.done and now - snap.finished > self.keep_finished_s:
                del self._jobs[job_id]


def steps_per_epoch(n_normal: int, batch_size: int) -> int:
    """Training steps in one epoch for ``n_normal`` normal images (the last partial batch is dropped)."""
    if n_normal < 2:
        return 0
    return max(1, n_normal // min(batch_size, n_normal))

