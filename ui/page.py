"""The frame every page shares: page config, session defaults, the sidebar (navigation and status) and messages.

The app uses Streamlit's pages/ folder: ``streamlit run app.py`` serves app.py as Home and each file in pages/ as a
page of its own. Streamlit's automatic sidebar list is turned off (.streamlit/config.toml) because it would label the
Home page "app"; :func:`setup` draws the same navigation with proper titles and icons instead.
"""

from __future__ import annotations

import streamlit as st

from doc_core.datasets import DatasetSpec

from . import cached, nav, runtime, state, status


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
                       page_icon=":material/query_stats:", layout="wide")
    if state.init():
        start_from_newest_run()
    with st.sidebar:
        st.markdown("### DOC Explorer")
        for path in nav.PAGES:
            st.page_link(path, label=nav.TITLES[path], icon=nav.ICONS[path])
        st.divider()
    status.render()
    st.title("DOC Explorer" if title == "Home" else title, anchor=False)
    status.show_flash()
