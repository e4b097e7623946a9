"""Every page of the Streamlit app through streamlit.testing.v1.AppTest, with no run and with a tiny finished run.

The run is made once per module with doc_core (tiny backbone, 200 normal and 200 reference Fashion-MNIST images);
each test gets its own copy of the runs folder through DOC_RUNS_DIR.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from app_server import fashion_or_skip, make_tiny_run
from streamlit.testing.v1 import AppTest

from doc_core.data.datasets import DatasetSpec
from doc_core.evaluation.metrics import threshold_at_fpr
from doc_core.model.training import TrainConfig
from doc_core.scoring import make_scorer
from doc_core.workflow import runs
from doc_core.workflow.jobs import SUCCEEDED, steps_per_epoch
from ui import nav, state

ROOT = Path(__file__).resolve().parent.parent
DATASET, TRAINING, ROC = "pages/1_dataset.py", "pages/2_training.py", "pages/3_roc_threshold.py"
TIMEOUT = 120  # the first run of a session imports TensorFlow


@pytest.fixture(scope="module")
def fashion():
    return fashion_or_skip()


@pytest.fixture(scope="module")
def tiny_run_dir(tmp_path_factory, fashion) -> Path:
    """A runs folder with one finished tiny run on a small Fashion-MNIST split, made as the Training page does."""
    return make_tiny_run(tmp_path_factory.mktemp("runs"), fashion, "tiny fixture run", epochs=2)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch, tiny_run_dir) -> Path:
    """A private copy of the runs folder with the tiny run, used by the app through DOC_RUNS_DIR."""
    where = tmp_path / "runs"
    shutil.copytree(tiny_run_dir, where)
    monkeypatch.setenv(runs.RUNS_DIR_ENV, str(where))
    return where


@pytest.fixture
def empty_runs_dir(tmp_path, monkeypatch, fashion) -> Path:
    where = tmp_path / "no-runs"
    monkeypatch.setenv(runs.RUNS_DIR_ENV, str(where))
    return where


def open_app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    if page:
        at.switch_page(page).run()
    return at


def texts(at: AppTest) -> str:
    """All markdown, captions, alerts and headings of the page, as one string."""
    parts = [e.value for kind in ("markdown", "caption", "title", "subheader", "info", "success", "warning",
                                  "error") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def small_dataset(at: AppTest) -> None:
    """Use 200 normal and 200 reference images (as a user would on the Dataset page)."""
    at.switch_page(DATASET).run()
    at.number_input(key=state.DS_N_NORMAL).set_value(200).run()
    at.number_input(key=state.DS_N_REFERENCE).set_value(200).run()


def tiny_settings(at: AppTest, epochs: int = 2, name: str = "") -> None:
    at.switch_page(TRAINING).run()
    at.selectbox(key=state.TR_BACKBONE).select("tiny").run()
    at.select_slider(key=state.TR_INPUT_SIZE).set_value(32)
    at.number_input(key=state.TR_EPOCHS).set_value(epochs)
    at.number_input(key=state.TR_BATCH).set_value(32)
    at.text_input(key=state.TR_NAME).input(name).run()
    assert at.session_state[state.TR_EPOCHS] == epochs  # a value out of the widget's range would be dropped


def wait_for_job(at: AppTest, timeout: float = 120):
    from ui import cached

    job = cached.job_registry().get(at.session_state[state.JOB_ID])
    assert job is not None
    assert job.join(timeout), "training did not finish in time"
    return job.snapshot()


# ------------------------------------------------------------------------------------------------ without a run


def test_home_without_a_run(empty_runs_dir):
    at = open_app()
    assert_clean(at)
    assert at.title[0].value == "DOC Explorer"
    body = texts(at)
    assert "No run yet" in body and "Sneaker" in body and "Suggested next step" in body
    assert "6,000 reference (8 classes)" in body
    # every page of the app is one of the next steps, Compare methods included
    steps = {el.proto.label.split(" · ", 1)[1] for el in at.get("page_link") if " · " in el.proto.label}
    assert steps == {nav.TITLES[page] for page in nav.PAGES[1:]}, steps  # the numbered next-step cards


def test_dataset_page_defaults_to_the_reference_experiment(empty_runs_dir):
    at = open_app(DATASET)
    assert_clean(at)
    assert at.multiselect(key=state.DS_NORMAL).value == ["Sneaker"]
    assert at.multiselect(key=state.DS_ANOMALY).value == ["Ankle boot"]
    assert len(at.multiselect(key=state.DS_REFERENCE).value) == 8
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Normal training": "6,000", "Reference": "6,000", "Test normal": "1,000",
                       "Test anomaly": "1,000"}
    assert len(at.get("image")) == 4  # one grid of samples per role
    assert "reference experiment" in texts(at)


def test_training_page_without_a_run(empty_runs_dir):
    at = open_app(TRAINING)
    assert_clean(at)
    assert "No saved runs yet" in texts(at)
    assert at.button[0].label == "Start training" and not at.button[0].disabled
    defaults = TrainConfig()
    steps = steps_per_epoch(5400, defaults.batch_size) * defaults.epochs
    assert f"{steps:,} training steps" in texts(at)  # 6,000 sneakers less 10 % held out, default batch and epochs
    assert "Threshold: set on 600 of the 6,000 normal training images" in texts(at)


def test_roc_page_without_a_run_says_what_to_do(empty_runs_dir):
    at = open_app(ROC)
    assert_clean(at)
    assert "No run yet" in texts(at) and not at.get("plotly_chart")


# ------------------------------------------------------------------------------------------------ with a run


def test_home_with_a_run(runs_dir):
    at = open_app()
    assert_clean(at)
    body = texts(at)
    assert "tiny fixture run" in body and "test AUC" in body and "Suggested next step" in body


def test_training_page_lists_runs_and_shows_curves(runs_dir):
    at = open_app(TRAINING)
    assert_clean(at)
    assert "Loss curves of the active run: tiny fixture run" in texts(at)
    assert len(at.get("plotly_chart")) == 1
    table = at.dataframe[0].value
    assert list(table["Name"]) == ["tiny fixture run"] and 0 <= table["Test AUC"][0] <= 1


def test_roc_page_with_a_run(runs_dir):
    at = open_app(ROC)
    assert_clean(at)
    assert len(at.get("plotly_chart")) == 4  # ROC, PR, histogram, confusion matrix
    labels = [m.label for m in at.metric]
    assert labels == ["Precision", "Recall", "F1", "Accuracy", "False-positive rate", "Flagged of 2,000"]
    assert at.radio(key=state.ROC_POLICY).value == state.POLICY_PERCENTILE
    assert at.download_button[0].label == "Download scores (CSV)"
    # the default threshold rests on the 30 normal images held out of training (30 = the minimum, of 200)
    assert "scores of the 30 held-out calibration images" in texts(at)


def test_roc_page_for_a_run_saved_before_calibration(runs_dir):
    """An older run (no calibration scores, no calibration facts): its percentile threshold is on the leave-one-out
    training scores and the page says so; the target-FPR policy is then set on the test labels and called optimistic."""
    import numpy as np

    run = runs.list_runs(runs_dir)[0]
    arrays = dict(np.load(run.path / "scores.npz"))
    del arrays["calibration_scores"]
    np.savez(run.path / "scores.npz", **arrays)
    doc = json.loads((run.path / "run.json").read_text())
    del doc["calibration"]
    (run.path / "run.json").write_text(json.dumps(doc))
    at = open_app(ROC)
    assert_clean(at)
    assert "no held-out calibration images: the threshold rests on the leave-one-out scores" in texts(at)
    train = runs.load_scores(run.run_id, runs_dir).train_scores
    assert at.slider(key=state.ROC_THRESHOLD).value == pytest.approx(np.percentile(train, 95.0), rel=1e-4)
    at.radio(key=state.ROC_POLICY).set_value(state.POLICY_FPR).run()
    assert_clean(at)
    assert "Set on the test set's labelled normal images, so the metrics below are optimistic" in texts(at)


def test_threshold_policies_move_the_threshold_and_can_be_saved(runs_dir):
    at = open_app(ROC)
    start = at.slider(key=state.ROC_THRESHOLD).value
    at.radio(key=state.ROC_POLICY).set_value(state.POLICY_FPR).run()
    at.number_input(key=state.ROC_TARGET_FPR).set_value(10.0).run()
    assert_clean(at)
    # set on the held-out calibration images, without test labels (the test set's FPR is then a measurement)
    cal = runs.load_scores(runs.list_runs(runs_dir)[0].run_id, runs_dir).calibration_scores
    assert at.slider(key=state.ROC_THRESHOLD).value == pytest.approx(threshold_at_fpr(cal, 0.1), rel=1e-4)
    assert "at most this share of the 30 held-out calibration images" in texts(at)
    at.radio(key=state.ROC_POLICY).set_value(state.POLICY_F1).run()
    best = at.slider(key=state.ROC_THRESHOLD).value
    assert best != start and "test set's labels, so the metrics below are optimistic" in texts(at)
    next(b for b in at.button if b.label == "Save threshold into run").click().run()
    assert_clean(at)
    assert "Saved threshold" in texts(at)
    run = runs.list_runs(runs_dir)[0]
    assert run.threshold["policy"] == "best_f1" and run.threshold["value"] == pytest.approx(best)
    # moving the slider switches to the manual policy
    at.slider(key=state.ROC_THRESHOLD).set_value(best * 0.5).run()
    assert at.radio(key=state.ROC_POLICY).value == state.POLICY_MANUAL
    # a fresh session opens the run at its saved operating point
    again = open_app(ROC)
    assert again.radio(key=state.ROC_POLICY).value == state.POLICY_F1
    assert again.slider(key=state.ROC_THRESHOLD).value == pytest.approx(best)


def test_other_scorers_without_retraining(runs_dir):
    at = open_app(ROC)
    at.get("button_group")[0].set_value(state.SCORER_LOF).run()
    at.number_input(key=state.ROC_K).set_value(10).run()
    assert_clean(at)
    assert len(at.get("plotly_chart")) == 4
    assert "local outlier factor" in json.dumps(at.get("plotly_chart")[2].proto.spec)
    next(b for b in at.button if b.label == "Compare").click().run()
    assert_clean(at)
    table = at.dataframe[0].value
    k = make_scorer("knn").k
    assert list(table["Scorer"]) == [f"as trained (k-NN distance, k={k})", "k-NN distance, k=1", "LOF, k=20"]
    assert table["Test AUC"].between(0, 1).all()


def test_impossible_k_is_a_message_not_a_traceback(runs_dir):
    at = open_app(ROC)
    at.get("button_group")[0].set_value(state.SCORER_KNN).run()
    at.number_input(key=state.ROC_K).set_value(500).run()  # more neighbours than the 200 bank vectors
    assert not at.exception
    assert at.error and "Cannot score" in at.error[0].value


def test_make_active_and_delete_a_run(runs_dir, tiny_run_dir):
    extra = shutil.copytree(tiny_run_dir, runs_dir.parent / "more")
    (only,) = [p for p in extra.iterdir()]
    doc = json.loads((only / "run.json").read_text())
    doc.update(run_id="20000101-000000-older", name="older run", created="2000-01-01T00:00:00+00:00")
    shutil.copytree(only, runs_dir / "20000101-000000-older")
    (runs_dir / "20000101-000000-older" / "run.json").write_text(json.dumps(doc))

    at = open_app(TRAINING)
    assert list(at.dataframe[0].value["Name"]) == ["tiny fixture run", "older run"]
    at.selectbox(key=state.TR_PICK_RUN).select("20000101-000000-older").run()
    next(b for b in at.button if b.label == "Make active").click().run()
    assert at.session_state[state.RUN_ID] == "20000101-000000-older"
    assert "older run" in "\n".join(m.value for m in at.sidebar.markdown)
    next(b for b in at.button if b.label == "Delete permanently").click().run()
    assert_clean(at)
    assert "Deleted run 20000101-000000-older" in texts(at)
    assert [r.name for r in runs.list_runs(runs_dir)] == ["tiny fixture run"]
    assert at.session_state[state.RUN_ID] is None  # back to the newest run


# what a page switch must never redo once a page has been visited (the data, the run's arrays, curves, figures)
EXPENSIVE = ("doc_core.workflow.runs.load_scores", "doc_core.workflow.runs.load_history",
             "doc_core.workflow.runs.load_detector", "doc_core.workflow.runs.load_features", "ui.cached.load_dataset",
             "ui.cached.load_fashion_mnist", "doc_core.explain.embedding.tsne_2d",
             "doc_core.evaluation.metrics.roc_curve", "doc_core.evaluation.metrics.pr_curve", "ui.charts.loss_curves")


def count_calls(monkeypatch, targets: tuple[str, ...] = EXPENSIVE) -> dict[str, int]:
    """Wrap each function named ``module.name`` in ``targets`` with a counter (the real one still runs); returns the
    live counts. Page switches that hit the caches leave every count at 0, whatever the machine's speed."""
    import importlib

    counts = dict.fromkeys(targets, 0)
    for target in targets:
        module, name = target.rsplit(".", 1)
        mod = importlib.import_module(module)

        def spy(*args, _real=getattr(mod, name), _target=target, **kwargs):
            counts[_target] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(mod, name, spy)
    return counts


def test_page_switches_recompute_nothing_once_visited(runs_dir, monkeypatch):
    at = open_app()
    for page in (DATASET, TRAINING, ROC, DATASET, TRAINING, ROC):  # warm the caches once
        at.switch_page(page).run()
    calls = count_calls(monkeypatch)
    for page in (DATASET, TRAINING, ROC):
        at.switch_page(page).run()
        assert_clean(at)
    assert not any(calls.values()), calls
    at.switch_page(ROC).run()  # the spies do see work that is not cached: the ROC curve of a k no test asks for
    at.get("button_group")[0].set_value(state.SCORER_KNN).run()
    at.number_input(key=state.ROC_K).set_value(13).run()
    assert_clean(at)
    assert calls["doc_core.evaluation.metrics.roc_curve"] >= 1, calls


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_split_shows_a_message_and_keeps_the_active_dataset(empty_runs_dir):
    at = open_app(DATASET)
    at.multiselect(key=state.DS_ANOMALY).set_value(["Sneaker"]).run()
    assert not at.exception
    assert "both normal and anomalous" in at.error[0].value
    assert at.session_state[state.DATASET] == DatasetSpec.fashion_mnist()


def test_folder_without_the_layout_shows_the_layout(empty_runs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DOC_SERVER_FOLDERS", str(tmp_path))  # the option is off without an allow-list
    (tmp_path / "empty").mkdir()
    at = open_app(DATASET)
    at.get("button_group")[0].set_value(state.SOURCE_FOLDER).run()
    at.text_input(key=state.DS_FOLDER).input(str(tmp_path / "empty")).run()
    assert not at.exception
    assert "missing folder" in at.error[0].value and "still" in at.error[0].value
    assert any("reference/" in c.value for c in at.code)


def test_zip_upload(empty_runs_dir, tmp_path, monkeypatch):
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    monkeypatch.setenv("DOC_UPLOADS_DIR", str(tmp_path / "uploads"))
    at = open_app(DATASET)
    at.get("button_group")[0].set_value(state.SOURCE_ZIP).run()
    at.get("file_uploader")[0].upload("junk.zip", b"not a zip at all").run()
    assert not at.exception and "not a valid zip" in at.error[0].value

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, value in [("train/a.png", 90), ("train/b.png", 95), ("reference/x/1.png", 20),
                            ("reference/y/1.png", 200), ("test/normal/n.png", 92), ("test/anomaly/o.png", 250)]:
            png = io.BytesIO()
            Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(png, format="PNG")
            zf.writestr(f"shapes/{path}", png.getvalue())
    at = open_app(DATASET)
    at.get("button_group")[0].set_value(state.SOURCE_ZIP).run()
    at.get("file_uploader")[0].upload("shapes.zip", buf.getvalue()).run()
    assert_clean(at)
    spec = at.session_state[state.DATASET]
    assert spec.kind == "folder" and spec.label == "shapes.zip"
    assert {m.label: m.value for m in at.metric}["Normal training"] == "2"


# ------------------------------------------------------------------------------------------------ training


def test_train_through_the_page_and_see_the_run_everywhere(empty_runs_dir):
    at = open_app()
    small_dataset(at)
    tiny_settings(at, name="from the page")
    assert "10 training steps" in texts(at)  # 200 sneakers less the 30 held out for calibration: 5 per epoch
    next(b for b in at.button if b.label == "Start training").click().run()
    assert_clean(at)
    snap = wait_for_job(at)
    assert snap.status == SUCCEEDED, snap.error
    at.run()
    assert_clean(at)
    assert "Training finished" in texts(at) and "from the page" in texts(at)
    assert at.session_state[state.RUN_ID] == snap.run.run_id
    # this session's curves, drawn by the component that updates them in place (ui.live_chart)
    (live,) = at.get("component_instance")
    assert live.proto.component_name == "ui.live_chart.live_chart" and not at.get("plotly_chart")
    figure = json.loads(json.loads(live.proto.json_args)["figure"])
    assert len(figure["data"]) == 6 and "template" not in figure["layout"]  # raw and smoothed, three losses
    at.switch_page(ROC).run()
    assert_clean(at)
    assert len(at.get("plotly_chart")) == 4
    saved = runs.list_runs(empty_runs_dir)
    assert [r.name for r in saved] == ["from the page"] and saved[0].dataset["split"]["n_normal"] == 200


def test_two_sessions_train_at_once_without_mixing(empty_runs_dir):
    first, second = open_app(), open_app()
    for at, name, epochs in ((first, "first session", 3), (second, "second session", 1)):
        small_dataset(at)
        tiny_settings(at, epochs=epochs, name=name)
    next(b for b in first.button if b.label == "Start training").click().run()
    next(b for b in second.button if b.label == "Start training").click().run()
    assert first.session_state[state.JOB_ID] != second.session_state[state.JOB_ID]
    a, b = wait_for_job(first), wait_for_job(second)
    assert (a.status, b.status) == (SUCCEEDED, SUCCEEDED)
    assert (a.steps_total, b.steps_total) == (15, 5)  # 170 of 200 normal images train (30 calibrate)
    first.run()
    second.run()
    assert first.session_state[state.RUN_ID] == a.run.run_id != second.session_state[state.RUN_ID] == b.run.run_id
    assert "first session" in texts(first) and "second session" in texts(second)
    assert "second session" not in texts(first)


def test_stop_keeps_what_was_trained(empty_runs_dir):
    at = open_app()
    small_dataset(at)
    tiny_settings(at, epochs=200, name="stopped run")  # 1,000 steps: long enough to stop
    next(b for b in at.button if b.label == "Start training").click().run()
    assert next(b for b in at.button if b.label == "Start training").disabled
    from ui import cached

    job = cached.job_registry().get(at.session_state[state.JOB_ID])
    deadline = time.monotonic() + 60
    while job.snapshot().n_records < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    next(b for b in at.button if b.label == "Stop").click().run()
    snap = wait_for_job(at)
    at.run()
    assert_clean(at)
    assert snap.status == SUCCEEDED and snap.stopped_early and snap.n_records < 1000
    assert "stopped early" in texts(at)
    (run,) = runs.list_runs(empty_runs_dir)
    assert run.stopped_early and run.steps == snap.n_records and run.steps_total == 1000


def test_missing_weights_disable_start(empty_runs_dir):
    at = open_app(TRAINING)
    at.selectbox(key=state.TR_ALPHA).select(0.35).run()  # only α 1.0 weights ship with the project
    assert not at.exception
    assert any("No ImageNet weights" in w.value for w in at.warning)
    assert next(b for b in at.button if b.label == "Start training").disabled


def test_pretrained_baseline_through_the_page(empty_runs_dir):
    at = open_app()
    small_dataset(at)
    tiny_settings(at, name="no training")
    at.selectbox(key=state.TR_TRAINABLE).select("none").run()
    assert at.number_input(key=state.TR_EPOCHS).disabled
    assert "No training" in texts(at)
    next(b for b in at.button if b.label == "Start training").click().run()
    snap = wait_for_job(at)
    at.run()
    assert_clean(at)
    assert snap.status == SUCCEEDED and snap.run.steps == 0
    assert "no loss curves" in texts(at) and len(at.get("plotly_chart")) == 0


def test_a_reloaded_tab_can_follow_its_running_job(empty_runs_dir):
    first = open_app()
    small_dataset(first)
    tiny_settings(first, epochs=200, name="long run")  # the most the page allows: 1,400 steps
    first.number_input(key=state.TR_BATCH).set_value(16).run()  # 2,600 steps
    next(b for b in first.button if b.label == "Start training").click().run()
    job_id = first.session_state[state.JOB_ID]
    reloaded = open_app(TRAINING)  # a new session, as after a browser reload
    assert_clean(reloaded)
    assert "A training job is running on this server" in texts(reloaded)
    next(b for b in reloaded.button if b.label == "Follow this job here").click().run()
    assert reloaded.session_state[state.JOB_ID] == job_id
    next(b for b in reloaded.button if b.label == "Stop").click().run()
    snap = wait_for_job(reloaded)
    # stopped from the tab that follows it: before its first step, or part-way through its 2,600 steps
    assert snap.stop_requested and (snap.status == "stopped" or snap.stopped_early), snap
    assert snap.n_records < 2600


def test_live_curves_of_a_long_run_stay_small():
    """The live view redraws every second: a long run must not make the figure grow with it (epoch lines were
    quadratic once); the number of lines and points drawn is bounded."""
    from doc_core.model.training import StepRecord
    from ui import charts

    records = [StepRecord(epoch=1 + i // 12, step=i + 1, steps_total=6000, l_d=2.0 / (1 + i), l_c=0.01, total=2.0,
                          images_per_s=1e3, elapsed_s=i * 0.01) for i in range(6000)]
    fig = charts.loss_curves(records)
    assert len(fig.layout.shapes) <= 3 * 12 and all(len(trace.x) <= 1500 for trace in fig.data)
    assert fig.data and min(trace.x[-1] for trace in fig.data) > 5990  # thinned over the whole run, not cut short
