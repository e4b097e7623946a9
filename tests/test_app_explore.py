"""The explorer, ranked-anomalies and score-new-images pages through AppTest, with no run and with the tiny run of
tests/test_app.py (its fixtures are reused). The explorer is asked for 300 points so the three t-SNE maps stay
quick."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from test_app import (EXPENSIVE, ROOT, TIMEOUT, assert_clean, count_calls, empty_runs_dir, fashion,  # noqa: F401
                      open_app, runs_dir, texts, tiny_run_dir)
from doc_core.data.datasets import DatasetSpec, load_dataset
from doc_core.explain.gallery import explorer_sample
from doc_core.workflow import runs
from streamlit.testing.v1 import AppTest
from ui import nav, state

EXPLORER, RANKED, SCORE = nav.EXPLORER, nav.RANKED, nav.SCORE
ROC = nav.ROC


def open_with(page: str, **values) -> AppTest:
    """A new session with some session-state values set before the first run, then ``page``."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    for key, value in values.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(page).run()
    return wait_for_maps(at) if page == EXPLORER else at


def maps_pending(at: AppTest) -> bool:
    return "computed now in the background" in texts(at)


def wait_for_maps(at: AppTest, tries: int = 240) -> AppTest:
    """Rerun the explorer until its maps are all drawn (the page polls its background job; AppTest does not)."""
    import time

    for _ in range(tries):
        if not maps_pending(at):
            return at
        time.sleep(0.5)
        at.run()
    raise AssertionError("the explorer's maps were not ready after 120 s")


@pytest.mark.parametrize("page", [EXPLORER, RANKED, SCORE])
def test_new_pages_without_a_run(empty_runs_dir, page):  # noqa: F811
    at = open_app(page)
    assert_clean(at)
    assert "No run yet" in texts(at) and not at.get("plotly_chart")


def map_args(at: AppTest) -> dict:
    """The arguments the page gave the linked-maps component (what the browser draws)."""
    (maps,) = at.get("component_instance")
    assert maps.proto.component_name == "ui.linked_maps.linked_maps"
    return json.loads(maps.proto.json_args)


def test_explorer_shows_three_linked_maps_with_thumbnails(runs_dir, fashion):  # noqa: F811
    at = open_with(EXPLORER, **{state.EX_POINTS: 500})
    assert_clean(at)
    args = map_args(at)
    # raw pixels, pretrained (tiny: its seeded initialisation), DOC-trained
    assert args["titles"] == ["Raw pixels", "Pretrained backbone (before DOC)", "DOC-trained backbone"]
    assert all("Features and t-SNE took" in n for n in args["notes"]) and "Nothing selected yet" in texts(at)
    spec = args["figures"][0]
    assert '"test anomaly (' in spec and "#D55E00" in spec and "#0072B2" in spec
    for fig in map(json.loads, args["figures"]):  # every image once per map, by its row
        assert sorted(r for t in fig["data"] for r in t["customdata"]) == list(range(500))
    # hover text and the thumbnail of every row
    assert len(args["hover"]) == 500 and args["hover"][0][1].startswith("score ")
    atlas = args["atlas"]
    assert atlas["count"] == 500 and atlas["src"].startswith("data:image/png;base64,")
    sheet = np.asarray(Image.open(io.BytesIO(base64.b64decode(atlas["src"].split(",", 1)[1]))))
    t, cols = atlas["tile"], atlas["columns"]
    assert sheet.shape[:2] == (-(-500 // cols) * t, cols * t)
    run = runs.list_runs(runs_dir)[0]
    split, _ = load_dataset(DatasetSpec.from_dict(run.dataset), fashion)
    shown = explorer_sample(split.test_labels, 500, seed=0)  # the page's sample of the 2,000 test images
    for row in (0, 1, 499):
        r, c = divmod(row, cols)
        np.testing.assert_array_equal(sheet[r * t:(r + 1) * t, c * t:(c + 1) * t],
                                      split.test_images[shown[row]][..., 0])
    # colour by score, with the normal training images
    at.get("button_group")[0].set_value(state.COLOR_SCORE).run()
    wait_for_maps(at.checkbox(key=state.EX_TRAIN).check().run())
    assert_clean(at)
    args = map_args(at)
    assert len(args["figures"]) == 3 and "normal training images" in texts(at)
    assert len(args["hover"]) == 500 and args["atlas"]["count"] == 500
    assert sum(h[0].startswith("normal training · train #") for h in args["hover"]) == 125  # a quarter of the points


def test_explorer_selection_shows_images_neighbours_and_gradcam(runs_dir, monkeypatch):  # noqa: F811
    """A selection (as the browser would send it) shows the images, their nearest normal images and Grad-CAM."""
    at = open_with(EXPLORER, **{state.EX_POINTS: 500})
    run = runs.list_runs(runs_dir)[0]
    at.session_state[state.EX_SELECTED] = ((run.run_id, 500, False), [3, 10])  # as the maps' on_select leaves it
    at.run()
    assert_clean(at)
    assert "2 selected" in texts(at)
    assert len(at.get("image")) == 2 * (1 + 5)  # each image and its 5 nearest normal images
    heat = at.radio(key=state.EX_MAP)
    assert list(heat.options) == [state.MAP_OFF, state.MAP_GRADCAM]  # no patch map: this run scores whole images
    heat.set_value(state.MAP_GRADCAM).run()
    assert_clean(at)
    assert len(at.get("image")) == 12 and "Grad-CAM, scaled per image" in texts(at)


def selected_scores(at: AppTest) -> list[float]:
    """The scores on the selected images' tiles, in the order shown."""
    return [float(v) for v in re.findall(r"· score ([-\d.e+]+) ·", texts(at))]


def test_explorer_selection_pages_and_sorts(runs_dir):  # noqa: F811
    """A lasso of 30 points is listed 12 per page, highest score first, and can be sorted otherwise."""
    at = open_with(EXPLORER, **{state.EX_POINTS: 500})
    run = runs.list_runs(runs_dir)[0]
    stored = runs.load_scores(run.run_id, runs_dir)
    shown = explorer_sample(stored.labels, 500, seed=0)
    rows = list(range(0, 500, 17))  # 30 rows across the sample (normal and anomalous images), in index order
    at.session_state[state.EX_SELECTED] = ((run.run_id, 500, False), rows)  # as the maps' on_select leaves it
    at.run()
    assert_clean(at)
    body = texts(at)
    assert "30 selected" in body and "page 1 of 3" in body and "the first 12" not in body
    assert len(at.get("image")) == 12 * (1 + 5)
    want = np.sort(stored.scores[shown[rows]])[::-1]  # every selected score, highest first
    first = selected_scores(at)
    np.testing.assert_allclose(first, want[:12], rtol=1e-3)
    assert f"test #{shown[rows][int(np.argmax(stored.scores[shown[rows]]))]} · " in body  # named by index and class
    at.number_input(key=state.EX_PAGE).set_value(3).run()
    assert_clean(at)
    assert "page 3 of 3" in texts(at) and len(at.get("image")) == 6 * (1 + 5)
    np.testing.assert_allclose(selected_scores(at), want[24:], rtol=1e-3)
    at.selectbox(key=state.EX_SORT).select("score_asc").run()  # a new order starts again at page 1
    assert_clean(at)
    assert "page 1 of 3" in texts(at)
    np.testing.assert_allclose(selected_scores(at), want[::-1][:12], rtol=1e-3)
    at.selectbox(key=state.EX_SORT).select("label").run()  # anomalies first, each label by score
    n_anomalies = int(stored.labels[shown[rows]].sum())
    assert 12 < n_anomalies < 24  # so page 2 holds the last anomalies and the first normal images
    at.number_input(key=state.EX_PAGE).set_value(2).run()
    assert_clean(at)
    labels = [1 if ">anomaly<" in m.value else 0 for m in at.markdown if "· score " in m.value]
    assert labels == [1] * (n_anomalies - 12) + [0] * (24 - n_anomalies)


def test_ranked_gallery_views_filters_and_paging(runs_dir):  # noqa: F811
    at = open_app(RANKED)
    assert_clean(at)
    body = texts(at)
    assert "1,000 images" in body  # the 1,000 ankle boots
    top = tile_ranks(at)
    assert len(top) == 24 and top == sorted(top)  # most anomalous first
    assert len(at.get("image")) == 24
    at.get("button_group")[0].set_value(state.VIEW_MISSED).run()
    assert_clean(at)
    missed = tile_ranks(at)
    assert missed == sorted(missed, reverse=True) and missed[0] > top[-1]  # the most normal-looking boots first
    at.get("button_group")[0].set_value(state.VIEW_CUSTOM).run()
    at.multiselect(key=state.RK_LABEL).set_value(["normal", "anomaly"]).run()
    at.selectbox(key=state.RK_SIDE).select("above").run()
    assert_clean(at)
    at.number_input(key=state.RK_PAGE).set_value(2).run()
    assert_clean(at)
    assert "page 2 of" in texts(at)
    at.radio(key=state.RK_MAP).set_value(state.MAP_GRADCAM).run()
    assert_clean(at)
    assert len(at.get("image")) >= 1 and "Grad-CAM, scaled per image" in texts(at)


def test_ranked_gallery_uses_the_saved_threshold(runs_dir):  # noqa: F811
    run = runs.list_runs(runs_dir)[0]
    stored = runs.load_scores(run.run_id, runs_dir)
    t = float(np.sort(stored.scores)[-10])  # ten test images above it... nine strictly above
    runs.save_threshold(run.run_id, t, "manual", None, run.scorer, runs_dir)
    at = open_with(RANKED, **{state.RK_VIEW: state.VIEW_CUSTOM, state.RK_LABEL: [], state.RK_SIDE: "above"})
    assert_clean(at)
    assert "9 images" in texts(at) and f"{t:.4g}" in texts(at)


def tile_ranks(at: AppTest) -> list[int]:
    """The overall ranks shown on the gallery's tiles, in order."""
    return [int(r.replace(",", "")) for r in re.findall(r"<b>#([\d,]+)</b>", texts(at))]


def _png(value: int, size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_score_new_images(runs_dir):  # noqa: F811
    at = open_app(SCORE)
    assert_clean(at)
    at.get("file_uploader")[0].upload("a.png", _png(30)).upload("b.png", _png(220)).upload("bad.png", b"junk").run()
    assert not at.exception
    body = texts(at)
    assert "bad.png" in body and "not a readable image" in body  # a bad file is a warning, the others are scored
    assert "a.png" in body and "b.png" in body and "score" in body
    assert ("flagged" in body) or ("passed" in body)
    assert len(at.get("image")) >= 2 * (1 + 5)


def test_new_pages_recompute_nothing_once_visited(runs_dir, monkeypatch):  # noqa: F811
    at = open_with(EXPLORER, **{state.EX_POINTS: 500})
    for page in (RANKED, SCORE, ROC, EXPLORER, RANKED, SCORE):  # warm the caches once
        at.switch_page(page).run()
    calls = count_calls(monkeypatch, EXPENSIVE + ("doc_core.explain.embedding.pretrained_backbone",))
    for page in (EXPLORER, RANKED, SCORE, ROC):
        at.switch_page(page).run()
        assert_clean(at)
    assert not any(calls.values()), calls


def test_explorer_without_pretrained_weights_shows_a_note_and_two_maps(runs_dir, monkeypatch):  # noqa: F811
    from doc_core.explain import embedding
    from doc_core.model.backbones import WeightsNotFoundError

    def missing(detector):
        raise WeightsNotFoundError("no ImageNet weights in /nowhere")

    monkeypatch.setattr(embedding, "pretrained_backbone", missing)
    at = open_with(EXPLORER, **{state.EX_POINTS: 500})
    assert_clean(at)
    assert map_args(at)["titles"] == ["Raw pixels", "DOC-trained backbone"]
    assert any("No map of the pretrained backbone" in i.value and "/nowhere" in i.value for i in at.info)


# ------------------------------------------------------------------------------------------------ the detail view


def detail_view(at: AppTest):
    """The open detail dialog (its block in the element tree), or None."""
    todo = list(at._tree.children.values())
    while todo:
        node = todo.pop()
        if getattr(node, "type", None) == "dialog":
            return node
        todo.extend(getattr(node, "children", {}).values())
    return None


def view_text(view) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption") for e in getattr(view, kind))


def details_buttons(at: AppTest, where: str) -> dict[int, object]:
    """The Details buttons of page ``where``, by the index each opens."""
    prefix = f"{state.DETAIL_BUTTON}{where}_"
    return {int(b.key[len(prefix):]): b for b in at.button if b.key and b.key.startswith(prefix)}


def test_ranked_details_show_one_image_large_with_its_facts_and_neighbours(runs_dir, monkeypatch):  # noqa: F811
    run = runs.list_runs(runs_dir)[0]
    stored = runs.load_scores(run.run_id, runs_dir)
    at = open_app(RANKED)
    at.run()  # warm
    buttons = details_buttons(at, "ranked")
    assert len(buttons) == 24 and detail_view(at) is None  # one under each tile, nothing open yet
    i = int(np.flatnonzero(stored.labels == 1)[np.argmax(stored.scores[stored.labels == 1])])  # the first tile
    assert i in buttons
    calls = count_calls(monkeypatch, tuple(t for t in EXPENSIVE if not t.endswith(("detector", "features"))))
    buttons[i].click().run()  # the view's own needs (the detector, the features) may load once; the page's may not
    assert_clean(at)
    assert at.session_state[state.DETAIL] == ("ranked", run.run_id, i)
    view = detail_view(at)
    assert view is not None
    body = view_text(view)
    rank = int(np.sum(stored.scores > stored.scores[i])) + 1
    assert f"test #{i} · Ankle boot" in body and f"{stored.scores[i]:.4g}" in body
    assert f"rank {rank:,} of 2,000 test images" in body and "at threshold" in body and "anomaly" in body
    assert "Nearest normal training images" in body and "train #" in body
    pics = view.get("image")
    assert len(pics) == 2 + 5  # the image and its heatmap side by side, then 5 nearest normal images
    assert pics[0].captions == ["Stored at 28×28 px as the model sees it, shown at 336×336"]  # 12x, at least 320
    assert pics[1].captions[0].startswith("Grad-CAM")  # beside it: the run's heatmap, though the page has them off
    assert not any(calls.values()), calls  # opening it reloads nothing the page had: its caches serve it
    # the Close button closes it, and the page is as it was
    at.button(key=state.DETAIL_CLOSE).click().run()
    assert_clean(at)
    assert detail_view(at) is None and at.session_state[state.DETAIL] is None and len(at.get("image")) == 24
    # another image's view, once the detector is loaded, recomputes nothing at all
    calls = count_calls(monkeypatch)
    j = sorted(set(buttons) - {i})[0]
    details_buttons(at, "ranked")[j].click().run()
    assert_clean(at)
    assert f"test #{j} · " in view_text(detail_view(at)) and not any(calls.values()), calls


def test_explorer_selection_opens_the_same_detail_view(runs_dir):  # noqa: F811
    run = runs.list_runs(runs_dir)[0]
    stored = runs.load_scores(run.run_id, runs_dir)
    at = open_with(EXPLORER, **{state.EX_POINTS: 500, state.EX_TRAIN: True})
    shown = explorer_sample(stored.labels, 500 - 125, seed=0)  # a quarter of the points are normal training images
    at.session_state[state.EX_SELECTED] = ((run.run_id, 500, True), [3, 10, 499])  # 499: a normal training image
    at.run()
    assert_clean(at)
    buttons = details_buttons(at, "explorer")
    assert sorted(buttons) == sorted(int(shown[r]) for r in (3, 10))  # training images have no detail view
    i = int(shown[10])
    buttons[i].click().run()
    assert_clean(at)
    body = view_text(detail_view(at))
    rank = int(np.sum(stored.scores > stored.scores[i])) + 1
    assert f"test #{i} · " in body and f"rank {rank:,} of 2,000" in body and f"{stored.scores[i]:.4g}" in body
    assert "Nearest normal training images" in body and len(detail_view(at).get("image")) == 2 + 5


def test_score_images_open_the_detail_view_of_an_upload(runs_dir):  # noqa: F811
    run = runs.list_runs(runs_dir)[0]
    stored = runs.load_scores(run.run_id, runs_dir)
    at = open_app(SCORE)
    at.get("file_uploader")[0].upload("a.png", _png(30)).upload("b.png", _png(220)).run()
    assert_clean(at)
    buttons = details_buttons(at, "score")
    assert sorted(buttons) == [0, 1]
    buttons[1].click().run()
    assert_clean(at)
    view = detail_view(at)
    body = view_text(view)
    score = float(re.search(r"score <b>([-\d.e+]+)</b>", body).group(1))
    assert "b.png" in body and "a.png" not in body and "uploaded image" in body
    rank = int(np.sum(stored.scores > score)) + 1  # where the upload would stand among the test images
    assert abs(rank - int(re.search(r"would rank ([\d,]+) of the 2,000", body).group(1).replace(",", ""))) <= 1
    assert "Nearest normal training images" in body and len(view.get("image")) == 2 + 5
    at.button(key=state.DETAIL_CLOSE).click().run()
    assert detail_view(at) is None and "b.png" in texts(at)
