"""Embedding explorer: 2-D t-SNE maps of the test images in three feature spaces side by side (raw pixels, the
backbone before DOC training, the DOC-trained backbone), with the selected images, their heatmaps (Grad-CAM, or
the patch defect map of a patch run) and their nearest normal training images, paged and sorted (by score by
default) like the Ranked anomalies page."""

import numpy as np
import streamlit as st

from doc_core.explain.embedding import FEATURE_SET_LABELS
from doc_core.explain import explorer_maps, gallery
from doc_core.explain.gallery import label_names, score_ranks
from doc_core.workflow.run_labels import selection_test_indices
from ui import bank, cached, detail, heatmaps, labelling, linked_maps, page, state, status, tiles

PERSIST = dict(persist_state="session")
ss = st.session_state

page.setup("Embedding explorer")
run = page.run_or_stop("2-D maps of its test features")
data = page.split_or_stop(run)
scorer, scores, train_scores, threshold = cached.operating_point(run)
stored = cached.scores_of(run)

c1, c2, c3 = st.columns([2, 1, 2], vertical_alignment="bottom")
c1.segmented_control("Colour by", state.COLOR_BY, key=state.EX_COLOR, required=True, **PERSIST)
c2.selectbox("Points per map (at most)", state.EX_POINT_CHOICES, key=state.EX_POINTS, **PERSIST,
             format_func=lambda n: f"{n:,}",
             help="A seeded sample keeps each label's share when the test set is larger.")
c3.checkbox("Also show normal training images (open circles)", key=state.EX_TRAIN, **PERSIST)
max_points, with_train = int(ss[state.EX_POINTS]), bool(ss[state.EX_TRAIN])
color_by = "score" if ss[state.EX_COLOR] == state.COLOR_SCORE else "role"

test_idx, train_idx = cached.explorer_rows(run, max_points, with_train)
n_test, n_points = len(test_idx), len(test_idx) + len(train_idx)
labels = stored.labels[test_idx]
roles = np.concatenate([np.where(labels == 1, "test anomaly", np.where(labels == 0, "test normal", "test unlabelled")),
                        np.full(len(train_idx), "normal training")])
point_scores = np.concatenate([scores[test_idx], train_scores[train_idx]]).astype(np.float64)
ranks = score_ranks(scores)
names, label_words = gallery.identities(stored.classes, stored.paths), label_names(stored.labels)
train_pictures, train_names = bank.neighbour_pictures(run, data, train_idx)  # bank rows -> their training images
info = np.column_stack([
    np.arange(n_points).astype(object),
    np.concatenate([[f"{names[i]} · {label_words[i]}" for i in test_idx],
                    [f"normal training · {name}" for name in train_names]]).astype(object),
    np.concatenate([[f"rank {ranks[i]:,} of {len(scores):,}" for i in test_idx],
                    ["leave-one-out score"] * len(train_idx)]).astype(object)])

st.caption(f"{n_test:,} of {len(scores):,} test images" + (f" and {len(train_idx):,} normal training images"
                                                           if len(train_idx) else "")
           + f" · threshold {threshold:.4g} · hover a point to see its image and score, ringed in every map; click, "
             "box- or lasso-select points (the lasso is the default drag) to see those images below, and where they "
             "lie in the other maps. Double-click clears the selection.")

context = (run.run_id, max_points, with_train)
picked = ss[state.EX_SELECTED]
selected = [r for r in picked[1] if 0 <= r < n_points] if picked and picked[0] == context else []


def on_select() -> None:
    """The last selection made in any map (its points' rows) becomes the selection shown below."""
    ss[state.EX_SELECTED] = (context, linked_maps.selected_rows(ss.get(state.EX_MAPS)))
    ss[state.EX_PAGE] = 1


def to_first_page() -> None:
    ss[state.EX_PAGE] = 1


hover = [[str(info[r, 1]), f"score {point_scores[r]:.4g} · {info[r, 2]}"] for r in range(n_points)]
maps_job = cached.explorer_maps(run, max_points, with_train)  # saved with the run, or computed in the background
if maps_job.note:
    st.info(maps_job.note)


def draw_maps(snapshot: list[explorer_maps.MapStatus]) -> None:
    """The maps ready so far, linked; a progress line for each one still coming, a note for each that cannot be
    made."""
    figures, titles, notes = [], [], []
    for m in snapshot:
        name = FEATURE_SET_LABELS[m.feature_set]
        if m.state == explorer_maps.READY:
            figures.append(cached.embedding_figure(run, m.feature_set, max_points, with_train, color_by, threshold,
                                                   m.result.coords, roles, point_scores, info))
            titles.append(name[:1].upper() + name[1:])
            notes.append(f"Features and t-SNE took {status.format_seconds(m.result.seconds)} (once per run and "
                         "settings; saved with the run).")
        elif m.state == explorer_maps.FAILED:
            st.info(f"No map of the {name}: {(m.result.note if m.result else None) or maps_job.error}")
        else:
            st.progress(m.fraction, text=f"Map of the {name}: " + (
                f"features and t-SNE, {m.fraction:.0%}" if m.state == explorer_maps.COMPUTING
                else "waiting for the map before it"))
    if figures:
        linked_maps.linked_maps(figures, titles, notes, hover, cached.explorer_thumbnails(run, max_points, with_train),
                                selected, key=state.EX_MAPS, on_change=on_select)


if maps_job.done:
    draw_maps(maps_job.snapshot())
else:
    st.caption(f"These maps were not saved with the run (a run saves its maps of {explorer_maps.DEFAULT_MAX_POINTS:,} "
               "points when training ends), so they are computed now in the background, one after the other; each "
               "appears as soon as it is ready, and is then saved with the run. Other pages can be used meanwhile.")
    selection_before = ss.get(state.EX_SELECTED)

    @st.fragment(run_every=1.0)
    def maps_in_progress() -> None:
        """Polls the maps job: draws each map as it becomes ready; the whole page again once all are, or once a
        selection was made in a map (so the selected images show below)."""
        if maps_job.done or ss.get(state.EX_SELECTED) is not selection_before:
            st.rerun()
        draw_maps(maps_job.snapshot())

    maps_in_progress()

st.subheader("Selected images", anchor=False)
if not selected:
    st.caption("Nothing selected yet: click a point, or drag a lasso or box around some points in any map.")
    st.stop()
rows = np.sort(np.asarray(selected, np.int64))  # by index: test images, then normal training images
row_labels = np.concatenate([labels, np.full(len(train_idx), -2)])  # -2: a normal training image, sorted last
ordered = rows[gallery.sort_selection(point_scores[rows], row_labels[rows], ss[state.EX_SORT])]
size = state.EX_PAGE_SIZE
pages = gallery.n_pages(len(ordered), size)
ss[state.EX_PAGE] = min(max(1, int(ss[state.EX_PAGE])), pages)
c1, c2, c3, c4 = st.columns([1.6, 1, 2.2, 1.5], vertical_alignment="bottom")
c1.selectbox("Sort by", gallery.SELECTION_ORDERS, key=state.EX_SORT, on_change=to_first_page, **PERSIST,
             format_func=gallery.SELECTION_ORDER_LABELS.get)
c2.number_input(f"Page (of {pages:,})", min_value=1, max_value=pages, step=1, key=state.EX_PAGE)
shown_map = heatmaps.choose(c3, run, state.EX_MAP)
opacity = c4.slider("Heatmap opacity", 0.0, 1.0, step=0.05, key=state.EX_OPACITY, **PERSIST,
                    disabled=shown_map == heatmaps.OFF)
page_no, lo, hi = gallery.page_bounds(len(ordered), ss[state.EX_PAGE], size)
sel = ordered[lo:hi]
st.markdown(f"**{len(ordered):,} selected** · page {page_no:,} of {pages:,} (images {lo + 1:,}–{hi:,}), "
            f"sorted by {gallery.SELECTION_ORDER_LABELS[ss[state.EX_SORT]].lower()}")
board = labelling.for_test_images(run, names if stored.paths is not None else None)  # analysts' labels
picked_tests = selection_test_indices(ordered, test_idx)
board.bulk(detail.EXPLORER, picked_tests, f"the {len(picked_tests):,} selected test images (every page)")
bank.section(run, data.test_images, board, detail.EXPLORER)  # confirmed normals join the normal bank
st.caption("Each with its 5 nearest normal training images in the DOC feature space (d = Euclidean distance).")
is_test = sel < n_test
images = [data.test_images[test_idx[r]] if t else train_pictures[r - n_test] for r, t in zip(sel, is_test)]
heat = heatmaps.maps(run, np.stack(images), shown_map)
if heat is not None:
    st.caption(heatmaps.note(run, shown_map))
bank_features = cached.bank_features(run) if not is_test.all() else None
feats = np.stack([cached.test_features_of(run)[test_idx[r]] if t else bank_features[train_idx[r - n_test]]
                  for r, t in zip(sel, is_test)])
dist, nn = cached.nearest_normals(run, feats, 6)
for j, (r, t) in enumerate(zip(sel, is_test)):
    left, right = st.columns([1, 4], gap="medium")
    with left:
        s = point_scores[r]
        if t:
            i = int(test_idx[r])
            caption = (f"{tiles.name_text(names[i])}<br>rank {ranks[i]:,} · score {s:.4g} · "
                       f"{tiles.verdict(s, threshold)}<br>" + tiles.label_text(stored.labels[i]) + board.caption(i))
        else:
            caption = f"normal training · {train_names[r - n_test]}<br>leave-one-out score {s:.4g}"
        tiles.grid([images[j]], [caption], per_row=1, heatmaps=None if heat is None else heat[j:j + 1],
                   opacity=opacity, below=board.below(detail.EXPLORER, [int(test_idx[r]) if t else None],
                                                      detail.opener(detail.EXPLORER, run.run_id,
                                                                    [int(test_idx[r]) if t else None])))
    with right:
        keep = nn[j] != (-1 if t else int(train_idx[r - n_test]))  # a training image is not its own neighbour
        bank.neighbours(run, data, nn[j][keep][:5], dist[j][keep][:5])  # training images, or added later
detail.test_image(detail.EXPLORER, run, data, scores, threshold, stored, shown_map, opacity, board.editor)
