"""Evaluation of anomaly scores: ROC/PR curves, threshold policies and metrics at a threshold.

Convention everywhere: ``scores`` are higher for more anomalous images, ``y_true`` is 1 for an anomaly and 0 for a
normal image, and an image is predicted anomalous when ``score > threshold``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn import metrics as skm


def _check(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} entries but scores has {s.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold 0 (normal) and 1 (anomaly) only")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return y, s


def _need_both(y: np.ndarray) -> None:
    if y.min() == y.max():
        raise ValueError("this metric needs both normal (0) and anomalous (1) examples")


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; 0.5 is chance, 1.0 a perfect ranking of anomalies above normal images."""
    y, s = _check(y_true, scores)
    _need_both(y)
    return float(skm.roc_auc_score(y, s))


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """ROC curve.

    Returns
    -------
    dict
        ``fpr``, ``tpr`` and ``thresholds`` (float64 arrays of equal length, thresholds decreasing; the first one is
        ``inf``).
    """
    y, s = _check(y_true, scores)
    _need_both(y)
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=True)
    return {"fpr": fpr, "tpr": tpr, "thresholds": thr}


def pr_curve(y_true: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Precision-recall curve with anomalies as the positive class.

    Returns
    -------
    dict
        ``precision``, ``recall`` (length m + 1) and ``thresholds`` (length m, increasing).
    """
    y, s = _check(y_true, scores)
    _need_both(y)
    p, r, thr = skm.precision_recall_curve(y, s)
    return {"precision": p, "recall": r, "thresholds": thr}


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (area under the PR curve, step-wise) with anomalies as positives."""
    y, s = _check(y_true, scores)
    _need_both(y)
    return float(skm.average_precision_score(y, s))


def threshold_at_fpr(normal_scores: np.ndarray, target_fpr: float) -> float:
    """Smallest threshold whose false-positive rate on ``normal_scores`` is at most ``target_fpr``.

    Parameters
    ----------
    normal_scores : np.ndarray, shape (n,)
        Scores of images known to be normal.
    target_fpr : float
        In ``[0, 1]``; 0.05 flags at most 5 % of the normal images.
    """
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target_fpr must be in [0, 1], got {target_fpr}")
    s = np.sort(np.asarray(normal_scores, dtype=np.float64).ravel())
    if s.size == 0:
        raise ValueError("no normal scores to set a threshold on")
    if not np.isfinite(s).all():
        raise ValueError("normal_scores contain NaN or infinite values")
    allowed = int(np.floor(target_fpr * s.size + 1e-9))  # number of normal images allowed above the threshold
    if allowed >= s.size:  # a float32 step below the minimum, so float32 scores are all flagged too
        return float(np.nextafter(np.float32(s[0]), np.float32(-np.inf)))
    return float(s[s.size - 1 - allowed])


def threshold_percentile(train_scores: np.ndarray, percentile: float) -> float:
    """Threshold at a percentile (0-100) of scores of normal training images; needs no labels."""
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    s = np.asarray(train_scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("no training scores to set a threshold on")
    if not np.isfinite(s).all():
        raise ValueError("train_scores contain NaN or infinite values")
    return float(np.percentile(s, percentile))


def threshold_best_f1(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Threshold that maximises F1 of the anomaly class on labelled data (predicted anomalous when score > threshold)."""
    y, s = _check(y_true, scores)
    _need_both(y)
    p, r, thr = skm.precision_recall_curve(y, s)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)[:-1]
    best = thr[int(np.argmax(f1))]
    # sklearn flags score >= best, ours is strict: return the next lower score itself, so that `score > threshold`
    # flags the same images also when float32 scores are compared (a float64 step below best rounds back to it)
    below = s[s < best]
    return float(below.max()) if below.size else float(np.nextafter(np.float32(best), np.float32(-np.inf)))


THRESHOLD_POLICIES = ("train_percentile", "target_fpr", "best_f1", "manual")


def policy_threshold(policy: str, scores: np.ndarray, labels: np.ndarray, train_scores: np.ndarray,
                     param: float | None = None, calibration_scores: np.ndarray | None = None) -> float | None:
    """The threshold a policy sets (the dashboard's "Set the threshold by"); None for ``"manual"``.

    Parameters
    ----------
    policy : {"train_percentile", "target_fpr", "best_f1", "manual"}
        ``train_percentile``: percentile ``param`` (0-100) of ``calibration_scores`` when given, else of
        ``train_scores`` (:func:`threshold_percentile`; needs no labels). ``target_fpr``: false-positive rate
        ``param`` (0-1) on ``calibration_scores`` when given (needs no labels), else on the scores labelled normal
        (:func:`threshold_at_fpr`; then it uses the labels, so metrics on the same images are optimistic).
        ``best_f1``: the best F1 on the labelled scores (:func:`threshold_best_f1`; uses the labels, so metrics at it
        are optimistic). ``manual``: no threshold is set.
    scores : np.ndarray, shape (m,)
        Test scores, higher = more anomalous.
    labels : np.ndarray, int, shape (m,)
        1 anomaly, 0 normal, -1 unlabelled (left out by the label-based policies).
    train_scores : np.ndarray, shape (n,)
        Leave-one-out scores of the normal training images.
    param : float, optional
        The percentile or the target FPR; required by those two policies.
    calibration_scores : np.ndarray, shape (c,), optional
        Scores of held-out normal calibration images (:attr:`doc_core.model.detector.DOCDetector.calibration_scores_`);
        None or empty = none (runs without a calibration slice).

    Raises
    ------
    ValueError
        An unknown policy, a missing ``param``, or labels that do not allow the policy (no normal images for
        ``target_fpr``; not both classes for ``best_f1``).
    """
    if policy not in THRESHOLD_POLICIES:
        raise ValueError(f"unknown threshold policy {policy!r}; choose one of {', '.join(THRESHOLD_POLICIES)}")
    if policy == "manual":
        return None
    if policy in ("train_percentile", "target_fpr") and param is None:
        raise ValueError(f"the {policy} policy needs its parameter")
    calibration = None if calibration_scores is None or np.size(calibration_scores) == 0 else calibration_scores
    if policy == "train_percentile":
        return threshold_percentile(train_scores if calibration is None else calibration, float(param))
    if policy == "target_fpr" and calibration is not None:
        return threshold_at_fpr(calibration, float(param))
    scores, labels = np.asarray(scores).ravel(), np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"labels has {labels.size} entries but scores has {scores.size}")
    if policy == "target_fpr":
        return threshold_at_fpr(scores[labels == 0], float(param))
    mask = labels >= 0
    return threshold_best_f1(labels[mask], scores[mask])


@dataclass(frozen=True)
class ThresholdReport:
    """Confusion matrix and metrics at one threshold; anomalies are the positive class."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    precision: float
    recall: float
    f1: float
    accuracy: float
    fpr: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def report_at_threshold(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> ThresholdReport:
    """Confusion matrix, precision, recall (= TPR), F1, accuracy and FPR when ``score > threshold`` means anomaly.

    Undefined ratios (for example precision with no positive predictions) are reported as 0.0.
    """
    y, s = _check(y_true, scores)
    pred = s > threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return ThresholdReport(
        threshold=float(threshold), tp=tp, fp=fp, tn=tn, fn=fn, precision=precision, recall=recall, f1=f1,
        accuracy=(tp + tn) / y.size if y.size else 0.0, fpr=fp / (fp + tn) if fp + tn else 0.0,
    )
