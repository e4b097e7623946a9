"""Confirmed normals join the bank, from the dashboard: "Add the N images marked normal to the normal bank" and Undo.

The images an analyst marked *normal* (:mod:`ui.labelling`) that are not in the run's bank yet
(:func:`doc_core.workflow.run_labels.pending_normals`) are added by :func:`doc_core.workflow.bank_growth.add_normals`:
the run is re-scored without retraining and its previous version kept, so Undo
(:func:`doc_core.workflow.bank_growth.undo_bank_change`) restores it exactly. The change's summary (how many flagged
test images are no longer flagged, the new threshold) is shown next to the buttons. A change rewrites the run's scores
and detector under the same run id, so the caches that hold them are cleared (every session sees the new state).
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from doc_core.workflow import run_labels as rl
from doc_core.workflow import runs

from . import access, cached, feedback, state
from .labelling import Board

PLACE = "bank_"  # feedback place prefix; the page name follows


def forget_run_caches() -> None:
    """Drop everything cached from runs' scores and detectors (after a bank change rewrote them)."""
    st.cache_data.clear()  # scores, curves, heatmaps, figures: recomputed from the files on demand
    for name in ("detector", "_detector_with", "_gradcam"):  # resources that hold a run's detector
        fn = getattr(cached, name, None)
        if fn is not None and hasattr(fn, "clear"):
            fn.clear()


def summary(change) -> str:
    """A change's summary as markdown lines."""
    return "  \n".join(change.describe().splitlines())


def section(run: runs.RunSummary, test_images: np.ndarray, board: Board, where: str) -> None:
    """The button that adds the run's test images marked normal to its normal bank, Undo, and what the last change
    did. ``board`` is the page's :class:`ui.labelling.Board` of the run's test images."""
    if board.broken:
        return  # the labels file's error is on the page already
    from doc_core.workflow import bank_growth as bg  # imports the detector (TensorFlow): only when drawn

    try:
        history = bg.bank_history(run.run_id, cached.runs_dir())
    except runs.RunError as exc:
        st.warning(f"The normal bank's history of this run cannot be read: {exc}")
        return
    todo = rl.pending_normals(board.labels, board.keys, {k for c in history for k in c.added_keys})
    last = (f"The normal bank has grown {len(history)} time{'s' if len(history) != 1 else ''} since training "
            f"(last: {history[-1].n_added:,} images on {history[-1].created[:16].replace('T', ' ')} UTC, "
            f"{history[-1].no_longer_flagged:,} flagged test images no longer flagged, threshold "
            f"{history[-1].operating_threshold_before:.4g} → {history[-1].operating_threshold_after:.4g})."
            if history else "The normal bank is as trained.")
    if access.read_only():
        st.caption(f"{last} :material/lock: Changing it is turned off (read-only mode).")
        return
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    add = c1.button(f"Add the {len(todo):,} images marked normal to the normal bank", key=f"{state.BANK_ADD}{where}",
                    icon=":material/library_add:", disabled=not len(todo), width="stretch",
                    help="Re-scores this run with these confirmed normal images in its memory bank of normal "
                         "features: no retraining. The previous version is kept, so Undo restores it exactly.")
    undo = c2.button("Undo", key=f"{state.BANK_UNDO}{where}", icon=":material/undo:", disabled=not history,
                     width="stretch", help="Put the normal bank (and the scores and threshold) back as they were "
                                           "before the last change.")
    st.caption(last)
    place = PLACE + where
    if add or undo:
        try:
            doing = "Re-scoring the run with the new normal bank…" if add else "Restoring the previous bank…"
            with st.spinner(doing):
                if add:
                    change = bg.add_normals(run.run_id, test_images[todo], board.keys[todo].tolist(),
                                            runs_dir=cached.runs_dir(), test_images=test_images,
                                            test_indices=todo.tolist())
                else:
                    change = bg.undo_bank_change(run.run_id, cached.runs_dir())
            forget_run_caches()
            feedback.note(place, "success", summary(change), toast=False)
            state.toast("The normal bank grew: the run was re-scored." if add else "The last bank change was undone.")
        except (runs.RunError, ValueError, OSError) as exc:
            feedback.note(place, "error", f"Could not {'add the images to' if add else 'undo the change of'} the "
                                          f"normal bank: {exc}")
        st.rerun()  # the whole page: new scores, threshold and flags
    feedback.show(place)


# ------------------------------------------------------------------------------------ nearest normal images


@st.cache_data(show_spinner=False, max_entries=8)
def _bank_rows(run_id: str, created: str, where: str, n_bank: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row of the run's memory bank: the index of its normal training image (-1: an added image), and the
    test index of an added image (-1: a trained row; -2: an added image that is not a test image)."""
    from doc_core.workflow.bank_growth import bank_row_sources

    # the training index is read without building the network
    return bank_row_sources(run_id, n_bank, cached.bank_train_index(run_id, created, where), where)


def neighbour_pictures(run: runs.RunSummary, data, rows) -> tuple[list[np.ndarray], list[str]]:
    """The images and names of memory-bank rows (as :func:`ui.cached.nearest_normals` returns them): a normal
    training image (``train #i``, its index among the dataset's normal training images, calibration slice
    included), or an image added to the bank later (``added test #i``)."""
    train, added = _bank_rows(run.run_id, run.created, str(run.path.parent), cached.bank_size(run))
    images, names = [], []
    for r in np.asarray(rows, np.int64):
        if train[r] >= 0:
            images.append(data.train_normal[train[r]])
            names.append(f"train #{int(train[r])}")
        elif added[r] >= 0:
            images.append(data.test_images[added[r]])
            names.append(f"added test #{int(added[r])}")
        else:
            images.append(np.zeros_like(data.train_normal[0]))
            names.append("added image")
    return images, names


def neighbours(run: runs.RunSummary, data, rows, dist) -> None:
    """One row of nearest normal images (bank rows ``rows`` at distances ``dist``), named for what they are."""
    from . import tiles

    images, names = neighbour_pictures(run, data, rows)
    tiles.neighbours(images, np.arange(len(images)), dist, names=names)
