"""Analysts' labels in the dashboard: mark images *normal*, *anomaly* or *unsure*, see each image's label, and let the
ROC page use the labels.

One :class:`doc_core.workflow.labels.LabelStore` per database file is shared by every session
(``st.cache_resource``); the file is ``$DOC_LABELS_DB`` when set, else the runs folder's ``labels.sqlite``. A label is
keyed by the run and the image's content hash (:func:`doc_core.workflow.labels.image_key` of the uint8 image as the
run's split stores it, or of an uploaded image as decoded for the run) and remembers where the image came from
(``test:<index>``, a folder image's name, an upload's file name).

A page builds one :class:`Board` (:func:`for_test_images` or :func:`for_uploads`) and uses it for the tiles' captions
and label controls (:meth:`Board.below`), the whole-page / whole-selection bar (:meth:`Board.bulk`) and the detail
view (:meth:`Board.editor`). A damaged labels file gives one error on the page and nothing else breaks: the images,
maps and scores are shown as before, without labels. In read-only mode (``DOC_READ_ONLY``) the labels are shown but
cannot be changed. What a selection covers, the counts and the "enough labels" rule are in
:mod:`doc_core.workflow.run_labels`.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import streamlit as st

from doc_core.workflow import labels as lb
from doc_core.workflow import run_labels as rl
from doc_core.workflow import runs

from . import access, cached, feedback, state, theme

COLORS = {"normal": theme.NORMAL, "anomaly": theme.ANOMALY, "unsure": theme.REFERENCE}
ICONS = {"normal": ":material/check:", "anomaly": ":material/close:", "unsure": ":material/question_mark:"}
LEGEND = ("Under each tile: " + " · ".join(f"{ICONS[w]} {w}" for w in lb.LABELS)
          + " (click the marked one again to remove its label).")
WHO = "dashboard"
PLACE = "labels_"  # feedback place prefix; the page name follows
TILE = "_tile"  # suffix of the place of the labels set under the tiles


def store_path() -> Path:
    """``$DOC_LABELS_DB`` if set, else ``<runs folder>/labels.sqlite`` (as :class:`LabelStore` resolves it)."""
    env = os.environ.get(lb.LABELS_DB_ENV)
    return Path(env) if env else cached.runs_dir() / lb.LABELS_DB_NAME


@st.cache_resource(show_spinner=False, max_entries=8)
def _store(path: str) -> lb.LabelStore:
    return lb.LabelStore(path)


def store() -> lb.LabelStore:
    """The label store of this server's labels file (one per path, shared by every session)."""
    return _store(str(store_path()))


@st.cache_data(show_spinner="Hashing the test images for their labels…", max_entries=16)
def _test_keys(run_id: str, created: str, where: str) -> np.ndarray:
    return rl.image_keys(cached.run_split(runs.get_run(run_id, where)).test_images)


def test_keys(run: runs.RunSummary) -> np.ndarray:
    """:func:`doc_core.workflow.labels.image_key` of each of the run's test images (computed once per run). Raises
    DataError when the run's dataset cannot be loaded."""
    return _test_keys(run.run_id, run.created, str(run.path.parent))


def error_text(exc: Exception) -> str:
    return (f"The analysts' labels cannot be used: {exc}. Everything else on this page works; images cannot be "
            "marked until the labels file is fixed or moved aside.")


def label_word(word: str, note: str = "") -> str:
    """An analyst's label as caption HTML, coloured, with its note as the tooltip; "" when there is none."""
    if not word:
        return ""
    tip = f" title='{html.escape(note, quote=True)}'" if note else ""
    mark = " ✎" if note else ""
    return f"<span{tip}>analyst: {theme.colored(word, COLORS[word])}{mark}</span>"


@dataclass
class Board:
    """The labels of the images one page shows, and the controls to change them.

    Attributes
    ----------
    run_id : str
    keys : np.ndarray of str, shape (m,)
        Content hash of each image (test images, or the page's uploads).
    sources : np.ndarray of str, shape (m,)
        Where each image came from.
    labels : RunLabels
        The run's labels laid over these images.
    editable : bool
        False in read-only mode or when the labels file cannot be used.
    broken : bool
        True when the labels file cannot be used (its error is shown on the page once).
    """

    run_id: str
    keys: np.ndarray
    sources: np.ndarray
    labels: rl.RunLabels
    editable: bool
    broken: bool = False

    # ------------------------------------------------------------------------------------------------- showing

    def caption(self, i: int) -> str:
        """`` · analyst: normal`` for a tile's caption (HTML), or ""."""
        text = label_word(str(self.labels.words[i]), str(self.labels.notes[i]))
        return f" · {text}" if text else ""

    # ------------------------------------------------------------------------------------------------- marking

    def below(self, where: str, indices: Sequence[int | None], opener: Callable | None = None) -> Callable:
        """The ``below`` function of :func:`ui.tiles.grid`: the label control of ``indices[i]`` (None: no control),
        then ``opener`` (e.g. the Details button of :func:`ui.detail.opener`)."""

        def draw(col, i: int) -> None:
            index = indices[i]
            if index is not None and not self.broken:
                self.control(col, where, int(index))
            if opener is not None:
                opener(col, i)

        return draw

    def control(self, container, where: str, index: int) -> None:
        """Pills to set (or, clicked again, remove) the label of image ``index``."""
        key = f"{state.LB_TILE}{where}_{index}"
        st.session_state[key] = str(self.labels.words[index]) or None  # what the database holds now
        container.pills("Analyst's label", lb.LABELS, key=key, label_visibility="collapsed", format_func=ICONS.get,
                        disabled=not self.editable, on_change=self._on_pick, args=(where, key, index))

    def _on_pick(self, where: str, key: str, index: int) -> None:
        picked = st.session_state.get(key)
        name = self.sources[index]
        if not self.editable:
            return
        try:
            if picked is None:
                store().delete(self.run_id, str(self.keys[index]))
                feedback.note(PLACE + where + TILE, "success", f"Removed the label of {name}.")
            else:
                store().set(self.run_id, str(self.keys[index]), picked, source=str(name), who=WHO)
                feedback.note(PLACE + where + TILE, "success", f"Marked {name} as **{picked}**.")
        except (lb.LabelStoreError, ValueError) as exc:
            feedback.note(PLACE + where + TILE, "error", f"Could not save the label: {exc}")

    def bulk(self, where: str, indices: Sequence[int] | np.ndarray, what: str) -> None:
        """A bar that gives every image of ``indices`` (a page, a selection) one label and note at once; ``what``
        names them, e.g. "the 24 images on this page". Shows the outcome under it (and as a toast)."""
        if self.broken:
            return
        if access.read_only():
            st.caption(":material/lock: Marking images is turned off (read-only mode).")
            return
        indices = np.asarray(indices, np.int64)
        c1, c2, c3 = st.columns([1.6, 2, 2], vertical_alignment="bottom")
        label = c1.segmented_control(f"Mark {what} as", lb.LABELS, key=f"{state.LB_BULK}{where}", required=True,
                                     default="normal")
        c2.text_input("Note (optional)", key=f"{state.LB_BULK_NOTE}{where}", max_chars=lb.MAX_NOTE_CHARS,
                      placeholder="e.g. scuff on the toe, not a defect")
        c3.button(f"Mark {len(indices):,} as {label}", key=f"{state.LB_BULK_APPLY}{where}", icon=":material/label:",
                  on_click=self._on_bulk, args=(where, indices, what), disabled=not len(indices))
        st.caption(LEGEND)
        feedback.show(PLACE + where)
        feedback.show(PLACE + where + TILE, inline=False)  # a tile's label: a toast (an error shows here)

    def _on_bulk(self, where: str, indices: np.ndarray, what: str) -> None:
        if not self.editable:
            return
        label = st.session_state.get(f"{state.LB_BULK}{where}") or "normal"
        note = st.session_state.get(f"{state.LB_BULK_NOTE}{where}") or None
        try:
            n = store().set_many(self.run_id, rl.label_items(indices, self.keys, self.sources, label, note), who=WHO)
            feedback.note(PLACE + where, "success", f"Marked {what} as **{label}** ({n:,} distinct "
                                                    f"image{'s' if n != 1 else ''}).")
        except (lb.LabelStoreError, ValueError) as exc:
            feedback.note(PLACE + where, "error", f"Could not save the labels: {exc}")

    def editor(self, index: int) -> Callable[[], None]:
        """What the detail view of image ``index`` draws under its facts: the image's label and note, and (unless
        read-only or broken) a choice, a note field and Save / Remove buttons."""
        return partial(self._edit, int(index))

    def _edit(self, index: int) -> None:
        key, name = str(self.keys[index]), str(self.sources[index])
        if self.broken:
            st.caption("Analysts' labels are unavailable: the labels file cannot be used (see the page).")
            return
        try:
            rec = store().get(self.run_id, key)
        except lb.LabelStoreError as exc:
            st.caption(f"Analysts' labels are unavailable: {exc}")
            return
        if rec is None:
            st.markdown("Analyst's label: none yet.")
        else:
            note = f" · note: {html.escape(rec.note)}" if rec.note else ""
            st.markdown(f"Analyst's label: {theme.colored(rec.label, COLORS[rec.label])}{note} "
                        f"<span style='opacity:0.6'>(set {rec.updated_at[:16].replace('T', ' ')} UTC)</span>",
                        unsafe_allow_html=True)
        if not self.editable:
            st.caption(":material/lock: Marking images is turned off (read-only mode).")
            return
        ss = st.session_state
        if ss.get(state.LB_DETAIL_FOR) != (self.run_id, key):  # fill the fields once per image
            ss[state.LB_DETAIL_FOR] = (self.run_id, key)
            ss[state.LB_DETAIL] = rec.label if rec else "normal"
            ss[state.LB_DETAIL_NOTE] = (rec.note or "") if rec else ""
        c1, c2, c3, c4 = st.columns([1.6, 2.2, 1, 1], vertical_alignment="bottom")
        c1.segmented_control("Mark as", lb.LABELS, key=state.LB_DETAIL, required=True)
        c2.text_input("Note (optional)", key=state.LB_DETAIL_NOTE, max_chars=lb.MAX_NOTE_CHARS)
        place = PLACE + "detail"
        saved = c3.button("Save label", key=state.LB_DETAIL_SAVE, type="primary", icon=":material/label:")
        removed = c4.button("Remove", key=state.LB_DETAIL_SAVE + "_remove", disabled=rec is None)
        if saved or removed:
            try:
                if saved:
                    label = ss[state.LB_DETAIL]
                    store().set(self.run_id, key, label, note=ss[state.LB_DETAIL_NOTE] or None, source=name, who=WHO)
                    feedback.note(place, "success", f"Marked {name} as **{label}**.")
                else:
                    store().delete(self.run_id, key)
                    feedback.note(place, "success", f"Removed the label of {name}.")
            except (lb.LabelStoreError, ValueError) as exc:
                feedback.note(place, "error", f"Could not save the label: {exc}")
            st.rerun()  # the whole page: the tiles behind the view show the new label too
        feedback.show(place)


def _board(run_id: str, keys: np.ndarray, sources: np.ndarray) -> Board:
    try:
        mapped = rl.map_labels(store().labels(run_id), keys)
    except lb.LabelStoreError as exc:
        st.error(error_text(exc), icon=":material/error:")
        return Board(run_id, keys, sources, rl.no_labels(len(keys)), editable=False, broken=True)
    return Board(run_id, keys, sources, mapped, editable=not access.read_only())


def for_test_images(run: runs.RunSummary, names: Sequence[str] | np.ndarray | None) -> Board:
    """The board of a run's test images (call once per page: a broken labels file shows its error here).

    ``names`` are :func:`doc_core.explain.gallery.identities` of a folder run's test images (their sources), or None
    for Fashion-MNIST (sources ``test:<index>``).
    """
    keys = test_keys(run)
    sources = np.asarray([rl.image_source(i, names) for i in range(len(keys))], dtype=object).astype(str)
    return _board(run.run_id, keys, sources)


def for_uploads(run: runs.RunSummary, images: Sequence[np.ndarray], names: Sequence[str]) -> Board:
    """The board of images uploaded on Score images, labelled in ``run`` by their file names."""
    return _board(run.run_id, rl.image_keys(images), np.asarray(list(names), dtype=object).astype(str))


# ---------------------------------------------------------------------------------------------------- ROC page


def roc_labels(run: runs.RunSummary, stored: runs.RunScores) -> tuple[np.ndarray, str | None]:
    """The labels the ROC page's curves, metrics and label-based policies use.

    When analysts have labelled enough of this run's test images (:func:`doc_core.workflow.run_labels.enough`), draws
    the choice "Labels from: test set / analysts' labels (N normal, M anomaly, K unsure left out)" and says how many
    labels the page rests on. Returns ``(labels, note)``: int (m,) 1 / 0 / -1, and None when they are the test set's
    own, else a sentence naming the analysts' labels.
    """
    ss = st.session_state
    try:
        counts = store().counts(run.run_id)
    except lb.LabelStoreError as exc:
        st.error(error_text(exc), icon=":material/error:")
        return stored.labels, None
    rule = (f"the curves and policies can use them once at least {rl.MIN_PER_KIND} test images are labelled normal "
            f"and {rl.MIN_PER_KIND} anomaly")
    if counts["normal"] < rl.MIN_PER_KIND or counts["anomaly"] < rl.MIN_PER_KIND:  # no need to hash the images
        if any(counts.values()):
            st.caption(f"Analysts' labels of this run: {counts['normal']:,} normal, {counts['anomaly']:,} anomaly, "
                       f"{counts['unsure']:,} unsure; {rule}.")
        return stored.labels, None
    try:
        mapped = rl.map_labels(store().labels(run.run_id), test_keys(run))
    except lb.LabelStoreError as exc:
        st.error(error_text(exc), icon=":material/error:")
        return stored.labels, None
    except ValueError as exc:  # DataError: the run's images cannot be loaded to recognise the labelled ones
        st.caption(f"The analysts' labels cannot be matched to this run's test images: {exc}")
        return stored.labels, None
    if not rl.enough(mapped):
        st.caption(f"Analysts' labels of this run's test images: {mapped.summary()}; {rule}.")
        return stored.labels, None
    names = {state.LABELS_TEST: "test set" + ("" if stored.has_labels else " (none labelled)"),
             state.LABELS_ANALYSTS: f"analysts' labels ({mapped.summary()})"}
    if ss.get(state.ROC_LABELS) not in names:
        ss[state.ROC_LABELS] = state.LABELS_TEST
    choice = st.radio("Labels from", tuple(names), key=state.ROC_LABELS, horizontal=True, format_func=names.get,
                      help="The test set's own labels, or the labels analysts gave this run's test images on the "
                           "Ranked anomalies, Embedding explorer and Score images pages. Unsure and unlabelled "
                           "images are left out.")
    if choice != state.LABELS_ANALYSTS:
        return stored.labels, None
    n = mapped.n_normal + mapped.n_anomaly
    note = (f"The curves, AUC, metrics, confusion matrix and the best-F1 / target-FPR policies below rest on the "
            f"analysts' {n:,} labels ({mapped.n_normal:,} normal, {mapped.n_anomaly:,} anomaly); "
            f"{mapped.n_unsure:,} unsure and {len(mapped.words) - mapped.n_labelled:,} unlabelled test images are "
            "left out.")
    st.caption(note)
    return mapped.codes, note
