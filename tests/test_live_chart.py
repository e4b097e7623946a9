"""The live chart component's Python side (ui/live_chart.py, ui/component_files.py); its drawing in place, never
blank, is checked in a real browser by tests/test_browser.py."""

from __future__ import annotations

import json

import plotly.graph_objects as go

from ui import component_files, live_chart


def test_figure_json_keeps_the_figure_and_drops_the_template():
    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2], line=dict(color="#009E73")))
    fig.update_layout(height=300, title_text="losses")
    spec = json.loads(live_chart.figure_json(fig))
    assert "template" not in spec["layout"]  # Streamlit's default template holds placeholder colours
    assert spec["layout"]["height"] == 300 and spec["layout"]["title"]["text"] == "losses"
    assert spec["data"][0]["line"]["color"] == "#009E73"


def test_component_folder_serves_the_html_with_plotly_beside_it():
    root = component_files.component_dir("live_chart")
    html = (root / "index.html").read_text()
    assert html == (component_files.FRONTEND / "live_chart.html").read_text()
    assert "Plotly.react" in html and 'src="plotly.min.js"' in html  # updated in place, plotly.js from the folder
    assert (root / "plotly.min.js").stat().st_size == component_files.PLOTLY_JS.stat().st_size
    assert component_files.component_dir("live_chart") == root  # built once per version
