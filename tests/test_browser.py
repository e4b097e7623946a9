"""The real app in a real browser: `streamlit run app.py` on a free port, driven by headless Chromium (Playwright).

Visits every page with no run, trains a tiny run through the UI (tiny backbone, 200 normal and 200 reference images)
while watching its live loss chart refresh, uses the ROC page, reloads the browser, lassoes and pages through a
selection in the explorer, trains from two browser sessions at once, and uploads a zip of own images (no reference/
folder, defect types in sub-folders) whose file names must appear in hovers, captions and the detail view. Every page
is checked for Streamlit exception boxes, error alerts and traceback text, every chart page for Plotly's toolbar over
chart text, and a screenshot of each page is saved under artifacts/screenshots/ (ignored by git) to be looked at.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from app_server import running_app

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TRAIN_TIMEOUT_MS = 180_000

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (scripts/setup.sh does) to run the browser "
                "test", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (see requirements.txt)")


@pytest.fixture(scope="module")
def server_tmp(tmp_path_factory) -> Path:
    """The server's folder: its runs, uploads, and ``datasets/``, the only folder it may read datasets from."""
    tmp = tmp_path_factory.mktemp("browser")
    (tmp / "datasets").mkdir()
    return tmp


@pytest.fixture(scope="module")
def server(server_tmp):
    """`streamlit run app.py` on a free localhost port, with its own empty runs folder; yields the base URL."""
    from doc_core.data import DataError, load_fashion_mnist

    try:
        load_fashion_mnist(download=False)
    except DataError as exc:
        pytest.skip(f"Fashion-MNIST is not installed (scripts/setup.sh installs it): {exc}")
    tmp = server_tmp
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOC_SERVER_FOLDERS", str(tmp / "datasets"))  # "Folder on the server" reads only under it
        with running_app(tmp, tmp / "runs") as url:
            yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    p = context.new_page()
    p.set_default_timeout(60_000)
    p.js_errors = []  # uncaught script errors in the page or its component frames, checked by check_clean
    p.on("pageerror", lambda e: p.js_errors.append(f"{e}\n{(e.stack or '')[:500]}"))
    yield p
    context.close()


# ------------------------------------------------------------------------------------------------ helpers


def wait_idle(page, settle: float = 0.3) -> None:
    """Wait until the script run is over and the page has its title."""
    time.sleep(settle)  # let a click reach the server and start a run
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"] [data-testid="stMain"] h1',
                           timeout=90_000)
    time.sleep(settle)


def charts(page, n: int) -> int:
    """Wait for ``n`` Plotly charts to be on the page (they render one after another), then count them."""
    page.locator('[data-testid="stPlotlyChart"]').nth(n - 1).wait_for()
    return page.locator('[data-testid="stPlotlyChart"]').count()


# Plotly's toolbar (modebar) must not cover any text of its chart (titles, tick labels, notes) or its legend
TOOLBAR_OVERLAPS = """() => [...document.querySelectorAll('.js-plotly-plot')].flatMap((gd, i) => {
  const m = gd.querySelector('.modebar'); if (!m) return [[i, 'no modebar']];
  const r = m.getBoundingClientRect();
  return [...gd.querySelectorAll('.main-svg text, .main-svg .legend rect.bg')].filter((t) => {
    const b = t.getBoundingClientRect();
    return b.width > 0 && b.left < r.right && b.right > r.left && b.top < r.bottom && b.bottom > r.top; })
    .map((t) => [i, (t.textContent || t.getAttribute('class')).slice(0, 40)]); })"""


def toolbar_overlaps(page) -> list:
    """Chart texts under a Plotly toolbar, after hovering every chart (which shows its toolbar): the page's own charts
    and those drawn inside component frames (the live loss curves, the explorer's maps)."""
    found = []
    for frame in page.frames:
        plots = frame.locator(".js-plotly-plot")
        for i in range(plots.count()):
            plots.nth(i).hover()
        found += [[frame.url.split("?")[0][-40:], *hit] for hit in frame.evaluate(TOOLBAR_OVERLAPS)]
    page.mouse.move(0, 0)
    return found


def plot_count(page) -> int:
    """Plotly charts drawn on the page, in component frames included."""
    return sum(f.locator(".js-plotly-plot").count() for f in page.frames)


LIVE_IFRAME = 'iframe[title="ui.live_chart.live_chart"]'
# At every animation frame, every Plotly chart of the page and of its component frames: [its element's id (given on
# first sight), lines drawn (SVG paths with a shape), points in its first trace, height]; and the progress text.
PLOT_SAMPLER = """() => { window.__plots = []; let next = 1;
  const docs = () => [document, ...[...document.querySelectorAll('iframe')].map((f) => {
    try { return f.contentDocument; } catch (e) { return null; } }).filter(Boolean)];
  const tick = () => {
    const plots = docs().flatMap((d) => [...d.querySelectorAll('.js-plotly-plot')]).map((g) => {
      if (!g.__sampleId) g.__sampleId = next++;
      const lines = [...g.querySelectorAll('.scatterlayer path.js-line')]
        .filter((e) => (e.getAttribute('d') || '').length > 2).length;
      const n = g._fullData && g._fullData[0] ? g._fullData[0]._length : -1;
      return [g.__sampleId, lines, n, Math.round(g.getBoundingClientRect().height)]; });
    const bar = document.querySelector('[data-testid=stProgress]');
    window.__plots.push([plots, bar ? bar.innerText : '']);
    requestAnimationFrame(tick); };
  requestAnimationFrame(tick); }"""


def live_chart_never_blank(page) -> None:
    """Sample the Training page's live loss chart at every animation frame while the job trains (the chart is
    refreshed every second with the new steps): from its first drawing on, it is always one chart, the same element,
    with all six curves drawn, never empty; and it was refreshed with new points at least twice meanwhile.

    ``st.plotly_chart`` failed this: each refresh replaced its element, empty for about 0.15-0.2 s."""
    page.evaluate(PLOT_SAMPLER)
    frames = lambda: page.evaluate("() => window.__plots.length")  # noqa: E731
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the chart is drawn
        if page.evaluate("() => window.__plots.some(([p]) => p.some((c) => c[1] > 0))"):
            break
        time.sleep(0.2)
    while time.monotonic() < deadline:  # then while the training steps last, and one refresh more
        if not page.evaluate("() => (window.__plots.at(-1) || [[], ''])[1].startsWith('Training ·')"):
            break
        time.sleep(0.2)
    n = frames()
    while frames() < n + 90 and time.monotonic() < deadline:  # about 1.5 s
        time.sleep(0.1)
    samples = page.evaluate("() => window.__plots")
    drawn = next(i for i, (plots, _) in enumerate(samples) if any(c[1] > 0 for c in plots))
    watched = samples[drawn:]
    first = watched[0][0][0][0]
    bad = [(i, plots, text[:40]) for i, (plots, text) in enumerate(watched)
           if len(plots) != 1 or plots[0][0] != first or plots[0][1] < 6 or plots[0][3] <= 0]
    assert not bad, f"{len(bad)} of {len(watched)} frames without the one drawn loss chart, e.g. {bad[:3]}"
    points = {plots[0][2] for plots, _ in watched}
    assert len(points) >= 3, f"the chart was refreshed with new steps only {len(points) - 1} times: {sorted(points)}"
    print(f"live loss chart: {len(watched)} frames sampled, {len(points) - 1} refreshes with new steps, never blank")


MAPS_IFRAME = 'iframe[title="ui.linked_maps.linked_maps"]'
# page-side helpers run inside the explorer's maps frame (ui/frontend/linked_maps.html)
POINT_XY = """([m, i]) => { const gd = document.querySelectorAll('.js-plotly-plot')[m], fl = gd._fullLayout;
  const r = gd.getBoundingClientRect(), t = gd.data[0];
  return [r.left + fl.xaxis._offset + fl.xaxis.l2p(t.x[i]), r.top + fl.yaxis._offset + fl.yaxis.l2p(t.y[i])]; }"""
THUMB_INK = """() => { const c = document.getElementById('thumb'), d = c.getContext('2d')
  .getImageData(0, 0, c.width, c.height).data; let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i]; return s; }"""
RINGS = "() => [...document.querySelectorAll('.js-plotly-plot')].map((g) => g.data[g.data.length - 1].x.length)"
SELECTED_PER_MAP = """() => [...document.querySelectorAll('.js-plotly-plot')].map((g) => g.data.slice(0, -1)
  .reduce((n, t) => n + (t.selectedpoints ? t.selectedpoints.length : 0), 0))"""


def maps_frame(page, timeout_s: float = 180):
    """The explorer's linked maps (a component iframe), once all three are drawn and the page is idle. Maps that were
    not saved with the run appear one by one, and the frame is drawn anew when the last one is ready."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            frame = page.locator(MAPS_IFRAME).element_handle(timeout=30_000).content_frame()
            frame.locator(".js-plotly-plot").nth(2).wait_for(timeout=30_000)
            wait_idle(page)
            if frame.is_detached() or page.locator('[data-testid="stMain"] [data-testid="stProgress"]').count():
                raise sync_api.Error("maps still coming")
            return frame
        except sync_api.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def check_clean(page, where: str) -> None:
    """No exception box, no error alert, no traceback text anywhere on the page, no uncaught script error."""
    assert not getattr(page, "js_errors", []), f"{where}: script errors: {page.js_errors}"
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, f"{where}: exception shown: {exceptions.all_inner_texts()[:1]}"
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, f"{where}: error shown: {errors.all_inner_texts()}"
    text = page.inner_text("body")
    for bad in ("Traceback (most recent call last)", "StreamlitAPIException", "Error running app"):
        assert bad not in text, f"{where}: {bad!r} on the page"


def shot(page, name: str) -> Path:
    """Screenshot of the whole page (the main area scrolls inside the window, so the window is made tall)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = page.evaluate('() => document.querySelector("[data-testid=stMain]").scrollHeight')
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(height + 40, 6000))})
    time.sleep(0.8)  # let charts re-layout
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    page.set_viewport_size(size)
    return path


def go(page, title: str) -> None:
    """Open a page from the sidebar navigation, as a user does."""
    page.locator('[data-testid="stSidebar"]').get_by_role("link", name=title, exact=True).click()
    wait_idle(page)
    assert page.locator('[data-testid="stMain"] h1').first.inner_text().strip() == \
        ("DOC Explorer" if title == "Home" else title)


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def segment(page, option: str) -> None:
    """Pick an option of a segmented control."""
    page.locator('[data-testid="stButtonGroup"]').get_by_text(option, exact=True).click()
    wait_idle(page)


def choose(page, label: str, option: str) -> None:
    page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first.click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_idle(page)


def sidebar_dataset(page) -> str:
    """The active dataset as the sidebar names it."""
    text = page.locator('[data-testid="stSidebar"]').inner_text()
    return text.split("Active dataset", 1)[1].split("Active run", 1)[0].strip()


def small_tiny_setup(page, epochs: int, name: str) -> None:
    """Small split on the Dataset page, tiny backbone on the Training page."""
    go(page, "Dataset")
    set_number(page, "Normal training images (0 = all)", 200)
    set_number(page, "Reference images", 200)
    go(page, "Training")
    choose(page, "Backbone", "Tiny CNN (random, for tests)")
    set_number(page, "Epochs", epochs)
    set_number(page, "Batch size", 16)
    page.get_by_role("textbox", name="Run name (optional)").fill(name)
    page.get_by_role("textbox", name="Run name (optional)").press("Enter")
    wait_idle(page)


# ------------------------------------------------------------------------------------------------ tests


def explore_rank_and_score(page, tmp_path: Path) -> None:
    """The explorer (three t-SNE maps of the 2,000 test images, a lasso selection), the ranked gallery with
    Grad-CAM, and scoring uploaded images."""
    t0 = time.monotonic()
    go(page, "Embedding explorer")
    check_clean(page, "Explorer")
    frame = maps_frame(page)
    print(f"explorer, first visit (three t-SNE maps of 2,000 points): {time.monotonic() - t0:.1f} s; "
          + "; ".join(frame.locator(".note").all_inner_texts()))
    # hovering a point of the DOC map shows its thumbnail and score, and rings that image in all three maps
    frame_box = page.locator(MAPS_IFRAME).bounding_box()
    x, y = frame.evaluate(POINT_XY, [2, 0])
    page.mouse.move(frame_box["x"] + x - 4, frame_box["y"] + y - 4)
    page.mouse.move(frame_box["x"] + x, frame_box["y"] + y, steps=4)
    frame.locator("#tip").wait_for(state="visible", timeout=5_000)
    assert re.search(r"test #\d+ · (Sneaker|Ankle boot) · (normal|anomaly)\nscore [\d.e-]+ · rank [\d,]+ of 2,000",
                     frame.locator("#tiptext").inner_text())  # the image's identity: test index, class, label
    assert frame.evaluate(THUMB_INK) > 0  # the thumbnail was drawn
    assert frame.evaluate(RINGS) == [1, 1, 1]
    shot(page, "09a-explorer-hover")
    # a click on a point selects that one image
    page.mouse.click(frame_box["x"] + x, frame_box["y"] + y)
    page.get_by_text(re.compile(r"^1 selected")).wait_for(timeout=30_000)
    wait_idle(page, 0.5)
    assert toolbar_overlaps(page) == []
    # a lasso around most of the DOC map selects those images (more than a page of 12), the same images in the other
    # two maps
    box = frame.locator(".js-plotly-plot").nth(2).locator(".nsewdrag").first.bounding_box()
    cx, cy, r = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, min(box["width"], box["height"]) * 0.4
    page.mouse.move(cx - r, cy - r)
    page.mouse.down()
    for x, y in ((cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r), (cx - r, cy - r + 2)):
        page.mouse.move(x, y, steps=8)
    page.mouse.up()
    page.get_by_text(re.compile(r"^[\d,]+ selected")).wait_for(timeout=30_000)
    wait_idle(page, 1.0)
    check_clean(page, "Explorer, selected")
    mirrored = frame.evaluate(SELECTED_PER_MAP)
    assert mirrored[0] == mirrored[1] == mirrored[2] > 12, mirrored
    # the count is the lasso's, shown 12 per page; page 2 shows 12 other images
    main = page.locator('[data-testid="stMain"]')
    assert page.get_by_text(re.compile(rf"^{mirrored[0]:,} selected · page 1 of {-(-mirrored[0] // 12):,} "
                                       r"\(images 1–12\)")).first.is_visible()
    first = re.findall(r"test #(\d+) ·", main.inner_text())
    assert len(first) == len(set(first)) == 12, first
    set_number(page, f"Page (of {-(-mirrored[0] // 12):,})", 2)
    page.get_by_text(re.compile(r"· page 2 of [\d,]+ \(images 13–")).wait_for()
    second = re.findall(r"test #(\d+) ·", main.inner_text())
    assert len(second) == min(12, mirrored[0] - 12) and not set(first) & set(second), (first, second)
    check_clean(page, "Explorer, selection page 2")
    page.locator('[data-testid="stMain"]').get_by_text("Grad-CAM", exact=True).first.click()
    wait_idle(page, 1.0)
    check_clean(page, "Explorer, Grad-CAM")
    shot(page, "09-explorer")
    segment(page, "Anomaly score")
    page.get_by_text("Also show normal training images (open circles)").click()
    wait_idle(page, 1.0)
    frame = maps_frame(page)
    check_clean(page, "Explorer, coloured by score, with training images")
    assert toolbar_overlaps(page) == []  # the colour bar's labels too
    shot(page, "09b-explorer-by-score")

    go(page, "Ranked anomalies")
    check_clean(page, "Ranked anomalies")
    assert page.locator('[data-testid="stImage"] img').count() == 24
    segment(page, "Normal images that look anomalous")
    page.get_by_text("Grad-CAM", exact=True).first.click()
    wait_idle(page, 1.0)
    check_clean(page, "Ranked anomalies, false alarms with Grad-CAM")
    shot(page, "10-ranked-anomalies")

    go(page, "Score new images")
    check_clean(page, "Score new images")
    from PIL import Image

    files = []
    for name, value in (("dark.png", 20), ("light.png", 230)):
        Image.fromarray(np.full((40, 40, 3), value, np.uint8)).save(tmp_path / name)
        files.append(str(tmp_path / name))
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(files)
    page.get_by_text("images scored").first.wait_for()
    wait_idle(page, 1.0)
    check_clean(page, "Score new images, scored")
    shot(page, "11-score-images")


def test_every_page_and_a_tiny_run_through_the_ui(server, page, tmp_path):
    t_start = time.monotonic()
    outside = []  # the app must work offline: every request goes to the app's own server
    page.on("request", lambda r: None if r.url.startswith((server, "data:", "blob:")) else outside.append(r.url))
    page.goto(server)
    wait_idle(page)
    check_clean(page, "Home, no run")
    assert page.get_by_text("No run yet").first.is_visible()
    shot(page, "01-home-no-run")

    go(page, "ROC and threshold")
    check_clean(page, "ROC, no run")
    assert page.get_by_text("Train a detector first").is_visible()
    shot(page, "02-roc-no-run")
    for title in ("Embedding explorer", "Ranked anomalies", "Score new images"):
        go(page, title)
        check_clean(page, f"{title}, no run")
        assert page.get_by_text("Train a detector first").is_visible()

    go(page, "Training")
    check_clean(page, "Training, no run")
    assert page.get_by_text("No saved runs yet").is_visible()

    # bad input is a message on the page, never a traceback; a missing path and an existing folder outside the
    # allowed one (DOC_SERVER_FOLDERS) get the same answer
    go(page, "Dataset")
    segment(page, "Folder on the server")
    messages = []
    for path in ("/no/such/folder", "/etc"):
        page.get_by_label("Folder on the server", exact=True).fill(path)
        page.get_by_label("Folder on the server", exact=True).press("Enter")
        wait_idle(page)
        assert page.locator('[data-testid="stException"]').count() == 0
        messages.append(page.locator('[data-testid="stAlertContentError"]').first.inner_text())
    message = messages[0]
    assert messages[1] == message and "cannot be used" in message and "still" in message
    assert "reference/" in page.locator('[data-testid="stCode"]').inner_text()  # the expected layout is shown
    assert "Expected layout" not in message
    shot(page, "03a-dataset-bad-folder")
    segment(page, "Built-in Fashion-MNIST")

    # long enough (over 2,000 steps, some seconds) for the live chart to be refreshed several times while it trains
    small_tiny_setup(page, epochs=200, name="browser run")
    go(page, "Dataset")
    check_clean(page, "Dataset")
    assert page.locator('[data-testid="stMetricValue"]').first.inner_text() == "200"
    assert page.locator('[data-testid="stImage"] img').count() >= 32  # sample grids of the four roles
    assert charts(page, 1) == 1 and toolbar_overlaps(page) == []  # the counts per class and role
    shot(page, "03-dataset")

    go(page, "Training")
    check_clean(page, "Training, settings")
    plan = page.get_by_text(re.compile(r"^[\d,]+ training steps \(\d+ per epoch")).first.inner_text()
    assert int(re.match(r"[\d,]+", plan).group(0).replace(",", "")) >= 2000, plan  # 200 epochs of 11-12 steps
    page.get_by_role("button", name="Start training").click()
    live_chart_never_blank(page)
    shot(page, "04-training-live")
    # while the job runs (scoring, maps): the page answers, and another page can be used meanwhile
    go(page, "Home")
    check_clean(page, "Home during training")
    go(page, "Training")
    page.get_by_text("Training finished").first.wait_for(timeout=TRAIN_TIMEOUT_MS)
    wait_idle(page)
    check_clean(page, "Training, finished")
    assert page.get_by_text("browser run").first.is_visible()
    page.locator(LIVE_IFRAME).wait_for()
    live = page.frame_locator(LIVE_IFRAME).locator(".js-plotly-plot")
    live.wait_for()
    assert live.locator(".scatterlayer path.js-line").count() == 6  # the loss curves: raw and smoothed, three losses
    assert plot_count(page) == 1 and toolbar_overlaps(page) == []
    shot(page, "05-training-finished")

    go(page, "ROC and threshold")
    check_clean(page, "ROC")
    assert charts(page, 4) == 4
    assert toolbar_overlaps(page) == []  # no chart title or label under the toolbar
    page.get_by_text("Best F1 on the test set").click()
    wait_idle(page)
    page.get_by_role("button", name="Save threshold into run").click()
    page.get_by_text("Saved threshold").first.wait_for()
    wait_idle(page)
    page.get_by_role("button", name="Compare").click()
    wait_idle(page)
    page.locator('[data-testid="stPlotlyChart"]').nth(4).wait_for()
    check_clean(page, "ROC, compared")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download scores (CSV)").click()
    csv = Path(download.value.path()).read_text()
    assert csv.startswith("# run ") and "index,class,true_label,score,predicted" in csv
    assert len(csv.splitlines()) == 2 + 1 + 2000  # two comment lines, the header, 2,000 test images
    shot(page, "06-roc-threshold")

    # a finished run survives a browser refresh: it is on disk
    page.reload()
    wait_idle(page)
    check_clean(page, "ROC after reload")
    assert charts(page, 4) == 4
    assert page.get_by_text("Saved operating point").is_visible()

    explore_rank_and_score(page, tmp_path)

    go(page, "Home")
    check_clean(page, "Home with a run")
    assert page.get_by_text("test AUC").first.is_visible()
    shot(page, "07-home-with-run")
    go(page, "Training")
    shot(page, "08-training-runs")
    assert outside == [], f"requests outside the app: {outside[:5]}"
    print(f"browser walk-through with a tiny training run: {time.monotonic() - t_start:.0f} s")


def test_two_browser_sessions_train_at_the_same_time(server, browser):
    pages = []
    for name in ("session one", "session two"):
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        p = context.new_page()
        p.set_default_timeout(60_000)
        p.goto(server)
        wait_idle(p)
        small_tiny_setup(p, epochs=3, name=name)
        pages.append(p)
    for p in pages:
        p.get_by_role("button", name="Start training").click()
    for p, name, other in ((pages[0], "session one", "session two"), (pages[1], "session two", "session one")):
        p.get_by_text("Training finished").first.wait_for(timeout=TRAIN_TIMEOUT_MS)
        wait_idle(p)
        check_clean(p, name)
        message = p.locator('[data-testid="stAlertContentSuccess"]').first.inner_text()
        assert name in message and other not in message
    for p in pages:
        p.context.close()


def own_images_zip(folder: Path) -> Path:
    """tiles.zip: train/ (40 normal images), test/normal/good_*.png (10) and test/anomaly/<defect>/<defect>_*.png,
    5 each of two defect types in sub-folders; no reference/ folder."""
    import zipfile

    from conftest import smooth_noise, with_patch
    from PIL import Image

    rng = np.random.default_rng(0)
    parts = [("train/train_{:03d}.png", smooth_noise(rng, 40)), ("test/normal/good_{:03d}.png", smooth_noise(rng, 10))]
    for defect in ("crack", "hole"):
        parts.append((f"test/anomaly/{defect}/{defect}_{{:03d}}.png", with_patch(rng, smooth_noise(rng, 5), patch=8)))
    path = folder / "tiles.zip"
    with zipfile.ZipFile(path, "w") as z:
        for pattern, images in parts:
            for i, im in enumerate(images):
                png = folder / "one.png"
                Image.fromarray(im[..., 0]).save(png)
                z.write(png, pattern.format(i))
    return path


ANOMALY_NAME = r"(?P<defect>crack|hole)/(?P=defect)_\d{3}\.png"  # e.g. crack/crack_003.png


def test_own_images_names_travel_everywhere(server, page, tmp_path):
    """A zip of own images without reference/, its defect types in sub-folders: right after the upload the sidebar
    and every page show it; the auto preset trains a tiny run and shows its evidence; every page shows that run of
    that dataset; file names and sub-folders are in the ranked gallery's captions, the detail view, the explorer's
    hovers and its selection; Compare methods runs on it."""
    page.goto(server)
    wait_idle(page)
    assert "Fashion-MNIST" in sidebar_dataset(page)
    go(page, "Dataset")
    segment(page, "Upload a zip")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(own_images_zip(tmp_path)))
    page.get_by_text("Reference set: none").first.wait_for()
    wait_idle(page)
    check_clean(page, "Dataset, uploaded zip without reference/")
    assert "tiles.zip" in sidebar_dataset(page) and "Fashion-MNIST" not in sidebar_dataset(page)  # at once
    assert page.get_by_text("no reference/ folder").first.is_visible()
    assert page.locator('[data-testid="stMetricValue"]').first.inner_text() == "40"
    assert toolbar_overlaps(page) == []
    shot(page, "12-dataset-own-images")
    for title in ("Home", "Training", "ROC and threshold", "Embedding explorer", "Ranked anomalies",
                  "Score new images", "Compare methods", "Dataset"):
        go(page, title)
        check_clean(page, f"{title} after the upload")
        assert "tiles.zip" in sidebar_dataset(page), title
    go(page, "Home")
    assert page.locator('[data-testid="stMain"]').get_by_text("Own images: tiles.zip").first.is_visible()

    go(page, "Training")
    check_clean(page, "Training, own images")
    assert page.get_by_text("Own images: tiles.zip").first.is_visible()
    assert page.get_by_role("radio", name="auto (choose by synthetic defects)").is_checked()
    choose(page, "Backbone", "Tiny CNN (random, for tests)")
    set_number(page, "Epochs", 1)
    set_number(page, "Batch size", 16)
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("Training finished").first.wait_for(timeout=TRAIN_TIMEOUT_MS)
    wait_idle(page)
    check_clean(page, "Training, own images, finished")
    assert page.get_by_text("How the configuration was chosen").first.is_visible()
    assert page.get_by_text("not a promise").first.is_visible()
    assert toolbar_overlaps(page) == []
    shot(page, "13-training-auto-evidence")

    go(page, "Ranked anomalies")
    check_clean(page, "Ranked anomalies, own images")
    assert page.get_by_text(re.compile(r"^Run .* · Own images: tiles\.zip")).first.is_visible()
    assert page.locator('[data-testid="stImage"] img').count() == 10  # the 10 anomalies
    names = set(m.group(0) for m in re.finditer(ANOMALY_NAME, page.locator('[data-testid="stMain"]').inner_text()))
    assert len(names) == 10, names  # every tile's caption names its file and its defect folder
    patch = page.get_by_text("Patch defect map", exact=True)
    (patch if patch.count() else page.get_by_text("Grad-CAM", exact=True)).first.click()  # the chosen run's maps
    wait_idle(page, 1.0)
    check_clean(page, "Ranked anomalies, own images, heatmaps")
    shot(page, "14-ranked-own-images")
    # the detail view of the first tile: its file name and its folder
    page.get_by_role("button", name="Details").first.click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    wait_idle(page, 0.5)
    assert re.search(r"(crack|hole)_\d{3}\.png · folder (crack|hole)", dialog.inner_text()), dialog.inner_text()
    check_clean(page, "Ranked anomalies, own images, detail view")
    shot(page, "15-detail-own-images")
    page.keyboard.press("Escape")
    dialog.wait_for(state="detached")
    wait_idle(page)

    go(page, "Embedding explorer")
    check_clean(page, "Explorer, own images")
    assert page.get_by_text(re.compile(r"^Run .* · Own images: tiles\.zip")).first.is_visible()
    frame = maps_frame(page)
    assert toolbar_overlaps(page) == []
    # hovering a point of the DOC map shows the image's file name (with its defect folder) and label
    frame_box = page.locator(MAPS_IFRAME).bounding_box()
    x, y = frame.evaluate(POINT_XY, [2, 0])
    page.mouse.move(frame_box["x"] + x - 4, frame_box["y"] + y - 4)
    page.mouse.move(frame_box["x"] + x, frame_box["y"] + y, steps=4)
    frame.locator("#tip").wait_for(state="visible", timeout=5_000)
    tip = frame.locator("#tiptext").inner_text()
    hovered = re.match(rf"({ANOMALY_NAME}) · anomaly\n|(good_\d{{3}}\.png) · normal\n", tip)
    assert hovered, tip
    # a click selects it: its caption below names it too
    page.mouse.click(frame_box["x"] + x, frame_box["y"] + y)
    page.get_by_text(re.compile(r"^1 selected")).wait_for(timeout=30_000)
    wait_idle(page, 0.5)
    assert (hovered.group(1) or hovered.group(3)) in page.locator('[data-testid="stMain"]').inner_text()
    check_clean(page, "Explorer, own images, selected")
    shot(page, "16-explorer-own-images")

    for title in ("ROC and threshold", "Score new images", "Compare methods"):
        go(page, title)
        check_clean(page, f"{title}, own images")
        assert page.get_by_text(re.compile(r"^Run .* · Own images: tiles\.zip")).first.is_visible(), title
    page.get_by_role("button", name="Run comparison").click()
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=TRAIN_TIMEOUT_MS)
    wait_idle(page)
    check_clean(page, "Compare methods, own images")
    assert toolbar_overlaps(page) == []
    shot(page, "17-compare-own-images")
