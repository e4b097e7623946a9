"""Colours and chart styling, defined once and used by every chart and page.

Normal is blue and anomaly is vermillion on every chart (Okabe-Ito colours, distinguishable with colour-blindness);
no other series uses these two colours.
"""

from __future__ import annotations

NORMAL = "#0072B2"
ANOMALY = "#D55E00"
REFERENCE = "#7F7F7F"
UNLABELLED = "#B8B8B8"
THRESHOLD = "#222222"

ROLE_COLORS = {
    "normal training": NORMAL,
    "test normal": NORMAL,
    "test anomaly": ANOMALY,
    "reference": REFERENCE,
    "test unlabelled": UNLABELLED,
}

# Loss curves: colours unrelated to normal/anomaly.
LOSS_COLORS = {"l_d": "#009E73", "l_c": "#CC79A7", "total": "#444444"}
LOSS_LABELS = {"l_d": "l_D descriptiveness (cross-entropy, nats)", "l_c": "l_C compactness (mean squared distance)",
               "total": "total loss = l_D + λ·l_C"}

# Scorer comparison lines.
SCORER_COLORS = ("#444444", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")

FONT = dict(family="Source Sans Pro, Helvetica, Arial, sans-serif", size=13)
PLOT_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}


def colored(text: str, color: str) -> str:
    """Markdown for coloured text (Streamlit's own colour syntax accepts only named colours)."""
    return f'<span style="color:{color};font-weight:600">{text}</span>'


def role_label(role: str) -> str:
    """A role name in its colour, for st.markdown(..., unsafe_allow_html=True)."""
    return colored(role[:1].upper() + role[1:], ROLE_COLORS.get(role, REFERENCE))
