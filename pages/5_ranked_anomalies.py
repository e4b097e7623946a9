"""Ranked anomalies: the test images ordered by anomaly score, from both ends, at the run's operating threshold,
searchable by name (file name and sub-folder, or test index and class)."""

import numpy as np
import streamlit as st

from doc_core.explain import gallery
from ui import bank, cached, detail, heatmaps, labelling, page, state, tiles

PERSIST = dict(persist_state="session")
ss = st.session_state


def on_view() -> None:
    """A preset view sets the filters it stands for and goes back to page 1."""
    view = ss[state.RK_VIEW]
    if view in state.VIEW_FILTERS:
        labels, side, order = state.VIEW_FILTERS[view]
        ss[state.RK_LABEL], ss[state.RK_SIDE], ss[state.RK_ORDER] = list(labels), side, order
    ss[state.RK_PAGE] = 1


def to_first_page() -> None:
    ss[state.RK_PAGE] = 1


page.setup("Ranked anomalies")
run = page.run_or_stop("its test images ranked by anomaly score")
data = page.split_or_stop(run)
scorer, scores, _, threshold = cached.operating_point(run)
stored = cached.scores_of(run)
labels = stored.labels
names = gallery.identities(stored.classes, stored.paths)
board = labelling.for_test_images(run, names if stored.paths is not None else None)  # analysts' labels
source = "the run's saved threshold" if run.threshold else "the detector's default threshold (no threshold saved yet)"
st.caption(f"Threshold {threshold:.4g}: {source}. Images scoring above it are flagged as anomalies. Rank 1 is the "
           f"most anomalous of all {len(scores):,} test images.")

st.segmented_control("Show", state.VIEWS, key=state.RK_VIEW, required=True, on_change=on_view, **PERSIST)
if ss[state.RK_VIEW] == state.VIEW_CUSTOM:
    present = [name for name in gallery.LABELS if np.any(labels == gallery.LABEL_CODES[name])]
    ss[state.RK_LABEL] = [v for v in ss[state.RK_LABEL] if v in present]
    c1, c2, c3 = st.columns(3, vertical_alignment="bottom")
    c1.multiselect("True label", present, key=state.RK_LABEL, on_change=to_first_page, **PERSIST,
                   placeholder="every label")
    c2.selectbox("Side of the threshold", gallery.SIDES, key=state.RK_SIDE, on_change=to_first_page, **PERSIST,
                 format_func=state.SIDE_LABELS.get)
    c3.selectbox("Order", gallery.ORDERS, key=state.RK_ORDER, on_change=to_first_page, **PERSIST,
                 format_func=state.ORDER_LABELS.get)
else:
    st.caption({state.VIEW_TOP: "The anomalies the detector is surest about.",
                state.VIEW_MISSED: "The anomalies that look most normal: the first ones are those missed at the "
                                   "threshold (passed).",
                state.VIEW_ALARMS: "The normal images that look most anomalous: the first ones are the false "
                                   "alarms (flagged)."}[ss[state.RK_VIEW]])

st.text_input("Search by name", key=state.RK_QUERY, on_change=to_first_page, **PERSIST,
              placeholder="part of a file name or folder, e.g. crack" if stored.paths is not None
              else "e.g. test #12, or a class name",
              help="Keeps the images whose name contains this text (not case-sensitive): "
                   + ("the file's path below its label folder, e.g. MT_Crack/exp1_num_123.jpg."
                      if stored.paths is not None else "test #<index> · <class>."))
ranking = gallery.rank(scores, labels, threshold, ss[state.RK_LABEL], ss[state.RK_SIDE], ss[state.RK_ORDER])
ranking = gallery.search(ranking, names, ss[state.RK_QUERY])
size = int(ss[state.RK_PAGE_SIZE])
pages = gallery.n_pages(len(ranking), size)
ss[state.RK_PAGE] = min(max(1, int(ss[state.RK_PAGE])), pages)
c1, c2, c3, c4 = st.columns([1, 1, 2.2, 1.5], vertical_alignment="bottom")
c1.number_input(f"Page (of {pages:,})", min_value=1, max_value=pages, step=1, key=state.RK_PAGE)
c2.selectbox("Images per page", (12, 24, 48, 96), key=state.RK_PAGE_SIZE, on_change=to_first_page, **PERSIST)
shown_map = heatmaps.choose(c3, run, state.RK_MAP)
opacity = c4.slider("Heatmap opacity", 0.0, 1.0, step=0.05, key=state.RK_OPACITY, **PERSIST,
                    disabled=shown_map == heatmaps.OFF)

idx, ranks = gallery.page_of(ranking, ss[state.RK_PAGE], size)
if not len(idx):
    query = ss[state.RK_QUERY].strip()
    st.info(f"No test image matches these filters at threshold {threshold:.4g}"
            + (f" and the name search {query!r}." if query else "."))
    st.stop()
first = (ss[state.RK_PAGE] - 1) * size
st.markdown(f"**{len(ranking):,} images** · page {ss[state.RK_PAGE]:,} of {pages:,} (images {first + 1:,}–"
            f"{first + len(idx):,})")
board.bulk(detail.RANKED, idx, f"the {len(idx):,} images on this page")
bank.section(run, data.test_images, board, detail.RANKED)  # confirmed normals join the normal bank
images = data.test_images[idx]
heat = heatmaps.maps(run, images, shown_map)
if heat is not None:
    st.caption(heatmaps.note(run, shown_map))
captions = [f"{tiles.name_text(names[i])}<br><b>#{r:,}</b> · {scores[i]:.4g} · {tiles.verdict(scores[i], threshold)}"
            f" · {tiles.label_text(labels[i])}{board.caption(i)}" for i, r in zip(idx, ranks)]
tiles.grid(list(images), captions, per_row=6, heatmaps=heat, opacity=opacity,
           below=board.below(detail.RANKED, idx.tolist(), detail.opener(detail.RANKED, run.run_id, idx.tolist())))
detail.test_image(detail.RANKED, run, data, scores, threshold, stored, shown_map, opacity, board.editor)
