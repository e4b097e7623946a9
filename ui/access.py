"""What a visitor of the dashboard may do on this server: the read-only mode for demos and the server-folder option.

Both are set by whoever starts the server, through environment variables read on every page run:

- ``DOC_READ_ONLY``: any value but empty, ``0``, ``false``, ``no`` or ``off`` turns the read-only mode on. Visitors can
  look at the runs (curves, thresholds, maps, rankings) and download scores, but not train, stop, delete runs,
  upload zips or images, or save thresholds; the pages show :func:`read_only_note` instead of those controls.
- ``DOC_SERVER_FOLDERS``: the folders under which "Folder on the server" may read a dataset
  (:func:`doc_core.data.datasets.server_folder_roots`); unset, the option is off.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from doc_core.data.datasets import server_folder_roots

READ_ONLY_ENV = "DOC_READ_ONLY"
_OFF = {"", "0", "false", "no", "off"}


def read_only() -> bool:
    """True when ``$DOC_READ_ONLY`` asks for the read-only demo mode (any value but empty/0/false/no/off)."""
    return os.environ.get(READ_ONLY_ENV, "").strip().lower() not in _OFF


def server_folders() -> tuple[Path, ...]:
    """The allowed roots of "Folder on the server"; empty when the option is off."""
    return server_folder_roots()


def read_only_note(what: str) -> None:
    """Say, where a control would be, that ``what`` (e.g. "Training") is turned off on this server."""
    st.info(f"{what} is turned off: this dashboard runs in read-only mode (`{READ_ONLY_ENV}` is set on the server).",
            icon=":material/lock:")
