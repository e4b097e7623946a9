"""Score new images: upload images and see each one's score, verdict at the run's threshold, heatmap (Grad-CAM, or
the patch defect map of a patch run) and nearest normal training images."""

import numpy as np
import streamlit as st

from doc_core.data import DataError
from ui import access, bank, cached, detail, heatmaps, labelling, page, state, tiles

PERSIST = dict(persist_state="session")
ss = st.session_state
MAX_FILES = 64

page.setup("Score new images")
run = page.run_or_stop("scores of images you upload")
data = page.split_or_stop(run)
scorer, test_scores, _, threshold = cached.operating_point(run)
shape = data.test_images.shape[1:]
source = "the run's saved threshold" if run.threshold else "the detector's default threshold"
st.caption(f"Images are resized to {shape[0]}×{shape[1]} px{' and made gray' if shape[-1] == 1 else ''}, like this "
           f"run's dataset, then scored; above {threshold:.4g} ({source}) they are flagged as anomalies. "
           + ("Fashion-MNIST images are light objects on a black background: photos on white look anomalous."
              if run.dataset.get("kind") == "fashion-mnist" else ""))

if access.read_only():
    access.read_only_note("Uploading images")
    st.stop()
files = st.file_uploader("Images (PNG, JPEG, …)", type=None, accept_multiple_files=True, key=state.UP_FILES)
if not files:
    st.caption("Upload one or more images to score them.")
    st.stop()
images, names = [], []
for f in files[:MAX_FILES]:
    try:
        images.append(cached.decoded_upload(f, shape))  # decoded once per file, not on every rerun
        names.append(f.name)
    except (DataError, ValueError) as exc:
        st.warning(f"Skipped {exc}")
if len(files) > MAX_FILES:
    st.warning(f"Only the first {MAX_FILES} of {len(files)} files are scored.")
if not images:
    st.stop()

try:
    result = cached.score_images(run, scorer, np.stack(images))
except ValueError as exc:  # RunError: this run's detector cannot be loaded
    st.error(f"This run cannot score images: {exc}")
    st.stop()
scores = result["scores"]
flagged = int(np.sum(scores > threshold))
st.markdown(f"**{len(images):,} images scored** · {flagged:,} flagged as anomalies, {len(images) - flagged:,} passed "
            f"as normal")
board = labelling.for_uploads(run, images, names)  # analysts' labels of the uploads, by file name
board.bulk(detail.SCORE, np.arange(len(images)), f"all {len(images):,} uploaded images")
c1, c2 = st.columns([1, 1], vertical_alignment="bottom")
shown_map = heatmaps.choose(c1, run, state.UP_MAP, with_off=False)
opacity = c2.slider("Heatmap opacity", 0.0, 1.0, step=0.05, key=state.UP_OPACITY, **PERSIST)
heat = heatmaps.maps(run, np.stack(images), shown_map)
st.caption(f"Each image, its {shown_map.lower() if shown_map == heatmaps.PATCH else shown_map}, then its 5 nearest "
           "normal training images in the DOC feature space (d = Euclidean distance). " + heatmaps.note(run, shown_map))
for j, name in enumerate(names):
    left, mid, right = st.columns([1, 1, 4], gap="medium")
    s = float(scores[j])
    with left:
        tiles.grid([images[j]], [f"<b>{name}</b><br>score {s:.4g} · {tiles.verdict(s, threshold)}{board.caption(j)}"],
                   per_row=1, below=board.below(detail.SCORE, [j], detail.opener(detail.SCORE, run.run_id, [j])))
    with mid:
        tiles.grid([images[j]], [shown_map], per_row=1, heatmaps=heat[j:j + 1], opacity=opacity)
    with right:
        bank.neighbours(run, data, result["nn_idx"][j], result["nn_dist"][j])  # training images, or added later
detail.upload(run, data, images, names, result, test_scores, threshold, shown_map, opacity, board.editor)
