"""Tests of doc_core.evaluation.metrics against brute-force counts."""

from __future__ import annotations

import numpy as np
import pytest

from doc_core.evaluation import metrics


def brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    """P(anomaly score > normal score) over all pairs, ties counting 1/2."""
    pos, neg = s[y == 1], s[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def brute_f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = np.sum(pred & (y == 1))
    fp = np.sum(pred & (y == 0))
    fn = np.sum(~pred & (y == 1))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def labelled_scores(seed: int, n0: int = 40, n1: int = 25, ties: bool = False, dtype=np.float64):
    rng = np.random.default_rng(seed)
    s = np.r_[rng.normal(0.0, 1.0, n0), rng.normal(1.2, 1.0, n1)]
    if ties:
        s = np.round(s, 1)
    y = np.r_[np.zeros(n0, int), np.ones(n1, int)]
    perm = rng.permutation(n0 + n1)
    return y[perm], s[perm].astype(dtype)


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True), (3, False)])
def test_roc_auc_matches_pairwise_count(seed, ties):
    y, s = labelled_scores(seed, ties=ties)
    assert metrics.roc_auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)


def test_roc_auc_extremes():
    y = np.array([0, 0, 1, 1])
    assert metrics.roc_auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert metrics.roc_auc(y, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert metrics.roc_auc(y, np.ones(4)) == 0.5


def test_roc_and_pr_curves_shapes():
    y, s = labelled_scores(4)
    roc = metrics.roc_curve(y, s)
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"])
    assert np.isinf(roc["thresholds"][0]) and np.all(np.diff(roc["thresholds"]) < 0)
    assert roc["fpr"][-1] == 1.0 and roc["tpr"][-1] == 1.0
    pr = metrics.pr_curve(y, s)
    assert len(pr["precision"]) == len(pr["recall"]) == len(pr["thresholds"]) + 1
    assert np.all(np.diff(pr["thresholds"]) > 0)
    assert 0.0 < metrics.average_precision(y, s) <= 1.0


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_threshold_at_fpr_is_smallest_valid_threshold(target, ties, dtype):
    rng = np.random.default_rng(5)
    normal = rng.normal(size=57)
    if ties:
        normal = np.round(normal, 1)
    normal = normal.astype(dtype)  # also compared in the scores' own dtype below
    t = metrics.threshold_at_fpr(normal, target)
    assert np.mean(normal > t) <= target + 1e-12
    if t >= normal.min():
        # every lower threshold also flags the scores equal to t, which exceeds the target
        assert np.mean(normal >= t) > target
    else:
        assert target == 1.0 and np.all(normal > t)


def test_threshold_at_fpr_exact_counts():
    normal = np.arange(100, dtype=float)
    assert metrics.threshold_at_fpr(normal, 0.05) == 94.0  # 95..99 above: 5 %
    assert metrics.threshold_at_fpr(normal, 0.0) == 99.0
    assert metrics.threshold_at_fpr(normal, 1.0) < 0.0


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_threshold_at_fpr_rejects_bad_target(bad):
    with pytest.raises(ValueError):
        metrics.threshold_at_fpr(np.arange(5.0), bad)


def test_threshold_at_fpr_rejects_empty_and_nan():
    with pytest.raises(ValueError):
        metrics.threshold_at_fpr(np.array([]), 0.05)
    with pytest.raises(ValueError, match="NaN"):
        metrics.threshold_at_fpr(np.array([0.1, np.nan, 0.3]), 0.05)


@pytest.mark.parametrize("seed,ties,dtype", [(0, False, np.float64), (1, True, np.float64), (2, False, np.float32),
                                             (3, True, np.float32), (4, False, np.float32)])
def test_threshold_best_f1_is_max_over_all_thresholds(seed, ties, dtype):
    y, s = labelled_scores(seed, ties=ties, dtype=dtype)
    candidates = np.r_[np.unique(s), np.min(s) - 1.0]  # "score >= c" for every distinct score, plus "flag all"
    best = max(brute_f1(y, s >= c) for c in candidates)
    t = metrics.threshold_best_f1(y, s)
    assert metrics.report_at_threshold(y, s, t).f1 == pytest.approx(best, abs=1e-12)
    assert brute_f1(y, s > t) == pytest.approx(best, abs=1e-12)  # also when compared in the scores' own dtype


def test_threshold_percentile():
    s = np.arange(101, dtype=float)
    assert metrics.threshold_percentile(s, 95) == 95.0
    assert metrics.threshold_percentile(s, 0) == 0.0
    assert metrics.threshold_percentile(s[::-1], 100) == 100.0
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    t = metrics.threshold_percentile(x, 90)
    assert np.mean(x <= t) == pytest.approx(0.9, abs=0.01)
    for bad in (-1, 101):
        with pytest.raises(ValueError):
            metrics.threshold_percentile(x, bad)
    with pytest.raises(ValueError):
        metrics.threshold_percentile(np.array([]), 50)
    with pytest.raises(ValueError, match="NaN"):
        metrics.threshold_percentile(np.array([1.0, np.nan]), 50)


@pytest.mark.parametrize("threshold", [-10.0, -0.5, 0.0, 0.3, 1.0, 10.0])
def test_report_at_threshold_matches_manual_counts(threshold):
    y, s = labelled_scores(6, ties=True)
    rep = metrics.report_at_threshold(y, s, threshold)
    tp = fp = tn = fn = 0
    for yi, si in zip(y, s):
        flagged = si > threshold
        tp += flagged and yi == 1
        fp += flagged and yi == 0
        tn += (not flagged) and yi == 0
        fn += (not flagged) and yi == 1
    assert (rep.tp, rep.fp, rep.tn, rep.fn) == (tp, fp, tn, fn)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn)
    assert rep.precision == pytest.approx(precision)
    assert rep.recall == pytest.approx(recall)
    assert rep.f1 == pytest.approx(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    assert rep.accuracy == pytest.approx((tp + tn) / len(y))
    assert rep.fpr == pytest.approx(fp / (fp + tn))
    assert rep.threshold == threshold
    assert rep.to_dict()["tp"] == tp


def test_report_at_threshold_score_equal_to_threshold_is_normal():
    rep = metrics.report_at_threshold(np.array([0, 1]), np.array([0.5, 0.5]), 0.5)
    assert (rep.tp, rep.fp, rep.tn, rep.fn) == (0, 0, 1, 1)
    assert rep.precision == 0.0 and rep.f1 == 0.0


@pytest.mark.parametrize("fn", [metrics.roc_auc, metrics.roc_curve, metrics.pr_curve, metrics.average_precision,
                                metrics.threshold_best_f1])
def test_metrics_need_both_classes(fn):
    with pytest.raises(ValueError, match="both"):
        fn(np.zeros(5, int), np.arange(5.0))
    with pytest.raises(ValueError, match="both"):
        fn(np.ones(5, int), np.arange(5.0))


@pytest.mark.parametrize("fn", [metrics.roc_auc, metrics.average_precision, metrics.threshold_best_f1,
                                lambda y, s: metrics.report_at_threshold(y, s, 0.5)])
def test_metrics_reject_bad_input(fn):
    y = np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        fn(y, np.array([0.1, np.nan, 0.3, 0.4]))
    with pytest.raises(ValueError, match="NaN"):
        fn(y, np.array([0.1, np.inf, 0.3, 0.4]))
    with pytest.raises(ValueError, match="entries"):
        fn(y, np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="0 \\(normal\\) and 1"):
        fn(np.array([0, 2, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4]))


def test_policy_threshold_dispatches_to_each_policy():
    y, s = labelled_scores(3)
    labels = np.r_[y, -1, -1]  # two unlabelled images, left out by the label-based policies
    scores = np.r_[s, 9.0, -9.0]
    train = np.random.default_rng(4).normal(0.0, 1.0, 50)
    assert metrics.policy_threshold("train_percentile", scores, labels, train, 90.0) == \
        metrics.threshold_percentile(train, 90.0)
    assert metrics.policy_threshold("target_fpr", scores, labels, train, 0.1) == \
        metrics.threshold_at_fpr(s[y == 0], 0.1)
    assert metrics.policy_threshold("best_f1", scores, labels, train) == metrics.threshold_best_f1(y, s)
    assert metrics.policy_threshold("manual", scores, labels, train) is None
    assert set(metrics.THRESHOLD_POLICIES) == {"train_percentile", "target_fpr", "best_f1", "manual"}
    with pytest.raises(ValueError, match="unknown threshold policy"):
        metrics.policy_threshold("median", scores, labels, train)
    with pytest.raises(ValueError, match="needs its parameter"):
        metrics.policy_threshold("target_fpr", scores, labels, train)
    with pytest.raises(ValueError, match="no normal scores"):
        metrics.policy_threshold("target_fpr", scores, np.ones_like(labels), train, 0.1)
    with pytest.raises(ValueError, match="both normal"):
        metrics.policy_threshold("best_f1", scores, np.r_[np.zeros_like(y), -1, -1], train)


def test_the_dashboard_policy_codes_are_the_core_policies():
    from ui import state

    assert set(state.POLICY_CODES.values()) == set(metrics.THRESHOLD_POLICIES)


def test_label_free_policies_use_calibration_scores():
    """With calibration scores the percentile and target-FPR policies ignore the test labels; best F1 keeps them."""
    y, s = labelled_scores(5)
    train = np.random.default_rng(6).normal(0.0, 1.0, 50)
    cal = np.random.default_rng(7).normal(2.0, 1.0, 40)
    assert metrics.policy_threshold("train_percentile", s, y, train, 95.0, cal) == \
        metrics.threshold_percentile(cal, 95.0) != metrics.threshold_percentile(train, 95.0)
    fpr = metrics.policy_threshold("target_fpr", s, y, train, 0.05, cal)
    assert fpr == metrics.threshold_at_fpr(cal, 0.05) != metrics.threshold_at_fpr(s[y == 0], 0.05)
    # no test labels needed at all: every test image unlabelled
    assert metrics.policy_threshold("target_fpr", s, np.full_like(y, -1), train, 0.05, cal) == fpr
    assert metrics.policy_threshold("best_f1", s, y, train, None, cal) == metrics.threshold_best_f1(y, s)
    # none or empty = runs without a calibration slice: as before
    for none in (None, np.zeros(0)):
        assert metrics.policy_threshold("train_percentile", s, y, train, 95.0, none) == \
            metrics.threshold_percentile(train, 95.0)
        assert metrics.policy_threshold("target_fpr", s, y, train, 0.05, none) == \
            metrics.threshold_at_fpr(s[y == 0], 0.05)
