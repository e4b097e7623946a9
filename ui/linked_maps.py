"""The explorer's t-SNE maps as one small custom component (ui/frontend/linked_maps.html).

Plotly's own hover labels cannot show images, so the maps are drawn by plotly.js inside a component: hovering a point
shows its image thumbnail with its class, label and score and rings the same image in the other maps; a click, box or
lasso selection selects the same images in every map and comes back to Python as their rows. The thumbnails travel
once per map set, as one PNG sprite sheet (:func:`doc_core.explain.gallery.thumbnail_atlas`).

The component's folder is assembled when this module is first imported, in the temp directory: the HTML from
ui/frontend and plotly.js from the installed plotly package (no network and no build step; ui/component_files.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Callable

import numpy as np
import plotly.graph_objects as go
import streamlit.components.v1 as components
from plotly.utils import PlotlyJSONEncoder

from doc_core.explain.gallery import Atlas

from .component_files import component_dir

_component = components.declare_component("linked_maps", path=str(component_dir("linked_maps")))


def figure_json(fig: go.Figure) -> str:
    """A map figure as the component draws it: ``customdata`` cut down to each point's row (the hover text travels
    once, in ``hover``), Plotly's default template dropped (the component follows the Streamlit theme)."""
    spec = fig.to_plotly_json()
    for trace in spec["data"]:
        if trace.get("customdata") is not None:
            trace["customdata"] = [int(row[0]) for row in trace["customdata"]]
        for axis in ("x", "y"):  # t-SNE coordinates at float32 precision: half the bytes, the same picture
            v = trace.get(axis)
            if isinstance(v, dict) and v.get("dtype") == "f8" and isinstance(v.get("bdata"), str):
                v = np.frombuffer(base64.b64decode(v["bdata"]), np.float64)
            if isinstance(v, np.ndarray) and v.dtype == np.float64:
                trace[axis] = {"dtype": "f4", "bdata": base64.b64encode(v.astype(np.float32).tobytes()).decode("ascii")}
        marker = trace.get("marker") or {}
        symbol = marker.get("symbol")
        if isinstance(symbol, np.ndarray) and symbol.size and (symbol == symbol.flat[0]).all():
            marker["symbol"] = str(symbol.flat[0])  # one symbol for every point (no training images shown)
    spec.get("layout", {}).pop("template", None)
    return json.dumps(spec, cls=PlotlyJSONEncoder, separators=(",", ":"))


def atlas_arg(atlas: Atlas) -> dict:
    """The sprite sheet as the component reads it: a PNG data URI and its grid."""
    return {"src": "data:image/png;base64," + base64.b64encode(atlas.png).decode("ascii"), "tile": atlas.tile,
            "columns": atlas.columns, "count": atlas.count}


def linked_maps(figures: list[str], titles: list[str], notes: list[str], hover: list[list[str]], atlas: dict,
                selected: list[int], *, key: str, on_change: Callable[[], None] | None = None) -> dict | None:
    """Draw the maps side by side and return the last selection made in any of them.

    Parameters
    ----------
    figures : list of str
        :func:`figure_json` of each map; every point's ``customdata`` is its row (the same image has the same row in
        every map).
    titles, notes : list of str
        A title above and a note under each map.
    hover : list of list of str
        The text lines shown under the thumbnail when a row is hovered, per row (shown as text, never as HTML).
    atlas : dict
        :func:`atlas_arg` of the thumbnails, row ``i`` = image ``i``.
    selected : list of int
        Rows to show as selected when the maps are (re)drawn.
    key : str
        Session-state key of the component's value.
    on_change : callable, optional
        Called (before the rerun) when the user makes a new selection.

    Returns
    -------
    dict or None
        ``{"rows": [row, ...], "source": map index, "seq": n}`` after a selection (``rows`` empty after a
        double-click clears it), None before any.
    """
    signature = hashlib.sha256("\x00".join([*figures, *titles, *notes, atlas["src"],
                                            json.dumps(hover)]).encode()).hexdigest()
    return _component(figures=figures, titles=titles, notes=notes, hover=hover, atlas=atlas, selected=selected,
                      signature=signature, key=key, default=None, on_change=on_change)


def selected_rows(value: dict | None) -> list[int]:
    """The rows of a component value (see :func:`linked_maps`), in selection order without repeats."""
    if not isinstance(value, dict) or not isinstance(value.get("rows"), list):
        return []
    return list(dict.fromkeys(int(r) for r in value["rows"] if isinstance(r, (int, float))))
