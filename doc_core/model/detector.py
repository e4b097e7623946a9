"""The DOC anomaly detector: a fine-tuned backbone, a memory bank of normal features, a scorer and a threshold."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..evaluation.metrics import threshold_percentile
from ..scoring.knn import KNN_BACKENDS, SCORERS, check_backend, make_scorer
from ..scoring.patch import DEFAULT_BANK_SIZE, DEFAULT_IMAGE_SCORE, IMAGE_SCORES
from ..workflow.artifacts import ArraySpec, ArtifactError, Fields, read_json, read_npz
from ..workflow.output_folders import OutputKind, install_folder, prepare_save, restore_previous
from .backbones import Backbone, BackboneConfig
from .calibration import DEFAULT_CALIBRATION_FRACTION, MIN_CALIBRATION, calibration_size, calibration_split
from .training import DOCTrainer, StepRecord, TrainConfig

FORMAT_VERSION = 1
FORMAT_NAME = "doc-explorer-detector"
_FILES = ("detector.json", "backbone.weights.h5", "bank.npz")
PATCH_BANK_FILE = "patch_bank.npz"  # only in detectors with the patch scorer
CALIBRATION_FILE = "calibration.npz"  # only in detectors fitted with a calibration slice
DETECTOR_FOLDER = OutputKind("detector", "detector.json", FORMAT_NAME, frozenset(_FILES),
                             frozenset(_FILES + (PATCH_BANK_FILE, CALIBRATION_FILE)))
"""A folder :meth:`DOCDetector.save` writes; only such a folder (or an empty one) is replaced without ``force``."""


MAX_DETECTOR_JSON_BYTES = 64 * 2**20  # detector.json holds the training history: about 250 bytes per step
MAX_K = 100_000
MAX_FEATURE_DIM = 65_536
THRESHOLD_SOURCES = ("calibration", "train", "manual")


class DetectorFormatError(ArtifactError):
    """A saved detector folder is missing, broken, tampered with or from an incompatible version."""


SCORER_NAMES = SCORERS + ("patch",)
PATCH_BANK_DEFAULT = DEFAULT_BANK_SIZE  # patches the coreset keeps when max_bank_size is None


@dataclass(frozen=True)
class ScorerConfig:
    """Test-time scorer.

    Parameters
    ----------
    name : {"knn", "lof", "patch"}
        ``knn``/``lof`` score the pooled feature vector (:mod:`doc_core.scoring`); ``patch`` keeps a memory bank of
        local features and scores an image by its most anomalous patches (``image_score``), which also gives a
        defect map (:mod:`doc_core.scoring.patch`).
    k : int or None
        Neighbours (None = the scorer's default: 5 for k-NN, 20 for LOF, 1 for patch).
    max_bank_size : int or None
        Bank size cap: feature vectors for knn/lof (None = all), patches for patch (None =
        :data:`PATCH_BANK_DEFAULT`, chosen by a greedy coreset).
    backend : str
        Search backend: "exact" numpy, "faiss" exact flat index, "faiss-ivf" approximate (knn only); see
        :class:`doc_core.scoring.knn.KNNScorer`. Saved with the detector and rebuilt on load.
    patch_layers : tuple of str or None
        Layers whose maps the patch scorer combines (None = the backbone's
        :data:`doc_core.model.backbones.DEFAULT_PATCH_LAYERS`); ignored by knn/lof.
    neighbourhood : int
        Odd side of the window each patch feature is averaged over (patch scorer; 1 = none).
    image_score : {"top25", "max", "top10", "top50", "mean"}
        Patch scorer: an image's score is the mean of its top 25 % of patch scores (default), its most anomalous
        patch (PatchCore's rule), the mean of its top 10 % or 50 %, or the mean of all of them
        (:func:`doc_core.scoring.patch.aggregate_patch_scores`); ignored by knn/lof. Detectors saved before this
        option existed load as "max", the rule they were fitted with. Why top25: it is the broadest rule that the
        label-free synthetic-defect signal of ``auto`` does not penalise by more than 0.01 on either the magnetic
        tiles or Fashion-MNIST sneakers (:data:`doc_core.scoring.patch.DEFAULT_IMAGE_SCORE`; README, "Patch image
        score").
    """

    name: str = "knn"
    k: int | None = None
    max_bank_size: int | None = None
    backend: str = "exact"
    patch_layers: tuple[str, ...] | None = None
    neighbourhood: int = 3
    image_score: str = DEFAULT_IMAGE_SCORE

    def to_dict(self) -> dict:
        return {"name": self.name, "k": self.k, "max_bank_size": self.max_bank_size, "backend": self.backend,
                "patch_layers": list(self.patch_layers) if self.patch_layers else None,
                "neighbourhood": self.neighbourhood, "image_score": self.image_score}

    @classmethod
    def from_dict(cls, d: dict, where: str = "scorer config") -> "ScorerConfig":
        """The config saved by :meth:`to_dict`; missing keys take their defaults (files written before backends
        existed: "exact"), unknown keys are ignored.

        Raises
        ------
        ValueError (ArtifactError)
            ``d`` is not a dict, an unknown scorer or backend, or ``k`` / ``max_bank_size`` not an integer >= 1.
        """
        f = Fields(d, where)
        layers = f.str_list("patch_layers", default=None) if d.get("patch_layers") is not None else None
        neighbourhood = f.int("neighbourhood", 1, 15, default=3)
        if neighbourhood % 2 == 0:
            raise ArtifactError(f"{where}: 'neighbourhood' must be odd, got {neighbourhood}")
        cfg = cls(name=f.str("name", default="knn", choices=SCORER_NAMES),
                  k=f.int("k", 1, MAX_K, default=None, optional=True),
                  max_bank_size=f.int("max_bank_size", 1, 10**12, default=None, optional=True),
                  backend=f.str("backend", default="exact", choices=KNN_BACKENDS),
                  patch_layers=tuple(layers) if layers else None, neighbourhood=neighbourhood,
                  image_score=f.str("image_score", default="max", choices=IMAGE_SCORES))
        try:
            check_backend(cfg.name, cfg.backend)
        except ValueError as exc:
            raise ArtifactError(f"{where}: {exc}") from exc
        return cfg


class DOCDetector:
    """Deep One-Class Classification detector (Perera & Patel, 2019).

    Parameters
    ----------
    backbone : BackboneConfig
    train : TrainConfig
        ``epochs=0`` gives the pretrained-feature baseline (no DOC training).
    scorer : ScorerConfig
    threshold_percentile : float
        Default threshold: this percentile of the scores of the held-out calibration images (or, with calibration
        off, of the leave-one-out scores of the normal training images).
    calibration_fraction : float
        Share of the normal images given to :meth:`fit` held out as the calibration slice (0 to 0.5; 0 = off):
        ``max(ceil(fraction * n), calibration_min)`` images chosen with ``train.seed``, used for neither training nor
        the bank. When that would leave fewer than twice as many images to train on, calibration is turned off
        automatically and :attr:`calibration_note_` says so (:mod:`doc_core.model.calibration`).
    calibration_min : int
        Fewest images in the calibration slice.

    Attributes
    ----------
    backbone_ : Backbone
        The fine-tuned feature extractor.
    bank_ : np.ndarray, float32, shape (n, k)
        Pooled features of the normal training images (for every scorer: nearest normal images, maps, export).
    scorer_ : KNNScorer, LOFScorer or PatchKNNScorer
        Fitted on ``bank_`` (knn, lof) or on the normal images' local feature maps (patch).
    train_scores_ : np.ndarray, float32, shape (n,)
        Leave-one-out (patch: leave-one-image-out) scores of the normal training images.
    threshold_ : float
        Images with ``decision_function > threshold_`` are predicted anomalous.
    threshold_source_ : {"calibration", "train", "manual"}
        What ``threshold_`` rests on: the calibration scores, the leave-one-out training scores (calibration off,
        or a detector saved before calibration existed), or a value given to :meth:`with_scorer`.
    calibration_index_ : np.ndarray, int64, shape (m,), or None
        Indices, into the normal images given to :meth:`fit`, of the calibration slice (empty when calibration is
        off; None for a detector saved before calibration existed).
    train_index_ : np.ndarray, int64, shape (n,), or None
        Indices of the images used for training and the bank (the rest of them).
    calibration_features_ : np.ndarray, float32, shape (m, k), or None
        Pooled features of the calibration slice (None when calibration is off).
    calibration_images_ : np.ndarray, uint8, shape (m, h, w, c), or None
        The calibration images: kept after :meth:`fit`, saved with patch detectors only (re-scoring them needs their
        local features); None when calibration is off or after loading a knn/lof detector.
    calibration_scores_ : np.ndarray, float32, shape (m,), or None
        Scores of the calibration slice against the current scorer; higher = more anomalous.
    calibration_note_ : str
        Why calibration is off ("" when it is on).
    history_ : list of StepRecord
    reference_names_ : tuple of str
    fit_seconds_ : float
    """

    def __init__(self, backbone: BackboneConfig = BackboneConfig(), train: TrainConfig = TrainConfig(),
                 scorer: ScorerConfig = ScorerConfig(), threshold_percentile: float = 95.0,
                 calibration_fraction: float = DEFAULT_CALIBRATION_FRACTION,
                 calibration_min: int = MIN_CALIBRATION) -> None:
        calibration_size(0, calibration_fraction, calibration_min)  # ValueError for an impossible setting
        self.backbone = backbone
        self.train = train
        self.scorer = scorer
        self.threshold_percentile = threshold_percentile
        self.calibration_fraction = float(calibration_fraction)
        self.calibration_min = int(calibration_min)

    # ------------------------------------------------------------------------------------------------ fitting

    def fit_steps(self, normal: np.ndarray, reference: np.ndarray, reference_labels: np.ndarray,
                  reference_names: tuple[str, ...] | None = None,
                  on_prepare: Callable[[str], None] | None = None,
                  on_progress: Callable[[str, int, int], None] | None = None) -> Iterator[StepRecord]:
        """Train and fit the scorer, yielding a :class:`StepRecord` per training step.

        Parameters
        ----------
        normal : np.ndarray, uint8, shape (n, h, w, c)
            Normal (target) training images; the calibration slice (see ``calibration_fraction``) is taken out of
            them first and used only to set the threshold.
        reference : np.ndarray, uint8, shape (r, h, w, c), or None
            Reference images; None (or no labels) trains without a labelled reference set: the descriptiveness
            loss is then the preservation loss (:func:`doc_core.model.losses.preservation_loss`) on these images, or on
            the normal images when None.
        reference_labels : np.ndarray, int, shape (r,), or None
            Reference class indices in ``[0, n_classes)``; None or empty = no labelled reference set.
        reference_names : tuple of str, optional
            Names of the reference classes (stored with the detector).
        on_prepare : callable, optional
            Called with a message before slow non-step phases (frozen layers, memory bank).
        on_progress : callable, optional
            ``on_progress(stage, done, total)`` as each of those phases begins (``done`` 0) and after each of its
            batches, in images: the stages of
            :meth:`DOCTrainer.steps` (``"frozen layers"``, ``"pretrained features"``), then ``"embedding"`` (the
            normal images through the trained backbone) and, for the patch scorer, ``"patch maps"``.

        Stopping early still leaves a usable detector trained for fewer steps, with its memory bank and threshold
        fitted: either call :meth:`stop` (the iteration ends after the current step, then fits the bank), or close
        the generator after at least one step: ``gen.close()``, or ``break`` out of a ``for`` loop over it (CPython
        closes a generator as soon as nothing refers to it). Closing embeds the normal images and fits the bank
        inside ``close()``, so it takes as long as that does.
        """
        if self.scorer.name not in SCORER_NAMES:
            raise ValueError(f"unknown scorer {self.scorer.name!r}; choose one of {', '.join(SCORER_NAMES)}")
        check_backend(self.scorer.name, self.scorer.backend, installed=True)  # before any training
        t0 = time.perf_counter()
        normal = _as_images(normal)
        split = calibration_split(len(normal), self.calibration_fraction, self.calibration_min, self.train.seed)
        all_normal, normal = normal, normal[split.train_index]
        self.backbone_ = Backbone(self.backbone)
        # no labelled reference set (labels None or empty): DOCTrainer keeps features close to the pretrained ones
        n_classes = int(np.max(reference_labels)) + 1 if reference_labels is not None and len(reference_labels) else 0
        self.reference_names_ = tuple(reference_names) if reference_names else tuple(str(i) for i in range(n_classes))
        self.history_: list[StepRecord] = []
        if self.train.epochs > 0:
            self._trainer = DOCTrainer(self.backbone_, max(n_classes, len(self.reference_names_)), self.train)
            try:
                for rec in self._trainer.steps(normal, reference, reference_labels, on_prepare=on_prepare,
                                               on_progress=on_progress):
                    self.history_.append(rec)
                    try:
                        yield rec
                    except GeneratorExit:  # closed early by the consumer: fit the bank below, then end (no yield)
                        break
            finally:
                self._trainer = None
        if on_prepare:
            held = f" ({len(split.calibration_index)} of them held out for calibration)" if split.enabled else ""
            on_prepare(f"embedding {len(all_normal)} normal training images{held}")

        def told(stage: str, total: int) -> Callable[[int], None] | None:  # reports 0 done at once: stage begins
            if on_progress is None:
                return None
            on_progress(stage, 0, total)
            return lambda done: on_progress(stage, done, total)

        feats = self.backbone_.embed(all_normal, progress=told("embedding", len(all_normal)))
        self._set_calibration(split.train_index, split.calibration_index, feats[split.calibration_index],
                              all_normal[split.calibration_index], split.note)
        if on_prepare and self.is_patch:
            on_prepare(f"computing the patch maps of {len(normal)} normal training images")
        self._fit_bank(feats[split.train_index], normal,
                       told("patch maps", len(normal)) if self.is_patch else None)
        self.fit_seconds_ = time.perf_counter() - t0

    def fit(self, normal: np.ndarray, reference: np.ndarray, reference_labels: np.ndarray,
            reference_names: tuple[str, ...] | None = None,
            callback: Callable[[StepRecord], None] | None = None) -> "DOCDetector":
        """Train and fit the scorer to the end; see :meth:`fit_steps`. Returns self."""
        for rec in self.fit_steps(normal, reference, reference_labels, reference_names):
            if callback is not None:
                callback(rec)
        return self

    def fit_split(self, split, callback: Callable[[StepRecord], None] | None = None) -> "DOCDetector":
        """:meth:`fit` on a :class:`doc_core.data.splits.OneClassSplit`."""
        return self.fit(split.train_normal, split.reference, split.reference_labels, split.reference_names, callback)

    def stop(self) -> None:
        """Ask a running :meth:`fit_steps` to end training after the current step (thread-safe)."""
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:
            trainer.stop()

    @property
    def is_patch(self) -> bool:
        """True when images are scored by their patches (``scorer.name == "patch"``)."""
        return self.scorer.name == "patch"

    def _patch_scorer(self) -> "PatchKNNScorer":
        from ..scoring.patch import PatchKNNScorer

        c = self.scorer
        return PatchKNNScorer(k=1 if c.k is None else c.k,
                              max_bank_size=PATCH_BANK_DEFAULT if c.max_bank_size is None else c.max_bank_size,
                              neighbourhood=c.neighbourhood, backend=c.backend, image_score=c.image_score)

    def _fit_bank(self, bank: np.ndarray, normal: np.ndarray | None = None,
                  progress: Callable[[int], None] | None = None) -> None:
        """Fit the scorer: on the pooled features ``bank`` (knn, lof), or on the patch maps of the ``normal``
        images (patch; ``bank`` is still kept as :attr:`bank_`; ``progress`` gets the images mapped so far)."""
        self.bank_ = np.asarray(bank, np.float32)
        if self.is_patch:
            if normal is None:
                raise ValueError("the patch scorer is fitted on the normal training images; pass them")
            layers = self.backbone_.patch_layers(self.scorer.patch_layers)
            self.scorer_ = self._patch_scorer().fit(self.backbone_.patch_maps(_as_images(normal), layers,
                                                                              progress=progress))
        else:
            self.scorer_ = make_scorer(self.scorer.name, self.scorer.k, self.scorer.max_bank_size,
                                       backend=self.scorer.backend).fit(self.bank_)
        self.train_scores_ = self.scorer_.training_scores()
        self.refresh_calibration()

    def _set_calibration(self, train_index: np.ndarray | None, calibration_index: np.ndarray | None,
                         features: np.ndarray | None, images: np.ndarray | None, note: str) -> None:
        """Store the calibration slice (features/images None or empty = calibration off)."""
        self.train_index_ = None if train_index is None else np.asarray(train_index, np.int64)
        self.calibration_index_ = None if calibration_index is None else np.asarray(calibration_index, np.int64)
        on = features is not None and len(features) > 0
        self.calibration_features_ = np.asarray(features, np.float32) if on else None
        self.calibration_images_ = _as_images(images) if on and images is not None else None
        self.calibration_scores_ = None
        self.calibration_note_ = "" if on else note

    @property
    def has_calibration(self) -> bool:
        """True when the threshold can be set on a held-out calibration slice."""
        return getattr(self, "calibration_features_", None) is not None

    @property
    def n_calibration(self) -> int:
        """Images in the calibration slice (0 when calibration is off)."""
        return len(self.calibration_features_) if self.has_calibration else 0

    def refresh_calibration(self) -> None:
        """Re-score the stored calibration slice against the current scorer and set the threshold from it.

        Sets :attr:`calibration_scores_` (float32 (m,), higher = more anomalous) and :attr:`threshold_` = the
        ``threshold_percentile`` of them (:attr:`threshold_source_` "calibration"). With calibration off, the
        threshold is that percentile of :attr:`train_scores_` (source "train"). Call it after changing the bank or
        the scorer (e.g. after adding confirmed normal images to the bank); nothing is retrained.

        Raises
        ------
        RuntimeError
            A patch detector whose calibration images are not available (loaded from a knn/lof detector's folder).
        """
        if not self.has_calibration:
            self.calibration_scores_ = None
            self.threshold_ = threshold_percentile(self.train_scores_, self.threshold_percentile)
            self.threshold_source_ = "train"
            return
        if self.is_patch:
            if self.calibration_images_ is None:
                raise RuntimeError("this patch detector has no calibration images to re-score; pass the normal "
                                   "images to with_scorer() or fit it again")
            scores = self.decision_function(self.calibration_images_)
        else:
            scores = self.scorer_.score_samples(self.calibration_features_)
        self.calibration_scores_ = np.asarray(scores, np.float32)
        self.threshold_ = threshold_percentile(self.calibration_scores_, self.threshold_percentile)
        self.threshold_source_ = "calibration"

    def training_images(self, normal: np.ndarray) -> np.ndarray:
        """The images of ``normal`` that trained the detector and form its bank, without the calibration slice.

        ``normal`` is taken to be the normal images :meth:`fit` was given when it has their number (training plus
        calibration images): ``normal[train_index_]``; any other array is returned as it is.
        """
        train_index, cal_index = getattr(self, "train_index_", None), getattr(self, "calibration_index_", None)
        if (train_index is not None and cal_index is not None and len(cal_index)
                and len(normal) == len(train_index) + len(cal_index)):
            return normal[train_index]
        return normal

    def with_scorer(self, scorer: ScorerConfig, threshold: float | None = None,
                    normal: np.ndarray | None = None) -> "DOCDetector":
        """A copy sharing the fine-tuned backbone but scoring with another scorer (no retraining).

        The copy keeps the calibration slice; its threshold is ``threshold`` (source "manual"), or else the
        ``threshold_percentile`` of the calibration slice's scores under the new scorer
        (:meth:`refresh_calibration`). A patch scorer needs the ``normal`` images (uint8 (n, h, w, c)) unless this
        detector already has one with the same layers: pass the same normal images :meth:`fit` was given (the
        calibration slice is then left out of the patch bank by :attr:`calibration_index_`), or just the training
        images (:attr:`train_index_` of them)."""
        self._check_fitted()
        other = DOCDetector(self.backbone, self.train, scorer, self.threshold_percentile, self.calibration_fraction,
                            self.calibration_min)
        other.backbone_, other.history_ = self.backbone_, self.history_
        other.reference_names_, other.fit_seconds_ = self.reference_names_, getattr(self, "fit_seconds_", 0.0)
        other.metadata_ = dict(getattr(self, "metadata_", {}))
        cal_images = getattr(self, "calibration_images_", None)
        train_index, cal_index = getattr(self, "train_index_", None), getattr(self, "calibration_index_", None)
        if normal is not None:
            normal = _as_images(normal)
            if (train_index is not None and cal_index is not None and len(cal_index)
                    and len(normal) == len(train_index) + len(cal_index)):
                if cal_images is None:
                    cal_images = normal[cal_index]
                normal = normal[train_index]
        other._set_calibration(train_index, cal_index, getattr(self, "calibration_features_", None), cal_images,
                               getattr(self, "calibration_note_", ""))
        if other.is_patch and other.has_calibration and other.calibration_images_ is None:
            other._set_calibration(train_index, cal_index, None, None, "calibration is off for this patch scorer: "
                                   "the calibration images were not available")
        if other.is_patch and normal is None and self.is_patch and scorer == self.scorer:
            other.bank_, other.scorer_, other.train_scores_ = self.bank_, self.scorer_, self.train_scores_
            other.calibration_scores_ = getattr(self, "calibration_scores_", None)
            other.threshold_, other.threshold_source_ = self.threshold_, getattr(self, "threshold_source_", "train")
        else:
            other._fit_bank(self.bank_, normal)
        if threshold is not None:
            other.threshold_, other.threshold_source_ = float(threshold), "manual"
        return other

    def with_added_normals(self, images: np.ndarray, features: np.ndarray | None = None,
                           batch_size: int = 64) -> "DOCDetector":
        """A copy whose memory bank also holds these confirmed normal images; nothing is retrained.

        The copy shares the fine-tuned backbone (and the calibration slice); this detector is not changed.

        - knn / lof: the images' pooled features are appended to :attr:`bank_` and the scorer is fitted again on
          the grown bank (a ``max_bank_size`` cap applies to the grown bank as at :meth:`fit`).
        - patch: their pooled features are appended to :attr:`bank_` and their patches to the patch bank, which grows
          by the same share of their patches the coreset kept of the training images' patches
          (:meth:`doc_core.scoring.patch.PatchKNNScorer.with_images`), so it stays as bounded per image as at fit.

        :attr:`train_scores_` are then the leave-one-out scores of the grown bank (an added image scores against
        the others, not itself; patch: the earlier images' scores are kept as upper bounds), and the threshold is
        set again by :meth:`refresh_calibration`: the ``threshold_percentile`` of the calibration slice's new scores,
        or of the new leave-one-out scores when calibration is off.

        Parameters
        ----------
        images : np.ndarray, uint8, shape (n, h, w, c)
            The confirmed normal images, n >= 1.
        features : np.ndarray, float32, shape (n, k), optional
            Their pooled features from this detector (e.g. a run's stored test features), to skip embedding them
            (knn/lof only; a patch detector needs their patch maps anyway).
        batch_size : int

        Returns
        -------
        DOCDetector
        """
        import copy

        self._check_fitted()
        images = _as_images(images)
        if len(images) == 0:
            raise ValueError("no images to add to the bank")
        other = copy.copy(self)  # shares the backbone, history and calibration slice; replaced attributes below
        other.metadata_ = dict(getattr(self, "metadata_", {}))
        if self.is_patch:
            layers = self.backbone_.patch_layers(self.scorer.patch_layers)
            maps, feats = self.backbone_.patch_maps(images, layers, batch_size, with_features=True)
            other.scorer_ = self.scorer_.with_images(maps)
            other.bank_ = np.concatenate([self.bank_, feats]).astype(np.float32)
            other.train_scores_ = other.scorer_.training_scores()
        else:
            if features is None:
                features = self.backbone_.embed(images, batch_size)
            features = np.asarray(features, np.float32)
            if features.shape != (len(images), self.bank_.shape[1]):
                raise ValueError(f"features must have shape ({len(images)}, {self.bank_.shape[1]}), got "
                                 f"{features.shape}")
            other._fit_bank(np.concatenate([self.bank_, features]))  # refits and re-sets the threshold
            return other
        other.refresh_calibration()
        return other

    # ------------------------------------------------------------------------------------------------ inference

    def _check_fitted(self) -> None:
        if not hasattr(self, "bank_"):
            raise RuntimeError("this DOCDetector is not fitted yet; call fit() or DOCDetector.load()")

    def embed(self, images: np.ndarray, batch_size: int = 256, progress=None) -> np.ndarray:
        """Features of uint8 images (n, h, w, c) -> float32 (n, k)."""
        self._check_fitted()
        return self.backbone_.embed(_as_images(images), batch_size, progress)

    def score_features(self, features: np.ndarray) -> np.ndarray:
        """Anomaly scores of precomputed pooled features, float32 (n,); higher = more anomalous.

        A patch detector scores images, not pooled features: use :meth:`decision_function` (or
        :meth:`score_images`, which also returns the pooled features)."""
        self._check_fitted()
        if self.is_patch:
            raise ValueError("a patch detector scores images by their local features; call decision_function(images)")
        return self.scorer_.score_samples(features)

    def score_images(self, images: np.ndarray, batch_size: int = 64,
                     progress=None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and pooled features of uint8 images (n, h, w, c) in one pass per batch.

        Returns
        -------
        scores : np.ndarray, float32, (n,); higher = more anomalous
        features : np.ndarray, float32, (n, k); the pooled features (for maps and nearest normal images)
        """
        self._check_fitted()
        images = _as_images(images)
        if not self.is_patch:
            feats = self.backbone_.embed(images, batch_size, progress)
            return self.scorer_.score_samples(feats), feats
        scores = np.empty(len(images), np.float32)
        feats = np.empty((len(images), self.bank_.shape[1]), np.float32)
        layers = self.backbone_.patch_layers(self.scorer.patch_layers)
        for i in range(0, len(images), batch_size):  # bounded memory: one batch of maps at a time
            batch = images[i:i + batch_size]
            maps, feats[i:i + len(batch)] = self.backbone_.patch_maps(batch, layers, batch_size, with_features=True)
            scores[i:i + len(batch)] = self.scorer_.score_samples(maps)
            if progress is not None:
                progress(min(i + batch_size, len(images)))
        return scores, feats

    def decision_function(self, images: np.ndarray, batch_size: int = 256, progress=None) -> np.ndarray:
        """Anomaly scores of uint8 images (n, h, w, c), float32 (n,); higher = more anomalous."""
        self._check_fitted()
        if self.is_patch:
            layers = self.backbone_.patch_layers(self.scorer.patch_layers)
            images = _as_images(images)
            out = np.empty(len(images), np.float32)
            step = min(batch_size, 64)
            for i in range(0, len(images), step):
                out[i:i + step] = self.scorer_.score_samples(self.backbone_.patch_maps(images[i:i + step], layers))
                if progress is not None:
                    progress(min(i + step, len(images)))
            return out
        return self.score_features(self.embed(images, batch_size, progress))

    def anomaly_maps(self, images: np.ndarray, size: tuple[int, int] | None = None,
                     batch_size: int = 64) -> np.ndarray:
        """Pixel anomaly maps of a patch detector, in score units (higher = more anomalous).

        Parameters
        ----------
        images : np.ndarray, uint8, shape (n, h, w, c)
        size : (H, W) or None
            Output size; None = the images' own (h, w).

        Returns
        -------
        np.ndarray, float32, shape (n, H, W): each patch's distance to the normal patch bank, upsampled bilinearly
        and smoothed (:meth:`doc_core.scoring.patch.PatchKNNScorer.anomaly_maps`); its maximum is close to the
        image's score.
        """
        self._check_fitted()
        if not self.is_patch:
            raise ValueError("anomaly maps come from the patch scorer; this detector scores pooled features "
                             f"({self.scorer.name}); use Grad-CAM (doc_core.explain.gradcam.GradCAM) or "
                             "with_scorer(patch)")
        images = _as_images(images)
        size = tuple(images.shape[1:3]) if size is None else tuple(size)
        layers = self.backbone_.patch_layers(self.scorer.patch_layers)
        out = np.empty((len(images),) + size, np.float32)
        for i in range(0, len(images), batch_size):
            out[i:i + batch_size] = self.scorer_.anomaly_maps(self.backbone_.patch_maps(images[i:i + batch_size],
                                                                                        layers), size)
        return out

    def predict(self, images: np.ndarray) -> np.ndarray:
        """1 (anomaly) where ``decision_function > threshold_``, else 0; int64 (n,)."""
        return (self.decision_function(images) > self.threshold_).astype(np.int64)

    # ------------------------------------------------------------------------------------------------ persistence

    def config_dict(self) -> dict:
        return {"backbone": self.backbone.to_dict(), "train": self.train.to_dict(), "scorer": self.scorer.to_dict(),
                "threshold_percentile": self.threshold_percentile, "calibration_fraction": self.calibration_fraction,
                "calibration_min": self.calibration_min}

    def save(self, path: str | os.PathLike, metadata: dict | None = None, force: bool = False) -> Path:
        """Save to a folder (Keras weights + ``.npz`` + JSON; no pickle), atomically.

        Everything is written to a temporary folder beside ``path`` and then renamed into place, so a crash
        mid-save leaves any earlier detector at ``path`` intact. Only a detector folder written by this tool, or an
        empty folder, is replaced, unless ``force`` (see :mod:`doc_core.workflow.output_folders`); hidden temporary
        siblings of ``path`` left by a killed save more than a day ago are removed.

        Raises
        ------
        OutputExistsError
            ``path`` holds something else and ``force`` is False; nothing was written or deleted.
        OSError
            Writing failed (``ENOSPC``: the disk is full); any detector already at ``path`` is kept.
        """
        self._check_fitted()
        path = Path(path)
        prepare_save(path, DETECTOR_FOLDER, force)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            self.backbone_.model.save_weights(tmp / "backbone.weights.h5")
            np.savez(tmp / "bank.npz", bank=self.bank_)
            if self.is_patch:
                np.savez(tmp / PATCH_BANK_FILE, **self.scorer_.to_arrays())
            if self.has_calibration:
                arrays = {"features": self.calibration_features_, "index": self.calibration_index_,
                          "train_index": self.train_index_}
                if self.calibration_scores_ is not None:
                    arrays["scores"] = self.calibration_scores_
                if self.is_patch:
                    arrays["images"] = self.calibration_images_
                np.savez(tmp / CALIBRATION_FILE, **arrays)
            doc = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": self.config_dict(),
                   "threshold": float(self.threshold_), "threshold_source": getattr(self, "threshold_source_", "train"),
                   "calibration": {"n": self.n_calibration, "note": getattr(self, "calibration_note_", "")},
                   "reference_names": list(self.reference_names_),
                   "feature_dim": int(self.bank_.shape[1]), "fit_seconds": float(getattr(self, "fit_seconds_", 0.0)),
                   "history": [r.to_dict() for r in self.history_], "metadata": metadata or {}}
            (tmp / "detector.json").write_text(json.dumps(doc, indent=1))
            _fsync_tree(tmp)
            install_folder(tmp, path, DETECTOR_FOLDER, force)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(exc.errno, f"No space left on the disk while saving the detector to {path}; nothing "
                              "was written" + (" (the detector already there is kept)" if path.exists() else "")
                              + ". Free some space and save again.") from exc
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DOCDetector":
        """Load a folder written by :meth:`save`. Runs no code from the folder (weights and arrays only).

        Raises
        ------
        DetectorFormatError
            Missing files, invalid JSON, wrong format or version, or arrays that do not fit the config.
        """
        path = Path(path)
        if not path.exists():
            _restore_previous(path)
        if not path.is_dir():
            raise DetectorFormatError(f"{path} is not a detector folder")
        missing = [f for f in _FILES if not (path / f).is_file()]
        if missing:
            raise DetectorFormatError(f"{path} is not a complete detector: missing {', '.join(missing)}")
        where = str(path / "detector.json")
        try:
            doc = read_json(path / "detector.json", MAX_DETECTOR_JSON_BYTES)
        except (ArtifactError, FileNotFoundError) as exc:
            raise DetectorFormatError(str(exc)) from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise DetectorFormatError(f"{path} does not hold a {FORMAT_NAME} (detector.json has no matching 'format')")
        if doc.get("format_version") != FORMAT_VERSION:
            raise DetectorFormatError(f"{path} has format version {doc.get('format_version')!r}; this doc_core reads "
                                      f"version {FORMAT_VERSION}")
        try:  # every field and the bank's header are checked before the network is built
            f = Fields(doc, where)
            cfg = f.section("config")
            det = cls(BackboneConfig.from_dict(cfg.dict("backbone"), f"{where}: config.backbone"),
                      TrainConfig.from_dict(cfg.dict("train"), f"{where}: config.train"),
                      ScorerConfig.from_dict(cfg.dict("scorer"), f"{where}: config.scorer"),
                      cfg.float("threshold_percentile", 0.0, 100.0, default=95.0),
                      # detectors saved before calibration existed held none out
                      cfg.float("calibration_fraction", 0.0, 0.5, default=0.0),
                      cfg.int("calibration_min", 1, 10**9, default=MIN_CALIBRATION))
            feature_dim = f.int("feature_dim", 1, MAX_FEATURE_DIM)
            threshold = f.float("threshold")  # finite: a NaN threshold would silently flag nothing
            threshold_source = f.str("threshold_source", default="train", choices=THRESHOLD_SOURCES)
            cal_doc = f.section("calibration", default={})  # absent in detectors saved before calibration
            cal_n, cal_note = cal_doc.int("n", 0, 10**9, default=0), cal_doc.str("note", default="")
            reference_names = tuple(f.str_list("reference_names", default=[]))
            history = [StepRecord.from_dict(r, f"{where}: history[{i}]")
                       for i, r in enumerate(f.list("history", default=[]))]
            fit_seconds = f.float("fit_seconds", 0.0, default=0.0)
            metadata = f.dict("metadata", default={})
            try:
                bank = read_npz(path / "bank.npz", {"bank": ArraySpec(("n", "k"), "f", finite=True)},
                                {"k": (feature_dim, "detector.json's feature_dim")})["bank"]
            except ArtifactError as exc:
                raise ArtifactError(f"the memory bank does not fit: {exc}") from exc
            if len(bank) == 0:
                raise ArtifactError(f"{path / 'bank.npz'}: the memory bank is empty")
            patch_arrays = None
            if det.is_patch:
                patch_arrays = read_npz(path / PATCH_BANK_FILE, {
                    "bank_": ArraySpec(("m", "c"), "f", finite=True), "bank_image_": ArraySpec(("m",), "iu"),
                    "train_scores_": ArraySpec(("n",), "f", finite=True), "map_shape_": ArraySpec((2,), "iu"),
                    "n_train_": ArraySpec((1,), "iu", required=False)}, {})
            cal = None
            if cal_n:
                cal = read_npz(path / CALIBRATION_FILE, {
                    "features": ArraySpec(("m", "k"), "f", finite=True), "index": ArraySpec(("m",), "iu"),
                    "train_index": ArraySpec(("t",), "iu"),
                    "scores": ArraySpec(("m",), "f", finite=True, required=False),
                    "images": ArraySpec(("m", "h", "w", "c"), "u", required=det.is_patch)},
                    {"m": (cal_n, "detector.json's calibration.n"), "k": (feature_dim, "detector.json's feature_dim")})
                if "images" in cal and (cal["images"].dtype != np.uint8 or cal["images"].shape[-1] not in (1, 3)):
                    raise ArtifactError(f"{path / CALIBRATION_FILE}: the calibration images must be uint8 with 1 or 3 "
                                        "channels")
                everything = np.concatenate([cal["index"], cal["train_index"]]).astype(np.int64)
                if not np.array_equal(np.sort(everything), np.arange(len(everything))):
                    raise ArtifactError(f"{path / CALIBRATION_FILE}: the calibration and training indices must split "
                                        "0..n-1 between them")
        except ArtifactError as exc:
            raise DetectorFormatError(str(exc)) from exc
        except FileNotFoundError as exc:
            raise DetectorFormatError(f"{path} is not a complete detector: {exc}") from exc
        try:
            # all weights come from the folder, so no ImageNet file is needed to rebuild the network
            det.backbone_ = Backbone(BackboneConfig.from_dict({**det.backbone.to_dict(), "weights": None}))
            det.backbone_.model.load_weights(path / "backbone.weights.h5")
            if det.backbone_.feature_dim != feature_dim:
                raise DetectorFormatError(f"{path}: the network's feature dimension {det.backbone_.feature_dim} does "
                                          f"not fit the memory bank's {feature_dim} (detector.json's feature_dim)")
            det.reference_names_, det.history_, det.fit_seconds_ = reference_names, history, fit_seconds
            det.metadata_ = dict(metadata)
            if cal is None:
                det._set_calibration(None, None, None, None, cal_note or "this detector was saved without a "
                                     "calibration slice; the threshold rests on leave-one-out training scores")
            else:
                det._set_calibration(cal["train_index"], cal["index"], cal["features"], cal.get("images"), cal_note)
            if det.is_patch:
                from ..scoring.patch import PatchKNNScorer

                det.bank_ = bank.astype(np.float32, copy=False)
                det.scorer_ = PatchKNNScorer.from_arrays(det._patch_scorer().get_config(), patch_arrays)
                maps_c = det.backbone_.patch_maps(np.zeros((1, 32, 32, 3), np.uint8),
                                                  det.scorer.patch_layers).shape[-1]
                if det.scorer_.bank_.shape[1] != maps_c:
                    raise DetectorFormatError(f"{path / PATCH_BANK_FILE}: patch bank of {det.scorer_.bank_.shape[1]} "
                                              f"channels does not fit the patch layers' {maps_c}")
                det.train_scores_ = det.scorer_.training_scores()
                if cal is not None and "scores" in cal:
                    det.calibration_scores_ = cal["scores"].astype(np.float32)
                elif det.has_calibration:
                    det.refresh_calibration()
            else:
                det._fit_bank(bank.astype(np.float32, copy=False))  # re-scores the calibration features too
            det.threshold_, det.threshold_source_ = threshold, threshold_source
        except DetectorFormatError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure here means the folder is broken
            raise DetectorFormatError(f"{path} could not be loaded ({type(exc).__name__}: {exc})") from exc
        return det


def _as_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape (n, h, w, 1 or 3), got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 in [0, 255], got {images.dtype}")
    return images


def _restore_previous(path: Path) -> None:
    """Undo a save killed between its two renames: put the previous detector (``.<name>.old-*``) back at ``path``."""
    restore_previous(path, DETECTOR_FOLDER)


@dataclass(frozen=True)
class SavedBank:
    """The memory bank of a saved detector, read without building its network (:func:`read_bank`).

    Attributes
    ----------
    bank : np.ndarray, float32, shape (n, k)
        ``DOCDetector.bank_``: one DOC feature per bank row.
    train_index : np.ndarray, int64, shape (t,), or None
        ``DOCDetector.train_index_``: for a detector with a calibration slice, the index among the normal training
        images of each image the bank was fitted on (its first ``t`` rows); None without a calibration slice (bank
        row ``r`` < number of training images is training image ``r``).
    """

    bank: np.ndarray
    train_index: np.ndarray | None


def read_bank(path: str | os.PathLike) -> SavedBank:
    """The memory bank of the detector folder ``path`` (:meth:`DOCDetector.save`) without the network: for the
    nearest normal images of stored features, in a fraction of the time :meth:`DOCDetector.load` takes.

    The same checks as :meth:`DOCDetector.load` on what it reads (format and version, ``feature_dim``, the bank's
    header, dtype and finiteness, the calibration file's indices); no pickle, no code from the folder.

    Raises
    ------
    DetectorFormatError
        Missing or damaged files.
    """
    path = Path(path)
    if not path.exists():
        _restore_previous(path)
    try:
        doc = read_json(path / "detector.json", MAX_DETECTOR_JSON_BYTES)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise ArtifactError(f"{path} does not hold a {FORMAT_NAME} (detector.json has no matching 'format')")
        if doc.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{path} has format version {doc.get('format_version')!r}; this doc_core reads "
                                f"version {FORMAT_VERSION}")
        f = Fields(doc, str(path / "detector.json"))
        feature_dim = f.int("feature_dim", 1, MAX_FEATURE_DIM)
        cal_n = f.section("calibration", default={}).int("n", 0, 10**9, default=0)
        bank = read_npz(path / "bank.npz", {"bank": ArraySpec(("n", "k"), "f", finite=True)},
                        {"k": (feature_dim, "detector.json's feature_dim")})["bank"]
        if len(bank) == 0:
            raise ArtifactError(f"{path / 'bank.npz'}: the memory bank is empty")
        train_index = None
        if cal_n:
            cal = read_npz(path / CALIBRATION_FILE, {
                "index": ArraySpec(("m",), "iu"), "train_index": ArraySpec(("t",), "iu")},
                {"m": (cal_n, "detector.json's calibration.n")})  # the indices only: no features, no images
            everything = np.concatenate([cal["index"], cal["train_index"]]).astype(np.int64)
            if not np.array_equal(np.sort(everything), np.arange(len(everything))):
                raise ArtifactError(f"{path / CALIBRATION_FILE}: the calibration and training indices must split "
                                    "0..n-1 between them")
            train_index = cal["train_index"].astype(np.int64)
    except (ArtifactError, FileNotFoundError) as exc:
        raise DetectorFormatError(f"{path}: {exc}") from exc
    return SavedBank(bank.astype(np.float32, copy=False), train_index)


# Parameters of each backbone's whole convolutional part (no classifier), an upper bound for any feature layer; the
# widest feature any layer gives is at most 2048 x max(1, alpha) channels.
_MAX_PARAMS = {"mobilenet_v2": 2_257_984, "vgg16": 14_714_688, "tiny": 6_032}
_WIDEST_FEATURE = 2048


def estimate_save_bytes(backbone: BackboneConfig, n_normal: int, train: TrainConfig = TrainConfig(),
                        max_bank_size: int | None = None) -> int:
    """A conservative estimate (bytes) of what :meth:`DOCDetector.save` writes, known before training.

    Weights: float32 parameters of the whole backbone (MobileNetV2 scaled by ``max(alpha, alpha**2)``) plus 10 %
    and 2 MiB of HDF5 overhead, or the size of a given weights file if larger. Bank: ``n_normal`` (at most
    ``max_bank_size``) float32 vectors of the widest feature. JSON: 256 bytes per training step plus 1 MiB.
    """
    scale = max(backbone.alpha, backbone.alpha ** 2) if backbone.name == "mobilenet_v2" else 1.0
    weights = int(_MAX_PARAMS.get(backbone.name, 25_000_000) * scale * 4 * 1.1) + 2 * 2**20
    if backbone.weights and backbone.weights != "imagenet" and os.path.isfile(backbone.weights):
        weights = max(weights, os.path.getsize(backbone.weights))
    n_bank = min(n_normal, max_bank_size) if max_bank_size else n_normal
    bank = n_bank * int(_WIDEST_FEATURE * max(1.0, backbone.alpha)) * 4
    steps = train.epochs * -(-max(n_normal, 1) // max(train.batch_size, 1))
    return weights + bank + 256 * steps + 2**20


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
