"""Analysts' labels in the dashboard through AppTest (issue 12): marking one image, a page, a selection and uploads;
the label on the tiles and in the detail view; the ROC page on the analysts' labels once there are enough; a damaged
labels file; the read-only mode. Uses the tiny run of tests/test_app.py (its fixtures are reused)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from test_app import ROOT, TIMEOUT, assert_clean, fashion, open_app, runs_dir, texts, tiny_run_dir  # noqa: F401
from test_app_explore import _png, detail_view, details_buttons, view_text
from doc_core.data.datasets import DatasetSpec, load_dataset
from doc_core.evaluation import metrics
from doc_core.explain.gallery import explorer_sample
from doc_core.workflow import runs
from doc_core.workflow.labels import LabelStore, image_key
from doc_core.workflow.run_labels import MIN_PER_KIND
from streamlit.testing.v1 import AppTest
from ui import nav, state

RANKED, EXPLORER, SCORE, ROC = nav.RANKED, nav.EXPLORER, nav.SCORE, nav.ROC


@pytest.fixture
def run_and_split(runs_dir, fashion):  # noqa: F811
    run = runs.list_runs(runs_dir)[0]
    split, _ = load_dataset(DatasetSpec.from_dict(run.dataset), fashion)
    return run, runs.load_scores(run.run_id, runs_dir), split


def store_of(runs_dir) -> LabelStore:
    return LabelStore(runs_dir / "labels.sqlite")  # the runs folder's file, as the dashboard uses it


def tile_pills(at: AppTest, where: str) -> dict[int, object]:
    """The label control under each tile of page ``where``, by the image index it labels."""
    prefix = f"{state.LB_TILE}{where}_"
    return {int(b.key[len(prefix):]): b for b in at.button_group if b.key and b.key.startswith(prefix)}


def analyst_marks(at: AppTest) -> list[str]:
    """The analysts' labels shown in the tiles' captions, in order."""
    return re.findall(r"analyst: <span style=\"color:#[0-9A-F]+;font-weight:600\">(\w+)</span>", texts(at))


def test_ranked_marks_one_image_then_a_whole_page(runs_dir, run_and_split):  # noqa: F811
    run, stored, split = run_and_split
    at = open_app(RANKED)
    assert_clean(at)
    pills = tile_pills(at, "ranked")
    assert len(pills) == 24 and all(p.value is None for p in pills.values()) and not analyst_marks(at)
    i = list(pills)[0]  # the first tile: the most anomalous ankle boot
    pills[i].set_value("normal").run()
    assert_clean(at)
    (rec,) = store_of(runs_dir).labels(run.run_id)
    assert (rec.image_key, rec.label, rec.source) == (image_key(split.test_images[i]), "normal", f"test:{i}")
    assert analyst_marks(at) == ["normal"] and tile_pills(at, "ranked")[i].value == "normal"
    assert any(f"Marked test:{i} as **normal**" in t.proto.body for t in at.toast)
    # the whole page at once, with a note
    at.button_group(key=state.LB_BULK + "ranked").set_value("anomaly")
    at.text_input(key=state.LB_BULK_NOTE + "ranked").input("boot, as expected")
    at.button(key=state.LB_BULK_APPLY + "ranked").click().run()
    assert_clean(at)
    assert "Marked the 24 images on this page as **anomaly** (24 distinct images)" in texts(at)
    got = {r.source: (r.label, r.note) for r in store_of(runs_dir).labels(run.run_id)}
    assert got == {f"test:{j}": ("anomaly", "boot, as expected") for j in pills}
    assert analyst_marks(at) == ["anomaly"] * 24
    assert {p.value for p in tile_pills(at, "ranked").values()} == {"anomaly"}
    # clicking the marked label again removes it
    tile_pills(at, "ranked")[i].set_value(None).run()
    assert_clean(at)
    assert store_of(runs_dir).counts(run.run_id) == {"normal": 0, "anomaly": 23, "unsure": 0}
    assert analyst_marks(at) == ["anomaly"] * 23


def test_detail_view_shows_and_sets_the_label_with_a_note(runs_dir, run_and_split):  # noqa: F811
    run, stored, split = run_and_split
    at = open_app(RANKED)
    i = list(tile_pills(at, "ranked"))[2]
    details_buttons(at, "ranked")[i].click().run()
    assert_clean(at)
    assert "Analyst's label: none yet." in view_text(detail_view(at))
    at.button_group(key=state.LB_DETAIL).set_value("unsure")
    at.text_input(key=state.LB_DETAIL_NOTE).input("toe looks odd")
    at.button(key=state.LB_DETAIL_SAVE).click().run()
    assert_clean(at)
    rec = store_of(runs_dir).get(run.run_id, image_key(split.test_images[i]))
    assert (rec.label, rec.note, rec.source, rec.who) == ("unsure", "toe looks odd", f"test:{i}", "dashboard")
    body = view_text(detail_view(at))  # the view stays open and shows it; so does the tile behind it
    assert "Analyst's label:" in body and ">unsure<" in body and "toe looks odd" in body
    assert tile_pills(at, "ranked")[i].value == "unsure" and analyst_marks(at) == ["unsure"]


def test_explorer_selection_and_uploads_are_marked(runs_dir, run_and_split):  # noqa: F811
    run, stored, split = run_and_split
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state[state.EX_POINTS] = 500
    at.session_state[state.EX_TRAIN] = True
    at.run()
    at.switch_page(EXPLORER).run()
    shown = explorer_sample(stored.labels, 500 - 125, seed=0)  # a quarter of the points are training images
    at.session_state[state.EX_SELECTED] = ((run.run_id, 500, True), [3, 10, 499])  # 499: a normal training image
    at.run()
    assert_clean(at)
    assert sorted(tile_pills(at, "explorer")) == sorted(int(shown[r]) for r in (3, 10))  # training images: none
    at.button_group(key=state.LB_BULK + "explorer").set_value("normal")
    at.button(key=state.LB_BULK_APPLY + "explorer").click().run()
    assert_clean(at)
    assert "Marked the 2 selected test images (every page) as **normal**" in texts(at)
    assert sorted(r.source for r in store_of(runs_dir).labels(run.run_id)) == sorted(f"test:{shown[r]}"
                                                                                      for r in (3, 10))
    assert analyst_marks(at) == ["normal", "normal"]
    # uploaded images are labelled by their content and file name
    at.switch_page(SCORE).run()
    at.get("file_uploader")[0].upload("a.png", _png(30)).upload("b.png", _png(220)).run()
    assert_clean(at)
    pills = tile_pills(at, "score")
    assert sorted(pills) == [0, 1]
    pills[1].set_value("anomaly").run()
    assert_clean(at)
    rec = next(r for r in store_of(runs_dir).labels(run.run_id) if r.source == "b.png")
    assert rec.label == "anomaly" and analyst_marks(at) == ["anomaly"]
    at.button_group(key=state.LB_BULK + "score").set_value("unsure")
    at.button(key=state.LB_BULK_APPLY + "score").click().run()
    assert_clean(at)
    assert "Marked all 2 uploaded images as **unsure**" in texts(at)
    assert store_of(runs_dir).counts(run.run_id) == {"normal": 2, "anomaly": 0, "unsure": 2}


def label_test_images(runs_dir, run, split, normal, anomaly, unsure=()) -> None:
    items = [(image_key(split.test_images[i]), word, None, f"test:{i}")
             for idx, word in ((normal, "normal"), (anomaly, "anomaly"), (unsure, "unsure")) for i in idx]
    store_of(runs_dir).set_many(run.run_id, items)


def roc_auc_shown(at: AppTest) -> float:
    return float(re.search(r"AUC ([\d.]+)", texts(at)).group(1))


def test_roc_page_uses_the_analysts_labels_once_there_are_enough(runs_dir, run_and_split):  # noqa: F811
    run, stored, split = run_and_split
    s, y = stored.scores, stored.labels
    order = np.argsort(-s)
    # the analysts disagree with the test set: they call the most anomalous sneakers normal (false alarms) ...
    normal = [int(i) for i in order if y[i] == 0][:MIN_PER_KIND]
    anomaly = [int(i) for i in order if y[i] == 1][-MIN_PER_KIND - 1:]  # ... and some normal-looking boots anomalies
    unsure = [int(i) for i in order if y[i] == 1][:2]
    label_test_images(runs_dir, run, split, normal, anomaly[2:], unsure)  # one anomaly short of the rule
    at = open_app(ROC)
    assert_clean(at)
    assert not [r for r in at.radio if r.key == state.ROC_LABELS]
    assert (f"{MIN_PER_KIND} normal, {MIN_PER_KIND - 1} anomaly, 2 unsure; the curves and policies can use them once "
            f"at least {MIN_PER_KIND} test images are labelled normal") in texts(at)
    test_auc = roc_auc_shown(at)
    assert test_auc == pytest.approx(metrics.roc_auc(y, s), abs=1e-3)

    label_test_images(runs_dir, run, split, [], anomaly[:2])  # now enough
    at = open_app(ROC)
    assert_clean(at)
    choice = at.radio(key=state.ROC_LABELS)
    assert choice.value == state.LABELS_TEST and roc_auc_shown(at) == test_auc  # the test set stays the default
    n_anomaly = MIN_PER_KIND + 1
    assert list(choice.options) == ["test set",
                                    f"analysts' labels ({MIN_PER_KIND} normal, {n_anomaly} anomaly, 2 unsure left out)"]
    choice.set_value(state.LABELS_ANALYSTS).run()
    assert_clean(at)
    assert (f"rest on the analysts' {MIN_PER_KIND + n_anomaly} labels ({MIN_PER_KIND} normal, {n_anomaly} anomaly); "
            f"2 unsure and {len(s) - MIN_PER_KIND - n_anomaly - 2:,} unlabelled test images are left out") in texts(at)
    idx = np.array(normal + anomaly)
    codes = np.array([0] * len(normal) + [1] * len(anomaly))
    assert roc_auc_shown(at) == pytest.approx(metrics.roc_auc(codes, s[idx]), abs=1e-3)
    assert roc_auc_shown(at) < 0.5 < test_auc  # by these labels the run ranks the wrong way
    # the best-F1 policy is set on the analysts' labels
    at.radio(key=state.ROC_POLICY).set_value(state.POLICY_F1).run()
    assert_clean(at)
    want = metrics.threshold_best_f1(codes, s[idx])
    lo, hi = at.slider(key=state.ROC_THRESHOLD).min, at.slider(key=state.ROC_THRESHOLD).max
    assert at.session_state[state.ROC_THRESHOLD] == pytest.approx(float(np.clip(want, lo, hi)))
    report = metrics.report_at_threshold(codes, s[idx], at.session_state[state.ROC_THRESHOLD])
    assert {m.label: m.value for m in at.metric}["Recall"] == f"{report.recall:.1%}"


def test_damaged_labels_file_gives_one_error_and_the_pages_work(runs_dir, run_and_split):  # noqa: F811
    run, stored, split = run_and_split
    (runs_dir / "labels.sqlite").write_bytes(b"this is not a database" * 100)
    at = open_app(RANKED)
    assert not at.exception
    assert len(at.error) == 1 and "labels.sqlite is damaged or not a labels database" in at.error[0].value
    assert len(at.get("image")) == 24 and not tile_pills(at, "ranked")  # the images are there, no marking
    assert not [b for b in at.button if b.key == state.LB_BULK_APPLY + "ranked"]
    i = list(details_buttons(at, "ranked"))[0]
    details_buttons(at, "ranked")[i].click().run()  # the detail view works and says why there are no labels
    assert not at.exception and len(at.error) == 1
    assert "labels are unavailable" in view_text(detail_view(at))
    at = open_app(ROC)
    assert not at.exception and len(at.error) == 1 and "damaged" in at.error[0].value
    assert len(at.get("plotly_chart")) >= 3 and "AUC" in texts(at)  # curves from the test set's labels


def test_read_only_mode_shows_labels_but_marks_nothing(runs_dir, run_and_split, monkeypatch):  # noqa: F811
    run, stored, split = run_and_split
    at = open_app(RANKED)
    i = list(tile_pills(at, "ranked"))[0]
    label_test_images(runs_dir, run, split, [i], [])
    monkeypatch.setenv("DOC_READ_ONLY", "1")
    at = open_app(RANKED)
    assert_clean(at)
    pills = tile_pills(at, "ranked")
    assert len(pills) == 24 and all(p.disabled for p in pills.values()) and pills[i].value == "normal"
    assert analyst_marks(at) == ["normal"] and "Marking images is turned off (read-only mode)" in texts(at)
    assert not [b for b in at.button if b.key == state.LB_BULK_APPLY + "ranked"]
    details_buttons(at, "ranked")[i].click().run()
    assert_clean(at)
    assert not [b for b in at.button if b.key == state.LB_DETAIL_SAVE]
    assert "Marking images is turned off" in view_text(detail_view(at))
    assert store_of(runs_dir).counts(run.run_id)["normal"] == 1


def test_images_marked_normal_join_the_bank_and_undo_restores_it(runs_dir, run_and_split):  # noqa: F811
    from doc_core.workflow.bank_growth import bank_history

    run, stored, split = run_and_split
    at = open_app(RANKED)
    at.get("button_group")[0].set_value(state.VIEW_ALARMS).run()  # the false alarms, most anomalous first
    add = at.button(key=state.BANK_ADD + "ranked")
    assert add.disabled and add.label == "Add the 0 images marked normal to the normal bank"
    assert "The normal bank is as trained." in texts(at)
    confirmed = list(tile_pills(at, "ranked"))[:3]
    for i in confirmed:
        tile_pills(at, "ranked")[i].set_value("normal").run()
    add = at.button(key=state.BANK_ADD + "ranked")
    assert not add.disabled and add.label == "Add the 3 images marked normal to the normal bank"
    add.click().run()
    assert_clean(at)
    (change,) = bank_history(run.run_id, runs_dir)
    assert sorted(change.added_test_indices) == sorted(confirmed) and change.n_added == 3
    body = texts(at)  # the change's summary next to the button, the new threshold at the top of the page
    assert "Added 3 images to the normal bank" in body and f"{change.no_longer_flagged:,} no longer flagged" in body
    assert f"Threshold {change.operating_threshold_after:.4g}" in body and "has grown 1 time since training" in body
    after = runs.load_scores(run.run_id, runs_dir).scores
    assert np.all(after[confirmed] <= stored.scores[confirmed])  # they now score at their leave-one-out level
    assert np.any(after[confirmed] < stored.scores[confirmed])
    assert at.button(key=state.BANK_ADD + "ranked").disabled  # nothing left to add
    # the detail view names the nearest bank images for what they are: the added image itself (distance 0), and
    # normal training images by their index among all of them (the calibration slice is not in the bank)
    from doc_core.explain.embedding import nearest_normal

    det = runs.load_detector(run.run_id, runs_dir)
    assert len(det.train_index_) < len(split.train_normal)  # this run holds a calibration slice out
    i = confirmed[0]
    details_buttons(at, "ranked")[i].click().run()
    assert_clean(at)
    shown = re.findall(r"((?:train|added test) #\d+) · d ([\d.e+-]+)", view_text(detail_view(at)))
    _, rows = nearest_normal(det, runs.load_features(run.run_id, runs_dir)[i][None], 5)
    n_trained = len(det.train_index_)
    added = change.added_test_indices
    want = [f"train #{det.train_index_[r]}" if r < n_trained else f"added test #{added[r - n_trained]}"
            for r in rows[0]]
    assert [name for name, _ in shown] == want
    assert shown[0][0] == f"added test #{i}" and float(shown[0][1]) < 1e-3  # itself (up to float32 rounding)
    at.button(key=state.DETAIL_CLOSE).click().run()
    at.button(key=state.BANK_UNDO + "ranked").click().run()
    assert_clean(at)
    assert "Undone" in texts(at) and "The normal bank is as trained." in texts(at)
    assert bank_history(run.run_id, runs_dir) == []
    np.testing.assert_array_equal(runs.load_scores(run.run_id, runs_dir).scores, stored.scores)
    assert at.button(key=state.BANK_ADD + "ranked").label == "Add the 3 images marked normal to the normal bank"


def test_explorer_with_training_images_after_a_bank_change(runs_dir, run_and_split):  # noqa: F811
    """The maps' normal training points are the bank's trained rows only: the images added from labels are test
    images (they were out of range of the training images before, and every map failed)."""
    from test_app_explore import map_args, wait_for_maps

    run, stored, split = run_and_split
    at = open_app(RANKED)
    at.get("button_group")[0].set_value(state.VIEW_ALARMS).run()
    for i in list(tile_pills(at, "ranked"))[:5]:
        tile_pills(at, "ranked")[i].set_value("normal").run()
    at.button(key=state.BANK_ADD + "ranked").click().run()
    assert_clean(at)
    at.session_state[state.EX_POINTS] = 500
    at.session_state[state.EX_TRAIN] = True
    at.switch_page(EXPLORER).run()
    wait_for_maps(at)
    assert_clean(at)
    assert not at.info, [i.value for i in at.info]  # no "No map of ..." note
    args = map_args(at)
    assert len(args["figures"]) == 3
    assert sum(h[0].startswith("normal training · train #") for h in args["hover"]) == 125  # a quarter of the points
