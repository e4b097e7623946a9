"""The frame every page shares: page config, session defaults, the sidebar (navigation and status) and messages.

The app uses Streamlit's pages/ folder: ``streamlit run app.py`` serves app.py as Home and each file in pages/ as a
page of its own. Streamlit's automatic sidebar list is turned off (.streamlit/config.toml) because it would label the
Home page "app"; :func:`setup` draws the same navigation with proper titles and icons instead.
"""

from __future__ import annotations

import streamlit as st

from . import nav, state, status


def setup(title: str) -> None:
    """Call first on every page."""
    st.set_page_config(page_title=f"{title} · DOC Explorer" if title != "Home" else "DOC Explorer",
                       page_icon=":material/query_stats:", layout="wide")
    state.init()
    with st.sidebar:
        st.markdown("### DOC Explorer")
        for path in nav.PAGES:
            st.page_link(path, label=nav.TITLES[path], icon=nav.ICONS[path])
        st.divider()
    status.render()
    status.show_flash()
