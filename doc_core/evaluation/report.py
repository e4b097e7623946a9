"""ROC curves of every method of a benchmark result (:func:`doc_core.evaluation.benchmark.benchmark`) on one chart.

:func:`roc_figure` draws the ``roc`` curves of the tutorial protocol on one chart, or one small chart per normal
class for one-vs-rest (``per_class_roc``); :func:`write_roc_html` saves it as a self-contained HTML file (plotly.js
inside, so it opens offline). ``python -m doc_core benchmark ... --roc-html FILE`` writes it.
"""

from __future__ import annotations

import math
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

METHOD_LABELS = {"raw_knn": "raw-pixel k-NN", "pretrained_knn": "pretrained-feature k-NN", "doc_knn": "DOC k-NN",
                 "doc_lof": "DOC LOF", "conv_ae": "conv autoencoder"}
# Okabe-Ito colours, the DOC methods in the dashboard's anomaly vermillion and its blue
METHOD_COLORS = {"raw_knn": "#999999", "pretrained_knn": "#56B4E9", "doc_knn": "#D55E00", "doc_lof": "#0072B2",
                 "conv_ae": "#009E73"}


def _order(methods: dict) -> list[str]:
    known = [m for m in METHOD_LABELS if m in methods]
    return known + sorted(m for m in methods if m not in METHOD_LABELS)


def roc_figure(result: dict) -> go.Figure:
    """ROC curves of all methods of ``result``, labelled with their mean AUC over seeds (curves: first seed).

    Raises
    ------
    ValueError
        When ``result`` holds no ROC curves (results written before curves were kept, or other protocols).
    """
    methods = result.get("methods", {})
    names = _order(methods)
    classes = next((list(methods[m]["per_class_roc"]) for m in names if methods[m].get("per_class_roc")), [])
    if not any("roc" in methods[m] for m in names) and not classes:
        raise ValueError("this benchmark result has no ROC curves (rerun the benchmark with this version)")
    seeds = result.get("seeds", [])
    title = (f"{result.get('protocol', '')} protocol · ROC curves of the first seed; AUC in the legend: mean over "
             f"seeds {seeds}")
    if not classes:
        fig = go.Figure()
        for m in names:
            if "roc" not in methods[m]:
                continue
            r = methods[m]["roc"]
            fig.add_trace(go.Scatter(x=r["fpr"], y=r["tpr"], mode="lines", line=dict(color=METHOD_COLORS.get(m),
                                                                                       width=2.5 if m == "doc_knn"
                                                                                       else 1.6),
                                     name=f"{METHOD_LABELS.get(m, m)} · AUC {methods[m]['auc']:.4f}"))
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#BBBBBB", dash="dot"),
                                 showlegend=False, hoverinfo="skip"))
        fig.update_xaxes(title_text="false-positive rate", range=[0, 1])
        fig.update_yaxes(title_text="true-positive rate", range=[0, 1.01])
        fig.update_layout(title=title, width=760, height=620, legend=dict(x=0.98, xanchor="right", y=0.02,
                                                                          yanchor="bottom"))
        return fig
    cols = 5
    rows = math.ceil(len(classes) / cols)
    doc = methods.get("doc_knn", {}).get("per_class", {})
    titles = [f"normal: {c}" + (f" · DOC k-NN {doc[c]:.3f}" if c in doc else "") for c in classes]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.03, vertical_spacing=0.1)
    for i, c in enumerate(classes):
        row, col = divmod(i, cols)
        for m in names:
            r = methods[m].get("per_class_roc", {}).get(c)
            if r is None:
                continue
            auc = methods[m].get("per_class", {}).get(c)
            fig.add_trace(go.Scatter(x=r["fpr"], y=r["tpr"], mode="lines", legendgroup=m, showlegend=i == 0,
                                     line=dict(color=METHOD_COLORS.get(m), width=2 if m == "doc_knn" else 1.2),
                                     name=f"{METHOD_LABELS.get(m, m)} · mean AUC {methods[m]['auc']:.4f}",
                                     hovertemplate=f"{METHOD_LABELS.get(m, m)} · {c} · AUC {auc}<extra></extra>"),
                          row=row + 1, col=col + 1)
    fig.update_xaxes(range=[0, 1], showticklabels=False)
    fig.update_yaxes(range=[0, 1.01], showticklabels=False)
    fig.update_layout(title=title, width=1300, height=300 * rows + 140,
                      legend=dict(orientation="h", y=-0.04, yanchor="top", x=0, xanchor="left"))
    return fig


def write_roc_html(result: dict, path: str | Path) -> Path:
    """Save :func:`roc_figure` of ``result`` as one self-contained HTML file (about 5 MB: plotly.js is inside)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    roc_figure(result).write_html(str(path), include_plotlyjs=True, full_html=True)
    return path
