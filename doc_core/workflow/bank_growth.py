"""Confirmed normals join the bank: grow a saved run's memory bank with images analysts marked *normal*, re-score
the run without retraining, and undo it.

When an analyst says "this flagged sneaker is fine", :func:`add_normals` appends the image to the run's normal bank
(:meth:`doc_core.model.detector.DOCDetector.with_added_normals`: pooled features for knn/lof, a bounded share of its
patches for the patch scorer), re-scores the run's test images (knn/lof from the stored test features, patch from the
test images), sets the default threshold again (from the calibration slice's new scores, or the new leave-one-out
training scores when the detector has no calibration slice) and saves the result as the run's new state. The previous
state is kept, so :func:`undo_bank_change` restores it exactly (the same bytes). :func:`labelled_normals` finds the
images labelled normal in the :class:`doc_core.workflow.labels.LabelStore` among the run's test images, and
:func:`add_labelled_normals` adds them in one call (the dashboard's button).

Layout, inside the run folder (written only by this module)::

    bank_history/
        history.json        the changes in force, oldest first (BankChange.to_dict each)
        before-0001/        the run as it was before change 1: detector/, scores.npz, change.json
        before-0002/        ...

Rules
-----
* **Added images score at their leave-one-out level.** A test image that joined the bank would score near 0 against
  its own copy; its stored score is instead what it scores against the *other* bank entries (its entry of the new
  leave-one-out training scores), as every training image's score is.
* **Duplicates are skipped.** An image whose :func:`doc_core.workflow.labels.image_key` was already added by a change
  in force, or that appears twice in one request, is not added again (``BankChange.n_skipped``). The training images
  are not hashed, so a test image identical to a training image would be added (it has never happened in the
  shipped data sets).
* **A saved threshold is respected.** With no saved operating point the run operates at the new default threshold. A
  saved ``train_percentile`` threshold of the run's own scorer is a percentile of normal scores, so it is recomputed
  at the same percentile on the new normal scores (calibration scores when the detector has them). Any other saved
  threshold (``manual``, ``target_fpr``, ``best_f1``, or one saved for another scorer) is kept as it is: it was
  chosen by a person or on the test labels and is not silently moved; ``BankChange.operating_note`` says so, and the
  ROC page can choose it again on the new scores.
* **Safe writes.** Every file is written to a temporary name and renamed into place; nothing is pickled; the previous
  state is copied to ``before-N`` *before* anything of the run changes and the history is written last, so a change
  killed half-way is rolled back from ``before-N`` by the next call of any function here. Undo deletes only the
  ``before-N`` folder it wrote. One change at a time per run (a lock within the process; two processes changing the
  same run's bank at the same moment are not supported).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from ..evaluation.metrics import average_precision, policy_threshold, roc_auc
from ..model.detector import DETECTOR_FOLDER, DetectorFormatError, DOCDetector, ScorerConfig
from .artifacts import ArraySpec, ArtifactError, Fields, read_json, read_npz
from .labels import LabelStore, image_key
from .output_folders import install_folder, remove_stale, write_file_atomic
from .runs import RunError, RunScores, _fsync_file, _write_json_atomic, _write_lock, get_run, load_features, load_scores

BANK_DIR = "bank_history"
HISTORY_FILE = "history.json"
CHANGE_FILE = "change.json"
HISTORY_FORMAT = "doc-explorer-bank-history"
HISTORY_FORMAT_VERSION = 1
SNAPSHOT_PREFIX = "before-"
MAX_HISTORY_BYTES = 64 * 2**20  # 64 hex digits per added image: about a million images
MAX_VERSIONS = 100_000

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class BankHistoryError(RunError):
    """A run's bank history (or a saved previous version) is missing or damaged, or there is nothing to undo; the
    message names the file. The run itself is unchanged and keeps working."""


@dataclass(frozen=True)
class BankChange:
    """What one change of a run's normal bank did.

    Attributes
    ----------
    run_id : str
    action : {"add", "undo", "none"}
        ``add`` grew the bank; ``undo`` restored the state before the last ``add`` (the counts then describe the
        undo: ``n_added`` images left the bank); ``none``: every image was already in the bank, nothing changed.
    version : int
        The bank version after this change: 0 = as trained, +1 per add in force.
    created : str
        ISO 8601 UTC time.
    n_requested, n_added, n_skipped : int
        Images asked for, added (undo: removed), and skipped because already in the bank or repeated.
    added_keys : tuple of str
        Image keys (:func:`doc_core.workflow.labels.image_key`) added (undo: removed).
    bank_before, bank_after : int
        Images (pooled feature vectors) in the bank.
    patch_bank_before, patch_bank_after : int or None
        Patches in the patch bank (patch scorer only).
    default_threshold_before, default_threshold_after : float
        The detector's own threshold.
    threshold_source : {"calibration", "train"}
        What the new default threshold rests on: the calibration slice's scores, or the leave-one-out training
        scores (no calibration slice).
    operating_threshold_before, operating_threshold_after : float
        The threshold the counts below use: the run's saved threshold when one applies to its scorer, else the
        default.
    operating_note : str
        How the operating threshold after the change was set (see the module's rules).
    n_test : int
    flagged_before, flagged_after : int
        Test images scoring above the operating threshold.
    no_longer_flagged, newly_flagged : int
        Test images flagged before and not after, and the other way round.
    auc_before, auc_after : float or None
        Test-set ROC AUC of the stored scores (None without both labels).
    added_test_indices : tuple of int
        Position in the run's test set of each image in ``added_keys`` (-1: not one of its test images). The bank's
        rows after the trained ones are the added images, change after change in this order (see
        :func:`bank_row_images`).
    """

    run_id: str
    action: str
    version: int
    created: str
    n_requested: int
    n_added: int
    n_skipped: int
    added_keys: tuple[str, ...]
    bank_before: int
    bank_after: int
    patch_bank_before: int | None
    patch_bank_after: int | None
    default_threshold_before: float
    default_threshold_after: float
    threshold_source: str
    operating_threshold_before: float
    operating_threshold_after: float
    operating_note: str
    n_test: int
    flagged_before: int
    flagged_after: int
    no_longer_flagged: int
    newly_flagged: int
    auc_before: float | None = None
    auc_after: float | None = None
    added_test_indices: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["added_keys"] = list(self.added_keys)
        d["added_test_indices"] = list(self.added_test_indices)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "BankChange":
        """A change as :meth:`to_dict` wrote it; every field type- and range-checked.

        Raises
        ------
        ArtifactError
        """
        f = Fields(d, where)
        n = 10**12

        def opt_int(key: str) -> int | None:
            return f.int(key, 0, n, default=None, optional=True)

        def opt_float(key: str, lo: float = -math.inf, hi: float = math.inf) -> float | None:
            return f.float(key, lo, hi, default=None, optional=True)

        keys = tuple(f.str_list("added_keys", max_items=10_000_000, max_chars=64))
        where_test = f.list("added_test_indices", default=[], max_items=10_000_000)
        if len(where_test) not in (0, len(keys)) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                             and -1 <= i < n for i in where_test):
            raise ArtifactError(f"{where}: 'added_test_indices' must hold one integer >= -1 per added key")
        return cls(run_id=f.str("run_id", max_chars=100), action=f.str("action", choices=("add", "undo", "none")),
                   version=f.int("version", 0, MAX_VERSIONS), created=f.str("created", max_chars=64),
                   n_requested=f.int("n_requested", 0, n), n_added=f.int("n_added", 0, n),
                   n_skipped=f.int("n_skipped", 0, n), added_keys=keys,
                   bank_before=f.int("bank_before", 0, n), bank_after=f.int("bank_after", 0, n),
                   patch_bank_before=opt_int("patch_bank_before"), patch_bank_after=opt_int("patch_bank_after"),
                   default_threshold_before=f.float("default_threshold_before"),
                   default_threshold_after=f.float("default_threshold_after"),
                   threshold_source=f.str("threshold_source", max_chars=40),
                   operating_threshold_before=f.float("operating_threshold_before"),
                   operating_threshold_after=f.float("operating_threshold_after"),
                   operating_note=f.str("operating_note", default=""), n_test=f.int("n_test", 0, n),
                   flagged_before=f.int("flagged_before", 0, n), flagged_after=f.int("flagged_after", 0, n),
                   no_longer_flagged=f.int("no_longer_flagged", 0, n), newly_flagged=f.int("newly_flagged", 0, n),
                   auc_before=opt_float("auc_before", 0.0, 1.0), auc_after=opt_float("auc_after", 0.0, 1.0),
                   added_test_indices=tuple(where_test))

    def describe(self) -> str:
        """A few lines for people: what changed, with the numbers."""
        created = self.created[:19].replace("T", " ")
        if self.action == "none":
            return (f"Nothing changed: all {self.n_requested} images are already in the normal bank "
                    f"(version {self.version}).")
        if self.action == "undo":
            head = (f"Undone on {created} UTC: {self.n_added} images left the normal bank "
                    f"({self.bank_before:,} -> {self.bank_after:,} images); back to version {self.version}.")
        else:
            skipped = f" ({self.n_skipped} already in the bank, skipped)" if self.n_skipped else ""
            head = (f"Added {self.n_added} images to the normal bank on {created} UTC{skipped}: "
                    f"{self.bank_before:,} -> {self.bank_after:,} images (version {self.version}).")
        if self.patch_bank_before is not None:
            head += f" Patch bank: {self.patch_bank_before:,} -> {self.patch_bank_after:,} patches."
        source = {"calibration": "calibration scores", "train": "leave-one-out training scores"}.get(
            self.threshold_source, self.threshold_source)
        lines = [head,
                 f"Default threshold {self.default_threshold_before:.6g} -> {self.default_threshold_after:.6g} "
                 f"(from the {source}).",
                 f"Operating threshold {self.operating_threshold_before:.6g} -> {self.operating_threshold_after:.6g}: "
                 f"{self.operating_note}",
                 f"Flagged test images: {self.flagged_before:,} -> {self.flagged_after:,} of {self.n_test:,} "
                 f"({self.no_longer_flagged:,} no longer flagged, {self.newly_flagged:,} newly flagged)."]
        if self.auc_before is not None and self.auc_after is not None:
            lines.append(f"Test AUC {self.auc_before:.4f} -> {self.auc_after:.4f}.")
        return "\n".join(lines)


@dataclass(frozen=True)
class LabelledNormals:
    """The run's test images labelled *normal* in the label store, found by their image key.

    Attributes
    ----------
    images : np.ndarray, uint8, shape (n, h, w, c)
        Those not yet in the bank, in test-set order.
    keys : tuple of str
        Their image keys.
    test_indices : np.ndarray, int64, shape (n,)
        Their positions in the run's test set.
    n_labelled : int
        Labels "normal" of the run in the store.
    n_in_bank : int
        Of those, found among the test images but already added to the bank.
    n_not_found : int
        Of those, matching no test image of the run (labelled on an uploaded image, say).
    """

    images: np.ndarray
    keys: tuple[str, ...]
    test_indices: np.ndarray
    n_labelled: int
    n_in_bank: int
    n_not_found: int

    def __len__(self) -> int:
        return len(self.keys)


# ---------------------------------------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _lock(run_path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(run_path.resolve()), threading.Lock())


def _snapshot_name(version: int) -> str:
    return f"{SNAPSHOT_PREFIX}{version:04d}"


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _auc(labels: np.ndarray, scores: np.ndarray) -> tuple[float | None, float | None]:
    mask = labels >= 0
    y, s = labels[mask], scores[mask]
    if not (np.any(y == 0) and np.any(y == 1)):
        return None, None
    return _finite(roc_auc(y, s)), _finite(average_precision(y, s))


def image_keys(images: np.ndarray) -> list[str]:
    """:func:`doc_core.workflow.labels.image_key` of each uint8 image (n, h, w[, c]), in order."""
    return [image_key(im) for im in np.asarray(images)]


def _read_history(run_path: Path) -> list[BankChange]:
    path = run_path / BANK_DIR / HISTORY_FILE
    try:
        doc = read_json(path, MAX_HISTORY_BYTES)
    except FileNotFoundError:
        return []
    except ArtifactError as exc:
        raise BankHistoryError(f"the bank history is damaged: {exc}") from exc
    try:
        if not isinstance(doc, dict) or doc.get("format") != HISTORY_FORMAT:
            raise ArtifactError(f"{path} is not a {HISTORY_FORMAT} file")
        if doc.get("format_version") != HISTORY_FORMAT_VERSION:
            raise ArtifactError(f"{path}: format version {doc.get('format_version')!r} is not supported")
        f = Fields(doc, str(path))
        changes = [BankChange.from_dict(c, f"{path}: changes[{i}]")
                   for i, c in enumerate(f.list("changes", max_items=MAX_VERSIONS))]
    except ArtifactError as exc:
        raise BankHistoryError(f"the bank history is damaged: {exc}") from exc
    if [c.version for c in changes] != list(range(1, len(changes) + 1)):
        raise BankHistoryError(f"the bank history is damaged: {path} lists versions "
                               f"{[c.version for c in changes][:10]}, not 1, 2, ...")
    return changes


def _write_history(run_path: Path, changes: list[BankChange]) -> None:
    folder = run_path / BANK_DIR
    folder.mkdir(exist_ok=True)
    _write_json_atomic(folder / HISTORY_FILE, {"format": HISTORY_FORMAT, "format_version": HISTORY_FORMAT_VERSION,
                                               "changes": [c.to_dict() for c in changes]})


def _write_scores(run_path: Path, stored: RunScores, scores: np.ndarray, train_scores: np.ndarray,
                  calibration_scores: np.ndarray | None) -> None:
    """scores.npz as :func:`doc_core.workflow.runs.save_run` writes it, with new scores."""
    arrays = {"scores": np.asarray(scores, np.float32), "labels": stored.labels, "classes": stored.classes,
              "train_scores": np.asarray(train_scores, np.float32)}
    if stored.paths is not None:
        arrays["paths"] = stored.paths
    if calibration_scores is not None:
        arrays["calibration_scores"] = np.asarray(calibration_scores, np.float32)
    write_file_atomic(run_path / "scores.npz", lambda f: np.savez(f, **arrays))


def _copy_file_atomic(src: Path, dst: Path) -> None:
    def copy(f) -> None:
        with open(src, "rb") as source:
            shutil.copyfileobj(source, f)

    write_file_atomic(dst, copy)


def _update_run_json(run_id: str, runs_dir, fields: dict) -> None:
    """Set top-level fields of the run's run.json (atomically, other fields as they are now)."""
    with _write_lock:
        summary = get_run(run_id, runs_dir)
        doc = {**summary.to_dict(), **fields}
        type(summary).from_dict(doc, summary.path)  # a bad value is refused before anything is written
        _write_json_atomic(summary.path / "run.json", doc)


def _restore_snapshot(run_id: str, runs_dir, snap: Path) -> dict:
    """Put the run's detector, scores and run.json fields back from a snapshot folder; returns its change.json."""
    info = _check_snapshot(snap)
    run_path = snap.parent.parent
    tmp = Path(tempfile.mkdtemp(prefix=".detector.tmp-", dir=run_path))
    try:
        shutil.rmtree(tmp)
        shutil.copytree(snap / "detector", tmp)
        install_folder(tmp, run_path / "detector", DETECTOR_FOLDER)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _copy_file_atomic(snap / "scores.npz", run_path / "scores.npz")
    before = dict(info["run_fields"])
    summary = get_run(run_id, runs_dir)
    if "threshold" in before and summary.threshold != info.get("threshold_written"):
        before.pop("threshold")  # someone chose another threshold after the change: keep theirs
    _update_run_json(run_id, runs_dir, before)
    return info


def _check_snapshot(snap: Path) -> dict:
    """The change.json of a complete, readable snapshot; BankHistoryError naming what is wrong otherwise."""
    if not snap.is_dir() or snap.is_symlink():
        raise BankHistoryError(f"the saved previous version {snap} is missing, so it cannot be restored; nothing "
                               "was changed")
    try:
        info = read_json(snap / CHANGE_FILE, MAX_HISTORY_BYTES)
        f = Fields(info, str(snap / CHANGE_FILE))
        fields = f.section("run_fields")
        fields.float("default_threshold")
        fields.float("auc", 0.0, 1.0, default=None, optional=True)
        fields.float("average_precision", 0.0, 1.0, default=None, optional=True)
        if not DETECTOR_FOLDER.complete(snap / "detector"):
            raise ArtifactError(f"{snap / 'detector'} is not a complete detector folder")
        read_npz(snap / "scores.npz", {"scores": ArraySpec(("m",), "f", finite=True),
                                       "train_scores": ArraySpec(("n",), "f", finite=True)})
    except FileNotFoundError as exc:
        raise BankHistoryError(f"the saved previous version {snap} is incomplete ({exc.filename or exc} is "
                               "missing), so it cannot be restored; nothing was changed") from exc
    except ArtifactError as exc:
        raise BankHistoryError(f"the saved previous version {snap} is damaged ({exc}), so it cannot be restored; "
                               "nothing was changed") from exc
    return info


def _remove_snapshot(snap: Path) -> None:
    trash = snap.with_name(f".{snap.name}.deleted-{os.getpid()}-{time.time_ns()}")
    os.replace(snap, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _recover(run_id: str, runs_dir, run_path: Path) -> list[BankChange]:
    """The changes in force, after rolling back a change that was killed half-way (a snapshot beyond the history)."""
    changes = _read_history(run_path)
    folder = run_path / BANK_DIR
    if not folder.is_dir():
        return changes
    remove_stale(folder, (".*.tmp-*", ".*.deleted-*"))
    extra = sorted((p for p in folder.iterdir() if p.name.startswith(SNAPSHOT_PREFIX)
                    and p.name[len(SNAPSHOT_PREFIX):].isdigit() and int(p.name[len(SNAPSHOT_PREFIX):]) > len(changes)),
                   key=lambda p: int(p.name[len(SNAPSHOT_PREFIX):]), reverse=True)
    for snap in extra:  # the lowest is restored last: the state before the first unfinished change
        _restore_snapshot(run_id, runs_dir, snap)
        _remove_snapshot(snap)
    return changes


def _operating(summary, scorer: ScorerConfig, default: float) -> tuple[float, str, bool]:
    """(operating threshold, how it is set, whether it is the run's saved threshold for its own scorer)."""
    saved = summary.threshold
    if not saved:
        return default, "no saved threshold: the run operates at the default threshold", False
    saved_scorer = ScorerConfig.from_dict(saved.get("scorer") or scorer.to_dict())
    if saved_scorer != scorer:
        return default, (f"the saved threshold belongs to another scorer ({saved_scorer.name}) and is kept; the counts "
                         "use this scorer's default threshold"), False
    return float(saved["value"]), f"the saved {saved['policy']} threshold", True


def _flag_counts(before: np.ndarray, after: np.ndarray, t_before: float, t_after: float) -> dict:
    fb, fa = before > t_before, after > t_after
    return {"flagged_before": int(fb.sum()), "flagged_after": int(fa.sum()),
            "no_longer_flagged": int((fb & ~fa).sum()), "newly_flagged": int((~fb & fa).sum())}


def _patch_size(det: DOCDetector) -> int | None:
    return int(len(det.scorer_.bank_)) if det.is_patch else None


# ------------------------------------------------------------------------------------------------------ the API


def bank_history(run_id: str, runs_dir: str | os.PathLike | None = None) -> list[BankChange]:
    """The bank changes in force, oldest first (empty: the bank is as trained); the last one is what
    :func:`undo_bank_change` undoes. A change killed half-way is rolled back first.

    Raises
    ------
    RunError
        No such run. :class:`BankHistoryError` when the history file is damaged.
    """
    summary = get_run(run_id, runs_dir)
    with _lock(summary.path):
        return _recover(run_id, runs_dir, summary.path)


def add_normals(run_id: str, images: np.ndarray, keys: Sequence[str] | None = None, *,
                runs_dir: str | os.PathLike | None = None, test_images: np.ndarray | None = None,
                test_indices: Sequence[int] | None = None) -> BankChange:
    """Add confirmed normal images to a run's bank, re-score its test set and save the result (undoable).

    Parameters
    ----------
    run_id : str
    images : np.ndarray, uint8, shape (n, h, w, c)
        The images, as the run's dataset stores them (the detector resizes them).
    keys : sequence of str, optional
        Their :func:`doc_core.workflow.labels.image_key` (computed when None).
    runs_dir : path, optional
    test_images : np.ndarray, uint8, shape (n_test, h, w, c), optional
        The run's test images in the stored order. Needed for a patch run (re-scored from its images) and for a
        knn/lof run without stored test features; also used to find which added images are test images.
    test_indices : sequence of int, optional
        Position of each added image in the test set (-1: not a test image); found by key from ``test_images``
        when None. A test image that is added gets its leave-one-out score; knn/lof also take its stored feature
        instead of embedding it again.

    Returns
    -------
    BankChange
        ``action`` "add"; "none" (nothing written) when every image was already in the bank.

    Raises
    ------
    RunError
        No such run or a broken one; :class:`BankHistoryError` when its bank history is damaged.
    ValueError
        Bad images, keys or indices, or a patch run without ``test_images``.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty uint8 array (n, h, w, c), got {images.dtype} {images.shape}")
    keys = image_keys(images) if keys is None else [str(k) for k in keys]
    if len(keys) != len(images):
        raise ValueError(f"{len(keys)} keys for {len(images)} images")
    summary = get_run(run_id, runs_dir)
    run_path = summary.path
    n_test = summary.n_test
    if test_images is not None and len(test_images) != n_test:
        raise ValueError(f"{len(test_images)} test images, but the run scored {n_test}")
    if test_indices is None:
        if test_images is not None:
            where = {}
            for i, k in enumerate(image_keys(test_images)):
                where.setdefault(k, i)
            idx = np.array([where.get(k, -1) for k in keys], np.int64)
        else:
            idx = np.full(len(images), -1, np.int64)
    else:
        idx = np.asarray(test_indices, np.int64).ravel()
        if len(idx) != len(images) or np.any(idx < -1) or np.any(idx >= n_test):
            raise ValueError(f"test_indices must hold one index in [-1, {n_test}) per image")
    with _lock(run_path):
        changes = _recover(run_id, runs_dir, run_path)
        summary = get_run(run_id, runs_dir)
        in_bank = {k for c in changes for k in c.added_keys}
        chosen, seen = [], set()
        for i, k in enumerate(keys):
            if k not in in_bank and k not in seen:
                chosen.append(i)
                seen.add(k)
        stored = load_scores(run_id, runs_dir)
        try:
            det = DOCDetector.load(run_path / "detector")
        except DetectorFormatError as exc:
            raise RunError(f"run {run_id!r}: {exc}") from exc
        op_before, _, _ = _operating(summary, det.scorer, float(summary.default_threshold))
        version = len(changes)
        base = dict(run_id=run_id, version=version, created=_now(), n_requested=len(images),
                    bank_before=len(det.bank_), patch_bank_before=_patch_size(det),
                    default_threshold_before=float(summary.default_threshold),
                    operating_threshold_before=op_before, n_test=n_test, auc_before=summary.auc)
        if not chosen:
            return BankChange(action="none", n_added=0, n_skipped=len(images), added_keys=(),
                              bank_after=len(det.bank_), patch_bank_after=_patch_size(det),
                              default_threshold_after=float(summary.default_threshold),
                              threshold_source=getattr(det, "threshold_source_", "train"),
                              operating_threshold_after=op_before, operating_note="nothing changed",
                              flagged_before=int((stored.scores > op_before).sum()),
                              flagged_after=int((stored.scores > op_before).sum()), no_longer_flagged=0,
                              newly_flagged=0, auc_after=summary.auc, **base)
        chosen = np.asarray(chosen, np.int64)
        add_images, add_idx = images[chosen], idx[chosen]
        feats = None if det.is_patch else load_features(run_id, runs_dir)
        add_feats = None
        if feats is not None and np.all(add_idx >= 0):
            add_feats = feats[add_idx]
        grown = det.with_added_normals(add_images, features=add_feats)
        # re-score the test set
        if det.is_patch:
            if test_images is None:
                raise ValueError("a patch run is re-scored from its test images; pass test_images")
            scores = grown.decision_function(test_images)
        elif feats is not None:
            scores = grown.score_features(feats)
        elif test_images is not None:
            scores = grown.decision_function(test_images)
        else:
            raise ValueError("this run stored no test features; pass test_images to re-score it")
        scores = np.asarray(scores, np.float32).copy()
        n_add = len(chosen)
        loo = np.asarray(grown.train_scores_, np.float32)[-n_add:]
        if not det.is_patch and len(getattr(grown.scorer_, "bank_", grown.bank_)) != len(grown.bank_):
            loo = None  # a capped bank: its leave-one-out scores are not per image; keep the plain scores
        if loo is not None:
            on_test = add_idx >= 0
            scores[add_idx[on_test]] = loo[on_test]
        # the operating threshold after the change
        default_after = float(grown.threshold_)
        source = getattr(grown, "threshold_source_", "train")
        cal = getattr(grown, "calibration_scores_", None)
        saved = summary.threshold
        op_after, note, own = _operating(summary, det.scorer, default_after)
        new_threshold = None
        if not saved:
            note = "no saved threshold: the run operates at the new default threshold"
        elif own and saved.get("param") is not None and (saved["policy"] == "train_percentile" or (
                saved["policy"] == "target_fpr" and cal is not None and len(cal))):
            op_after = float(policy_threshold(saved["policy"], scores, stored.labels, grown.train_scores_,
                                              float(saved["param"]), cal))
            new_threshold = {**saved, "value": op_after, "saved": _now()}
            on = "calibration" if cal is not None and len(cal) else "leave-one-out training"
            note = (f"the saved {saved['policy']} threshold (parameter {float(saved['param']):g}) needs no labels, so "
                    f"it was recomputed on the new {on} scores")
        elif own:
            note = (f"the saved {saved['policy']} threshold is kept as it is (chosen by a person or on the test "
                    "labels); choose it again on the ROC page if the new scores call for it")
        auc_after, ap_after = _auc(stored.labels, scores)
        run_fields_before = {"default_threshold": float(summary.default_threshold), "auc": summary.auc,
                             "average_precision": summary.average_precision}
        run_fields_after = {"default_threshold": default_after, "auc": auc_after, "average_precision": ap_after}
        if new_threshold is not None:
            run_fields_before["threshold"] = saved
            run_fields_after["threshold"] = new_threshold
        change = BankChange(action="add", n_added=n_add, n_skipped=len(images) - n_add,
                            added_keys=tuple(keys[i] for i in chosen), bank_after=len(grown.bank_),
                            patch_bank_after=_patch_size(grown), default_threshold_after=default_after,
                            threshold_source=source, operating_threshold_after=op_after, operating_note=note,
                            auc_after=auc_after, added_test_indices=tuple(int(i) for i in add_idx),
                            **{**base, "version": version + 1},
                            **_flag_counts(stored.scores, scores, op_before, op_after))
        # 1. the previous state, complete, before anything of the run changes
        folder = run_path / BANK_DIR
        folder.mkdir(exist_ok=True)
        snap = folder / _snapshot_name(version + 1)
        if os.path.lexists(snap):
            raise BankHistoryError(f"{snap} exists but the history has {version} changes; move it aside")
        tmp = Path(tempfile.mkdtemp(prefix=f".{snap.name}.tmp-", dir=folder))
        try:
            shutil.copytree(run_path / "detector", tmp / "detector")
            shutil.copyfile(run_path / "scores.npz", tmp / "scores.npz")
            (tmp / CHANGE_FILE).write_text(json.dumps({"change": change.to_dict(), "run_fields": run_fields_before,
                                                       "threshold_written": run_fields_after.get("threshold")},
                                                      indent=1))
            for p in (tmp / "scores.npz", tmp / CHANGE_FILE):
                _fsync_file(p)
            os.replace(tmp, snap)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # 2. the new state; 3. the history, last (a change killed before it is rolled back by the next call)
        try:
            grown.save(run_path / "detector", metadata={**getattr(grown, "metadata_", {}), "run_id": run_id,
                                                        "bank_version": version + 1})
            _write_scores(run_path, stored, scores, grown.train_scores_, cal)
            _update_run_json(run_id, runs_dir, run_fields_after)
            _write_history(run_path, changes + [change])
        except BaseException:
            try:
                _restore_snapshot(run_id, runs_dir, snap)
                _remove_snapshot(snap)
            except Exception:  # noqa: BLE001 - the next call rolls back from the snapshot
                pass
            raise
        return change


def undo_bank_change(run_id: str, runs_dir: str | os.PathLike | None = None) -> BankChange:
    """Undo the last bank change in force: the run's detector, scores and thresholds as they were before it.

    The detector folder and ``scores.npz`` are copied back from the saved previous version (the same bytes), the
    run's default threshold and AUC are restored, and a saved ``train_percentile`` threshold recomputed by the change
    is put back unless someone chose another threshold since. Then the change leaves the history and its saved
    version is deleted.

    Returns
    -------
    BankChange
        ``action`` "undo"; ``version`` the bank version now in force.

    Raises
    ------
    BankHistoryError
        Nothing to undo, or the saved previous version is missing or damaged (nothing is changed then).
    """
    summary = get_run(run_id, runs_dir)
    run_path = summary.path
    with _lock(run_path):
        changes = _recover(run_id, runs_dir, run_path)
        if not changes:
            raise BankHistoryError(f"run {run_id!r}: the normal bank is as trained; there is no change to undo")
        last = changes[-1]
        snap = run_path / BANK_DIR / _snapshot_name(last.version)
        _check_snapshot(snap)  # before anything changes
        stored_before = load_scores(run_id, runs_dir)
        summary = get_run(run_id, runs_dir)
        scorer = summary.scorer
        op_before, _, _ = _operating(summary, scorer, float(summary.default_threshold))
        # the history first: a restore killed half-way is then finished by the next call (_recover)
        _write_history(run_path, changes[:-1])
        _restore_snapshot(run_id, runs_dir, snap)
        _remove_snapshot(snap)
        summary_after = get_run(run_id, runs_dir)
        stored_after = load_scores(run_id, runs_dir)
        op_after, note, _ = _operating(summary_after, scorer, float(summary_after.default_threshold))
        return BankChange(run_id=run_id, action="undo", version=last.version - 1, created=_now(), n_requested=0,
                          n_added=last.n_added, n_skipped=0, added_keys=last.added_keys,
                          added_test_indices=last.added_test_indices, bank_before=last.bank_after,
                          bank_after=last.bank_before, patch_bank_before=last.patch_bank_after,
                          patch_bank_after=last.patch_bank_before,
                          default_threshold_before=float(summary.default_threshold),
                          default_threshold_after=float(summary_after.default_threshold),
                          threshold_source="calibration" if last.threshold_source == "calibration" else "train",
                          operating_threshold_before=op_before, operating_threshold_after=op_after,
                          operating_note=f"restored: {note}", n_test=summary.n_test,
                          auc_before=summary.auc, auc_after=summary_after.auc,
                          **_flag_counts(stored_before.scores, stored_after.scores, op_before, op_after))


def bank_row_images(run_id: str, n_bank: int, runs_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Where the rows of a run's memory bank (``detector.bank_``, ``n_bank`` rows) come from after bank changes.

    Returns
    -------
    np.ndarray, int64, shape (n_bank,)
        ``-1`` for the rows of the trained bank (row ``r`` is the normal training image ``detector.train_index_[r]``,
        or ``r`` without a calibration slice), else the test-set index of the added image (``-2``: an added image
        that is not one of the run's test images). For "nearest normal images" views: a row index beyond the
        training images is an added test image, not a training image.
    """
    changes = bank_history(run_id, runs_dir)
    added = [i for c in changes for i in (c.added_test_indices or (-2,) * c.n_added)]
    added = [-2 if i < 0 else i for i in added]
    n_trained = n_bank - len(added)
    if n_trained < 0:
        raise BankHistoryError(f"run {run_id!r}: the bank has {n_bank} rows but {len(added)} were added")
    return np.asarray([-1] * n_trained + added, np.int64)


def bank_row_sources(run_id: str, n_bank: int, train_index: np.ndarray | None,
                     runs_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What each row of a run's memory bank shows, for "nearest normal images" views.

    Parameters
    ----------
    run_id : str
    n_bank : int
        Rows of ``detector.bank_``.
    train_index : np.ndarray, int, or None
        ``detector.train_index_`` (None or empty: bank row ``r`` of the trained bank is training image ``r``).

    Returns
    -------
    train : np.ndarray, int64, shape (n_bank,)
        The row's index among the dataset's normal training images, or -1 for an image added later.
    added : np.ndarray, int64, shape (n_bank,)
        The test index of an added image; -1 for a trained row; -2 for an added image that is not a test image.
        When the run's bank history cannot be read, rows past the trained bank (if known) count as -2.
    """
    known = None if train_index is None or not len(train_index) else len(train_index)
    try:
        added = bank_row_images(run_id, n_bank, runs_dir)
    except RunError:  # an unreadable history: rows past the trained bank are shown as unknown images
        added = np.where(np.arange(n_bank) < (known or n_bank), -1, -2)
    rows = np.arange(n_bank)
    trained = added == -1
    train = np.full(n_bank, -1, np.int64)
    train[trained] = rows[trained] if known is None else np.asarray(train_index)[rows[trained]]
    return train, np.where(trained, -1, added).astype(np.int64)


# ------------------------------------------------------------------------------------------------- from labels


def labelled_normals(run_id: str, test_images: np.ndarray, *, store: LabelStore | None = None,
                     runs_dir: str | os.PathLike | None = None) -> LabelledNormals:
    """The run's test images labelled *normal* in the label store and not yet in its bank.

    Parameters
    ----------
    run_id : str
    test_images : np.ndarray, uint8, shape (n_test, h, w, c)
        The run's test images in the stored order (their :func:`doc_core.workflow.labels.image_key` is matched
        against the labels' keys).
    store : LabelStore, optional
        Default: the runs folder's (``LabelStore(runs_dir=runs_dir)``).
    runs_dir : path, optional

    Returns
    -------
    LabelledNormals
    """
    store = store if store is not None else LabelStore(runs_dir=runs_dir)
    wanted = {r.image_key for r in store.labels(run_id) if r.label == "normal"}
    summary = get_run(run_id, runs_dir)
    with _lock(summary.path):
        in_bank = {k for c in _recover(run_id, runs_dir, summary.path) for k in c.added_keys}
    found: dict[str, int] = {}
    for i, k in enumerate(image_keys(test_images)):
        if k in wanted:
            found.setdefault(k, i)
    todo = sorted((i, k) for k, i in found.items() if k not in in_bank)
    idx = np.array([i for i, _ in todo], np.int64)
    images = np.asarray(test_images)[idx] if len(idx) else np.zeros((0,) + np.asarray(test_images).shape[1:], np.uint8)
    return LabelledNormals(images=images, keys=tuple(k for _, k in todo), test_indices=idx,
                           n_labelled=len(wanted), n_in_bank=sum(1 for k in found if k in in_bank),
                           n_not_found=len(wanted) - len(found))


def add_labelled_normals(run_id: str, test_images: np.ndarray, *, store: LabelStore | None = None,
                         runs_dir: str | os.PathLike | None = None) -> BankChange:
    """Add the run's test images labelled *normal* (and not yet in the bank) to its bank: :func:`labelled_normals`
    then :func:`add_normals`.

    Raises
    ------
    ValueError
        No test image of the run is labelled normal and outside the bank.
    """
    todo = labelled_normals(run_id, test_images, store=store, runs_dir=runs_dir)
    if not len(todo):
        raise ValueError(f"run {run_id!r}: no test image is labelled normal and outside the bank "
                         f"({todo.n_labelled} labelled normal, {todo.n_in_bank} of them already in the bank, "
                         f"{todo.n_not_found} not among the run's test images)")
    return add_normals(run_id, todo.images, todo.keys, runs_dir=runs_dir, test_images=test_images,
                       test_indices=todo.test_indices)


def run_test_images(run_id: str, runs_dir: str | os.PathLike | None = None, fashion=None,
                    data_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The run's test images, uint8 (n_test, h, w, c), rebuilt from the dataset its run.json names (as the dashboard
    does); ``fashion``: already loaded Fashion-MNIST arrays, else read from ``data_dir``, ``$DOC_DATA_DIR`` or the
    usual places (never downloaded).

    Raises
    ------
    DataError (a ValueError)
        The dataset cannot be rebuilt, or it no longer has ``n_test`` test images.
    """
    from ..data import DataError
    from ..data.datasets import DatasetSpec, load_dataset

    summary = get_run(run_id, runs_dir)
    try:
        spec = DatasetSpec.from_dict(summary.dataset)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"run {run_id!r} does not say which dataset it was trained on ({exc})") from exc
    if spec.kind == "fashion-mnist" and fashion is None:
        from ..data import load_fashion_mnist

        fashion = load_fashion_mnist(data_dir, download=False)
    split, _ = load_dataset(spec, fashion)
    if len(split.test_images) != summary.n_test:
        raise DataError(f"run {run_id!r}'s dataset has changed since training: {len(split.test_images):,} test "
                        f"images now, {summary.n_test:,} when the run was scored")
    return split.test_images
