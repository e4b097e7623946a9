"""The detail view opens without waiting for the run's network: its nearest normal images come from the stored
features and the memory bank read from the detector folder (:func:`doc_core.model.detector.read_bank`), and only the
heatmap needs the detector. Uses the tiny run of tests/test_app.py."""

from __future__ import annotations

import re
import shutil
import threading
import time

import numpy as np
import pytest

from test_app import fashion, open_app, runs_dir, tiny_run_dir  # noqa: F401
from test_app_explore import RANKED, detail_view, details_buttons, view_text
from doc_core.explain.embedding import nearest_in_bank, nearest_normal
from doc_core.model.detector import DetectorFormatError, DOCDetector, read_bank
from doc_core.workflow import runs
from doc_core.workflow.detector_preload import DetectorPreloader


def test_read_bank_gives_the_detectors_bank_and_training_index(runs_dir, tmp_path):  # noqa: F811
    run = runs.list_runs(runs_dir)[0]
    det = DOCDetector.load(run.path / "detector")
    saved = read_bank(run.path / "detector")
    assert saved.bank.dtype == np.float32 and np.array_equal(saved.bank, det.bank_)
    if det.train_index_ is None:
        assert saved.train_index is None
    else:
        assert np.array_equal(saved.train_index, det.train_index_)
    feats = runs.load_features(run.run_id, runs_dir)[:4]
    for a, b in zip(nearest_in_bank(saved.bank, feats, 3), nearest_normal(det, feats, 3)):
        assert np.array_equal(a, b)
    # damaged or missing files are refused with the detector's own error, never half read
    bad = tmp_path / "detector"
    shutil.copytree(run.path / "detector", bad)
    (bad / "bank.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DetectorFormatError, match="bank.npz"):
        read_bank(bad)
    (bad / "bank.npz").unlink()
    with pytest.raises(DetectorFormatError):
        read_bank(bad)
    with pytest.raises(ValueError, match="features must have shape"):
        nearest_in_bank(saved.bank, feats[:, :2], 3)


def test_detail_view_shows_the_neighbours_without_loading_the_detector(runs_dir, monkeypatch):  # noqa: F811
    from ui import bank, cached, heatmaps

    run = runs.list_runs(runs_dir)[0]
    bank.forget_run_caches()  # no detector left over from other tests in this process
    cached.detector.clear()
    loads = []
    real_load = runs.load_detector
    monkeypatch.setattr(runs, "load_detector", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    monkeypatch.setattr(cached, "warm_detector", lambda run: None)  # no background load: the view alone is watched
    # the heatmap is the one part that needs the network: stubbed here, so any load would come from the rest
    monkeypatch.setattr(heatmaps, "maps", lambda r, images, choice: np.zeros(np.shape(images)[:3], np.float32))
    at = open_app(RANKED)
    i = sorted(details_buttons(at, "ranked"))[0]
    details_buttons(at, "ranked")[i].click().run()
    view = detail_view(at)
    assert view is not None and not at.exception
    shown = re.findall(r"((?:train|added test) #\d+) · d ([\d.e+-]+)", view_text(view))
    assert len(shown) == 5 and len(view.get("image")) == 2 + 5  # the image, its heatmap, 5 neighbours
    assert loads == [], f"the detail view loaded the detector: {loads}"
    # the same neighbours, names and distances as the detector itself gives
    det = real_load(run.run_id, runs_dir, use_saved_threshold=False)
    dist, rows = nearest_normal(det, runs.load_features(run.run_id, runs_dir)[i][None], 5)
    index = det.train_index_ if det.train_index_ is not None else np.arange(len(det.bank_))
    assert [name for name, _ in shown] == [f"train #{int(index[r])}" for r in rows[0]]
    assert np.allclose([float(d) for _, d in shown], dist[0], rtol=6e-3, atol=1e-3)


def test_preloader_loads_each_key_once_and_hands_it_over():
    gate, calls = threading.Event(), []

    def load():
        calls.append(threading.current_thread().name)
        gate.wait(10)
        return "detector"

    pre = DetectorPreloader(keep=2)
    assert pre.start("a", load) and not pre.start("a", load)  # once per key, however often a page asks
    got = []
    taker = threading.Thread(target=lambda: got.append(pre.take("a", load)))
    taker.start()
    time.sleep(0.05)
    assert got == []  # take waits for the running load instead of starting another
    gate.set()
    taker.join(10)
    assert got == ["detector"] and len(calls) == 1 and calls[0].startswith("detector-preload")
    assert not pre.start("a", load)  # handed over: the caller keeps it
    pre.forget("a")
    assert pre.start("a", load) and pre.take("a", load) == "detector" and len(calls) == 2
    assert pre.take("never started", lambda: "here") == "here"  # nothing started: loaded in the caller

    def broken():
        raise OSError("weights unreadable")

    pre.start("bad", broken)
    with pytest.raises(OSError, match="weights unreadable"):
        pre.take("bad", load)
    for k in ("x", "y", "z"):  # at most `keep` loads wait to be taken
        pre.start(k, lambda: "d")
    assert pre.take("x", lambda: "loaded again") == "loaded again"


def test_a_page_with_the_detail_view_loads_the_detector_in_the_background_once(runs_dir, monkeypatch):  # noqa: F811
    from ui import bank, cached

    bank.forget_run_caches()
    cached.detector.clear()
    threads = []
    real_load = runs.load_detector
    monkeypatch.setattr(runs, "load_detector",
                        lambda *a, **k: threads.append(threading.current_thread().name) or real_load(*a, **k))
    at = open_app(RANKED)
    at.run()  # a rerun starts nothing more
    i = sorted(details_buttons(at, "ranked"))[0]
    details_buttons(at, "ranked")[i].click().run()  # the heatmap takes the detector the page's open started loading
    assert detail_view(at) is not None and not at.exception
    assert len(threads) == 1 and threads[0].startswith("detector-preload"), threads
    assert detail_view(at).get("image")[1].captions[0].startswith("Grad-CAM")
