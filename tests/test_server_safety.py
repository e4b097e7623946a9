"""The dashboard is safe to start: it listens on 127.0.0.1 only, shows browsers no tracebacks, reads server folders
only inside an allow-list (without telling which paths exist), and has a read-only mode for demos."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from app_server import fashion_or_skip, make_tiny_run
from PIL import Image
from streamlit.config import ShowErrorDetailsConfigOptions
from streamlit.testing.v1 import AppTest

from doc_core.data import DataError
from doc_core.data.datasets import (SERVER_FOLDER_REFUSED, SERVER_FOLDERS_ENV, resolve_server_folder,
                               server_folder_roots)
from doc_core.workflow import runs
from ui import access, state

ROOT = Path(__file__).resolve().parent.parent
DATASET, TRAINING, ROC, SCORE = ("pages/1_dataset.py", "pages/2_training.py", "pages/3_roc_threshold.py",
                                 "pages/6_score_images.py")
TIMEOUT = 120  # the first run of a session imports TensorFlow


# ------------------------------------------------------------------------------------------------ server config


def test_config_binds_to_localhost_and_hides_error_details():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["client"]["showErrorDetails"] == "none"
    assert "none" in {o.value for o in ShowErrorDetailsConfigOptions}  # a value Streamlit accepts


def test_streamlit_reads_those_settings_from_the_project():
    shown = subprocess.run([sys.executable, "-m", "streamlit", "config", "show"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120,
                           env={k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}).stdout
    assert re.search(r'^address = "127\.0\.0\.1"$', shown, re.M), shown[-2000:]
    assert re.search(r'^showErrorDetails = "none"$', shown, re.M)


def test_make_app_passes_the_address_defaulting_to_localhost():
    text = (ROOT / "Makefile").read_text()
    assert re.search(r"^ADDRESS \?= 127\.0\.0\.1$", text, re.M)
    recipe = text.split("\napp:", 1)[1].split("\n\n", 1)[0]
    assert "--server.address $(ADDRESS)" in recipe
    if shutil.which("make") is None:
        pytest.skip("make is not installed; the Makefile text was checked")
    dry = lambda *args: subprocess.run(["make", "-n", "app", *args], cwd=ROOT, capture_output=True,  # noqa: E731
                                       text=True, timeout=60, check=True).stdout
    assert "--server.address 127.0.0.1 " in dry()
    assert "--server.address 0.0.0.0 " in dry("ADDRESS=0.0.0.0")


# ------------------------------------------------------------------------------------------------ server folders


def write_dataset(root: Path) -> Path:
    """A tiny folder dataset (2 normal, 2 reference classes, a labelled test set) at ``root``."""
    for path, value in [("train/a.png", 90), ("train/b.png", 95), ("reference/x/1.png", 20),
                        ("reference/y/1.png", 200), ("test/normal/n.png", 92), ("test/anomaly/o.png", 250)]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(root / path)
    return root


@pytest.fixture
def allowed(tmp_path) -> Path:
    """An allowed root holding one dataset, ``data``; ``tmp_path/outside`` is a dataset outside it."""
    root = tmp_path / "allowed"
    write_dataset(root / "data")
    write_dataset(tmp_path / "outside")
    return root


def refused(text: str, roots) -> str:
    with pytest.raises(DataError) as info:
        resolve_server_folder(text, roots)
    return str(info.value)


def test_a_folder_inside_the_root_resolves(allowed):
    assert resolve_server_folder(str(allowed / "data"), [allowed]) == (allowed / "data").resolve()
    assert resolve_server_folder(f"  {allowed}/data/  ", [allowed]) == (allowed / "data").resolve()
    assert resolve_server_folder("data", [allowed]) == (allowed / "data").resolve()  # relative: inside the first
    assert resolve_server_folder(str(allowed), [allowed]) == allowed.resolve()


def test_outside_missing_and_unreadable_paths_give_one_message(allowed, tmp_path, monkeypatch):
    (allowed / "file.png").write_bytes(b"not a folder")
    (allowed / "locked").mkdir()
    messages = {refused(p, [allowed]) for p in (
        str(tmp_path / "outside"),           # exists, readable, a dataset, but outside the root
        "/nonexistent", "/etc", "/",         # missing / existing system folders
        str(allowed / "missing"),            # inside the root but missing
        str(allowed / "file.png"),           # inside the root but a file
        f"{allowed}/data/../../outside",     # climbs out with ..
        "../outside", "", "   ", "a\0b")}    # relative escape, empty, NUL
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p).name == "locked"
                        else real_access(p, mode, **kw))  # unreadable (the tests may run as root, who reads all)
    messages.add(refused(str(allowed / "locked"), [allowed]))
    assert messages == {SERVER_FOLDER_REFUSED}
    assert "/etc" not in SERVER_FOLDER_REFUSED and "exist" in SERVER_FOLDER_REFUSED


def test_an_empty_allow_list_refuses_everything(allowed):
    assert refused(str(allowed / "data"), []) == SERVER_FOLDER_REFUSED


def test_a_link_inside_the_root_pointing_outside_is_refused(allowed, tmp_path):
    (allowed / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    (allowed / "etc").symlink_to("/etc", target_is_directory=True)
    (allowed / "inside").symlink_to(allowed / "data", target_is_directory=True)
    assert refused(str(allowed / "escape"), [allowed]) == SERVER_FOLDER_REFUSED
    assert refused("etc", [allowed]) == SERVER_FOLDER_REFUSED
    assert resolve_server_folder(str(allowed / "inside"), [allowed]) == (allowed / "data").resolve()


def test_a_root_given_through_a_link_is_resolved(allowed, tmp_path):
    (tmp_path / "alias").symlink_to(allowed, target_is_directory=True)
    assert resolve_server_folder(str(allowed / "data"), [tmp_path / "alias"]) == (allowed / "data").resolve()


def test_allowed_roots_from_the_environment(allowed, tmp_path, monkeypatch):
    monkeypatch.delenv(SERVER_FOLDERS_ENV, raising=False)
    assert server_folder_roots() == ()
    (tmp_path / "alias").symlink_to(allowed, target_is_directory=True)
    value = os.pathsep.join([str(tmp_path / "alias"), "", str(tmp_path / "missing"), str(tmp_path / "outside")])
    monkeypatch.setenv(SERVER_FOLDERS_ENV, value)
    assert server_folder_roots() == (allowed.resolve(), (tmp_path / "outside").resolve())
    assert server_folder_roots("") == ()


# ------------------------------------------------------------------------------------------------ Dataset page


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.switch_page(page).run()
    return at


def texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "info", "success", "warning", "error")
                     for e in getattr(at, kind))


@pytest.fixture
def no_runs(tmp_path, monkeypatch) -> Path:
    fashion_or_skip()  # the pages start on Fashion-MNIST
    monkeypatch.setenv(runs.RUNS_DIR_ENV, str(tmp_path / "no-runs"))
    monkeypatch.setenv("DOC_UPLOADS_DIR", str(tmp_path / "uploads"))
    monkeypatch.delenv(SERVER_FOLDERS_ENV, raising=False)
    monkeypatch.delenv(access.READ_ONLY_ENV, raising=False)
    return tmp_path / "no-runs"


def test_server_folder_option_is_off_without_an_allow_list(no_runs, allowed):
    at = open_page(DATASET)
    at.get("button_group")[0].set_value(state.SOURCE_FOLDER).run()
    assert not at.exception
    assert not [t for t in at.text_input if t.key == state.DS_FOLDER]
    assert "turned off" in texts(at) and SERVER_FOLDERS_ENV in texts(at)
    assert at.session_state[state.DATASET].kind == "fashion-mnist"


def test_server_folder_page_answers_alike_for_outside_missing_and_system_paths(no_runs, allowed, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv(SERVER_FOLDERS_ENV, str(allowed))
    (allowed / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    at = open_page(DATASET)
    at.get("button_group")[0].set_value(state.SOURCE_FOLDER).run()
    assert str(allowed.resolve()) in at.text_input(key=state.DS_FOLDER).help  # says where datasets may live
    errors = []
    for path in (str(tmp_path / "outside"), "/nonexistent", "/etc", str(allowed / "escape")):
        at.text_input(key=state.DS_FOLDER).input(path).run()
        assert not at.exception
        errors.append([e.value for e in at.error])
        assert at.session_state[state.DATASET].kind == "fashion-mnist"
    assert all(e == errors[0] for e in errors) and len(errors[0]) == 1, errors
    assert SERVER_FOLDER_REFUSED in errors[0][0]
    at.text_input(key=state.DS_FOLDER).input(str(allowed / "data")).run()  # inside: loads
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state[state.DATASET].root == str((allowed / "data").resolve())
    assert {m.label: m.value for m in at.metric}["Normal training"] == "2"


# ------------------------------------------------------------------------------------------------ read-only mode


@pytest.fixture(scope="module")
def tiny_run_dir(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("runs"), fashion_or_skip(), "tiny safety run", epochs=1)


@pytest.fixture
def with_run(no_runs, tmp_path, monkeypatch, tiny_run_dir) -> Path:
    where = shutil.copytree(tiny_run_dir, tmp_path / "runs")
    monkeypatch.setenv(runs.RUNS_DIR_ENV, str(where))
    return where


@pytest.mark.parametrize("value, expected", [("1", True), ("yes", True), ("anything", True), ("0", False),
                                             ("false", False), ("OFF", False), (" ", False), (None, False)])
def test_read_only_flag(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(access.READ_ONLY_ENV, raising=False)
    else:
        monkeypatch.setenv(access.READ_ONLY_ENV, value)
    assert access.read_only() is expected


@pytest.mark.parametrize("read_only", [True, False])
def test_read_only_mode_removes_every_control_that_changes_something(with_run, monkeypatch, read_only):
    if read_only:
        monkeypatch.setenv(access.READ_ONLY_ENV, "1")
    labels = lambda at: {b.label for b in at.button}  # noqa: E731  (absent, so not enabled either)
    at = open_page(TRAINING)
    assert not at.exception
    assert ("Start training" in labels(at)) is not read_only  # disabled without ImageNet weights, but there
    assert ("Stop" in labels(at)) is not read_only
    assert ("Delete permanently" in labels(at)) is not read_only
    assert "Make active" in labels(at)  # choosing a run only changes this tab's view
    assert ("read-only" in texts(at)) is read_only

    at.switch_page(ROC).run()
    assert not at.exception and len(at.get("plotly_chart")) == 4
    assert ("Save threshold into run" in labels(at)) is not read_only
    assert at.download_button[0].label == "Download scores (CSV)"  # reading stays possible

    at.switch_page(SCORE).run()
    assert not at.exception
    assert (len(at.get("file_uploader")) == 0) is read_only

    at.switch_page(DATASET).run()
    at.get("button_group")[0].set_value(state.SOURCE_ZIP).run()
    assert not at.exception
    assert (len(at.get("file_uploader")) == 0) is read_only
    assert len(runs.list_runs(with_run)) == 1
