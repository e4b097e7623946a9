"""Issue #5, point 5: several sessions at once, and a load test of the running server.

1. Four AppTest sessions in one process (as Streamlit runs them): two train tiny models at the same time while the
   other two browse the pages of an existing run; each keeps its own state and all finish.
2. ``streamlit run app.py`` on a free 127.0.0.1 port with one finished tiny run; for a fixed time, four headless
   Chromium contexts load pages in a loop while a thread fetches the page shell and the health endpoint over HTTP.
   A *page load* is a browser navigation to a page URL that ends when the script run is over and the page's title
   (its ``h1``) is drawn: the full render over the websocket, a new Streamlit session each time. The test prints
   page loads per second, HTTP requests per second and the errors seen (exception boxes, error alerts, timeouts,
   non-200 answers), and requires zero errors.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from app_server import fashion_or_skip, make_tiny_run, running_app

from doc_core.workflow import runs
from doc_core.workflow.jobs import SUCCEEDED

ROOT = Path(__file__).resolve().parent.parent
LOAD_SECONDS = float(os.environ.get("DOC_LOAD_SECONDS", "20"))
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fashion():
    return fashion_or_skip()


@pytest.fixture(scope="module")
def tiny_run_dir(tmp_path_factory, fashion) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("runs"), fashion, "load fixture run", epochs=1)


# ------------------------------------------------------------------------------------------------ AppTest sessions


def test_four_sessions_two_of_them_training_keep_their_state_apart(tmp_path, monkeypatch, tiny_run_dir):
    from streamlit.testing.v1 import AppTest

    from ui import cached, state

    where = tmp_path / "runs"
    shutil.copytree(tiny_run_dir, where)
    monkeypatch.setenv(runs.RUNS_DIR_ENV, str(where))
    fixture_run = runs.list_runs(where)[0].run_id

    def open_app() -> AppTest:
        return AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()

    def clean(at: AppTest) -> None:
        assert not at.exception, [e.value for e in at.exception]
        assert not at.error, [e.value for e in at.error]

    sessions = [open_app() for _ in range(4)]
    trainers, browsers = sessions[:2], sessions[2:]
    for i, at in enumerate(trainers):
        at.switch_page("pages/1_dataset.py").run()
        at.number_input(key=state.DS_N_NORMAL).set_value(200).run()
        at.number_input(key=state.DS_N_REFERENCE).set_value(200 + 10 * i).run()
        at.switch_page("pages/2_training.py").run()
        at.selectbox(key=state.TR_BACKBONE).select("tiny").run()
        at.select_slider(key=state.TR_INPUT_SIZE).set_value(32)
        at.number_input(key=state.TR_EPOCHS).set_value(1 + i)
        at.number_input(key=state.TR_BATCH).set_value(32)
        at.text_input(key=state.TR_NAME).input(f"session {i}").run()
    for at in trainers:
        next(b for b in at.button if b.label == "Start training").click().run()
        clean(at)
    jobs = [cached.job_registry().get(at.session_state[state.JOB_ID]) for at in trainers]
    assert jobs[0] is not jobs[1] and all(jobs)
    # meanwhile the other two sessions use the pages of the finished run, each with its own settings
    for page in ("pages/3_roc_threshold.py", "pages/2_training.py", "pages/1_dataset.py", "app.py"):
        for at in browsers:
            at.switch_page(page).run()
            clean(at)
    browsers[0].switch_page("pages/1_dataset.py").run()
    browsers[0].number_input(key=state.DS_SEED).set_value(3).run()
    for job in jobs:
        assert job.join(180), "training did not finish in time"
    snaps = [j.snapshot() for j in jobs]
    assert [s.status for s in snaps] == [SUCCEEDED, SUCCEEDED], [s.error for s in snaps]
    assert [s.steps_total for s in snaps] == [5, 10]  # (200 - 30 calibration) // 32 steps per epoch, 1 and 2 epochs
    for at, snap in zip(trainers, snaps):
        at.run()
        clean(at)
        assert at.session_state[state.RUN_ID] == snap.run.run_id
    assert runs.get_run(snaps[0].run.run_id).dataset["split"]["n_reference"] == 200
    assert runs.get_run(snaps[1].run.run_id).dataset["split"]["n_reference"] == 210
    for at in browsers:  # not switched to the other sessions' runs, no job of their own
        assert at.session_state[state.RUN_ID] in (None, fixture_run)
        assert not at.session_state[state.JOB_ID] if state.JOB_ID in at.session_state else True
    assert browsers[0].session_state[state.DS_SEED] == 3 and browsers[1].session_state[state.DS_SEED] == 0
    assert {r.name for r in runs.list_runs(where)} == {"load fixture run", "session 0", "session 1"}


# ------------------------------------------------------------------------------------------------ load test


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_run_dir):
    tmp = tmp_path_factory.mktemp("load")
    shutil.copytree(tiny_run_dir, tmp / "runs")
    with running_app(tmp, tmp / "runs") as url:
        yield url


DONE = '[data-testid="stApp"][data-test-script-state="notRunning"] [data-testid="stMain"] h1'
PAGES = ("/", "/training", "/roc_threshold", "/dataset")


def _http_load(url: str, stop: threading.Event, out: dict) -> None:
    while not stop.is_set():
        for path in ("/", "/_stcore/health"):
            try:
                with urllib.request.urlopen(url + path, timeout=10) as r:
                    r.read()
                    ok = r.status == 200
            except OSError as exc:
                ok = False
                out["messages"].append(f"GET {path}: {exc}")
            out["requests"] += 1
            out["errors"] += not ok


def test_load_on_the_running_server(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing")
    n_contexts = 4
    http = {"requests": 0, "errors": 0, "messages": []}
    stop = threading.Event()
    loads, errors, messages, per_page = 0, 0, [], {p: 0 for p in PAGES}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            tabs = []
            for _ in range(n_contexts):
                context = browser.new_context(viewport={"width": 1200, "height": 800})
                page = context.new_page()
                page.set_default_timeout(60_000)
                tabs.append(page)
            for page in tabs:  # warm up: first session imports TensorFlow etc.; not counted
                page.goto(server + "/")
                page.wait_for_selector(DONE, timeout=120_000)
            thread = threading.Thread(target=_http_load, args=(server, stop, http), daemon=True)
            i, phases = 0, {}
            # first half: page loads alone; second half: page loads while a thread hammers the server over HTTP.
            # The contexts take turns (Playwright's sync API drives one page at a time), but every tab keeps its
            # own live session on the server: 4 websocket sessions at once.
            for phase in ("pages_only", "pages_and_http"):
                if phase == "pages_and_http":
                    thread.start()
                start, n0, e0 = time.monotonic(), loads, errors
                while time.monotonic() - start < LOAD_SECONDS / 2:
                    page, path = tabs[i % n_contexts], PAGES[(i // n_contexts) % len(PAGES)]
                    i += 1
                    try:
                        page.goto(server + path)
                        page.wait_for_selector(DONE, timeout=60_000)
                        bad = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
                        if bad.count():
                            errors += 1
                            messages.append(f"{path}: {bad.all_inner_texts()[:1]}")
                    except sync_api.Error as exc:
                        errors += 1
                        messages.append(f"{path}: {type(exc).__name__}: {str(exc)[:200]}")
                    loads += 1
                    per_page[path] += 1
                took = time.monotonic() - start
                phases[phase] = {"seconds": round(took, 1), "page_loads": loads - n0,
                                 "page_loads_per_s": round((loads - n0) / took, 2), "errors": errors - e0}
            stop.set()
            thread.join(15)
            phases["pages_and_http"]["http_requests_per_s"] = round(http["requests"] / took, 1)
        finally:
            stop.set()
            browser.close()
    report = {"browser_contexts": n_contexts, "phases": phases, "page_loads": loads, "page_load_errors": errors,
              "per_page": per_page, "http_requests": http["requests"], "http_errors": http["errors"],
              "messages": (messages + http["messages"])[:5]}
    print("\nLOAD TEST", json.dumps(report))
    (tmp_path / "load.json").write_text(json.dumps(report, indent=1))
    assert loads >= n_contexts and errors == 0 and http["errors"] == 0, report
