"""Benchmarks: the Keras write-up's tutorial protocol and Fashion-MNIST one-vs-rest, with baselines.

One-vs-rest comes in two forms: ``one-vs-rest`` (the reference set is drawn from the other nine classes, which are
also the scored anomalies: a form of outlier exposure) and ``one-vs-rest-disjoint`` (reference and anomaly classes
are disjoint, :meth:`doc_core.data.splits.SplitConfig.one_vs_rest_disjoint`, so the anomalies are unseen in training).
``validation`` re-derives the defaults on a split cut from the training set only
(:mod:`doc_core.evaluation.validation`).

Every method runs with one fixed default configuration for every class and protocol; nothing is tuned on test labels.
AUCs are averaged over seeds (the seed changes the reference draw, the head's initialisation and the batch order);
their std is the sample standard deviation (ddof=1; None for a single seed), and every seed's value is kept.
Every result records the machine and the code it ran on (:func:`machine_info`: git commit and whether the working
tree had uncommitted changes).

The detector methods also report their default threshold's promise against what it delivers
(:func:`threshold_check`): the intended false-positive rate (``100 - threshold_percentile`` %, 5 % by default) and the
one realised on the test set's normal images at the detector's threshold (set on the held-out calibration slice,
:mod:`doc_core.model.calibration`), next to the one a threshold on the leave-one-out training scores would give.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..data.fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST, load_fashion_mnist
from ..data.splits import ONE_VS_REST_SPLITS, OneClassSplit, SplitConfig, make_split
from ..model.backbones import BackboneConfig
from ..model.detector import DOCDetector, ScorerConfig
from ..model.training import TrainConfig
from ..scoring.knn import KNNScorer
from .metrics import roc_auc, roc_curve, threshold_percentile

if TYPE_CHECKING:
    from .validation import ValidationConfig

PROTOCOLS = ("tutorial", "one-vs-rest", "one-vs-rest-disjoint", "validation")
# The Keras write-up's published numbers, for the README's comparison.
WRITEUP = {"doc_lof_auc": 0.90, "score_ms_per_image_gpu": 140.0, "gradcam_s_per_image_gpu": 5.0}


@dataclass
class MethodResult:
    """One method on one split: AUC, fitting seconds, scoring milliseconds per image (end to end), seconds per
    training epoch, its ROC curve thinned for plotting (:func:`thin_roc`), the seed it ran with and, for detector
    methods, its default threshold's intended and realised false-positive rates (:func:`threshold_check`)."""

    auc: float
    fit_s: float
    score_ms_per_image: float
    epoch_s: float | None = None
    roc: dict | None = None
    seed: int | None = None
    threshold: dict | None = None

    @classmethod
    def of(cls, labels: np.ndarray, scores: np.ndarray, fit_s: float, ms: float,
           epoch_s: float | None = None) -> "MethodResult":
        """The result of test ``scores`` (higher = more anomalous) against 0/1 ``labels``."""
        return cls(roc_auc(labels, scores), fit_s, ms, epoch_s, thin_roc(labels, scores))


def thin_roc(labels: np.ndarray, scores: np.ndarray, points: int = 201) -> dict:
    """The ROC curve at ``points`` evenly spaced false-positive rates, for plots and JSON files.

    ``{"fpr": [...], "tpr": [...]}`` (lists of floats rounded to 4 decimals, ``fpr`` from 0 to 1); ``tpr`` at each
    ``fpr`` is the best true-positive rate reached at that false-positive rate or lower (the curve's upper step).
    """
    curve = roc_curve(labels, scores)
    grid = np.linspace(0.0, 1.0, points)
    tpr = np.maximum.accumulate(curve["tpr"])[np.searchsorted(curve["fpr"], grid, side="right") - 1]
    return {"fpr": np.round(grid, 4).tolist(), "tpr": np.round(tpr, 4).tolist()}


def threshold_check(det: DOCDetector, labels: np.ndarray, scores: np.ndarray) -> dict:
    """The detector's default threshold: the false-positive rate it intends and the one it gives on the test normals.

    Parameters
    ----------
    det : DOCDetector
        Fitted; its ``threshold_`` is the one checked.
    labels : np.ndarray, int, shape (m,)
        Test labels, 1 anomaly, 0 normal (others ignored).
    scores : np.ndarray, shape (m,)
        ``det``'s test scores, higher = more anomalous.

    Returns
    -------
    dict
        ``intended_fpr`` ((100 - threshold_percentile) / 100), ``realised_fpr`` (share of test normals scoring above
        ``threshold_``), ``realised_fpr_loo`` (the same at the same percentile of the leave-one-out training scores,
        the threshold used before calibration existed), ``threshold``, ``threshold_source`` ("calibration" or
        "train"), ``n_calibration`` and ``n_test_normal``.
    """
    normal = np.asarray(scores, np.float64)[np.asarray(labels) == 0]
    loo = threshold_percentile(det.train_scores_, det.threshold_percentile)
    rate = (lambda t: float(np.mean(normal > t))) if len(normal) else (lambda t: None)
    return {"intended_fpr": round((100.0 - det.threshold_percentile) / 100.0, 6), "realised_fpr": rate(det.threshold_),
            "realised_fpr_loo": rate(loo), "threshold": float(det.threshold_),
            "threshold_source": getattr(det, "threshold_source_", "train"), "n_calibration": det.n_calibration,
            "n_test_normal": int(len(normal))}


def _raw(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def run_raw_knn(split: OneClassSplit) -> MethodResult:
    """k-NN (the default k) on raw pixels scaled to [0, 1]."""
    t0 = time.perf_counter()
    scorer = KNNScorer().fit(_raw(split.train_normal))
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = scorer.score_samples(_raw(split.test_images))
    ms = (time.perf_counter() - t0) * 1000 / len(split.test_images)
    return MethodResult.of(split.test_labels, scores, fit_s, ms)


def run_conv_ae(split: OneClassSplit, seed: int = 0) -> MethodResult:
    """The convolutional autoencoder baseline (fixed defaults, 28x28 gray), scored by reconstruction error."""
    from .autoencoder import ConvAutoencoder

    ae = ConvAutoencoder(seed=seed)
    t0 = time.perf_counter()
    ae.fit(split.train_normal)
    fit_s = time.perf_counter() - t0
    ae.score_samples(split.test_images[:64])  # warm-up: traces the tf.function once
    t0 = time.perf_counter()
    scores = ae.score_samples(split.test_images)
    ms = (time.perf_counter() - t0) * 1000 / len(split.test_images)
    return MethodResult.of(split.test_labels, scores, fit_s, ms, fit_s / ae.epochs)


def _timed_scores(det: DOCDetector, images: np.ndarray) -> tuple[np.ndarray, float]:
    det.decision_function(images[:64])  # warm-up: traces the tf.function once, as any long-running scorer would
    t0 = time.perf_counter()
    scores = det.decision_function(images)
    return scores, (time.perf_counter() - t0) * 1000 / len(images)


def run_detector(split: OneClassSplit, backbone: BackboneConfig, train: TrainConfig,
                 scorers: dict[str, ScorerConfig],
                 on_fitted: Callable[[DOCDetector], None] | None = None) -> dict[str, MethodResult]:
    """Fit one detector (``train.epochs == 0``: pretrained features only) and score the test set with each scorer.

    ``on_fitted``, if given, is called with the fitted detector (first scorer) after the test set is scored.
    """
    t0 = time.perf_counter()
    first = next(iter(scorers.values()))
    det = DOCDetector(backbone, train, first).fit_split(split)
    fit_s = time.perf_counter() - t0
    epoch_s = det.history_[-1].elapsed_s / det.history_[-1].epoch if det.history_ else None
    out = {}
    for name, sc in scorers.items():
        t1 = time.perf_counter()
        d = det if sc == first else det.with_scorer(sc)
        extra = time.perf_counter() - t1 if sc != first else 0.0
        scores, ms = _timed_scores(d, split.test_images)
        out[name] = MethodResult.of(split.test_labels, scores, fit_s + extra, ms, epoch_s)
        out[name].threshold = threshold_check(d, split.test_labels, scores)
    if on_fitted is not None:
        on_fitted(det)
    return out


def measure_explain(det: DOCDetector, images: np.ndarray, n_gradcam: int = 256, n_tsne: int = 2000,
                    seed: int = 0) -> dict:
    """Speed of the explorer's tools on a fitted detector: Grad-CAM per image and a 2-D t-SNE of test features.

    Grad-CAM (default layer) runs in batches of 64 on ``n_gradcam`` images spread evenly over ``images``, after a
    warm-up batch that traces the ``tf.function``. t-SNE embeds the detector's features of the first ``n_tsne``
    images (embedding them is not timed). Both are wall-clock times, so they depend on the machine's load (recorded).

    Returns
    -------
    dict
        ``{"gradcam_ms_per_image": float, "tsne_s": float, "explain_timing": {...details...}}``
    """
    from ..explain.embedding import tsne_2d
    from ..explain.gradcam import GradCAM

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cam = GradCAM(det)
    picked = images[np.linspace(0, len(images) - 1, min(n_gradcam, len(images))).astype(int)]
    cam.explain(picked[:64])  # warm-up
    t0 = time.perf_counter()
    cam.explain(picked, batch_size=64)
    gradcam_ms = (time.perf_counter() - t0) * 1000 / len(picked)
    features = det.embed(images[:n_tsne])
    t0 = time.perf_counter()
    tsne_2d(features, seed=seed)
    tsne_s = time.perf_counter() - t0
    return {"gradcam_ms_per_image": float(gradcam_ms), "tsne_s": float(tsne_s),
            "explain_timing": {"gradcam_images": int(len(picked)), "gradcam_batch_size": 64, "gradcam_layer": cam.layer,
                               "tsne_points": int(len(features)), "tsne_feature_dim": int(features.shape[1]),
                               "load_average_1m": load}}


def sample_std(values: list[float]) -> float | None:
    """Sample standard deviation (ddof=1) of per-seed values; None for fewer than two."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def _summarise(results: list[MethodResult]) -> dict:
    aucs = [r.auc for r in results]
    out = {"auc": float(np.mean(aucs)), "auc_std": sample_std(aucs), "aucs": [round(a, 5) for a in aucs],
           "fit_s": float(np.mean([r.fit_s for r in results])),
           "score_ms_per_image": float(np.mean([r.score_ms_per_image for r in results])),
           "per_seed": [{"seed": r.seed, "auc": round(r.auc, 5), "fit_s": round(r.fit_s, 3),
                         "score_ms_per_image": round(r.score_ms_per_image, 4),
                         "train_epoch_s": None if r.epoch_s is None else round(r.epoch_s, 3)} for r in results]}
    epochs = [r.epoch_s for r in results if r.epoch_s is not None]
    if epochs:
        out["train_epoch_s"] = float(np.mean(epochs))
    checks = [r.threshold for r in results if r.threshold is not None]
    if checks and len(checks) == len(results):
        out.update(_fpr_summary(checks))
        for row, c in zip(out["per_seed"], checks):
            row["realised_fpr"] = c["realised_fpr"]
            row["realised_fpr_loo"] = c["realised_fpr_loo"]
    if results and results[0].roc is not None:
        out["roc"] = results[0].roc  # the first seed's curve
    return out


def _fpr_summary(checks: list[dict]) -> dict:
    """Mean intended and realised false-positive rates over seeds (or classes), plus the calibration facts."""
    def mean(key: str) -> float | None:
        values = [c[key] for c in checks if c.get(key) is not None]
        return float(np.mean(values)) if values else None

    intended = mean("intended_fpr")
    return {"intended_fpr": None if intended is None else round(intended, 6), "realised_fpr": mean("realised_fpr"),
            "realised_fpr_loo": mean("realised_fpr_loo"),
            "threshold_source": sorted({s for c in checks for s in np.atleast_1d(c["threshold_source"]).tolist()}),
            "n_calibration": int(round(mean("n_calibration") or 0))}


def code_version(repo: str | os.PathLike | None = None) -> dict:
    """The git commit the code runs from and whether tracked files differ from it.

    Returns
    -------
    dict
        ``{"commit": 40 hex digits or None, "dirty": bool or None}``: None when ``repo`` (default: the folder above
        the ``doc_core`` package) is not a git checkout or git is missing. ``dirty`` counts changes to tracked files
        (staged or not), not untracked files such as the result being written.
    """
    where = str(repo) if repo is not None else str(Path(__file__).resolve().parents[2])  # the repository root

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit.strip() if commit else None, "dirty": None if status is None else bool(status.strip())}


def machine_info() -> dict:
    """The machine (CPUs, platform, Python, TensorFlow, GPUs) and the code (``git``: :func:`code_version`)."""
    import tensorflow as tf

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "gpus": len(tf.config.list_physical_devices("GPU")),
            "git": code_version()}


def benchmark(protocol: str = "tutorial", seeds: tuple[int, ...] = (0, 1, 2),
              backbone: BackboneConfig = BackboneConfig(), train: TrainConfig = TrainConfig(),
              classes: tuple[int, ...] = tuple(range(10)), data: FashionMNIST | None = None,
              log: Callable[[str], None] = print, validation: "ValidationConfig | None" = None) -> dict:
    """Run a protocol and return the results as a JSON-serialisable dict.

    ``{"protocol": ..., "methods": {NAME: {"auc", "auc_std", "aucs", "fit_s", "score_ms_per_image", ...}}, ...}``;
    for one-vs-rest each method also has ``per_class`` (mean AUC per normal class) and the top-level AUC is the mean
    over classes of the per-class means. ROC curves of the first seed (:func:`thin_roc`) are kept as ``roc``
    (tutorial) or ``per_class_roc`` (one-vs-rest); :func:`doc_core.evaluation.report.roc_figure` draws them. Methods:
    ``raw_knn`` (pixels), ``conv_ae`` (convolutional autoencoder, reconstruction error, trained per seed;
    ``train_epoch_s`` is its fit time per epoch), ``pretrained_knn``, ``doc_knn`` and ``doc_lof``. The tutorial
    protocol also times the explorer's tools on the first seed's ``doc_knn`` detector (see :func:`measure_explain`):
    top-level ``gradcam_ms_per_image``, ``tsne_s`` (t-SNE of the 2,000 test images' features) and ``explain_timing``
    (what was measured, and the load average). ``auc_std`` is the sample std over seeds (None for one seed) and
    ``per_seed`` lists each seed's AUC and timings. ``machine`` includes the git commit (:func:`machine_info`).

    ``protocol="validation"`` runs :func:`doc_core.evaluation.validation.select_defaults` instead (the selection of the
    defaults on a split of the training set; ``backbone`` and ``train`` are its starting point, ``validation`` its
    split and search settings (default :class:`~doc_core.evaluation.validation.ValidationConfig` with the first of
    ``seeds`` as its seed), ``classes`` is unused) and returns its result with ``machine`` added.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    data = data if data is not None else load_fashion_mnist()
    machine = machine_info()  # before the run: the commit and tree state of the code that runs
    if protocol == "validation":
        from .validation import ValidationConfig, select_defaults

        res = select_defaults(data, backbone, train, validation or ValidationConfig(seed=seeds[0]), log=log)
        return {**res, "machine": machine}
    knn, lof = ScorerConfig("knn"), ScorerConfig("lof")
    pre_train = TrainConfig(**{**train.to_dict(), "epochs": 0})
    t_start = time.perf_counter()
    per: dict[str, dict[int, list[MethodResult]]] = {}
    explain: dict = {}

    def time_explain(det: DOCDetector, split: OneClassSplit, seed: int) -> None:
        explain.update(measure_explain(det, split.test_images, seed=0))
        explain["explain_timing"]["detector_seed"] = seed

    def add(name: str, cls: int, res: MethodResult, seed: int) -> None:
        res.seed = seed
        per.setdefault(name, {}).setdefault(cls, []).append(res)

    split_classes = (7,) if protocol == "tutorial" else classes
    for c in split_classes:
        for i, seed in enumerate(seeds):
            cfg = SplitConfig.tutorial(seed) if protocol == "tutorial" else ONE_VS_REST_SPLITS[protocol](c, seed)
            split = make_split(cfg, data)
            label = f"class {c} ({FASHION_MNIST_CLASSES[c]}) seed {seed}"
            if i == 0:  # the baselines do not depend on the seed: the normal set and the test set are fixed
                add("raw_knn", c, run_raw_knn(split), seed)
                add("pretrained_knn", c, run_detector(split, backbone, pre_train, {"knn": knn})["knn"], seed)
            add("conv_ae", c, run_conv_ae(split, seed), seed)  # trained per seed: the seed sets its weights and batches
            seeded = TrainConfig(**{**train.to_dict(), "seed": seed})
            scorers = {"doc_knn": knn, "doc_lof": lof}
            on_fitted = partial(time_explain, split=split, seed=seed) if protocol == "tutorial" and i == 0 else None
            for name, res in run_detector(split, backbone, seeded, scorers, on_fitted).items():
                add(name, c, res, seed)
            log(f"{label}: " + ", ".join(f"{n} {v[c][-1].auc:.4f}" for n, v in per.items() if c in v)
                + f"  [{time.perf_counter() - t_start:.0f} s]")
    methods = {}
    for name, by_class in per.items():
        if protocol == "tutorial":
            methods[name] = _summarise(by_class[7])
        else:
            summ = {c: _summarise(r) for c, r in by_class.items()}
            methods[name] = {
                "auc": float(np.mean([s["auc"] for s in summ.values()])),
                "auc_std": _mean_or_none([s["auc_std"] for s in summ.values()]),
                "fit_s": float(np.mean([s["fit_s"] for s in summ.values()])),
                "score_ms_per_image": float(np.mean([s["score_ms_per_image"] for s in summ.values()])),
                **({"train_epoch_s": float(np.mean([s["train_epoch_s"] for s in summ.values()]))}
                   if all("train_epoch_s" in s for s in summ.values()) else {}),
                "per_class": {FASHION_MNIST_CLASSES[c]: round(s["auc"], 5) for c, s in summ.items()},
                "per_class_std": {FASHION_MNIST_CLASSES[c]: None if s["auc_std"] is None else round(s["auc_std"], 5)
                                  for c, s in summ.items()},
                "per_class_per_seed": {FASHION_MNIST_CLASSES[c]: s["per_seed"] for c, s in summ.items()},
                "per_class_roc": {FASHION_MNIST_CLASSES[c]: s["roc"] for c, s in summ.items() if "roc" in s},
            }
            if all("realised_fpr" in s for s in summ.values()):
                methods[name].update(_fpr_summary([s for s in summ.values()]))
                methods[name]["per_class_realised_fpr"] = {
                    FASHION_MNIST_CLASSES[c]: None if s["realised_fpr"] is None else round(s["realised_fpr"], 5)
                    for c, s in summ.items()}
    return {"protocol": protocol, "methods": methods, "seeds": list(seeds),
            "config": {"backbone": backbone.resolved().to_dict(), "train": train.to_dict()}, **explain,
            "total_s": time.perf_counter() - t_start, "machine": machine}


def _mean_or_none(values: list[float | None]) -> float | None:
    """Mean of per-class stds; None when any is None (a single seed has no std)."""
    return None if any(v is None for v in values) else float(np.mean(values))


def format_table(result: dict) -> str:
    """A plain-text table of a :func:`benchmark` result."""
    if result.get("protocol") == "validation":
        from .validation import format_validation_table

        return format_validation_table(result)
    lines = [f"protocol: {result['protocol']}  seeds: {result['seeds']}",
             f"{'method':<16}{'AUC':>8}{'± std':>8}{'fit s':>9}{'epoch s':>9}{'score ms/img':>14}"
             f"{'FPR intended':>14}{'realised':>10}{'(LOO)':>8}"]
    for name, m in result["methods"].items():
        epoch = f"{m['train_epoch_s']:>9.1f}" if "train_epoch_s" in m else f"{'-':>9}"
        std = f"{'-':>8}" if m["auc_std"] is None else f"{m['auc_std']:>8.4f}"
        lines.append(f"{name:<16}{m['auc']:>8.4f}{std}{m['fit_s']:>9.1f}{epoch}"
                     f"{m['score_ms_per_image']:>14.3f}" + format_fpr(m))
    first = next(iter(result["methods"].values()))
    if "per_class" in first:
        lines.append("per-class AUC:")
        names = list(first["per_class"])
        lines.append(f"{'class':<14}" + "".join(f"{n:>16}" for n in result["methods"]))
        for cls in names:
            lines.append(f"{cls:<14}" + "".join(f"{m['per_class'][cls]:>16.4f}" for m in result["methods"].values()))
    if "gradcam_ms_per_image" in result:
        t = result.get("explain_timing", {})
        lines.append(f"explain (doc_knn, seed {t.get('detector_seed', '?')}): Grad-CAM "
                     f"{result['gradcam_ms_per_image']:.1f} ms/img ({t.get('gradcam_images', '?')} images, layer "
                     f"{t.get('gradcam_layer', '?')}), t-SNE of {t.get('tsne_points', '?')} points "
                     f"{result['tsne_s']:.1f} s")
    return "\n".join(lines)


def format_fpr(m: dict) -> str:
    """The intended, realised and leave-one-out false-positive rate columns of a method (dashes without them)."""
    def pct(v: float | None, width: int) -> str:
        return f"{'-':>{width}}" if v is None else f"{100 * v:>{width - 1}.1f}%"

    return pct(m.get("intended_fpr"), 14) + pct(m.get("realised_fpr"), 10) + pct(m.get("realised_fpr_loo"), 8)


# ---------------------------------------------------------------------------------------------- one run's comparison

COMPARE_METHODS = ("raw-pixel k-NN", "pretrained-feature k-NN", "DOC k-NN", "DOC LOF", "conv autoencoder")


@dataclass
class ComparedMethod:
    """One method of :func:`compare_methods`: test scores (None when it was skipped, ``note`` says why), AUC over the
    labelled test images, fitting seconds and scoring milliseconds per image."""

    name: str
    scores: np.ndarray | None
    auc: float | None
    fit_s: float | None
    score_ms_per_image: float | None
    note: str = ""


def _labelled_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    mask = labels >= 0
    y = labels[mask]
    return roc_auc(y, scores[mask]) if len(np.unique(y)) == 2 else None


def _timed_ms(det: DOCDetector, images: np.ndarray) -> float:
    """End-to-end scoring milliseconds per image (embedding + scorer), after a warm-up call."""
    det.decision_function(images[:8])
    t0 = time.perf_counter()
    det.decision_function(images)
    return (time.perf_counter() - t0) * 1000 / len(images)


def compare_methods(split: OneClassSplit, detector: DOCDetector, test_scores: np.ndarray | None = None,
                    test_features: np.ndarray | None = None, timing_images: int = 256, seed: int = 0,
                    ae_epochs: int = 10) -> list[ComparedMethod]:
    """Baselines and a trained DOC detector on the split it was trained on, one :class:`ComparedMethod` each, in the
    order of :data:`COMPARE_METHODS`.

    ``test_scores`` / ``test_features`` are the run's stored k-NN scores and DOC features of ``split.test_images``
    (embedded again when missing). DOC LOF rescores those features with ``detector.with_scorer(lof)`` (no
    re-embedding). The pretrained-feature k-NN fits an ``epochs=0`` detector with the run's backbone config; it is
    skipped, with a note, when the backbone's pretrained weights cannot be found. Scoring speed of the DOC methods
    is timed end to end on the first ``timing_images`` test images; the fit time of DOC k-NN is the run's own.
    """
    from ..model.backbones import WeightsNotFoundError
    from .autoencoder import ConvAutoencoder

    labels, test = split.test_labels, split.test_images
    timing = test[:max(1, min(timing_images, len(test)))]
    out = []

    t0 = time.perf_counter()
    raw_scorer = KNNScorer().fit(_raw(split.train_normal))
    raw_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw_scores = raw_scorer.score_samples(_raw(test))
    out.append(ComparedMethod(COMPARE_METHODS[0], raw_scores, _labelled_auc(labels, raw_scores), raw_fit,
                              (time.perf_counter() - t0) * 1000 / len(test)))

    try:
        t0 = time.perf_counter()
        pre = DOCDetector(detector.backbone, TrainConfig(epochs=0, seed=seed), ScorerConfig("knn")).fit_split(split)
        fit_s = time.perf_counter() - t0
        s = pre.decision_function(test)
        out.append(ComparedMethod(COMPARE_METHODS[1], s, _labelled_auc(labels, s), fit_s, _timed_ms(pre, timing)))
    except WeightsNotFoundError as exc:
        out.append(ComparedMethod(COMPARE_METHODS[1], None, None, None, None,
                                  f"skipped: the backbone's pretrained weights cannot be found ({exc})"))

    feats = test_features if test_features is not None else detector.embed(test)
    s = np.asarray(test_scores if test_scores is not None else detector.score_features(feats), np.float32)
    out.append(ComparedMethod(COMPARE_METHODS[2], s, _labelled_auc(labels, s),
                              float(getattr(detector, "fit_seconds_", 0.0)) or None, _timed_ms(detector, timing),
                              "" if detector.scorer.name == "knn" else f"the run's own scorer ({detector.scorer.name})"))

    t0 = time.perf_counter()
    lof = detector.with_scorer(ScorerConfig("lof", max_bank_size=detector.scorer.max_bank_size))
    lof_fit = time.perf_counter() - t0
    s = lof.score_features(feats)
    out.append(ComparedMethod(COMPARE_METHODS[3], s, _labelled_auc(labels, s),
                              float(getattr(detector, "fit_seconds_", 0.0)) + lof_fit, _timed_ms(lof, timing),
                              "fit time: the run's training plus the LOF fit on its memory bank"))

    try:
        ae = ConvAutoencoder(epochs=ae_epochs, seed=seed)
        t0 = time.perf_counter()
        ae.fit(split.train_normal)
        fit_s = time.perf_counter() - t0
        ae.score_samples(test[:8])  # warm-up: traces the tf.function once
        t0 = time.perf_counter()
        s = ae.score_samples(test)
        out.append(ComparedMethod(COMPARE_METHODS[4], s, _labelled_auc(labels, s), fit_s,
                                  (time.perf_counter() - t0) * 1000 / len(test)))
    except ValueError as exc:
        out.append(ComparedMethod(COMPARE_METHODS[4], None, None, None, None, f"skipped: {exc}"))
    return out
