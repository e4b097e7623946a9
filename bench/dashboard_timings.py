"""Time the dashboard's slow pages on a real run: the Embedding explorer's first visit (three t-SNE maps of up to
2,000 points), its revisit, hovering points (thumbnail + rings in every map, in Chromium), and the Compare methods page.

    .venv/bin/python bench/dashboard_timings.py --runs RUNS_DIR [--browser]

RUNS_DIR holds the run to time (the newest one is opened), e.g. a MobileNetV2 run trained on the Training page with
the defaults. Server-side times come from Streamlit's AppTest (no browser); --browser also starts `streamlit run` and
drives Debian's /usr/bin/chromium with Playwright. Prints the times and the load average before and after.
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


def server_side(runs: Path) -> None:
    from streamlit.testing.v1 import AppTest

    from ui import nav

    os.environ["DOC_RUNS_DIR"] = str(runs)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=1800)
    at.run()
    t0 = time.perf_counter()
    at.switch_page(nav.EXPLORER).run()
    assert not at.exception, at.exception
    (maps,) = at.get("component_instance")
    args = json.loads(maps.proto.json_args)
    print(f"explorer, first visit: {time.perf_counter() - t0:.1f} s ({'; '.join(args['notes'])}); maps payload "
          f"{len(maps.proto.json_args) / 1e6:.2f} MB")
    at.switch_page(nav.RANKED).run()
    t0 = time.perf_counter()
    at.switch_page(nav.EXPLORER).run()
    print(f"explorer, revisit: {time.perf_counter() - t0:.2f} s")
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
        frame = maps_frame(page)
        print(f"browser: explorer, first visit until the three maps are drawn: {time.monotonic() - t0:.1f} s")
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
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, type=Path, help="runs folder with the run to time (the newest)")
    ap.add_argument("--browser", action="store_true", help="also time the explorer in Chromium")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}")
    server_side(args.runs)
    if args.browser:
        in_browser(args.runs)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
