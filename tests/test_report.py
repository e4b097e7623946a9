"""ROC curves of benchmark results: the thinned curve against a brute-force ROC, and the chart of a result."""

from __future__ import annotations

import numpy as np
import pytest

from doc_core.evaluation.benchmark import thin_roc
from doc_core.evaluation.metrics import roc_auc
from doc_core.evaluation.report import roc_figure


def brute_force_upper_roc(y: np.ndarray, s: np.ndarray, fpr_grid: np.ndarray) -> np.ndarray:
    """For each allowed false-positive rate, the best true-positive rate of any threshold (score >= t flagged)."""
    points = [(np.mean(s[y == 0] >= t), np.mean(s[y == 1] >= t)) for t in [np.inf, *np.unique(s)]]
    return np.array([max(tp for fp, tp in points if fp <= f + 1e-12) for f in fpr_grid])


@pytest.mark.parametrize("seed", [0, 1])
def test_thin_roc_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # rounded: many ties
    r = thin_roc(y, s, points=51)
    fpr, tpr = np.array(r["fpr"]), np.array(r["tpr"])
    np.testing.assert_allclose(fpr, np.linspace(0, 1, 51), atol=1e-4)
    np.testing.assert_allclose(tpr, brute_force_upper_roc(y, s, fpr), atol=1e-4)
    area = float(np.sum(np.diff(fpr) * tpr[1:]))  # right-step sum of the upper curve: close to the AUC
    assert area == pytest.approx(roc_auc(y, s), abs=0.03)


def test_roc_figure_of_a_tutorial_result_and_of_one_without_curves():
    curve = {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.9, 1.0]}
    result = {"protocol": "tutorial", "seeds": [0, 1], "methods": {
        "doc_knn": {"auc": 0.97, "roc": curve}, "raw_knn": {"auc": 0.94, "roc": curve}}}
    fig = roc_figure(result)
    names = [t.name for t in fig.data if t.showlegend is not False]
    assert names == ["raw-pixel k-NN · AUC 0.9400", "DOC k-NN · AUC 0.9700"]
    with pytest.raises(ValueError, match="no ROC curves"):
        roc_figure({"protocol": "tutorial", "methods": {"doc_knn": {"auc": 0.9}}})
