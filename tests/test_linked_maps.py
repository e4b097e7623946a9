"""The explorer's linked-maps component outside a browser: the folder Streamlit serves it from, the figure and
thumbnail payloads it is given, and how its value becomes the selected rows. (The browser test drives it for real.)"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image

from doc_core.explain.gallery import thumbnail_atlas
from ui import charts, linked_maps
from ui.component_files import FRONTEND, PLOTLY_JS, component_dir


def test_the_component_folder_has_the_html_and_the_installed_plotly_js():
    root = component_dir("linked_maps")
    html = FRONTEND / "linked_maps.html"
    assert (root / "index.html").read_bytes() == html.read_bytes()
    js = (root / "plotly.min.js").read_bytes()
    assert js == PLOTLY_JS.read_bytes() and len(js) > 1_000_000
    assert component_dir("linked_maps") == root  # built once, then reused
    assert 'src="plotly.min.js"' in html.read_text()  # served from that folder, never from a CDN


def test_figure_json_keeps_only_each_points_row_and_drops_the_template():
    coords = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    roles = np.array(["test normal", "test anomaly", "test normal"])
    info = np.array([[0, "a", "rank 3"], [1, "b", "rank 1"], [2, "c", "rank 2"]], dtype=object)
    fig = charts.embedding_map(coords, roles, np.array([0.1, 0.9, 0.2]), info, "role", 0.5)
    spec = json.loads(linked_maps.figure_json(fig))
    assert "template" not in spec["layout"]
    by_row = {}
    for trace in spec["data"]:
        xs = trace["x"]
        if isinstance(xs, dict):  # plotly.py's base64 typed array, which the component decodes
            xs = np.frombuffer(base64.b64decode(xs["bdata"]), dtype=np.dtype(xs["dtype"])).tolist()
        by_row.update(zip(trace["customdata"], xs))
    assert by_row == {0: 0.0, 1: 2.0, 2: 4.0}


def test_atlas_arg_is_a_png_data_uri_with_its_grid():
    images = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4, 1)
    arg = linked_maps.atlas_arg(thumbnail_atlas(images))
    assert (arg["tile"], arg["columns"], arg["count"]) == (4, 3, 5)
    head, data = arg["src"].split(",", 1)
    assert head == "data:image/png;base64"
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (12, 8)


def test_selected_rows_reads_the_components_value_defensively():
    assert linked_maps.selected_rows({"rows": [5, 3, 5, 7], "source": 2, "seq": 4}) == [5, 3, 7]
    assert linked_maps.selected_rows({"rows": [], "source": 0, "seq": 5}) == []
    for bad in (None, {}, {"rows": "1,2"}, [1, 2], {"rows": [None, "x"]}):
        assert linked_maps.selected_rows(bad) == []



def test_figure_json_sends_coordinates_as_float32_and_one_symbol_when_all_points_share_it():
    coords = np.array([[0.1, 1.7], [2.123456789, 3.0], [4.0, -5.5]])
    roles = np.array(["test normal", "test anomaly", "test normal"])
    info = np.array([[0, "a", "rank 3"], [1, "b", "rank 1"], [2, "c", "rank 2"]], dtype=object)
    spec = json.loads(linked_maps.figure_json(charts.embedding_map(coords, roles, np.array([0.1, 0.9, 0.2]), info,
                                                                   "score", 0.5)))
    (trace,) = spec["data"]
    xs = np.frombuffer(base64.b64decode(trace["x"]["bdata"]), np.float32)
    assert trace["x"]["dtype"] == "f4" and np.array_equal(xs, coords[:, 0].astype(np.float32))
    assert trace["marker"]["symbol"] == "circle"  # no training images shown: one symbol, not one per point
    mixed = np.array(["test normal", "normal training", "test normal"])
    spec = json.loads(linked_maps.figure_json(charts.embedding_map(coords, mixed, np.array([0.1, 0.9, 0.2]), info,
                                                                   "score", 0.5)))
    assert list(spec["data"][0]["marker"]["symbol"]) == ["circle", "circle-open", "circle"]
