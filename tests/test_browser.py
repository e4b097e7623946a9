"""The real app in a real browser: `streamlit run app.py` on a free port, driven by headless Chromium (Playwright).

Visits every page with no run, trains a tiny run through the UI (tiny backbone, 200 normal and 200 reference images),
uses the ROC page, reloads the browser, trains from two browser sessions at once, and trains with the auto preset on a
folder of own images that has no reference/ folder. Every page is checked for
Streamlit exception boxes, error alerts and traceback text, and a screenshot of each page is saved under
artifacts/screenshots/ (ignored by git) to be looked at.
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
    """Chart texts under a Plotly toolbar, after hovering every chart (which shows its toolbar)."""
    plots = page.locator(".js-plotly-plot")
    for i in range(plots.count()):
        plots.nth(i).hover()
    return page.evaluate(TOOLBAR_OVERLAPS)


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


def maps_frame(page):
    """The explorer's linked maps (a component iframe), once all three are drawn."""
    page.locator(MAPS_IFRAME).wait_for()
    frame = next(f for f in page.frames if "linked_maps" in f.url)
    frame.locator(".js-plotly-plot").nth(2).wait_for()
    return frame


def check_clean(page, where: str) -> None:
    """No exception box, no error alert, no traceback text anywhere on the page, no uncaught script error."""
    assert not getattr(page, "js_errors", []), f"{where}: script errors: {page.js_errors}"
    assert page.locator('[data-testid="stException"]').count() == 0, f"{where}: exception shown"
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
    # a lasso around the middle of the DOC map selects those images, and the same images in the other two maps
    box = frame.locator(".js-plotly-plot").nth(2).locator(".nsewdrag").first.bounding_box()
    cx, cy, r = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, min(box["width"], box["height"]) / 4
    page.mouse.move(cx - r, cy - r)
    page.mouse.down()
    for x, y in ((cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r), (cx - r, cy - r + 2)):
        page.mouse.move(x, y, steps=8)
    page.mouse.up()
    page.get_by_text(re.compile(r"^[\d,]+ selected")).wait_for(timeout=30_000)
    wait_idle(page, 1.0)
    check_clean(page, "Explorer, selected")
    mirrored = frame.evaluate(SELECTED_PER_MAP)
    assert mirrored[0] == mirrored[1] == mirrored[2] > 1, mirrored
    page.locator('[data-testid="stMain"]').get_by_text("Grad-CAM", exact=True).first.click()
    wait_idle(page, 1.0)
    check_clean(page, "Explorer, Grad-CAM")
    shot(page, "09-explorer")
    segment(page, "Anomaly score")
    page.get_by_text("Also show normal training images (open circles)").click()
    wait_idle(page, 1.0)
    frame = maps_frame(page)
    check_clean(page, "Explorer, coloured by score, with training images")
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

    small_tiny_setup(page, epochs=8, name="browser run")
    go(page, "Dataset")
    check_clean(page, "Dataset")
    assert page.locator('[data-testid="stMetricValue"]').first.inner_text() == "200"
    assert page.locator('[data-testid="stImage"] img').count() >= 32  # sample grids of the four roles
    shot(page, "03-dataset")

    go(page, "Training")
    check_clean(page, "Training, settings")
    assert page.get_by_text("96 training steps").is_visible()  # 200 // 16 = 12 per epoch, 8 epochs
    page.get_by_role("button", name="Start training").click()
    # while it trains: the page answers, and another page can be used meanwhile
    try:
        page.locator('[data-testid="stProgress"]').first.wait_for(timeout=10_000)
        shot(page, "04-training-live")
        go(page, "Home")
        check_clean(page, "Home during training")
        go(page, "Training")
    except sync_api.TimeoutError:
        pass  # the tiny run can finish before the first progress update; the end state is checked below
    page.get_by_text("Training finished").first.wait_for(timeout=TRAIN_TIMEOUT_MS)
    wait_idle(page)
    check_clean(page, "Training, finished")
    assert page.get_by_text("browser run").first.is_visible()
    assert charts(page, 1) == 1  # the loss curves
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


def test_own_images_without_a_reference_folder(server, server_tmp, page):
    """A folder with train/ and test/ only: the Dataset page loads it with reference "none" and says why, the auto
    preset trains a tiny run and shows its evidence, and the ranked gallery draws its heatmaps."""
    from conftest import smooth_noise, with_patch
    from PIL import Image

    rng = np.random.default_rng(0)
    root = server_tmp / "datasets" / "parts"
    for folder, images in (("train", smooth_noise(rng, 40)), ("test/normal", smooth_noise(rng, 10)),
                           ("test/anomaly", with_patch(rng, smooth_noise(rng, 10), patch=8))):
        (root / folder).mkdir(parents=True)
        for i, im in enumerate(images):
            Image.fromarray(im[..., 0]).save(root / folder / f"{i:03d}.png")
    page.goto(server)
    wait_idle(page)
    go(page, "Dataset")
    segment(page, "Folder on the server")
    page.get_by_label("Folder on the server", exact=True).fill(str(root))
    page.get_by_label("Folder on the server", exact=True).press("Enter")
    wait_idle(page)
    check_clean(page, "Dataset, folder without reference/")
    page.get_by_text("Reference set: none").first.wait_for()
    assert page.get_by_text("no reference/ folder").first.is_visible()
    assert page.locator('[data-testid="stMetricValue"]').first.inner_text() == "40"
    shot(page, "12-dataset-own-images")

    go(page, "Training")
    check_clean(page, "Training, own images")
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
    shot(page, "13-training-auto-evidence")

    go(page, "Ranked anomalies")
    check_clean(page, "Ranked anomalies, own images")
    assert page.locator('[data-testid="stImage"] img').count() == 10  # the 10 anomalies
    patch = page.get_by_text("Patch defect map", exact=True)
    (patch if patch.count() else page.get_by_text("Grad-CAM", exact=True)).first.click()  # the chosen run's maps
    wait_idle(page, 1.0)
    check_clean(page, "Ranked anomalies, own images, heatmaps")
    shot(page, "14-ranked-own-images")
