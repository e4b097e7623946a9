"""State that must never go stale (AppTest): a dataset change or a new run reaches the sidebar and every page at once.

Covers: an uploaded zip in the sidebar right away; this session's finished training not shown as the curves of another
dataset; a fresh default name per run; the finished run selected in the runs picker; the Dataset column of the runs
table wide enough to read; the ROC page following the active run chosen on the Training page (no picker of its own).
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime

from test_app import (ROC, TRAINING, assert_clean, empty_runs_dir, fashion, open_app, runs_dir,  # noqa: F401
                      small_dataset, texts, tiny_run_dir, tiny_settings, wait_for_job)
from test_app_own_images import parts_zip

from doc_core.data.datasets import DatasetSpec
from doc_core.workflow import runs
from doc_core.workflow.jobs import SUCCEEDED
from doc_core.workflow.run_names import default_run_name
from ui import nav, state


def sidebar_text(at) -> str:
    return "\n".join(str(m.value) for m in at.sidebar.markdown)


def test_default_run_names_name_the_dataset_and_never_repeat():
    when = datetime(2024, 5, 1, 14, 3, 59)
    fashion_spec = DatasetSpec.fashion_mnist()
    first = default_run_name(fashion_spec, when)
    assert first == "Sneaker vs Ankle boot · 2024-05-01 14:03"
    assert default_run_name(fashion_spec, when, [first]) == f"{first} (2)"
    assert default_run_name(fashion_spec, when, [first, f"{first} (2)"]) == f"{first} (3)"
    assert default_run_name(DatasetSpec.folder("/x/tiles", 32, label="tiles.zip"), when).startswith("tiles.zip · ")
    assert default_run_name(DatasetSpec.folder("/x/tiles", 32), when).startswith("tiles · ")


def test_an_uploaded_zip_is_the_active_dataset_in_the_sidebar_at_once(empty_runs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DOC_UPLOADS_DIR", str(tmp_path / "uploads"))
    at = open_app(nav.DATASET)
    assert "Fashion-MNIST" in sidebar_text(at)
    at.get("button_group")[0].set_value(state.SOURCE_ZIP).run()
    at.get("file_uploader")[0].upload("parts.zip", parts_zip()).run()
    assert_clean(at)
    assert "parts.zip" in sidebar_text(at) and "Fashion-MNIST" not in sidebar_text(at)  # no extra rerun needed
    for page in nav.PAGES:  # every page, Home included
        at.switch_page(page).run()
        assert_clean(at)
        assert "parts.zip" in sidebar_text(at), page
        if page == nav.HOME:  # its Active dataset card
            assert "Own images: parts.zip" in texts(at)
    at.switch_page(TRAINING).run()
    assert "Own images: parts.zip" in texts(at)


def test_runs_get_their_own_names_the_picker_follows_and_other_datasets_curves_are_not_shown(empty_runs_dir):
    at = open_app()
    small_dataset(at)
    tiny_settings(at, epochs=1, name="")  # no name typed: a default one
    assert "Sneaker vs Ankle boot · " in at.text_input(key=state.TR_NAME).placeholder
    next(b for b in at.button if b.label == "Start training").click().run()
    assert at.session_state[state.TR_NAME] == ""
    first = wait_for_job(at)
    assert first.status == SUCCEEDED, first.error
    at.run()
    assert_clean(at)
    assert at.selectbox(key=state.TR_PICK_RUN).value == first.run.run_id  # the finished run, not a previous one
    assert "This session's training" in [s.value for s in at.subheader]

    # another dataset: this session's finished training belongs to the first one, so its curves are not shown as
    # this dataset's; the (first) run shown is labelled with its own dataset
    small_dataset(at)
    at.number_input(key=state.DS_SEED).set_value(1).run()
    assert_clean(at)
    at.switch_page(TRAINING).run()
    assert_clean(at)
    assert "This session's training" not in [s.value for s in at.subheader]
    assert "not on the active dataset" in texts(at)

    # a second run, again without a typed name: a name of its own; the picker and the active run follow it
    tiny_settings(at, epochs=1, name="")
    next(b for b in at.button if b.label == "Start training").click().run()
    second = wait_for_job(at)
    assert second.status == SUCCEEDED, second.error
    at.run()
    assert_clean(at)
    names = [r.name for r in runs.list_runs(empty_runs_dir)]
    assert len(names) == 2 and len(set(names)) == 2, names
    assert all(n.startswith("Sneaker vs Ankle boot · ") for n in names), names
    assert at.selectbox(key=state.TR_PICK_RUN).value == second.run.run_id
    assert at.session_state[state.RUN_ID] == second.run.run_id
    assert "This session's training" in [s.value for s in at.subheader]
    assert second.run.name in sidebar_text(at)

    # back to the first dataset: its run becomes the active run again, in the sidebar and the picker
    at.switch_page(nav.DATASET).run()
    at.number_input(key=state.DS_SEED).set_value(0).run()
    assert_clean(at)
    assert at.session_state[state.RUN_ID] == first.run.run_id
    assert first.run.name in sidebar_text(at)
    at.switch_page(TRAINING).run()
    assert at.selectbox(key=state.TR_PICK_RUN).value == first.run.run_id


def two_runs(runs_dir, tiny_run_dir) -> None:
    """Add an older copy of the fixture run named "older run", trained on another dataset (seed 7)."""
    extra = shutil.copytree(tiny_run_dir, runs_dir.parent / "more")
    (only,) = list(extra.iterdir())
    doc = json.loads((only / "run.json").read_text())
    doc.update(run_id="20000101-000000-older", name="older run", created="2000-01-01T00:00:00+00:00")
    doc["dataset"] = {**doc["dataset"], "split": {**doc["dataset"]["split"], "seed": 7},
                      "description": "Fashion-MNIST, seed 7 (older)"}
    shutil.copytree(only, runs_dir / "20000101-000000-older")
    (runs_dir / "20000101-000000-older" / "run.json").write_text(json.dumps(doc))


def test_the_roc_page_follows_the_run_made_active_on_the_training_page(runs_dir, tiny_run_dir):
    two_runs(runs_dir, tiny_run_dir)
    at = open_app(ROC)
    assert_clean(at)
    assert not at.selectbox  # no run picker of its own: the active run, as on every other page
    assert "tiny fixture run" in texts(at) and "pick another run on the Training page" in texts(at)
    at.switch_page(TRAINING).run()
    table = at.dataframe[0]
    assert list(table.value.columns[:3]) == ["", "Name", "Dataset"]  # the Dataset column near the front ...
    config = json.loads(table.proto.columns)
    assert config["Dataset"]["width"] == "large"  # ... and wide enough to read
    at.selectbox(key=state.TR_PICK_RUN).select("20000101-000000-older").run()
    next(b for b in at.button if b.label == "Make active").click().run()
    assert "trained on Fashion-MNIST, seed 7 (older)" in texts(at)  # labelled with its own dataset
    at.switch_page(ROC).run()
    assert_clean(at)
    assert "Run **older run**" in texts(at) and "older run" in sidebar_text(at)
    assert len(at.get("plotly_chart")) == 4
