"""Confirmations appear where the user is looking (issue 13, point 7): right under the button that was pressed, and
as a toast, never at the top of the page. Driven through streamlit.testing.v1.AppTest with a tiny finished run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from app_server import fashion_or_skip, make_tiny_run
from streamlit.testing.v1 import AppTest

from doc_core.workflow import runs
from ui import state

ROOT = Path(__file__).resolve().parent.parent
TRAINING, ROC = "pages/2_training.py", "pages/3_roc_threshold.py"
TIMEOUT = 120  # the first run of a session imports TensorFlow


@pytest.fixture(scope="module")
def tiny_run_dir(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("runs"), fashion_or_skip(), "tiny fixture run", epochs=1)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch, tiny_run_dir) -> Path:
    where = tmp_path / "runs"
    shutil.copytree(tiny_run_dir, where)
    monkeypatch.setenv(runs.RUNS_DIR_ENV, str(where))
    return where


def open_app(page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.switch_page(page).run()
    return at


def in_order(at: AppTest) -> list:
    """The main area's elements in the order they are drawn (depth first)."""
    out = []

    def walk(node):
        children = getattr(node, "children", None)
        if children is None:
            out.append(node)
            return
        for key in sorted(children):
            walk(children[key])

    walk(at.main)
    return out


def position(elements: list, test) -> int:
    return next(i for i, e in enumerate(elements) if test(e))


def assert_right_under(at: AppTest, button: str, kind: str, text: str) -> None:
    """The message is drawn after the button with at most a few small elements between (the row's other buttons),
    and nothing of the page's top (title, charts) comes before the button after it."""
    elements = in_order(at)
    b = position(elements, lambda e: e.type == "button" and getattr(e, "label", "") == button)
    m = position(elements, lambda e: e.type == kind and text in str(e.value))
    assert b < m <= b + 4, [(e.type, str(getattr(e, "value", getattr(e, "label", "")))[:40]) for e in elements[b:m + 1]]
    title = position(elements, lambda e: e.type == "title")
    assert title < b


def test_saving_a_threshold_is_confirmed_next_to_the_button_and_as_a_toast(runs_dir):
    at = open_app(ROC)
    at.radio(key=state.ROC_POLICY).set_value(state.POLICY_F1).run()
    next(b for b in at.button if b.label == "Save threshold into run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.toast if "Saved threshold" in t.value], "no toast"
    assert [s for s in at.success if "Saved threshold" in s.value]
    assert_right_under(at, "Save threshold into run", "success", "Saved threshold")
    # shown once: the next interaction does not repeat it
    at.slider(key=state.ROC_THRESHOLD).set_value(at.slider(key=state.ROC_THRESHOLD).value * 0.9).run()
    assert not [s for s in at.success if "Saved threshold" in s.value]
    assert not [t for t in at.toast if "Saved threshold" in t.value]


def test_a_failed_save_is_an_error_next_to_the_button(runs_dir, monkeypatch):
    at = open_app(ROC)

    def refuse(*args, **kwargs):
        raise runs.RunError("the run's folder is read-only")

    monkeypatch.setattr(runs, "save_threshold", refuse)
    next(b for b in at.button if b.label == "Save threshold into run").click().run()
    assert [e for e in at.error if "read-only" in e.value]
    assert not [t for t in at.toast if "read-only" in t.value]  # errors stay on the page
    assert_right_under(at, "Save threshold into run", "error", "Could not save the threshold")


def test_make_active_and_delete_are_confirmed_under_the_runs_buttons(runs_dir, tiny_run_dir):
    (only,) = [p for p in tiny_run_dir.iterdir()]
    doc = json.loads((only / "run.json").read_text())
    doc.update(run_id="20000101-000000-older", name="older run", created="2000-01-01T00:00:00+00:00")
    shutil.copytree(only, runs_dir / "20000101-000000-older")
    (runs_dir / "20000101-000000-older" / "run.json").write_text(json.dumps(doc))

    at = open_app(TRAINING)
    at.selectbox(key=state.TR_PICK_RUN).select("20000101-000000-older").run()
    next(b for b in at.button if b.label == "Make active").click().run()
    assert [t for t in at.toast if "older run" in t.value]
    assert_right_under(at, "Make active", "success", "Active run: **older run**")
    next(b for b in at.button if b.label == "Delete permanently").click().run()
    assert not at.exception
    assert [t for t in at.toast if "Deleted run 20000101-000000-older" in t.value]
    assert_right_under(at, "Make active", "success", "Deleted run 20000101-000000-older")


def test_choosing_another_dataset_is_confirmed_by_a_toast(runs_dir):
    at = open_app("pages/1_dataset.py")
    at.number_input(key=state.DS_N_NORMAL).set_value(300).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t for t in at.toast if t.value.startswith("Active dataset:")], [t.value for t in at.toast]
    assert not [s for s in at.success if "Active dataset:" in s.value]  # the page describes it right there
