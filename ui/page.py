"""The frame every page shares: page config, session defaults, the sidebar (navigation and status) and messages.

The app uses Streamlit's pages/ folder: ``streamlit run app.py`` serves app.py as Home and each file in pages/ as a
page of its own. Streamlit's automatic sidebar list is turned off (.streamlit/config.toml) because it would label the
Home page "app"; :func:`setup` draws the same navigation with proper titles and icons instead.
"""

from __future__ import annotations

import streamlit as st

from doc_core.data.datasets import DatasetSpec

from . import access, cached, nav, runtime, state, status, theme


@st.cache_resource(show_spinner=False)
def favicon():
    """A small icon drawn here (icon names and emoji would be fetched from the internet): a cluster of normal dots
    and one anomaly."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[:64, :64]
    img = np.full((64, 64, 3), 255, np.uint8)
    for (cy, cx, r), color in [((24, 22, 7), theme.NORMAL), ((36, 18, 7), theme.NORMAL), ((30, 32, 7), theme.NORMAL),
                               ((50, 50, 8), theme.ANOMALY)]:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    return Image.fromarray(img)


def start_from_newest_run() -> None:
    """A new session (a new tab, a reload, a restarted server) starts on the dataset of the newest run, so the
    active dataset and the active run match; the reference experiment if there is no run or its data is gone."""
    run = cached.active_run(None)
    if run is None or not run.dataset.get("kind"):
        return
    try:
        spec = DatasetSpec.from_dict(run.dataset)
        cached.split(spec)
    except (ValueError, KeyError, TypeError, OSError):  # DataError is a ValueError
        return
    state.adopt_dataset(spec)


def setup(title: str) -> None:
    """Call first on every page: draws the sidebar, the page's title and any message left for this run."""
    runtime.keep_keras_session()
    st.set_page_config(page_title=f"{title} · DOC Explorer" if title != "Home" else "DOC Explorer",
                       page_icon=favicon(), layout="wide")
    if state.init():
        start_from_newest_run()
    with st.sidebar:
        st.markdown("### DOC Explorer")
        for path in nav.PAGES:
            st.page_link(path, label=nav.TITLES[path], icon=nav.ICONS[path])
        if access.read_only():
            st.caption(":material/lock: Read-only demo: training, stopping, deleting runs, uploads and saving "
                       "thresholds are turned off.")
        st.divider()
    status.render()
    st.title("DOC Explorer" if title == "Home" else title, anchor=False)
    status.show_flash()


def run_or_stop(what: str):
    """The active run, with a line saying which it is; without a run, a note on what the page will show and a link
    to Training, and the page stops there."""
    from doc_core.workflow import runs

    run = state.active_run()
    if run is None:
        st.info(f"No run yet. Train a detector first: {what} appear here.")
        st.page_link(nav.TRAINING, label="Go to Training", icon=nav.ICONS[nav.TRAINING])
        st.stop()
    st.caption(f"Run **{run.name}** · {run.created_local} · {run.config_line()} · "
               f"{run.dataset.get('description') or run.dataset.get('name', '')} · pick another run on the "
               "Training page")
    try:
        cached.scores_of(run)
    except runs.RunError as exc:
        st.error(f"This run cannot be read: {exc}")
        st.stop()
    return run


def split_or_stop(run):
    """The run's dataset (test and normal training images), or a message and stop when it cannot be rebuilt."""
    try:
        return cached.run_split(run)
    except (ValueError, KeyError, TypeError, OSError) as exc:  # DataError is a ValueError
        st.error(f"The images of this run's dataset cannot be loaded, so they cannot be shown: {exc}")
        st.stop()
