"""The runs folder: finished training runs on disk, so they outlive a browser tab and a server restart.

Layout of one run, ``<runs dir>/<run id>/``::

    run.json        summary: configs, dataset, AUC, training facts, chosen threshold (JSON)
    detector/       the fitted DOCDetector (DOCDetector.save: Keras weights + .npz + JSON)
    scores.npz      test scores, labels (1 anomaly, 0 normal, -1 unlabelled), class names, training scores,
                    and test image paths for folder datasets
    features.npz    test features, so other scorers can be compared without re-embedding
    history.json    the training curves: one StepRecord per step
    maps-<points>[-train].npz
                    optional: the Embedding explorer's t-SNE maps (:mod:`doc_core.explain.explorer_maps`), written
                    into the finished run by the training job's last stage or by the explorer; replaced atomically,
                    deleted with the run

Every write is atomic (a temporary folder or file renamed into place), nothing is pickled (``allow_pickle=False``),
and nothing from a run folder is ever executed. The runs folder is ``$DOC_RUNS_DIR`` or ``./runs``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..evaluation.metrics import average_precision, roc_auc
from ..model.backbones import BackboneConfig
from ..model.calibration import MIN_CALIBRATION
from ..model.detector import DetectorFormatError, DOCDetector, ScorerConfig
from ..model.training import StepRecord, TrainConfig
from .artifacts import ArraySpec, ArtifactError, Fields, read_json, read_npz
from .output_folders import remove_stale, write_file_atomic
from .selection import ANOMALY_KINDS

RUNS_DIR_ENV = "DOC_RUNS_DIR"
RUN_FORMAT = "doc-explorer-run"
RUN_FORMAT_VERSION = 1
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
THRESHOLD_POLICIES = ("manual", "target_fpr", "best_f1", "train_percentile")
MAX_RUN_JSON_BYTES = 2**20  # a run.json is a few kB
MAX_HISTORY_JSON_BYTES = 64 * 2**20  # about 250 bytes per training step
MAX_COUNT = 10**12  # largest accepted image or step count in run.json
MAX_DATASET_IMAGE_SIZE = 1024  # largest stored image side of a folder dataset

_write_lock = threading.Lock()  # serialises read-modify-write of run.json within this process


class RunError(ArtifactError):
    """A run does not exist, or its folder is incomplete or broken; the message names it."""


def default_runs_dir() -> Path:
    """``$DOC_RUNS_DIR`` if set, else ``./runs`` (relative to the working directory)."""
    return Path(os.environ.get(RUNS_DIR_ENV) or "runs")


def _dir(runs_dir: str | os.PathLike | None) -> Path:
    return Path(runs_dir) if runs_dir is not None else default_runs_dir()


def _run_path(run_id: str, runs_dir: str | os.PathLike | None) -> Path:
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
        raise RunError(f"{run_id!r} is not a valid run id")
    return _dir(runs_dir) / run_id


@dataclass(frozen=True)
class RunScores:
    """What a run knows about its test set.

    Attributes
    ----------
    scores : np.ndarray, float32, shape (m,)
        Anomaly scores of the run's own scorer; higher = more anomalous.
    labels : np.ndarray, int64, shape (m,)
        1 anomaly, 0 normal, -1 unlabelled.
    classes : np.ndarray of str, shape (m,)
    train_scores : np.ndarray, float32, shape (n,)
        Leave-one-out scores of the normal training images (for percentile thresholds).
    paths : np.ndarray of str, shape (m,), or None
        Test image paths relative to the dataset folder (folder datasets only).
    calibration_scores : np.ndarray, float32, shape (c,), or None
        Scores of the held-out calibration images (normal training images kept out of training and of the bank),
        on which the label-free threshold policies are set; None for runs trained without a calibration slice
        (calibration off, or saved before it existed), whose label-free threshold rests on ``train_scores``.
    """

    scores: np.ndarray
    labels: np.ndarray
    classes: np.ndarray
    train_scores: np.ndarray
    paths: np.ndarray | None = None
    calibration_scores: np.ndarray | None = None

    @property
    def n_calibration(self) -> int:
        """Held-out calibration images behind the label-free thresholds (0 = none: leave-one-out training scores)."""
        return 0 if self.calibration_scores is None else len(self.calibration_scores)

    @property
    def has_labels(self) -> bool:
        """Both labelled normal and anomalous test images exist (so ROC/PR/AUC are defined)."""
        return bool(np.any(self.labels == 0) and np.any(self.labels == 1))


@dataclass(frozen=True)
class RunSummary:
    """The contents of a run's ``run.json`` plus where it lies.

    Attributes
    ----------
    run_id, name, created : str
        ``created`` is an ISO 8601 UTC timestamp.
    config : dict
        ``DOCDetector.config_dict()``: backbone, train, scorer, threshold_percentile.
    dataset : dict
        ``DatasetSpec.to_dict()`` plus ``name`` (the split's name), ``description`` and ``counts`` per role.
    auc, average_precision : float or None
        On the test set; None when it lacks normal or anomalous labels.
    n_test : int
    steps, steps_total : int
        Training steps done and planned; fewer done when stopped early.
    stopped_early : bool
    train_seconds, total_seconds : float
    default_threshold : float
        The detector's own threshold: a percentile of the calibration scores (see ``calibration``), or of the
        leave-one-out training scores for runs without a calibration slice.
    threshold : dict or None
        The operating point chosen and saved by a user: ``value``, ``policy``, ``param``, ``scorer``, ``saved``.
    selection : dict or None
        The evidence of the ``auto`` preset (:meth:`doc_core.workflow.selection.Selection.to_dict`): ``rows`` (one per
        candidate: ``name``, ``val_auroc``, ``val_auroc_by_kind``, ``fit_s``, ``score_ms``, ``chosen``, optional
        ``error``), ``chosen``, ``n_fit``, ``n_holdout``, ``seed``, ``rule``; None for runs trained with manual
        settings (and runs saved before the preset existed).
    calibration : dict
        The held-out calibration slice behind ``default_threshold``: ``n`` (images; 0 = none), ``threshold_source``
        ("calibration" or "train") and ``note`` (why there is none). Runs saved before calibration existed read as
        ``{"n": 0, "threshold_source": "train", "note": ...}``.
    path : Path
    """

    run_id: str
    name: str
    created: str
    config: dict
    dataset: dict
    auc: float | None
    average_precision: float | None
    n_test: int
    steps: int
    steps_total: int
    stopped_early: bool
    train_seconds: float
    total_seconds: float
    default_threshold: float
    threshold: dict | None = None
    selection: dict | None = None
    calibration: dict = field(default_factory=lambda: dict(NO_CALIBRATION))
    path: Path = field(default=Path("."), compare=False)

    _FIELDS = ("run_id", "name", "created", "config", "dataset", "auc", "average_precision", "n_test", "steps",
               "steps_total", "stopped_early", "train_seconds", "total_seconds", "default_threshold", "threshold",
               "selection", "calibration")

    @property
    def n_calibration(self) -> int:
        """Held-out calibration images behind ``default_threshold`` (0 = it rests on leave-one-out training scores)."""
        return int(self.calibration.get("n", 0))

    def to_dict(self) -> dict:
        return {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION,
                **{k: getattr(self, k) for k in self._FIELDS}}

    @classmethod
    def from_dict(cls, d: dict, path: Path) -> "RunSummary":
        """Read a parsed ``run.json``: every field of its type and range, configs checked and filled in.

        Non-finite numbers, wrong types, out-of-range values (e.g. a threshold of NaN, ``input_size`` 4096,
        ``"lam": "x"``) and missing fields are refused.

        Raises
        ------
        RunError
            Naming the file and the field.
        """
        where = f"{path}/run.json"
        if not isinstance(d, dict) or d.get("format") != RUN_FORMAT:
            raise RunError(f"{path}: run.json is not a {RUN_FORMAT} file")
        if d.get("format_version") != RUN_FORMAT_VERSION:
            raise RunError(f"{path}: run format version {d.get('format_version')!r} is not supported")
        try:
            f = Fields(d, where)
            cfg = f.section("config")
            scorer = ScorerConfig.from_dict(cfg.dict("scorer", default={}), f"{where}: config.scorer")
            config = {"backbone": BackboneConfig.from_dict(cfg.dict("backbone"), f"{where}: config.backbone").to_dict(),
                      "train": TrainConfig.from_dict(cfg.dict("train"), f"{where}: config.train").to_dict(),
                      "scorer": scorer.to_dict(),
                      "threshold_percentile": cfg.float("threshold_percentile", 0.0, 100.0, default=95.0),
                      # runs saved before the calibration slice existed held none out
                      "calibration_fraction": cfg.float("calibration_fraction", 0.0, 0.5, default=0.0),
                      "calibration_min": cfg.int("calibration_min", 1, 10**9, default=MIN_CALIBRATION)}
            return cls(run_id=f.str("run_id", max_chars=100, pattern=RUN_ID_PATTERN),
                       name=f.str("name", max_chars=1000), created=f.str("created", max_chars=64),
                       config=config, dataset=_dataset_fields(f.section("dataset")),
                       auc=f.float("auc", 0.0, 1.0, default=None, optional=True),
                       average_precision=f.float("average_precision", 0.0, 1.0, default=None, optional=True),
                       n_test=f.int("n_test", 0, MAX_COUNT), steps=f.int("steps", 0, MAX_COUNT),
                       steps_total=f.int("steps_total", 0, MAX_COUNT),
                       stopped_early=f.bool("stopped_early", default=False),
                       train_seconds=f.float("train_seconds", 0.0, default=0.0),
                       total_seconds=f.float("total_seconds", 0.0, default=0.0),
                       default_threshold=f.float("default_threshold"),
                       threshold=_threshold_fields(f, scorer, where), selection=_selection_fields(f),
                       calibration=_calibration_fields(f), path=path)
        except ArtifactError as exc:
            raise RunError(str(exc)) from exc

    # --- convenience for display -------------------------------------------------------------------------------

    @property
    def backbone(self) -> dict:
        return self.config.get("backbone", {})

    @property
    def train(self) -> dict:
        return self.config.get("train", {})

    @property
    def scorer(self) -> ScorerConfig:
        return ScorerConfig.from_dict(self.config.get("scorer", {}))

    @property
    def created_local(self) -> str:
        """``created`` in local time, ``YYYY-MM-DD HH:MM``."""
        try:
            return datetime.fromisoformat(self.created).astimezone().strftime("%Y-%m-%d %H:%M")
        except (ValueError, OverflowError, OSError):  # not a timestamp, or one that local time cannot show
            return self.created

    @property
    def operating_threshold(self) -> float:
        """The saved threshold if there is one, else the detector's default."""
        return float(self.threshold["value"]) if self.threshold else self.default_threshold

    def config_line(self) -> str:
        """A short line like ``mobilenet_v2 α1 · 96 px · 3 epochs · λ 0.1 · lr 0.0001 · batch 64``."""
        b, t = self.backbone, self.train
        alpha = f" α{b.get('alpha', 1.0):g}" if b.get("name") == "mobilenet_v2" else ""
        return (f"{b.get('name', '?')}{alpha} · {b.get('input_size', '?')} px · {t.get('epochs', '?')} epochs · "
                f"λ {t.get('lam', '?'):g} · lr {t.get('learning_rate', 0):g} · batch {t.get('batch_size', '?')}")


def _dataset_fields(ds: Fields) -> dict:
    """``run.json``'s dataset, with the fields the dashboard shows or rebuilds the data from type-checked."""
    for key in ("kind", "name", "description", "label", "root"):
        ds.str(key, default=None, optional=True)
    ds.int("image_size", 1, MAX_DATASET_IMAGE_SIZE, default=None, optional=True)
    ds.dict("split", default=None, optional=True)
    counts = ds.section("counts", default={})
    for key in counts.doc:
        counts.int(key, 0, MAX_COUNT)
    return dict(ds.doc)


def _threshold_fields(f: Fields, scorer: ScorerConfig, where: str) -> dict | None:
    """``run.json``'s saved operating point (value finite), with its scorer filled in; None when none was saved."""
    if not f.dict("threshold", default=None, optional=True):
        return None
    t = f.section("threshold")
    saved_scorer = t.dict("scorer", default=None, optional=True)
    return {"value": t.float("value"), "policy": t.str("policy", choices=THRESHOLD_POLICIES),
            "param": t.float("param", default=None, optional=True),
            "scorer": (ScorerConfig.from_dict(saved_scorer, f"{where}: threshold.scorer") if saved_scorer
                       else scorer).to_dict(),
            "saved": t.str("saved", default="", max_chars=64)}


MAX_SELECTION_ROWS = 100  # candidates in a saved selection table


NO_CALIBRATION = {"n": 0, "threshold_source": "train",
                  "note": "trained without a calibration slice; the threshold rests on leave-one-out training scores"}


def _calibration_fields(f: Fields) -> dict:
    """``run.json``'s calibration facts (:data:`NO_CALIBRATION` for runs saved before they existed)."""
    if not f.dict("calibration", default=None, optional=True):
        return dict(NO_CALIBRATION)
    c = f.section("calibration")
    return {"n": c.int("n", 0, MAX_COUNT, default=0),
            "threshold_source": c.str("threshold_source", default="train", choices=("calibration", "train", "manual")),
            "note": c.str("note", default="", max_chars=2000)}


def _selection_fields(f: Fields) -> dict | None:
    """``run.json``'s evidence of the ``auto`` preset, every field type- and range-checked; None when the run has
    none (manual settings, or saved before the preset existed)."""
    if not f.dict("selection", default=None, optional=True):
        return None
    sel = f.section("selection")
    rows = []
    for i, row in enumerate(sel.list("rows", max_items=MAX_SELECTION_ROWS)):
        r = Fields(row, f"{sel.where}: rows[{i}]")
        by_kind = r.section("val_auroc_by_kind", default={})
        rows.append({"name": r.str("name", max_chars=200),
                     "val_auroc": r.float("val_auroc", 0.0, 1.0, default=None, optional=True),
                     "val_auroc_by_kind": {str(k)[:40]: by_kind.float(k, 0.0, 1.0, optional=True)
                                           for k in list(by_kind.doc)[:20]},
                     "fit_s": r.float("fit_s", 0.0, default=0.0), "score_ms": r.float("score_ms", 0.0, default=0.0),
                     "chosen": r.bool("chosen", default=False),
                     **({"error": r.str("error", max_chars=2000)} if r.doc.get("error") is not None else {})})
    return {"rows": rows, "chosen": sel.str("chosen", max_chars=200),
            "n_fit": sel.int("n_fit", 0, MAX_COUNT), "n_holdout": sel.int("n_holdout", 0, MAX_COUNT),
            "n_calibration": sel.int("n_calibration", 0, MAX_COUNT, default=0),
            "seed": sel.int("seed", -2**63, 2**63 - 1, default=0), "rule": sel.str("rule", default="", max_chars=2000),
            "anomalies": sel.str("anomalies", default="any", choices=ANOMALY_KINDS)}


# ------------------------------------------------------------------------------------------------------- writing


def new_run_id(hint: str = "") -> str:
    """A unique, sortable, filesystem-safe id: ``YYYYmmdd-HHMMSS-<hint>-<4 hex>``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", hint).strip("-").lower()[:40]
    return "-".join(p for p in (stamp, slug, secrets.token_hex(2)) if p)


def _json_safe(value):
    """``value`` with numpy scalars made Python numbers and tuples made lists, so it is stored as plain JSON."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_json_atomic(path: Path, doc: dict) -> None:
    write_file_atomic(path, lambda f: json.dump(doc, f, indent=1), text=True)


def save_run(detector: DOCDetector, test_scores: np.ndarray, test_labels: np.ndarray, test_classes,
             test_features: np.ndarray | None = None, *, dataset: dict | None = None, name: str | None = None,
             steps_total: int | None = None, stopped_early: bool = False, total_seconds: float | None = None,
             test_paths=None, runs_dir: str | os.PathLike | None = None, run_id: str | None = None,
             selection: dict | None = None) -> RunSummary:
    """Save a fitted detector and its test-set results as a new run, atomically.

    Parameters
    ----------
    detector : DOCDetector
        Fitted.
    test_scores : np.ndarray, shape (m,)
        ``detector``'s scores of the test images.
    test_labels : np.ndarray, int, shape (m,)
        1 anomaly, 0 normal, -1 unlabelled.
    test_classes : sequence of str, length m
    test_features : np.ndarray, shape (m, k), optional
        Stored so that other scorers can be compared later without re-embedding.
    dataset : dict, optional
        Description of the data (``DatasetSpec.to_dict()`` plus anything useful to show).
    name : str, optional
        Shown in lists; defaults to a description of the backbone and epochs.
    steps_total, stopped_early, total_seconds
        Training facts to record (steps done are read from the detector's history).
    selection : dict, optional
        How the ``auto`` preset chose the configuration (:meth:`doc_core.workflow.selection.Selection.to_dict`),
        stored as :attr:`RunSummary.selection`.

    Returns
    -------
    RunSummary
    """
    scores = np.asarray(test_scores, np.float32).ravel()
    labels = np.asarray(test_labels, np.int64).ravel()
    classes = np.asarray([str(c) for c in test_classes], dtype=str)
    if not (len(scores) == len(labels) == len(classes)):
        raise ValueError(f"test scores ({len(scores)}), labels ({len(labels)}) and classes ({len(classes)}) differ "
                         "in length")
    if test_features is not None and len(test_features) != len(scores):
        raise ValueError("test_features and test_scores differ in length")
    root = _dir(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    cfg = detector.config_dict()
    if run_id is None:
        run_id = new_run_id(f"{cfg['backbone']['name']}-{cfg['train']['epochs']}ep")
    final = _run_path(run_id, root)
    if final.exists():
        raise RunError(f"a run {run_id!r} already exists")
    both = bool(np.any(labels == 0) and np.any(labels == 1))
    mask = labels >= 0
    history = list(getattr(detector, "history_", []))
    summary = RunSummary(
        run_id=run_id, name=name or f"{cfg['backbone']['name']}, {len(history)} steps",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), config=cfg, dataset=dict(dataset or {}),
        auc=_finite_or_none(roc_auc(labels[mask], scores[mask])) if both else None,
        average_precision=_finite_or_none(average_precision(labels[mask], scores[mask])) if both else None,
        n_test=len(scores), steps=len(history), steps_total=int(steps_total if steps_total is not None else len(history)),
        stopped_early=bool(stopped_early), train_seconds=float(history[-1].elapsed_s) if history else 0.0,
        total_seconds=float(total_seconds if total_seconds is not None else getattr(detector, "fit_seconds_", 0.0)),
        default_threshold=float(detector.threshold_), threshold=None,
        selection=_selection_fields(Fields({"selection": _json_safe(selection)}, "selection")),
        calibration={"n": int(getattr(detector, "n_calibration", 0)),
                     "threshold_source": getattr(detector, "threshold_source_", "train"),
                     "note": getattr(detector, "calibration_note_", "")},
        path=final)
    clean_stale_temp(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_id}.tmp-", dir=root))
    try:
        detector.save(tmp / "detector", metadata={"run_id": run_id})
        arrays = {"scores": scores, "labels": labels, "classes": classes,
                  "train_scores": np.asarray(detector.train_scores_, np.float32)}
        if test_paths is not None and len(test_paths) == len(scores):
            arrays["paths"] = np.asarray([str(p) for p in test_paths], dtype=str)
        if getattr(detector, "calibration_scores_", None) is not None:
            arrays["calibration_scores"] = np.asarray(detector.calibration_scores_, np.float32)
        np.savez(tmp / "scores.npz", **arrays)
        _fsync_file(tmp / "scores.npz")
        if test_features is not None:
            np.savez(tmp / "features.npz", features=np.asarray(test_features, np.float32))
            _fsync_file(tmp / "features.npz")
        _write_json_atomic(tmp / "history.json", {"steps": [r.to_dict() for r in history]})
        _write_json_atomic(tmp / "run.json", summary.to_dict())
        os.replace(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RunError(f"The disk holding {root} is full, so the run could not be saved; nothing was written "
                           "and the other runs are untouched. Free some space and train again.") from exc
        raise
    return summary


def clean_stale_temp(runs_dir: str | os.PathLike | None = None, max_age_s: float = 24 * 3600) -> int:
    """Remove hidden temporary folders (``.<id>.tmp-*``, ``.<id>.deleted-*``) older than ``max_age_s``.

    They are what a process killed while saving or deleting leaves behind; they are never listed as runs, only
    taking disk space. Young ones may belong to a save in progress and are kept. Returns how many were removed.
    """
    return remove_stale(_dir(runs_dir), (".*.tmp-*", ".*.deleted-*"), max_age_s)


# ------------------------------------------------------------------------------------------------------- reading


def _read_summary(path: Path) -> RunSummary:
    try:
        doc = read_json(path / "run.json", MAX_RUN_JSON_BYTES)
    except FileNotFoundError as exc:
        raise RunError(f"{path} is not a run (no run.json)") from exc
    except ArtifactError as exc:
        raise RunError(str(exc)) from exc
    try:
        summary = RunSummary.from_dict(doc, path)
    except RunError:
        raise
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:  # defence in depth
        raise RunError(f"{path}/run.json is unusable ({type(exc).__name__}: {exc})") from exc
    if summary.run_id != path.name:
        raise RunError(f"{path}: run.json names run {summary.run_id!r}, not {path.name!r}")
    return summary


@dataclass(frozen=True)
class BrokenRun:
    """A folder in the runs folder that looks like a run but cannot be read: its id, path and the reason."""

    run_id: str
    path: Path
    reason: str


def _scan(runs_dir: str | os.PathLike | None) -> tuple[list[RunSummary], list[BrokenRun]]:
    root = _dir(runs_dir)
    if not root.is_dir():
        return [], []
    good, broken = [], []
    for p in root.iterdir():
        if p.name.startswith(".") or not RUN_ID_PATTERN.match(p.name) or p.is_symlink() or not p.is_dir():
            continue
        try:
            good.append(_read_summary(p))
        except RunError as exc:
            broken.append(BrokenRun(p.name, p, str(exc)))
    good.sort(key=lambda r: (r.created, r.run_id), reverse=True)
    broken.sort(key=lambda b: b.run_id)
    return good, broken


def list_runs(runs_dir: str | os.PathLike | None = None) -> list[RunSummary]:
    """Every complete run in the runs folder, newest first; incomplete or broken folders are left out (see
    :func:`list_broken_runs`), so one bad run never hides the others."""
    return _scan(runs_dir)[0]


def list_broken_runs(runs_dir: str | os.PathLike | None = None) -> list[BrokenRun]:
    """The run folders :func:`list_runs` leaves out because their ``run.json`` is missing or broken, with why."""
    return _scan(runs_dir)[1]


def get_run(run_id: str, runs_dir: str | os.PathLike | None = None) -> RunSummary:
    """The summary of one run.

    Raises
    ------
    RunError
        No such run, or a broken one.
    """
    path = _run_path(run_id, runs_dir)
    if not path.is_dir() or path.is_symlink():
        raise RunError(f"there is no run {run_id!r} in {path.parent}")
    return _read_summary(path)


def load_scores(run_id: str, runs_dir: str | os.PathLike | None = None) -> RunScores:
    """The test scores, labels and classes and the training scores of a run (arrays only, no pickle).

    Every array's header is checked before it is loaded: dtype, and length ``n_test`` from ``run.json`` for the
    per-test-image arrays; scores must be finite and labels in {-1, 0, 1}.
    """
    summary = get_run(run_id, runs_dir)
    path = summary.path
    per_image = ("m",)
    specs = {"scores": ArraySpec(per_image, "fiu", finite=True), "labels": ArraySpec(per_image, "iub"),
             "classes": ArraySpec(per_image, "U"), "train_scores": ArraySpec(("n",), "fiu", finite=True),
             "paths": ArraySpec(per_image, "U", required=False),
             "calibration_scores": ArraySpec(("c",), "f", finite=True, required=False)}
    try:
        z = read_npz(path / "scores.npz", specs, {"m": (summary.n_test, "run.json's n_test")})
    except FileNotFoundError as exc:
        raise RunError(f"{path}/scores.npz is missing") from exc
    except ArtifactError as exc:
        raise RunError(str(exc)) from exc
    labels = z["labels"].astype(np.int64)
    if not np.isin(labels, (-1, 0, 1)).all():
        raise RunError(f"{path}/scores.npz: labels must be -1, 0 or 1")
    return RunScores(scores=z["scores"].astype(np.float32), labels=labels, classes=z["classes"].astype(str),
                     train_scores=z["train_scores"].astype(np.float32),
                     paths=z["paths"].astype(str) if "paths" in z else None,
                     calibration_scores=z["calibration_scores"].astype(np.float32) if "calibration_scores" in z
                     else None)


def load_features(run_id: str, runs_dir: str | os.PathLike | None = None) -> np.ndarray | None:
    """The run's test features, float32 (m, k) with m = ``n_test``, or None if the run did not store them."""
    summary = get_run(run_id, runs_dir)
    path = summary.path
    if not (path / "features.npz").is_file():
        return None
    try:
        z = read_npz(path / "features.npz", {"features": ArraySpec(("m", "k"), "f", finite=True)},
                     {"m": (summary.n_test, "run.json's n_test")})
    except (ArtifactError, FileNotFoundError) as exc:
        raise RunError(f"{path}/features.npz is broken: {exc}") from exc
    return z["features"].astype(np.float32)


def load_history(run_id: str, runs_dir: str | os.PathLike | None = None) -> list[StepRecord]:
    """The run's training curves, one :class:`StepRecord` per step (empty for an untrained baseline)."""
    path = get_run(run_id, runs_dir).path / "history.json"
    try:
        steps = Fields(read_json(path, MAX_HISTORY_JSON_BYTES), str(path)).list("steps")
        return [StepRecord.from_dict(r, f"{path}: steps[{i}]") for i, r in enumerate(steps)]
    except FileNotFoundError:
        return []
    except ArtifactError as exc:
        raise RunError(str(exc)) from exc


def load_detector(run_id: str, runs_dir: str | os.PathLike | None = None,
                  use_saved_threshold: bool = True) -> DOCDetector:
    """The run's detector, ready for ``predict``.

    With ``use_saved_threshold`` and a saved threshold, the detector scores with the scorer that threshold was chosen
    for and uses that threshold (the run's operating point); otherwise it is the detector as trained.
    """
    summary = get_run(run_id, runs_dir)
    try:
        det = DOCDetector.load(summary.path / "detector")
    except DetectorFormatError as exc:
        raise RunError(f"run {run_id!r}: {exc}") from exc
    if use_saved_threshold and summary.threshold:
        scorer = ScorerConfig.from_dict(summary.threshold.get("scorer") or det.scorer.to_dict())
        if scorer != det.scorer:
            det = det.with_scorer(scorer)
        det.threshold_ = float(summary.threshold["value"])
    return det


def scores_csv(stored: RunScores, scores: np.ndarray | None = None, threshold: float | None = None,
               comment: str = "") -> str:
    """The test scores as CSV text: ``index, [path,] class, true_label, score[, predicted]``.

    Parameters
    ----------
    stored : RunScores
    scores : np.ndarray, optional
        Scores to write instead of the stored ones (e.g. from another scorer), same length.
    threshold : float, optional
        Adds ``predicted`` (``anomaly`` where ``score > threshold``, else ``normal``).
    comment : str
        Written first as ``# comment`` lines.
    """
    import csv
    import io

    s = stored.scores if scores is None else np.asarray(scores, np.float32)
    if len(s) != len(stored.labels):
        raise ValueError(f"{len(s)} scores for {len(stored.labels)} test images")
    names = {1: "anomaly", 0: "normal", -1: "unlabelled"}
    out = io.StringIO()
    for line in comment.splitlines():
        out.write(f"# {line}\n")
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["index"] + (["path"] if stored.paths is not None else []) + ["class", "true_label", "score"]
               + (["predicted"] if threshold is not None else []))
    for i, (c, y, v) in enumerate(zip(stored.classes, stored.labels, s)):
        row = [i] + ([stored.paths[i]] if stored.paths is not None else []) + [c, names.get(int(y), str(y)),
                                                                                 f"{float(v):.7g}"]
        if threshold is not None:
            row.append("anomaly" if v > threshold else "normal")
        w.writerow(row)
    return out.getvalue()


# ------------------------------------------------------------------------------------------------------- changing


def save_threshold(run_id: str, value: float, policy: str = "manual", param: float | None = None,
                   scorer: ScorerConfig | None = None, runs_dir: str | os.PathLike | None = None) -> RunSummary:
    """Record the chosen operating point in the run's ``run.json`` (atomically); returns the new summary.

    Parameters
    ----------
    value : float
        Images scoring above it are anomalies.
    policy : {"manual", "target_fpr", "best_f1", "train_percentile"}
        How the value was chosen, with its ``param`` (the target FPR or the percentile).
    scorer : ScorerConfig, optional
        The scorer the threshold belongs to; default the run's own.
    """
    if policy not in THRESHOLD_POLICIES:
        raise ValueError(f"policy must be one of {', '.join(THRESHOLD_POLICIES)}, got {policy!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"the threshold must be a finite number, got {value}")
    with _write_lock:
        summary = get_run(run_id, runs_dir)
        doc = summary.to_dict()
        doc["threshold"] = {"value": float(value), "policy": policy,
                            "param": None if param is None else float(param),
                            "scorer": (scorer or summary.scorer).to_dict(),
                            "saved": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        _write_json_atomic(summary.path / "run.json", doc)
        return RunSummary.from_dict(doc, summary.path)


def rename_run(run_id: str, name: str, runs_dir: str | os.PathLike | None = None) -> RunSummary:
    """Change the display name of a run."""
    name = " ".join(str(name).split())[:120]
    if not name:
        raise ValueError("a run name cannot be empty")
    with _write_lock:
        summary = get_run(run_id, runs_dir)
        doc = {**summary.to_dict(), "name": name}
        _write_json_atomic(summary.path / "run.json", doc)
        return RunSummary.from_dict(doc, summary.path)


def delete_run(run_id: str, runs_dir: str | os.PathLike | None = None) -> None:
    """Delete a run. The folder is first renamed out of sight, so a half-deleted run is never listed."""
    path = _run_path(run_id, runs_dir)
    if not path.is_dir() or path.is_symlink():
        raise RunError(f"there is no run {run_id!r} in {path.parent}")
    trash = path.with_name(f".{run_id}.deleted-{os.getpid()}-{time.time_ns()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)
