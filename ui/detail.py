"""The detail view of one image, shared by the Ranked anomalies page, the explorer's selection list and Score images.

A "Details" button under a tile (:func:`opener`, drawn by :func:`ui.tiles.grid`) puts ``(page, run id, index)`` into
``state.DETAIL``; the page then calls :func:`test_image` (or :func:`upload`) once, which opens a dialog with the image
large (at least 320 px, nearest neighbour, at its original file's aspect ratio when known) beside its heatmap overlay,
its name, score, rank, verdict, label and class (:func:`doc_core.explain.gallery.image_facts`), and its nearest normal
training images. Closing the dialog (its Close button, the X, Esc or a click outside) clears the key. Everything it
shows comes from the caches the pages already use (ui.cached, ui.heatmaps), so opening it recomputes nothing else.
The nearest normal images come from the stored features and the saved memory bank (no network), so the image, its
facts and neighbours show at once; the heatmap, which needs the run's network, is drawn last into its place. Every
page that can open the view starts loading the run's detector in the background when it opens
(:func:`ui.cached.warm_detector`), so the heatmap is usually ready too.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import streamlit as st

from doc_core.explain import overlay
from doc_core.explain.gallery import ImageFacts, detail_picture, identities, image_facts, upload_facts
from doc_core.workflow import runs

from . import bank, cached, heatmaps, state, theme, tiles

RANKED, EXPLORER, SCORE = "ranked", "explorer", "score"  # the pages that open the view (first item of state.DETAIL)
MIN_PX = 320  # the image's longer side in the view, at least
N_NEIGHBOURS = 5


def close() -> None:
    """Forget the image shown (the dialog is not drawn on the next run)."""
    st.session_state[state.DETAIL] = None


def _open(where: str, run_id: str, index: int) -> None:
    st.session_state[state.DETAIL] = (where, run_id, int(index))


def opener(where: str, run_id: str, indices: Sequence[int | None]) -> Callable:
    """The ``below`` function of :func:`ui.tiles.grid`: a Details button under tile ``i`` that opens the view of
    ``indices[i]`` (a test index, or the upload's position on Score images); None gives that tile no button."""

    def draw(col, i: int) -> None:
        index = indices[i]
        if index is None:
            return
        col.button("Details", key=f"{state.DETAIL_BUTTON}{where}_{int(index)}", on_click=_open,
                   args=(where, run_id, int(index)), help="Show this image large, beside its heatmap, with its "
                   "score, rank, label, name and its nearest normal training images.", type="tertiary")

    return draw


def asked(where: str, run: runs.RunSummary, n: int) -> int | None:
    """The index the view is open on for this page and run (``0 <= index < n``), else None (and a stale request,
    e.g. for another run or a removed upload, is forgotten)."""
    want = st.session_state.get(state.DETAIL)
    if not want:
        return None
    page, run_id, index = want
    if page != where:
        return None  # opened on another page: that page shows it
    if run_id != run.run_id or not 0 <= int(index) < n:
        close()
        return None
    return int(index)


def _shown_map(run: runs.RunSummary, choice: str) -> str:
    """The page's heatmap choice, or the run's own default when the page has them off (the view always has one)."""
    return choice if choice in heatmaps.options(run, with_off=False) else heatmaps.options(run, with_off=False)[-1]


def _original_aspect(run: runs.RunSummary, path: str | None) -> tuple[float | None, str]:
    """Width / height of a folder dataset's original test file (read from its header only), and its size as text."""
    if not path or run.dataset.get("kind") != "folder" or not run.dataset.get("root"):
        return None, ""
    return _file_aspect(str(Path(run.dataset["root"]) / path))


@st.cache_data(show_spinner=False, max_entries=256)
def _file_aspect(file: str) -> tuple[float | None, str]:
    from PIL import Image

    try:
        with Image.open(file) as im:  # the header only: no pixels are decoded
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF rotated by 90 degrees, as the loader turns it
                w, h = h, w
    except Exception:  # noqa: BLE001 - a moved or unreadable file: the stored aspect ratio is shown
        return None, ""
    return (w / h if h else None), f"{w}×{h} px"


@st.dialog("Image details", width="large", on_dismiss=close)
def _view(facts: ImageFacts, image: np.ndarray, heat: Callable[[], np.ndarray], map_name: str, map_note: str,
          opacity: float,
          train_images: np.ndarray, nn_idx: np.ndarray, nn_dist: np.ndarray, aspect: float | None,
          original: str, labeller: Callable[[], None] | None = None, nn_names: list[str] | None = None) -> None:
    name = html.escape(facts.name)
    if facts.folder:
        title = f"<b>{html.escape(facts.file)}</b> · folder <b>{html.escape(facts.folder)}</b>"
    else:
        title = f"<b>{name}</b>"
    st.markdown(f"<div style='font-size:1.15rem;overflow-wrap:anywhere' title='{name}'>{title}</div>",
                unsafe_allow_html=True)
    rank_text = (f"would rank {facts.rank:,} of the {facts.total:,} test images" if facts.upload
                 else f"rank {facts.rank:,} of {facts.total:,} test images")
    label = ("label " + theme.colored("unknown", theme.REFERENCE) + " (uploaded image)" if facts.upload
             else "label " + tiles.label_text(facts.label if facts.label is not None else -1, facts.class_name))
    st.markdown(f"score <b>{facts.score:.4g}</b> · {rank_text} · {tiles.verdict(facts.score, facts.threshold)} at "
                f"threshold {facts.threshold:.4g} · {label}", unsafe_allow_html=True)
    if labeller is not None:
        labeller()  # the analyst's label and the controls to change it (ui.labelling.Board.editor)
    big = detail_picture(image, MIN_PX, aspect)
    h, w = np.asarray(image).shape[:2]
    size = (f"Stored at {w}×{h} px as the model sees it, shown at {big.shape[1]}×{big.shape[0]}"
            + (f" (the file is {original})" if original else ""))
    left, right = st.columns(2, gap="medium")
    left.image(big, caption=size, width=int(big.shape[1]))
    # the heatmap needs the run's network (loaded once per server, seconds the first time): everything else is drawn
    # first, from stored arrays, and the heatmap fills its place when it is ready
    slot = right.empty()
    slot.caption(f"{map_name}: computing… The heatmap needs the run's network, loaded once (a few seconds the first "
                 "time); the rest of this view does not wait for it.")
    note = st.empty()
    st.markdown(f"**Nearest normal training images** ({len(nn_idx)}, DOC feature space, d = Euclidean distance)")
    tiles.neighbours(train_images, nn_idx, nn_dist, names=nn_names)
    if st.button("Close", key=state.DETAIL_CLOSE):
        close()
        st.rerun()
    slot.image(overlay(big, heat(), opacity), caption=f"{map_name} (opacity {opacity:.2g})", width=int(big.shape[1]))
    if map_note:
        note.caption(map_note)


def test_image(where: str, run: runs.RunSummary, data, scores: np.ndarray, threshold: float,
               stored: runs.RunScores, choice: str, opacity: float,
               labeller: Callable[[int], Callable[[], None]] | None = None) -> None:
    """Show the detail view of the test image ``state.DETAIL`` names, if it was opened on page ``where``.

    ``data`` is the run's split (test images in the order of the stored scores), ``scores`` the test scores at the
    operating point (``cached.operating_point``), ``choice``/``opacity`` the page's heatmap choice and opacity;
    ``labeller(index)`` gives what the view draws for the analyst's label (:meth:`ui.labelling.Board.editor`).
    """
    cached.warm_detector(run)  # the view's heatmap needs the network: loaded in the background from the page's open
    i = asked(where, run, len(scores))
    if i is None:
        return
    facts = image_facts(i, scores, stored.labels, stored.classes, identities(stored.classes, stored.paths), threshold)
    image = data.test_images[i]
    shown = _shown_map(run, choice)
    feats = np.asarray(cached.test_features_of(run)[i])[None]
    dist, nn = cached.nearest_normals(run, feats, N_NEIGHBOURS)
    aspect, original = _original_aspect(run, None if stored.paths is None else str(stored.paths[i]))
    pics, pic_names = bank.neighbour_pictures(run, data, nn[0])  # bank rows: training images, or added later
    _view(facts, image, lambda: heatmaps.maps(run, image[None], shown)[0],  # cached per run and image
          shown, heatmaps.note(run, shown), opacity if choice == shown else 0.5,
          pics, np.arange(len(pics)), dist[0], aspect, original, None if labeller is None else labeller(i), pic_names)


def upload(run: runs.RunSummary, data, images: Sequence[np.ndarray], names: Sequence[str], result: dict,
           test_scores: np.ndarray, threshold: float, choice: str, opacity: float,
           labeller: Callable[[int], Callable[[], None]] | None = None) -> None:
    """Show the detail view of the uploaded image ``state.DETAIL`` names, if it was opened on Score images.

    ``result`` is :func:`ui.cached.score_images`'s (scores and nearest normal images of the uploads), ``test_scores``
    the run's test scores under the same scorer (to rank the upload among them).
    """
    cached.warm_detector(run)
    j = asked(SCORE, run, len(images))
    if j is None:
        return
    facts = upload_facts(j, names[j], float(result["scores"][j]), test_scores, threshold)
    shown = _shown_map(run, choice)
    pics, pic_names = bank.neighbour_pictures(run, data, result["nn_idx"][j])
    _view(facts, np.asarray(images[j]), lambda: heatmaps.maps(run, np.asarray(images[j])[None], shown)[0], shown,
          heatmaps.note(run, shown), opacity if choice == shown else 0.5,
          pics, np.arange(len(pics)), np.asarray(result["nn_dist"][j]), None, "",
          None if labeller is None else labeller(j), pic_names)
