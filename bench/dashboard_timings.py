"""Time the dashboard on a real run: the Embedding explorer's first visit (time to the first of its three t-SNE maps
and to all of them; with the maps the training job saved, and for the same run without them, computed in the
background), its revisit, every page switch, the detail view's opening, hovering points (thumbnail + rings in every
map, in Chromium), and optionally the Compare methods page.

    .venv/bin/python bench/dashboard_timings.py --runs RUNS_DIR [--train] [--browser] [--compare]

RUNS_DIR holds the run to time (the newest one is opened); --train first trains one there as the Training page does
with its defaults (MobileNetV2, the tutorial split; a few minutes), printing each stage's time. Server-side times come
from Streamlit's AppTest (no browser; the explorer is rerun every 0.2 s while its maps are computed, as its polling
fragment would); --browser also starts `streamlit run` and drives Debian's /usr/bin/chromium with Playwright. Prints
the commit, the times and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def train_default_run(runs: Path) -> None:
    """Train one run as the Training page does with its defaults (MobileNetV2, the tutorial split), printing each
    stage's time; the last stage computes the explorer's default maps into the run folder."""
    from doc_core.data import load_fashion_mnist
    from doc_core.data.datasets import DatasetSpec, load_dataset
    from doc_core.model.backbones import BackboneConfig
    from doc_core.model.detector import ScorerConfig
    from doc_core.model.training import TrainConfig
    from doc_core.workflow.jobs import TrainingJob

    spec = DatasetSpec.fashion_mnist()
    split, _ = load_dataset(spec, load_fashion_mnist(download=False))
    job = TrainingJob(split, BackboneConfig(), TrainConfig(), ScorerConfig(), name="dashboard timings",
                      dataset={**spec.to_dict(), "description": spec.describe()}, runs_dir=runs).start()
    stage, since, t_start = None, time.time(), time.time()
    while not job.join(0.5):
        snap = job.snapshot(since=1 << 62)
        if snap.stage != stage:
            if stage is not None:
                print(f"train: {stage}: {time.time() - since:.1f} s", flush=True)
            stage, since = snap.stage, time.time()
    snap = job.snapshot(since=1 << 62)
    print(f"train: {stage}: {time.time() - since:.1f} s; {snap.status}, {snap.message}; total "
          f"{time.time() - t_start:.0f} s; run {snap.run.run_id if snap.run else None}, AUC "
          f"{snap.run.auc if snap.run else None}", flush=True)
    if snap.error:
        raise SystemExit(snap.error)


def _maps_drawn(at) -> int:
    """How many maps the explorer's linked-maps component shows now."""
    comps = at.get("component_instance")
    return len(json.loads(comps[0].proto.json_args)["figures"]) if len(comps) else 0


def _pending(at) -> bool:
    return any("computed now in the background" in str(c.value) for c in at.caption)


def explorer_visit(at, what: str) -> None:
    """Open the explorer and rerun (as its polling fragment would) until all maps are drawn: prints the server time
    to the first map and to all of them."""
    from ui import nav

    t0 = time.perf_counter()
    at.switch_page(nav.EXPLORER).run()
    first = None
    while True:
        assert not at.exception, at.exception
        now = time.perf_counter() - t0
        if first is None and _maps_drawn(at):
            first = now
        if not _pending(at):
            break
        time.sleep(0.2)
        at.run()
    (maps,) = at.get("component_instance")
    args = json.loads(maps.proto.json_args)
    print(f"explorer, {what}: first map {first:.2f} s, all {len(args['figures'])} maps {now:.2f} s "
          f"({'; '.join(args['notes'])}); maps payload {len(maps.proto.json_args) / 1e6:.2f} MB", flush=True)


def server_side(runs: Path, compare: bool) -> None:
    import shutil
    import tempfile

    from streamlit.testing.v1 import AppTest

    from ui import nav, state

    os.environ["DOC_RUNS_DIR"] = str(runs)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=1800)
    t0 = time.perf_counter()
    at.run()
    print(f"home, first run of the session (imports TensorFlow): {time.perf_counter() - t0:.1f} s", flush=True)
    explorer_visit(at, "first visit (maps saved by the training job)")
    at.switch_page(nav.RANKED).run()
    t0 = time.perf_counter()
    at.switch_page(nav.EXPLORER).run()
    print(f"explorer, revisit: {time.perf_counter() - t0:.2f} s", flush=True)
    pages = [p for p in nav.PAGES if p != nav.EXPLORER]
    for visit in ("first visit", "switch back"):
        times = []
        for p in pages:
            t0 = time.perf_counter()
            at.switch_page(p).run()
            assert not at.exception, (p, at.exception)
            times.append(f"{nav.TITLES[p]} {time.perf_counter() - t0:.2f} s")
        print(f"page switches, {visit}: " + ", ".join(times), flush=True)
    at.switch_page(nav.RANKED).run()
    buttons = [b for b in at.button if b.key and b.key.startswith(f"{state.DETAIL_BUTTON}ranked_")]
    for i in (0, 1):
        t0 = time.perf_counter()
        buttons[i].click().run()
        assert not at.exception, at.exception
        print(f"detail view from Ranked anomalies, open #{i + 1}: {time.perf_counter() - t0:.2f} s", flush=True)
        at.button(key=state.DETAIL_CLOSE).click().run()
        buttons = [b for b in at.button if b.key and b.key.startswith(f"{state.DETAIL_BUTTON}ranked_")]
    # the same run without saved maps (a run saved before the maps stage existed), in a new session
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "runs"
        shutil.copytree(runs, old, ignore=shutil.ignore_patterns("maps-*.npz"))
        os.environ["DOC_RUNS_DIR"] = str(old)
        at2 = AppTest.from_file(str(ROOT / "app.py"), default_timeout=1800)
        at2.run()
        explorer_visit(at2, "first visit of a run without saved maps (computed in the background)")
        os.environ["DOC_RUNS_DIR"] = str(runs)
    if compare:
        at.switch_page(nav.COMPARE).run()
        t0 = time.perf_counter()
        next(b for b in at.button if b.label == "Run comparison").click().run()
        assert not at.exception, at.exception
        print(f"compare methods, on click: {time.perf_counter() - t0:.1f} s")
        print(at.dataframe[0].value.to_string(index=False))


def in_browser(runs: Path, hovers: int = 21) -> None:
    import tempfile

    import numpy as np
    from app_server import running_app
    from playwright.sync_api import sync_playwright
    from test_browser import CHROMIUM, CHROMIUM_ARGS, MAPS_IFRAME, POINT_XY, go, maps_frame, wait_idle

    rings_drawn = ("() => [...document.querySelectorAll('.js-plotly-plot')]"
                   ".every((g) => g.data[g.data.length - 1].x.length === 1)")
    with tempfile.TemporaryDirectory() as tmp, running_app(Path(tmp), runs) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        page.set_default_timeout(600_000)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        wait_idle(page)
        t0 = time.monotonic()
        go(page, "Embedding explorer")
        page.locator(MAPS_IFRAME).element_handle(timeout=600_000).content_frame().locator(
            ".js-plotly-plot").first.wait_for(timeout=600_000)
        first = time.monotonic() - t0
        frame = maps_frame(page, 600)
        print(f"browser: explorer, first visit: first map drawn {first:.1f} s, all three "
              f"{time.monotonic() - t0:.1f} s", flush=True)
        go(page, "Ranked anomalies")
        t0 = time.monotonic()
        go(page, "Embedding explorer")
        frame = maps_frame(page)
        print(f"browser: explorer, revisit: {time.monotonic() - t0:.2f} s")
        box = page.locator(MAPS_IFRAME).bounding_box()
        latency = []
        for i in range(hovers):
            x, y = frame.evaluate(POINT_XY, [i % 3, (97 * i) % 900])
            t0 = time.monotonic()
            page.mouse.move(box["x"] + x, box["y"] + y, steps=2)
            frame.locator("#tip").wait_for(state="visible", timeout=5_000)
            frame.wait_for_function(rings_drawn)
            latency.append(time.monotonic() - t0)
            page.mouse.move(5, 5)
            frame.locator("#tip").wait_for(state="hidden", timeout=5_000)
        print(f"browser: hover to thumbnail + rings in all maps: median {np.median(latency) * 1000:.0f} ms, max "
              f"{max(latency) * 1000:.0f} ms over {len(latency)} points; script errors: {errors or 'none'}")
        go(page, "Ranked anomalies")
        opens, whole = [], []
        for i in (0, 1):
            t0 = time.monotonic()
            page.get_by_role("button", name="Details").nth(i).click()
            page.locator('[role="dialog"] img').first.wait_for(timeout=60_000)
            opens.append(time.monotonic() - t0)
            wait_idle(page)  # the heatmap, drawn last, is in when the script run is over
            whole.append(time.monotonic() - t0)
            page.keyboard.press("Escape")
            page.locator('[role="dialog"]').wait_for(state="hidden", timeout=30_000)
            wait_idle(page)
        print(f"browser: detail view from Ranked anomalies, until its image shows: "
              f"{', '.join(f'{t:.2f} s' for t in opens)}; until all of it (heatmap included) is drawn and the "
              f"page idle: {', '.join(f'{t:.2f} s' for t in whole)}", flush=True)
        browser.close()
    # the same run without saved maps, on a fresh server: the maps appear one by one as the background job makes them
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "runs"
        shutil.copytree(runs, old, ignore=shutil.ignore_patterns("maps-*.npz"))
        with running_app(Path(tmp), old) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.set_default_timeout(600_000)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            wait_idle(page)
            t0 = time.monotonic()
            go(page, "Embedding explorer")
            page.locator('[data-testid="stMain"] [data-testid="stProgress"]').first.wait_for(timeout=60_000)
            shown = time.monotonic() - t0
            page.locator(MAPS_IFRAME).element_handle(timeout=600_000).content_frame().locator(
                ".js-plotly-plot").first.wait_for(timeout=600_000)
            first = time.monotonic() - t0
            maps_frame(page, 600)
            print(f"browser: explorer, first visit of the run without saved maps: page with progress lines "
                  f"{shown:.1f} s, first map drawn {first:.1f} s, all three {time.monotonic() - t0:.1f} s; script "
                  f"errors: {errors or 'none'}", flush=True)
            browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, type=Path, help="runs folder with the run to time (the newest)")
    ap.add_argument("--browser", action="store_true", help="also time the explorer in Chromium")
    ap.add_argument("--compare", action="store_true", help="also time Compare methods (a minute or so)")
    ap.add_argument("--train", action="store_true",
                    help="first train a run into RUNS_DIR as the Training page does with its defaults")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}")
    if args.train:
        train_default_run(args.runs)
    print(f"commit {os.popen(f'git -C {ROOT} rev-parse --short HEAD').read().strip()}", flush=True)
    server_side(args.runs, args.compare)
    if args.browser:
        in_browser(args.runs)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
