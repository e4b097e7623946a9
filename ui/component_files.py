"""The folders Streamlit serves the app's custom components from (ui/frontend/*.html with plotly.js beside them).

A component is one HTML file that speaks Streamlit's component protocol itself (no build step) and loads plotly.js
from its own folder. The folder is assembled in the temp directory the first time a component module is imported:
the HTML from ui/frontend and ``plotly.min.js`` from the installed plotly package, so nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import plotly

FRONTEND = Path(__file__).with_name("frontend")
PLOTLY_JS = Path(plotly.__file__).with_name("package_data") / "plotly.min.js"


def component_dir(name: str) -> Path:
    """The folder serving ``ui/frontend/<name>.html`` as its ``index.html``, with ``plotly.min.js`` beside it.

    Built once per version of the HTML and of plotly (the folder's name carries a hash of both), atomically: a
    folder holding ``index.html`` is complete, and two processes building it at once leave one copy.
    """
    html = (FRONTEND / f"{name}.html").read_bytes()
    digest = hashlib.sha256(html + plotly.__version__.encode()).hexdigest()[:16]
    user = getattr(os, "getuid", lambda: "user")()
    root = Path(tempfile.gettempdir()) / f"doc-explorer-{user}" / f"{name}-{digest}"
    if (root / "index.html").is_file() and (root / "plotly.min.js").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root.parent))
    shutil.copyfile(PLOTLY_JS, staging / "plotly.min.js")
    (staging / "index.html").write_bytes(html)  # last: its presence marks a complete folder
    try:
        staging.rename(root)
    except OSError:  # another process built it first
        shutil.rmtree(staging, ignore_errors=True)
    return root
