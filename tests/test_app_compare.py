"""The Compare methods page through AppTest, with no run and with the tiny run of tests/test_app.py (its fixtures
are reused)."""

from __future__ import annotations

from test_app import assert_clean, empty_runs_dir, fashion, open_app, runs_dir, texts, tiny_run_dir  # noqa: F401
from ui import nav, state

COMPARE = nav.COMPARE


def test_compare_page_without_a_run(empty_runs_dir):  # noqa: F811
    at = open_app(COMPARE)
    assert_clean(at)
    assert "No run yet" in texts(at) and not at.get("plotly_chart")


def test_compare_page_runs_on_click_and_caches(runs_dir):  # noqa: F811
    at = open_app(COMPARE)
    assert_clean(at)
    assert not at.get("plotly_chart") and not at.dataframe  # nothing computed before the click
    next(b for b in at.button if b.label == "Run comparison").click().run()
    assert_clean(at)
    table = at.dataframe[0].value
    assert list(table["Method"]) == ["raw-pixel k-NN", "pretrained-feature k-NN", "DOC k-NN", "DOC LOF",
                                     "conv autoencoder"]
    assert table["Test AUC"].between(0, 1).all() and (table["Scoring (ms per image)"] > 0).all()
    assert len(at.get("plotly_chart")) == 1
    spec = at.get("plotly_chart")[0].proto.spec
    assert "DOC k-NN (this run)" in spec and "conv autoencoder" in spec
    at.switch_page(nav.ROC).run()
    at.switch_page(COMPARE).run()  # revisiting shows the comparison again, from the cache
    assert_clean(at)
    assert at.session_state[state.CMP_RUN] and len(at.dataframe) == 1 and len(at.get("plotly_chart")) == 1
