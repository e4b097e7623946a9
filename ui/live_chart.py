"""A Plotly chart that a fragment redraws without ever showing it empty (ui/frontend/live_chart.html).

``st.plotly_chart`` gives a chart a new element identity whenever its figure changes (Streamlit 1.67 hashes the
figure into the element id, even with a ``key``), so the browser unmounts the old chart and draws a new one from
nothing: each refresh of the Training page's live loss curves left the chart area empty for a moment (about 0.15-0.2 s
measured in headless Chromium; longer on a busy machine). This component keeps one identity per ``key`` and updates
the figure in place with ``Plotly.react``: the old curves stay on screen until the new ones replace them, and the
user's zoom is kept while the figure's ``uirevision`` is unchanged.

The chart follows the Streamlit theme (text, grid and background colours) as ``st.plotly_chart`` does.
"""

from __future__ import annotations

import json

import plotly.graph_objects as go
import streamlit.components.v1 as components
from plotly.utils import PlotlyJSONEncoder

from .component_files import component_dir

_component = components.declare_component("live_chart", path=str(component_dir("live_chart")))


def figure_json(fig: go.Figure) -> str:
    """The figure as the component draws it: Plotly JSON without the default template (whose colours Streamlit's
    own chart element fills in; the component applies the theme itself)."""
    spec = fig.to_plotly_json()
    spec.get("layout", {}).pop("template", None)
    return json.dumps(spec, cls=PlotlyJSONEncoder, separators=(",", ":"))


def live_chart(fig: go.Figure, *, key: str, config: dict | None = None) -> None:
    """Draw ``fig``; a later script run with the same ``key`` updates the chart in place instead of redrawing it.

    Parameters
    ----------
    fig : plotly.graph_objects.Figure
        The figure; its ``layout.height`` (px) is the chart's height (450 when unset).
    key : str
        The chart's identity: the same key on every refresh keeps the same chart in the browser.
    config : dict, optional
        Plotly's config (toolbar buttons and so on), as for ``st.plotly_chart``.
    """
    height = int(fig.layout.height) if fig.layout.height else 450
    _component(figure=figure_json(fig), config=config or {}, height=height, key=key, default=None)
