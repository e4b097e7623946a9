"""Plotly figures of the app. Pure functions of arrays: no Streamlit, no state, easy to cache and to test.

Normal is always ``theme.NORMAL`` and anomaly ``theme.ANOMALY``; axis titles carry units or say what a number means.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from doc_core.evaluation.metrics import ThresholdReport
from doc_core.model.training import StepRecord, smooth

from . import theme


# Plotly's toolbar (modebar) floats over the top right corner of every chart, about 28 px high: every figure keeps a
# band this high free above whatever it draws over its plot area (titles, top tick labels, notes), so the toolbar
# never covers them.
MODEBAR_PX = 32
# Colour by score: normal blue, a mid grey at the threshold, anomaly vermillion. Every colour on the way has a WCAG
# contrast of at least 3 against white and against Streamlit's dark background, so no point fades into either.
SCORE_MID = "#8C8C8C"
BACKGROUNDS = ("#FFFFFF", "#0E1117")


def _layout(fig: go.Figure, height: int, top: int = 0, **kw) -> go.Figure:
    """Shared layout; ``top`` is the height (px) of what the figure draws above its plot area, placed under the
    toolbar's band."""
    margin = {**dict(l=10, r=10, b=10), **kw.pop("margin", {}), "t": MODEBAR_PX + top}
    base = dict(height=height + MODEBAR_PX, margin=margin, font=theme.FONT, hovermode="closest",
                legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0))
    fig.update_layout(**{**base, **kw})
    return fig


def histogram_range(values: np.ndarray, threshold: float | None = None, percentile: float = 99.5,
                    slack: float = 1.5) -> tuple[float, float, int]:
    """The x range of a score histogram, cut short of a few far outliers, and how many values lie beyond it.

    Parameters
    ----------
    values : (n,) float array
        Scores (non-finite values are ignored).
    threshold : float or None
        The threshold, always inside the range.
    percentile : float
        The axis may stop at this percentile of ``values``...
    slack : float
        ...but only when the largest value lies more than ``slack`` times as far from the low end; it never stops
        below ``threshold + (threshold - lo)`` (twice the threshold for scores from 0).

    Returns
    -------
    lo, hi : float
        The range (``lo < hi``).
    beyond : int
        Number of values above ``hi`` (0 when the range reaches the largest value).
    """
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    t = float(threshold) if threshold is not None and np.isfinite(threshold) else None
    if not len(v):
        centre = t if t is not None else 0.0
        return centre - 0.5, centre + 0.5, 0
    lo, top = float(v.min()), float(v.max())
    robust = float(np.percentile(v, percentile))
    if t is not None:
        lo, top = min(lo, t), max(top, t)
        robust = max(robust, t + (t - lo))
    hi = top if top - lo <= slack * (robust - lo) else robust
    if hi <= lo:
        return lo - 0.5, lo + 0.5, 0
    return lo, hi, int(np.sum(v > hi))


def score_color_scale(scores: np.ndarray, threshold: float, percentile: float = 99.0
                      ) -> tuple[float, float, list[list]]:
    """Colour scale for points coloured by anomaly score: ``(cmin, cmax, colorscale)``.

    Low scores are normal blue, the threshold ``SCORE_MID`` grey, high scores anomaly vermillion; the top
    ``100 - percentile`` % of scores share the end colour. ``scores`` is a (n,) float array."""
    s = np.asarray(scores, np.float64)
    s = s[np.isfinite(s)]
    lo = float(np.min(s)) if len(s) else 0.0
    hi = float(np.percentile(s, percentile)) if len(s) else 1.0
    lo, hi = min(lo, threshold), max(hi, threshold)
    hi = hi if hi > lo else lo + 1.0
    mid = float(np.clip((threshold - lo) / (hi - lo), 0.05, 0.95))
    return lo, hi, [[0, theme.NORMAL], [mid, SCORE_MID], [1, theme.ANOMALY]]


def _inside(x: str, y: str) -> dict:
    """A legend inside the plot area, in a corner, on a translucent white box."""
    return dict(orientation="v", xanchor=x, x=0.99 if x == "right" else 0.01, yanchor=y,
                y=0.02 if y == "bottom" else 0.98, bgcolor="rgba(255,255,255,0.85)", bordercolor="#DDDDDD",
                borderwidth=1)


def loss_curves(records: list[StepRecord] | tuple[StepRecord, ...], alpha: float = 0.1,
                max_points: int = 1500) -> go.Figure:
    """l_D, l_C and the total loss per training step: the raw values faint, a smoothed line on top, epoch boundaries
    dotted. Long runs are thinned to about ``max_points`` points per line (the smoothing uses every step)."""
    titles = [theme.LOSS_LABELS[k] for k in ("l_d", "l_c", "total")]
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.06)
    steps = np.asarray([r.step for r in records])
    keep = slice(None, None, max(1, -(-len(records) // max_points)))
    for col, key in enumerate(("l_d", "l_c", "total"), start=1):
        values = np.asarray([getattr(r, key) for r in records], dtype=np.float64)
        color = theme.LOSS_COLORS[key]
        fig.add_trace(go.Scatter(x=steps[keep], y=values[keep], mode="lines", line=dict(color=color, width=1),
                                 opacity=0.3, name="per step", showlegend=False,
                                 hovertemplate="step %{x}<br>%{y:.4g}<extra>per step</extra>"), row=1, col=col)
        if len(values):
            fig.add_trace(go.Scatter(x=steps[keep], y=smooth(values, alpha)[keep], mode="lines",
                                     line=dict(color=color, width=2.5), name="smoothed", showlegend=False,
                                     hovertemplate="step %{x}<br>%{y:.4g}<extra>smoothed</extra>"), row=1, col=col)
        fig.update_xaxes(title_text="training step", row=1, col=col)
    # epoch boundaries, added in one go (one add_vline per line is quadratic in their number); at most ~12 shown
    starts = [r.step for prev, r in zip(records, records[1:]) if r.epoch != prev.epoch]
    starts = starts[::max(1, -(-len(starts) // 12))]
    axes = ("x", "x2", "x3")
    fig.update_layout(shapes=[dict(type="line", xref=ax, yref=f"{ax.replace('x', 'y')} domain", x0=x - 0.5,
                                   x1=x - 0.5, y0=0, y1=1, line=dict(color="#BBBBBB", dash="dot", width=1))
                              for ax in axes for x in starts])
    fig.update_annotations(font_size=13)
    return _layout(fig, 300, top=26, showlegend=False)


def roc(curve: dict, op_fpr: float | None = None, op_tpr: float | None = None,
        others: list[tuple[str, dict]] | None = None, name: str = "ROC") -> go.Figure:
    """ROC curve with the chance line and the operating point (false/true-positive rate at the threshold)."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#BBBBBB", dash="dash", width=1),
                             name="chance (AUC 0.5)", hoverinfo="skip"))
    for i, (label, c) in enumerate(others or []):
        fig.add_trace(go.Scatter(x=c["fpr"], y=c["tpr"], mode="lines", name=f"{label} (AUC {c['auc']:.3f})",
                                 line=dict(color=theme.SCORER_COLORS[(i + 1) % len(theme.SCORER_COLORS)], width=1.5)))
    fig.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=f"{name} (AUC {curve['auc']:.3f})",
                             line=dict(color=theme.THRESHOLD, width=2.5),
                             hovertemplate="FPR %{x:.1%}<br>TPR %{y:.1%}<extra></extra>"))
    if op_fpr is not None:
        fig.add_trace(go.Scatter(x=[op_fpr], y=[op_tpr], mode="markers", name="threshold",
                                 marker=dict(size=13, color="white", line=dict(color=theme.THRESHOLD, width=3)),
                                 hovertemplate="at the threshold<br>FPR %{x:.1%}<br>TPR %{y:.1%}<extra></extra>"))
    fig.update_xaxes(title_text="false-positive rate (share of normal images flagged)", range=[-0.01, 1.01],
                     tickformat=".0%")
    fig.update_yaxes(title_text="true-positive rate (anomalies caught)", range=[-0.01, 1.02], tickformat=".0%")
    return _layout(fig, 350, legend=_inside("right", "bottom"))


def pr(curve: dict, op_recall: float | None = None, op_precision: float | None = None) -> go.Figure:
    """Precision-recall curve (anomalies positive) with the share of anomalies as the chance level."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[curve["base_rate"]] * 2, mode="lines", hoverinfo="skip",
                             line=dict(color="#BBBBBB", dash="dash", width=1),
                             name=f"chance ({curve['base_rate']:.0%} anomalies)"))
    fig.add_trace(go.Scatter(x=curve["recall"], y=curve["precision"], mode="lines", line_shape="hv",
                             name=f"PR (AP {curve['ap']:.3f})", line=dict(color=theme.THRESHOLD, width=2.5),
                             hovertemplate="recall %{x:.1%}<br>precision %{y:.1%}<extra></extra>"))
    if op_recall is not None:
        fig.add_trace(go.Scatter(x=[op_recall], y=[op_precision], mode="markers", name="threshold",
                                 marker=dict(size=13, color="white", line=dict(color=theme.THRESHOLD, width=3)),
                                 hovertemplate="at the threshold<br>recall %{x:.1%}<br>precision %{y:.1%}"
                                               "<extra></extra>"))
    fig.update_xaxes(title_text="recall (share of anomalies caught)", range=[-0.01, 1.01], tickformat=".0%")
    fig.update_yaxes(title_text="precision (flagged that are anomalies)", range=[-0.01, 1.02], tickformat=".0%")
    return _layout(fig, 350, legend=_inside("left", "bottom"))


def score_histogram(groups: list[tuple[str, np.ndarray, str]], threshold: float | None, x_title: str,
                    bins: int = 60) -> go.Figure:
    """Overlaid histograms of score groups ``(name, scores, colour)`` on shared bins, with the threshold line.

    A few far outliers do not stretch the axis: it stops as :func:`histogram_range` says, and a note at its right end
    says how many images lie beyond (their scores in its hover)."""
    values = [np.asarray(s, np.float64) for _, s, _ in groups if len(s)]
    fig = go.Figure()
    lo, hi, beyond = histogram_range(np.concatenate(values) if values else np.zeros(0), threshold)
    if values:
        size = (hi - lo) / bins
        fig.update_xaxes(range=[lo - size, hi + 2 * size])
        for name, s, color in groups:
            if len(s):
                fig.add_trace(go.Histogram(x=s, name=f"{name} ({len(s):,} images)", marker_color=color, opacity=0.6,
                                           xbins=dict(start=lo, end=hi + size, size=size),
                                           hovertemplate="score %{x}<br>%{y} images<extra>" + name + "</extra>"))
    if beyond:
        parts = [f"{int(np.sum(np.asarray(s, np.float64) > hi)):,} {name}" for name, s, _ in groups if len(s)]
        top = max(float(np.nanmax(v)) for v in values)
        fig.add_annotation(x=1, xref="paper", y=0.5, yref="paper", xanchor="right", showarrow=False,
                           text=f"{beyond:,} beyond →", font=dict(size=12, color=theme.THRESHOLD),
                           bgcolor="rgba(255,255,255,0.85)", bordercolor="#BBBBBB", borderwidth=1,
                           hovertext=f"Scores above {hi:.4g}, up to {top:.4g}: " + ", ".join(p for p in parts
                                                                                           if not p.startswith("0 ")))
    if threshold is not None and np.isfinite(threshold):
        fig.add_vline(x=threshold, line=dict(color=theme.THRESHOLD, width=2, dash="dash"))
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"threshold {threshold:.4g}",
                                 line=dict(color=theme.THRESHOLD, width=2, dash="dash")))
        where = (threshold - lo) / (hi - lo) if values else 0.5
        for text, anchor, fits in (("predicted normal ◀ ", "right", where > 0.18), (" ▶ predicted anomaly", "left",
                                                                                     where < 0.82)):
            if fits:  # only where the words stay inside the chart
                fig.add_annotation(x=threshold, y=1, yref="paper", yanchor="bottom", xanchor=anchor, showarrow=False,
                                   text=text, font=dict(color=theme.THRESHOLD, size=12))
    fig.update_layout(barmode="overlay", bargap=0.02)
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text="number of images")
    return _layout(fig, 350, top=22, legend=_inside("right", "top"))


def confusion(report: ThresholdReport) -> go.Figure:
    """2x2 confusion matrix: rows the true class, columns the prediction; counts and row shares in each cell."""
    z = np.array([[report.tn, report.fp], [report.fn, report.tp]], dtype=float)
    rows = z.sum(axis=1, keepdims=True)
    share = np.divide(z, rows, out=np.zeros_like(z), where=rows > 0)
    names = [[("true normal", "TN"), ("false alarm", "FP")], [("missed anomaly", "FN"), ("caught anomaly", "TP")]]
    text = [[f"<b>{int(z[i, j]):,}</b><br>{names[i][j][0]}<br>{share[i, j]:.1%} of row" for j in range(2)]
            for i in range(2)]
    labels = [theme.colored("normal", theme.NORMAL), theme.colored("anomaly", theme.ANOMALY)]
    fig = go.Figure(go.Heatmap(z=share, x=["predicted normal", "predicted anomaly"], y=["normal", "anomaly"],
                               text=text, texttemplate="%{text}", textfont=dict(size=13),
                               colorscale=[[0, "#F4F4F4"], [1, "#9E9E9E"]], zmin=0, zmax=1, showscale=False,
                               hovertemplate="%{text}<extra></extra>", xgap=3, ygap=3))
    fig.update_yaxes(autorange="reversed", title_text="true class", tickvals=["normal", "anomaly"], ticktext=labels)
    fig.update_xaxes(side="top", tickvals=["predicted normal", "predicted anomaly"],
                     ticktext=["predicted " + labels[0], "predicted " + labels[1]])
    return _layout(fig, 270, top=30)


def role_counts(rows: list[dict]) -> go.Figure:
    """Horizontal bars of image counts per class, one colour per role."""
    fig = go.Figure()
    for role in theme.ROLE_COLORS:
        sub = [r for r in rows if r["role"] == role]
        if sub:
            fig.add_trace(go.Bar(y=[f"{r['class']} · {role}" for r in sub], x=[r["count"] for r in sub],
                                 orientation="h", name=role, marker_color=theme.ROLE_COLORS[role],
                                 opacity=0.55 if role.startswith("test") else 1.0,
                                 hovertemplate="%{y}: %{x:,} images<extra></extra>"))
    fig.update_yaxes(autorange="reversed", categoryorder="array",
                     categoryarray=[f"{r['class']} · {r['role']}" for r in rows])
    fig.update_xaxes(title_text="number of images")
    return _layout(fig, max(200, 24 * len(rows) + 70), showlegend=False, bargap=0.25)


def embedding_map(coords: np.ndarray, roles: np.ndarray, scores: np.ndarray, info: np.ndarray, color_by: str,
                  threshold: float, score_title: str = "anomaly score") -> go.Figure:
    """A 2-D t-SNE map of images: one point per row of ``coords`` (rendered with WebGL, fine for thousands).

    ``roles`` are theme.ROLE_COLORS keys ("test normal", "test anomaly", "test unlabelled", "normal training");
    ``info`` (n, 3) holds each point's id (its row), a hover line (class, role, index) and its rank text.
    ``color_by`` "role" colours by true label or role (training images as open circles), "score" by anomaly
    score on a normal-blue to anomaly-vermillion scale centred on the threshold. Each point's ``customdata[0]`` is
    its row, so a selection can be mapped back to images.
    """
    fig = go.Figure()
    hover = "%{customdata[1]}<br>score %{customdata[2]:.4g} · %{customdata[3]}<extra></extra>"
    custom = np.column_stack([info[:, 0].astype(object), info[:, 1], scores.astype(object), info[:, 2]]) \
        if len(coords) else np.zeros((0, 4), object)
    if color_by == "score":
        # blue below the threshold, grey at it, vermillion above; the top 1 % of scores share the end colour
        lo, hi, scale = score_color_scale(scores, threshold)
        mid = scale[1][0]
        fig.add_trace(go.Scattergl(
            x=coords[:, 0], y=coords[:, 1], mode="markers", customdata=custom, hovertemplate=hover, showlegend=False,
            marker=dict(size=5, color=scores, colorscale=scale, cmin=lo, cmax=hi,
                        symbol=np.where(roles == "normal training", "circle-open", "circle"),
                        colorbar=dict(title=dict(text=score_title, side="right"), thickness=10, len=0.9,
                                      # the ends are labelled only where they do not run into the threshold's label
                                      tickvals=[v for v, far in ((lo, mid > 0.12), (threshold, True),
                                                                 (hi, mid < 0.88)) if far],
                                      ticktext=[t for t, far in ((f"{lo:.3g}", mid > 0.12),
                                                                 (f"threshold {threshold:.3g}", True),
                                                                 (f"≥ {hi:.3g}", mid < 0.88)) if far]))))
    else:
        for role in ("normal training", "test normal", "test unlabelled", "test anomaly"):
            m = roles == role
            if not np.any(m):
                continue
            fig.add_trace(go.Scattergl(
                x=coords[m, 0], y=coords[m, 1], mode="markers", name=f"{role} ({int(m.sum()):,})",
                customdata=custom[m], hovertemplate=hover,
                marker=dict(size=5, color=theme.ROLE_COLORS[role], opacity=0.75,
                            symbol="circle-open" if role == "normal training" else "circle")))
    fig.update_xaxes(showticklabels=False, title_text=None, zeroline=False, showgrid=False)
    fig.update_yaxes(showticklabels=False, title_text=None, zeroline=False, showgrid=False)
    # the legend goes under the map: above it, Plotly's toolbar would cover it
    return _layout(fig, 370, margin=dict(l=5, r=5, b=5), dragmode="lasso",
                   legend=dict(orientation="h", yanchor="top", y=-0.01, xanchor="left", x=0, font=dict(size=12)))
