"""ui/charts.py: the score histogram's range and overflow note, the colour-by-score scale, and the band every figure
keeps free for Plotly's toolbar. Pure functions of arrays: no Streamlit, no browser."""

from __future__ import annotations

import numpy as np
import pytest

from doc_core.evaluation.metrics import report_at_threshold
from doc_core.model.training import StepRecord
from ui import charts, theme


def luminance(hex_color: str) -> float:
    """WCAG relative luminance of an sRGB colour."""
    c = np.array([int(hex_color.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4)])
    c = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(c @ [0.2126, 0.7152, 0.0722])


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def blend(a: str, b: str, t: float) -> str:
    """Plotly interpolates a colour scale linearly in sRGB between its stops."""
    ca, cb = (np.array([int(h.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4)]) for h in (a, b))
    return "#" + "".join(f"{int(round(v)):02X}" for v in ca + (cb - ca) * t)


def scores_with_an_outlier(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.gamma(4.0, 0.5, 2000), [18.0]])  # most scores 0..6, one at 18


def test_one_far_outlier_does_not_stretch_the_histogram():
    s = scores_with_an_outlier()
    lo, hi, beyond = charts.histogram_range(s, threshold=3.0)
    assert lo == pytest.approx(s.min())
    assert hi < 9.0 and hi >= np.percentile(s, 99.5)  # not out to 18
    assert beyond == int(np.sum(s > hi)) and 1 <= beyond <= 11  # the outlier and a few of the top 0.5 %


def test_the_range_keeps_every_value_when_nothing_is_far_out():
    s = np.linspace(0.0, 10.0, 500)
    assert charts.histogram_range(s, threshold=4.0) == (0.0, 10.0, 0)
    small = np.array([0.1, 0.2, 0.25, 0.3, 0.9])  # a small test set: its largest score is no outlier to hide
    assert charts.histogram_range(small, threshold=0.3) == (pytest.approx(0.1), pytest.approx(0.9), 0)


def test_the_range_always_holds_the_threshold_with_room_on_its_right():
    s = scores_with_an_outlier()
    lo, hi, _ = charts.histogram_range(s, threshold=6.5)  # a threshold high in the tail
    assert hi >= 6.5 + (6.5 - lo)  # twice the threshold for scores from 0
    lo, hi, beyond = charts.histogram_range(s, threshold=25.0)  # beyond every score
    assert hi == 25.0 and beyond == 0


def test_the_range_of_no_or_constant_values_is_not_empty():
    assert charts.histogram_range(np.zeros(0), threshold=2.0) == (1.5, 2.5, 0)
    lo, hi, beyond = charts.histogram_range(np.full(10, 3.0), threshold=3.0)
    assert lo < 3.0 < hi and beyond == 0
    lo, hi, _ = charts.histogram_range(np.array([1.0, np.nan, np.inf, 2.0]), threshold=None)
    assert (lo, hi) == (1.0, 2.0)


def test_the_histogram_says_how_many_images_lie_beyond_its_axis():
    s = scores_with_an_outlier()
    fig = charts.score_histogram([("test normal", s[:1500], theme.NORMAL), ("test anomaly", s[1500:], theme.ANOMALY)],
                                 3.0, "score")
    lo, hi, beyond = charts.histogram_range(s, 3.0)
    note = [a for a in fig.layout.annotations if "beyond" in a.text]
    assert len(note) == 1 and note[0].text == f"{beyond:,} beyond →"
    assert "18" in note[0].hovertext and "test anomaly" in note[0].hovertext
    assert fig.layout.xaxis.range[1] < 9.0
    plain = charts.score_histogram([("test normal", np.linspace(0, 5, 100), theme.NORMAL)], 3.0, "score")
    assert not [a for a in plain.layout.annotations if "beyond" in a.text]


def test_the_score_colours_run_from_normal_blue_to_anomaly_vermillion():
    s = scores_with_an_outlier()
    lo, hi, scale = charts.score_color_scale(s, threshold=3.0)
    assert scale[0][1] == theme.NORMAL and scale[-1][1] == theme.ANOMALY  # one direction: low normal, high anomaly
    assert [stop for stop, _ in scale] == sorted(stop for stop, _ in scale)
    assert lo == pytest.approx(s.min()) and hi == pytest.approx(np.percentile(s, 99))
    assert lo < 3.0 < hi and scale[1][0] == pytest.approx((3.0 - lo) / (hi - lo))


@pytest.mark.parametrize("background", charts.BACKGROUNDS)
def test_no_score_colour_fades_into_a_white_or_dark_background(background):
    _, _, scale = charts.score_color_scale(scores_with_an_outlier(), threshold=3.0)
    colours = [blend(a, b, t) for (_, a), (_, b) in zip(scale, scale[1:]) for t in np.linspace(0, 1, 11)]
    worst = min(contrast(c, background) for c in colours)
    assert worst >= 3.0, f"a score colour has contrast {worst:.2f} against {background}"
    assert contrast("#E4E4E4", "#FFFFFF") < 3.0  # the old pale mid colour would fail this test


def test_the_map_coloured_by_score_uses_that_scale_and_marks_its_clipped_end():
    rng = np.random.default_rng(1)
    n = 50
    scores = rng.gamma(4.0, 0.5, n)
    info = np.array([[str(i), f"img {i}", f"rank {i}"] for i in range(n)], dtype=object)
    fig = charts.embedding_map(rng.normal(size=(n, 2)), np.array(["test normal"] * n), scores, info, "score", 2.0)
    marker = fig.data[0].marker
    assert marker.colorscale[0][1] == theme.NORMAL and marker.colorscale[1][1] == charts.SCORE_MID
    assert marker.colorscale[-1][1] == theme.ANOMALY
    assert marker.colorbar.ticktext[-1].startswith("≥ ")  # the top 1 % share the end colour: say so


def tiny_records(n: int = 30) -> list[StepRecord]:
    return [StepRecord(step=i, epoch=i // 10, steps_total=n, l_d=1.0 / (i + 1), l_c=0.5, total=1.5,
                       images_per_s=100.0, elapsed_s=0.1 * i)
            for i in range(n)]


def every_figure():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    scores = rng.normal(labels, 1.0)
    curve = {"fpr": [0, 0.5, 1], "tpr": [0, 0.8, 1], "auc": 0.8, "recall": [1, 0.5, 0], "precision": [0.5, 0.8, 1],
             "ap": 0.7, "base_rate": 0.5}
    n = 20
    info = np.array([[str(i), f"img {i}", f"rank {i}"] for i in range(n)], dtype=object)
    return {"loss curves": charts.loss_curves(tiny_records()), "roc": charts.roc(curve, 0.5, 0.8),
            "pr": charts.pr(curve, 0.5, 0.8),
            "histogram": charts.score_histogram([("test normal", scores[:50], theme.NORMAL)], 0.5, "score"),
            "confusion": charts.confusion(report_at_threshold(labels, scores, 0.5)),
            "counts": charts.role_counts([{"role": "normal training", "class": "a", "count": 3}]),
            "map": charts.embedding_map(rng.normal(size=(n, 2)), np.array(["test normal"] * n), rng.random(n), info,
                                        "score", 0.5)}


@pytest.mark.parametrize("name", ["loss curves", "roc", "pr", "histogram", "confusion", "counts", "map"])
def test_every_figure_keeps_a_band_free_for_the_toolbar_above_what_it_draws(name):
    fig = every_figure()[name]
    assert fig.layout.margin.t >= charts.MODEBAR_PX
    # what a figure draws above its plot area (subplot titles, top tick labels, notes) needs room under the band
    above = [a for a in fig.layout.annotations if a.yref == "paper" and a.y is not None and a.y >= 1]
    if name in ("loss curves", "histogram", "confusion") or above:
        assert fig.layout.margin.t >= charts.MODEBAR_PX + 20, name
