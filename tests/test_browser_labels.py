"""Analysts' labels in a real browser (issue 12): `streamlit run app.py` with a tiny finished run, driven by headless
Chromium (Playwright). Marks false alarms normal one at a time under their tiles, adds them to the normal bank and
undoes it, labels one image with a note in the detail view and a whole page at once, then uses the analysts' labels on
the ROC page. Every step is checked for exception boxes, error alerts, traceback text and script errors; screenshots
go to artifacts/screenshots/ (ignored by git).

The server, browser and page helpers are those of tests/test_browser.py (imported, not copied).
"""

from __future__ import annotations

import re

import pytest
from app_server import fashion_or_skip, make_tiny_run, running_app

from test_browser import browser, check_clean, go, page, segment, shot, wait_idle  # noqa: F401
from doc_core.workflow.run_labels import MIN_PER_KIND

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def labels_server(tmp_path_factory):
    """The app on a runs folder holding one tiny finished run (trained as the Training page does)."""
    fashion = fashion_or_skip()
    tmp = tmp_path_factory.mktemp("browser_labels")
    runs_dir = make_tiny_run(tmp / "runs", fashion, "labels run", epochs=2)
    with running_app(tmp, runs_dir) as url:
        yield url, runs_dir


def tile_controls(page):
    """The label controls under the tiles, in the order shown (buttons: normal, anomaly, unsure)."""
    return page.locator('[data-testid="stMain"] [class*="st-key-lb_tile_ranked_"]')


def body(page) -> str:
    return page.inner_text('[data-testid="stMain"]')


def test_label_images_grow_the_bank_and_use_the_labels_on_the_roc_page(labels_server, page):  # noqa: F811
    url, runs_dir = labels_server
    page.goto(url)
    wait_idle(page)
    go(page, "Ranked anomalies")
    check_clean(page, "Ranked anomalies")
    assert tile_controls(page).count() == 24
    add = page.get_by_role("button", name=re.compile(r"^Add the \d+ images marked normal to the normal bank$"))
    assert add.inner_text().strip().endswith("Add the 0 images marked normal to the normal bank") and add.is_disabled()

    # the false alarms: an analyst says the first few are fine, one at a time under each tile
    segment(page, "Normal images that look anomalous")
    for n in range(MIN_PER_KIND):
        tile_controls(page).nth(n).locator("button").first.click()  # check mark: normal
        wait_idle(page)
        check_clean(page, f"Ranked anomalies, marked {n + 1}")
    assert body(page).count("analyst: normal") == MIN_PER_KIND
    shot(page, "20-labels-marked")

    # they join the normal bank; the change's summary is shown next to the button; undo puts it back
    add = page.get_by_role("button", name=f"Add the {MIN_PER_KIND} images marked normal to the normal bank")
    add.click()
    page.get_by_text(f"Added {MIN_PER_KIND} images to the normal bank").first.wait_for(timeout=120_000)
    wait_idle(page)
    check_clean(page, "Ranked anomalies, bank grown")
    text = body(page)
    assert "no longer flagged" in text and "has grown 1 time since training" in text
    shot(page, "21-labels-bank-grown")
    page.get_by_role("button", name="Undo").click()
    page.get_by_text("The normal bank is as trained.").first.wait_for(timeout=120_000)
    wait_idle(page)
    check_clean(page, "Ranked anomalies, bank change undone")
    assert "Undone" in body(page)

    # one more false alarm in the detail view, with a note
    page.locator('[data-testid="stMain"]').get_by_role("button", name="Details").nth(MIN_PER_KIND).click()
    dialog = page.locator('[data-testid="stDialog"]')
    dialog.get_by_text("Analyst's label:").wait_for()
    dialog.locator('[data-testid="stButtonGroup"]').get_by_text("unsure", exact=True).click()
    wait_idle(page)
    dialog.get_by_label("Note (optional)").fill("looks like a scuff")
    dialog.get_by_label("Note (optional)").press("Enter")
    wait_idle(page)
    dialog.get_by_role("button", name="Save label").click()
    dialog.get_by_text("note: looks like a scuff").wait_for(timeout=30_000)
    wait_idle(page)
    check_clean(page, "Detail view, labelled")
    shot(page, "22-labels-detail")
    page.keyboard.press("Escape")
    wait_idle(page)

    # a whole page of the most anomalous boots at once
    segment(page, "Most anomalous anomalies")
    page.locator('[data-testid="stMain"] [class*="st-key-lb_bulk_ranked"]').get_by_text("anomaly", exact=True).click()
    wait_idle(page)
    page.get_by_role("button", name="Mark 24 as anomaly").click()
    page.get_by_text("Marked the 24 images on this page as").first.wait_for()
    wait_idle(page)
    check_clean(page, "Ranked anomalies, page marked")
    assert body(page).count("analyst: anomaly") == 24

    # enough labels of both kinds: the ROC page can rest on them
    go(page, "ROC and threshold")
    check_clean(page, "ROC")
    option = page.get_by_text(re.compile(r"^analysts' labels \(\d+ normal, 24 anomaly, \d+ unsure left out\)$"))
    option.click()
    wait_idle(page, 1.0)
    check_clean(page, "ROC on the analysts' labels")
    assert "rest on the analysts'" in body(page)
    page.locator('[data-testid="stPlotlyChart"]').nth(3).wait_for()
    shot(page, "23-roc-analysts-labels")
