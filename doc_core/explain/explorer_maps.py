"""The Embedding explorer's three t-SNE maps of one run: which images they show, computing them map by map (in the
training job, or in a background thread a front end polls), and saving them in the run folder.

A run folder may hold one file per map set, ``maps-<points>.npz`` (``maps-<points>-train.npz`` with normal training
images), written atomically by :func:`save_maps` and read back without pickle by :func:`load_maps`:

    options     int64 (3,): format version, points asked for, 1 if normal training images are included
    test_idx    int64 (t,): the test images shown (rows 0 .. t-1 of every map)
    train_idx   int64 (r,): the normal training images shown (rows t .. t+r-1)
    raw, pretrained, doc    float32 (t+r, 2): the maps (a missing one could not be made; ``notes`` says why)
    seconds     float64 (3,): features + t-SNE time of each map, in the order of FEATURE_SETS
    notes       str (3,): why a map is missing ("" when it is there)

The training job computes the page's default set (:data:`DEFAULT_MAX_POINTS` points, no training images) right after
saving the run, so the explorer opens at once; :class:`MapJob` computes any other set (and the default one of older
runs) in a background thread, one map after the other, and saves it too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.splits import OneClassSplit
from ..model.backbones import BackboneConfig, WeightsNotFoundError
from ..workflow.artifacts import ArraySpec, ArtifactError, read_npz
from ..workflow.output_folders import write_file_atomic
from . import embedding
from .embedding import FEATURE_SET_LABELS, FEATURE_SETS, TSNECancelled, raw_pixel_features, tsne_2d
from .gallery import explorer_sample

log = logging.getLogger(__name__)

DEFAULT_MAX_POINTS = 2000
"""Points per map the explorer shows by default (ui/state.py's default of "Points per map")."""
DEFAULT_WITH_TRAIN = False
MAPS_FORMAT_VERSION = 1
MAPS_FILE_PATTERN = "maps-*.npz"
"""The names :func:`maps_file_name` gives (``fnmatch`` pattern), among the files a run folder may hold."""
TSNE_SECONDS_PER_POINT = 0.003
"""A rough prior of one map's t-SNE time per point, used only for the time left before the first map is timed
(6 s for 2,000 points of raw pixels on a busy 2-core machine, README "Dashboard timings on a real run")."""

COMPUTE_ORDER = ("raw", "doc", "pretrained")
"""The order maps are computed in: the ones that need no network first, so the first one is ready soonest."""

# a map's state in MapJob.snapshot()
WAITING, COMPUTING, READY, FAILED = "waiting", "computing", "ready", "failed"


def maps_file_name(max_points: int, with_train: bool) -> str:
    """``maps-2000.npz``, or ``maps-2000-train.npz`` when normal training images are shown too."""
    return f"maps-{int(max_points)}{'-train' if with_train else ''}.npz"


def explorer_rows(test_labels: np.ndarray, n_train: int, max_points: int,
                  with_train: bool) -> tuple[np.ndarray, np.ndarray]:
    """The test and normal-training images a map set shows: at most ``max_points`` together, a quarter of them normal
    training images when ``with_train`` (seeded samples that keep each label's share,
    :func:`doc_core.explain.gallery.explorer_sample`).

    Returns
    -------
    test_idx, train_idx : np.ndarray, int64, ascending
        Indices into the run's test images and into its memory bank (``detector.bank_``, whose rows are normal
        training images); ``n_train`` is the bank's size.
    """
    train_cap = min(int(n_train), int(max_points) // 4) if with_train else 0
    test_idx = explorer_sample(np.asarray(test_labels), int(max_points) - train_cap, seed=0)
    train_idx = (explorer_sample(np.zeros(int(n_train), np.int64), train_cap, seed=1) if train_cap
                 else np.zeros(0, np.int64))
    return test_idx, train_idx


@dataclass(frozen=True)
class MapResult:
    """One map: ``coords`` float32 (t+r, 2), or None with ``note`` saying why there is none; ``seconds`` it took
    (features and t-SNE)."""

    coords: np.ndarray | None
    seconds: float
    note: str | None = None


@dataclass
class MapInputs:
    """What the three maps are made of. Loading a run's detector is slow, so it is only asked for when needed.

    Attributes
    ----------
    split : OneClassSplit
        The run's dataset (test images in the order of its scores, normal training images in the order given to fit).
    backbone : BackboneConfig
        The run's backbone; its original (pretrained) weights make the middle map.
    test_features : np.ndarray, float32 (m, k), or None
        The run's stored DOC features of its test images; None: embedded with the detector.
    bank : np.ndarray, float32 (n, k), or None
        DOC features of the normal training images in the detector's memory bank (``detector.bank_``); None: taken
        from the detector when needed.
    n_bank : int, optional
        Rows of the memory bank (= the run's training scores); default: all normal training images.
    train_index : np.ndarray, int64 (n,), optional
        The normal training image of each bank row (``detector.train_index_``, when some were held out for
        calibration); None: row i is image i, or taken from the detector when ``n_bank`` says some are missing.
    detector : callable returning a DOCDetector, optional
        Called (once) when ``test_features``, ``bank`` or ``train_index`` is needed but missing.
    """

    split: OneClassSplit
    backbone: BackboneConfig
    test_features: np.ndarray | None = None
    bank: np.ndarray | None = None
    n_bank: int | None = None
    train_index: np.ndarray | None = None
    detector: Callable[[], object] | None = None
    _det: object = field(default=None, repr=False)

    @property
    def bank_rows(self) -> int:
        """Rows of the memory bank, the normal training images a map can show."""
        if self.n_bank is not None:
            return int(self.n_bank)
        return len(self.bank) if self.bank is not None else len(self.split.train_normal)

    def _train_images(self, train_idx: np.ndarray) -> np.ndarray:
        index = self.train_index
        if index is None and len(train_idx) and self.bank_rows != len(self.split.train_normal):
            index = getattr(self._detector(), "train_index_", None)
        return self.split.train_normal[train_idx if index is None else np.asarray(index)[train_idx]]

    def _detector(self):
        if self._det is None:
            if self.detector is None:
                raise ValueError("the run's DOC features are not stored and no detector was given to embed them")
            self._det = self.detector()
        return self._det

    def doc_features(self, test_idx: np.ndarray, train_idx: np.ndarray) -> np.ndarray:
        """DOC features of the rows, float32 (t+r, k)."""
        if self.test_features is not None:
            test = np.asarray(self.test_features)[test_idx]
        else:
            test = self._detector().embed(self.split.test_images[test_idx])
        if len(train_idx) == 0:
            return np.asarray(test, np.float32)
        bank = self.bank if self.bank is not None else self._detector().bank_
        return np.concatenate([test, np.asarray(bank)[train_idx]]).astype(np.float32)

    def images(self, test_idx: np.ndarray, train_idx: np.ndarray) -> np.ndarray:
        """The rows' images, uint8 (t+r, h, w, c)."""
        return np.concatenate([self.split.test_images[test_idx], self._train_images(train_idx)])


def compute_map(feature_set: str, inputs: MapInputs, test_idx: np.ndarray, train_idx: np.ndarray,
                progress: Callable[[float], bool | None] | None = None) -> MapResult:
    """One map of the rows: features of ``feature_set`` ("raw", "pretrained" or "doc"), then :func:`tsne_2d`.

    ``progress`` gets the fraction of this map done (the features count for a tenth, the t-SNE for the rest); if it
    returns True the work stops with :class:`doc_core.explain.embedding.TSNECancelled`. A pretrained backbone whose
    weights cannot be found gives a map of None with the reason in ``note``.
    """
    t0 = time.perf_counter()
    report = progress or (lambda f: None)
    if feature_set == "raw":
        feats = raw_pixel_features(inputs.images(test_idx, train_idx))
    elif feature_set == "pretrained":
        try:
            backbone = embedding.pretrained_backbone(inputs.backbone)
        except WeightsNotFoundError as exc:
            return MapResult(None, 0.0, str(exc))
        images = inputs.images(test_idx, train_idx)
        feats = backbone.embed(images, progress=lambda done: report(0.1 * done / max(len(images), 1)))
    elif feature_set == "doc":
        feats = inputs.doc_features(test_idx, train_idx)
    else:
        raise ValueError(f"unknown feature set {feature_set!r}; expected one of {', '.join(FEATURE_SETS)}")
    if report(0.1):
        raise TSNECancelled("stopped before the t-SNE")
    coords = tsne_2d(feats, seed=0, progress=lambda f: report(0.1 + 0.9 * f))
    return MapResult(coords, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------ saving, loading


@dataclass(frozen=True)
class MapSet:
    """The maps of one run and settings: rows and one :class:`MapResult` per feature set (in FEATURE_SETS order)."""

    max_points: int
    with_train: bool
    test_idx: np.ndarray
    train_idx: np.ndarray
    maps: dict[str, MapResult]


def save_maps(run_path: str | os.PathLike, maps: MapSet) -> Path:
    """Write ``maps`` into the run folder as :func:`maps_file_name` (a temporary file renamed into place, so a reader
    never sees half a file; an older file of the same name, written by this tool, is replaced). Returns its path.

    Raises
    ------
    OSError
        The folder does not take the file (read-only, full); nothing is left behind.
    ValueError
        A map that is missing without a note, or of the wrong shape.
    """
    n = len(maps.test_idx) + len(maps.train_idx)
    arrays = {"options": np.asarray([MAPS_FORMAT_VERSION, maps.max_points, int(maps.with_train)], np.int64),
              "test_idx": np.asarray(maps.test_idx, np.int64), "train_idx": np.asarray(maps.train_idx, np.int64),
              "seconds": np.asarray([maps.maps[fs].seconds for fs in FEATURE_SETS], np.float64),
              "notes": np.asarray([maps.maps[fs].note or "" for fs in FEATURE_SETS], dtype=str)}
    for fs in FEATURE_SETS:
        m = maps.maps[fs]
        if m.coords is None:
            if not m.note:
                raise ValueError(f"the {fs} map is missing and no note says why")
            continue
        if np.shape(m.coords) != (n, 2):
            raise ValueError(f"the {fs} map has shape {np.shape(m.coords)}, expected ({n}, 2)")
        arrays[fs] = np.asarray(m.coords, np.float32)
    return write_file_atomic(Path(run_path) / maps_file_name(maps.max_points, maps.with_train),
                             lambda f: np.savez(f, **arrays))


def load_maps(run_path: str | os.PathLike, max_points: int, with_train: bool, test_idx: np.ndarray,
              train_idx: np.ndarray) -> MapSet | None:
    """The saved maps of these settings, or None when the run folder has none.

    ``test_idx``/``train_idx`` are the rows the caller shows (:func:`explorer_rows`); the file must hold maps of
    exactly these rows.

    Raises
    ------
    ArtifactError
        The file is damaged, from another format version, of other settings or rows, or holds non-finite
        coordinates; the message names the file.
    """
    path = Path(run_path) / maps_file_name(max_points, with_train)
    specs = {"options": ArraySpec((3,), "iu"), "test_idx": ArraySpec(("t",), "iu"),
             "train_idx": ArraySpec(("r",), "iu"), "seconds": ArraySpec((3,), "f", finite=True),
             "notes": ArraySpec((3,), "U"), **{fs: ArraySpec(("n", 2), "f", required=False, finite=True)
                                                for fs in FEATURE_SETS}}
    n = len(test_idx) + len(train_idx)
    try:
        z = read_npz(path, specs, {"n": (n, "the rows shown"), "t": (len(test_idx), "the test images shown"),
                                   "r": (len(train_idx), "the training images shown")})
    except FileNotFoundError:
        return None
    version, points, train = (int(v) for v in z["options"])
    if version != MAPS_FORMAT_VERSION:
        raise ArtifactError(f"{path} is of format version {version}, not {MAPS_FORMAT_VERSION}")
    if points != int(max_points) or bool(train) != bool(with_train):
        raise ArtifactError(f"{path} holds maps of {points:,} points{' with training images' if train else ''}, "
                            "not of the settings its name says")
    if not (np.array_equal(z["test_idx"], test_idx) and np.array_equal(z["train_idx"], train_idx)):
        raise ArtifactError(f"{path} holds maps of other images than the ones shown now")
    maps = {}
    for i, fs in enumerate(FEATURE_SETS):
        note = str(z["notes"][i]) or None
        if fs not in z and not note:
            raise ArtifactError(f"{path} has no {fs} map and no note saying why")
        maps[fs] = MapResult(z[fs].astype(np.float32) if fs in z else None, float(z["seconds"][i]),
                             None if fs in z else note)
    return MapSet(int(max_points), bool(with_train), np.asarray(test_idx, np.int64), np.asarray(train_idx, np.int64),
                  maps)


# ------------------------------------------------------------------------------------------------ computing


def compute_maps(inputs: MapInputs, max_points: int, with_train: bool,
                 progress: Callable[[str, float], bool | None] | None = None,
                 on_map: Callable[[str, MapResult], None] | None = None) -> MapSet:
    """All three maps of a run, one after the other (raw pixels, the DOC features, then the pretrained backbone,
    which needs a network built and the images embedded).

    Parameters
    ----------
    inputs : MapInputs
    max_points, with_train
        As :func:`explorer_rows`.
    progress : callable, optional
        ``progress(feature_set, fraction of that map)``; returning True stops the work (TSNECancelled).
    on_map : callable, optional
        Called with each map as soon as it is ready.
    """
    test_idx, train_idx = explorer_rows(inputs.split.test_labels, inputs.bank_rows, max_points, with_train)
    maps = {}
    for fs in COMPUTE_ORDER:
        maps[fs] = compute_map(fs, inputs, test_idx, train_idx,
                               None if progress is None else (lambda f, _fs=fs: progress(_fs, f)))
        if on_map is not None:
            on_map(fs, maps[fs])
    return MapSet(int(max_points), bool(with_train), test_idx, train_idx, {fs: maps[fs] for fs in FEATURE_SETS})


@dataclass(frozen=True)
class MapStatus:
    """One map in :meth:`MapJob.snapshot`: ``state`` (waiting, computing, ready, failed), ``fraction`` of it done, the
    map once ready (``result``), and a line for people (``message``)."""

    feature_set: str
    state: str
    fraction: float
    result: MapResult | None
    message: str


class MapJob:
    """The three maps of one run and settings, computed in a background thread and saved in the run folder; or
    already there (:meth:`from_saved`).

    Nothing here knows about a UI: a front end keeps one job per run and settings (shared by every session), polls
    :meth:`snapshot` and draws each map once it is ready. The job only reads the run; its one write is the maps file
    (:func:`save_maps`), and a run folder that does not take it (read-only) only costs the saved copy.

    Parameters
    ----------
    run_path : path or None
        Where to save the maps when done (None: not saved).
    inputs : callable returning MapInputs
        Called in the worker thread (so loading a detector does not hold up the caller).
    max_points, with_train
        As :func:`explorer_rows`.
    note : str, optional
        Said first (e.g. why the saved maps were not used).
    """

    def __init__(self, run_path, inputs: Callable[[], MapInputs], max_points: int, with_train: bool,
                 note: str | None = None) -> None:
        self.run_path = None if run_path is None else Path(run_path)
        self.max_points, self.with_train = int(max_points), bool(with_train)
        self.note = note
        self._inputs = inputs
        self._lock = threading.Lock()
        self._state = {fs: WAITING for fs in FEATURE_SETS}
        self._fraction = dict.fromkeys(FEATURE_SETS, 0.0)
        self._results: dict[str, MapResult] = {}
        self._error: str | None = None
        self._saved: Path | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self.started = time.time()

    @classmethod
    def from_saved(cls, maps: MapSet, run_path=None) -> "MapJob":
        """A finished job holding maps read from the run folder."""
        job = cls(run_path, lambda: None, maps.max_points, maps.with_train)  # type: ignore[arg-type,return-value]
        job._results = dict(maps.maps)
        job._state = {fs: READY if m.coords is not None else FAILED for fs, m in maps.maps.items()}
        job._fraction = dict.fromkeys(FEATURE_SETS, 1.0)
        job._saved = None if run_path is None else Path(run_path) / maps_file_name(maps.max_points, maps.with_train)
        job._done.set()
        return job

    def start(self) -> "MapJob":
        with self._lock:
            if self._thread is None and not self._done.is_set():
                self._thread = threading.Thread(target=self._work, daemon=True,
                                                name=f"doc-maps-{self.max_points}{'-train' if self.with_train else ''}")
                self._thread.start()
        return self

    def stop(self) -> None:
        """Abandon the maps not finished yet (at their next progress report)."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the job; True once it has ended."""
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def saved_path(self) -> Path | None:
        """The maps file written or read, once there is one."""
        return self._saved

    @property
    def error(self) -> str | None:
        """Why the whole job failed (e.g. the inputs could not be loaded), else None."""
        return self._error

    def snapshot(self) -> list[MapStatus]:
        """Each map's state now, in the order of FEATURE_SETS."""
        out = []
        with self._lock:
            for fs in FEATURE_SETS:
                state, frac, res = self._state[fs], self._fraction[fs], self._results.get(fs)
                name = FEATURE_SET_LABELS[fs]
                if state == READY:
                    msg = f"{name}: ready"
                elif state == FAILED:
                    msg = f"{name}: no map ({(res.note if res else None) or self._error or 'failed'})"
                elif state == COMPUTING:
                    msg = f"{name}: computing, {frac:.0%}"
                else:
                    msg = f"{name}: waiting for the maps before it"
                out.append(MapStatus(fs, state, frac, res, msg))
        return out

    def _progress(self, fs: str, fraction: float) -> bool:
        with self._lock:
            self._state[fs], self._fraction[fs] = COMPUTING, float(fraction)
        return self._stop.is_set()

    def _on_map(self, fs: str, result: MapResult) -> None:
        with self._lock:
            self._results[fs] = result
            self._state[fs] = READY if result.coords is not None else FAILED
            self._fraction[fs] = 1.0

    def _work(self) -> None:
        try:
            maps = compute_maps(self._inputs(), self.max_points, self.with_train, self._progress, self._on_map)
            if self.run_path is not None:
                try:
                    self._saved = save_maps(self.run_path, maps)
                except OSError as exc:  # a read-only runs folder: the maps are still shown, only not kept
                    log.warning("the explorer's maps could not be saved in %s: %s", self.run_path, exc)
        except TSNECancelled:
            with self._lock:
                self._error = "stopped"
                self._state = {fs: s if s == READY else FAILED for fs, s in self._state.items()}
        except Exception as exc:  # noqa: BLE001 - the worker must never die silently; the maps are a bonus
            log.warning("the explorer's maps of %s could not be computed: %s", self.run_path, exc, exc_info=True)
            with self._lock:
                self._error = f"{type(exc).__name__}: {exc}"
                self._state = {fs: s if s == READY else FAILED for fs, s in self._state.items()}
        finally:
            self._inputs = None  # let the run's arrays go: a finished job holds only its maps
            self._done.set()
