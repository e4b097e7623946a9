"""Confirmations where the user is looking: next to the button that was pressed, and as a toast.

A callback (or a button's branch before ``st.rerun``) calls :func:`note` with the place's name; the page calls
:func:`show` with the same name right under that button, so the message appears there on the next run, once.
Successes also pop up as a toast (Streamlit shows toasts at the bottom right of the window, wherever it is scrolled).
Messages for the top of the page (a dataset that vanished, a job that ended) stay with ``state.flash``/``state.toast``.
"""

from __future__ import annotations

import streamlit as st

PREFIX = "feedback:"
ICONS = {"success": ":material/check_circle:", "info": ":material/info:", "warning": ":material/warning:",
         "error": ":material/error:"}


def note(where: str, kind: str, text: str, toast: bool = True) -> None:
    """Leave ``text`` (markdown) for the place ``where``: ``kind`` is "success", "info", "warning" or "error";
    ``toast`` also pops a success or info up as a toast."""
    st.session_state[PREFIX + where] = (kind, text, toast)


def show(where: str, container=None, inline: bool = True) -> None:
    """Draw (once) the message left for ``where`` into ``container`` (default: here); ``inline=False`` where the page
    shows the outcome itself right there, so only the toast remains."""
    msg = st.session_state.pop(PREFIX + where, None)
    if not msg:
        return
    kind, text, toast = msg
    box = container if container is not None else st
    if inline or kind not in ("success", "info"):
        {"success": box.success, "error": box.error, "warning": box.warning}.get(kind, box.info)(
            text, icon=ICONS.get(kind))
    if toast and kind in ("success", "info"):
        st.toast(text, icon=ICONS[kind])
