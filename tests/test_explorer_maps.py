"""The explorer's maps: computed by the training job's last stage and saved with the run, read back safely, computed in
the background (map by map) for runs or settings without them, and a damaged file set aside and computed again.
Tiny backbone, tiny data; nothing here asserts a time."""

from __future__ import annotations

import numpy as np
import pytest

from doc_core.explain import embedding, explorer_maps
from doc_core.explain.explorer_maps import (FAILED, READY, MapInputs, MapJob, compute_maps, explorer_rows, load_maps,
                                           maps_file_name, save_maps)
from doc_core.model.backbones import BackboneConfig
from doc_core.model.training import TrainConfig
from doc_core.workflow import runs
from doc_core.workflow.artifacts import ArtifactError
from doc_core.workflow.jobs import SUCCEEDED, TrainingJob

from test_jobs import TINY, split  # noqa: F401  (the same synthetic squares and their fixture)


@pytest.fixture(scope="module")
def trained(split, tmp_path_factory):
    """A runs folder with one tiny run made by the training job (maps stage included), and the job."""
    where = tmp_path_factory.mktemp("runs")
    job = TrainingJob(split, TINY, TrainConfig(epochs=1, batch_size=16), runs_dir=where).start()
    assert job.join(120), "training did not finish in time"
    snap = job.snapshot()
    assert snap.status == SUCCEEDED, snap.error
    return where, snap.run, job


def _count_tsne(monkeypatch) -> list:
    calls = []
    real = embedding.tsne_2d

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(explorer_maps, "tsne_2d", spy)
    return calls


def test_the_training_job_saves_the_default_maps_with_the_run(trained, split):
    where, run, job = trained
    assert job.maps_note is None and "not saved" not in job.snapshot().message
    path = run.path / maps_file_name(explorer_maps.DEFAULT_MAX_POINTS, False)
    assert path.is_file()
    test_idx, train_idx = explorer_rows(split.test_labels, 64, explorer_maps.DEFAULT_MAX_POINTS, False)
    assert len(test_idx) == 40 and len(train_idx) == 0  # fewer test images than points: all of them
    maps = load_maps(run.path, explorer_maps.DEFAULT_MAX_POINTS, False, test_idx, train_idx)
    assert set(maps.maps) == {"raw", "pretrained", "doc"}
    for m in maps.maps.values():
        assert m.coords.shape == (40, 2) and m.coords.dtype == np.float32 and np.isfinite(m.coords).all()
        assert m.note is None and m.seconds > 0
    # the DOC map is the t-SNE of the stored DOC features: the same seed gives the same map
    np.testing.assert_allclose(maps.maps["doc"].coords, embedding.tsne_2d(runs.load_features(run.run_id, where)),
                               rtol=1e-4, atol=1e-4)
    assert [r.run_id for r in runs.list_runs(where)] == [run.run_id]  # the maps file is no run of its own


def test_the_maps_stage_has_its_own_progress(split, tmp_path):
    class Recording(TrainingJob):
        seen: list = []

        def _on_maps_progress(self, fraction, eta, message):
            super()._on_maps_progress(fraction, eta, message)
            self.seen.append(self.snapshot(since=1 << 62))

    job = Recording(split, TINY, TrainConfig(epochs=1, batch_size=16), runs_dir=tmp_path).start()
    assert job.join(120)
    assert job.snapshot().status == SUCCEEDED
    seen = job.seen
    assert seen and all(s.stage == "Computing the explorer's maps" and s.phase == "maps" for s in seen)
    fractions = [s.fraction for s in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert all(np.isfinite(s.eta_s) and s.eta_s >= 0 for s in seen)
    assert any("map 1 of 3 (raw pixels)" in s.message for s in seen)
    assert any("map 3 of 3 (pretrained features)" in s.message for s in seen)


def test_failing_maps_keep_the_run(split, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise MemoryError("no room for the maps")

    monkeypatch.setattr(explorer_maps, "compute_maps", broken)
    job = TrainingJob(split, TINY, TrainConfig(epochs=1, batch_size=16), runs_dir=tmp_path).start()
    assert job.join(120)
    snap = job.snapshot()
    assert snap.status == SUCCEEDED and snap.run is not None and snap.error is None
    assert "no room for the maps" in job.maps_note and "maps were not saved" in snap.message
    assert [r.run_id for r in runs.list_runs(tmp_path)] == [snap.run.run_id]
    assert not list(snap.run.path.glob("maps-*"))  # nothing half-written either


def test_a_stopped_job_keeps_its_run_and_leaves_the_maps_to_the_explorer(split, tmp_path):
    class StopAtFirstStep(TrainingJob):
        def _on_step(self, rec):
            super()._on_step(rec)
            self.stop()

    job = StopAtFirstStep(split, TINY, TrainConfig(epochs=3, batch_size=16), runs_dir=tmp_path).start()
    assert job.join(120)
    snap = job.snapshot()
    assert snap.status == SUCCEEDED and snap.stopped_early and snap.run is not None
    assert job.maps_note is None and "maps" not in snap.message
    assert not list(snap.run.path.glob("maps-*"))


def test_a_job_without_maps_saves_none(split, tmp_path):
    job = TrainingJob(split, TINY, TrainConfig(epochs=1, batch_size=16), runs_dir=tmp_path, maps=False).start()
    assert job.join(120) and job.snapshot().status == SUCCEEDED
    assert not list(job.snapshot().run.path.glob("maps-*"))


def _inputs(where, run, split) -> MapInputs:
    return MapInputs(split, BackboneConfig.from_dict(run.backbone), test_features=runs.load_features(run.run_id, where),
                     detector=lambda: runs.load_detector(run.run_id, where, use_saved_threshold=False))


def test_a_background_job_computes_other_settings_map_by_map_and_saves_them(trained, split):
    where, run, _ = trained
    job = MapJob(run.path, lambda: _inputs(where, run, split), 24, True)
    first = job.snapshot()
    assert [m.state for m in first] == ["waiting"] * 3 and not job.done
    job.start()
    assert job.join(120)
    snap = job.snapshot()
    assert [m.state for m in snap] == [READY] * 3 and job.error is None
    test_idx, train_idx = explorer_rows(split.test_labels, 64, 24, True)
    assert len(train_idx) == 6 and len(test_idx) == 18  # a quarter of the points are normal training images
    assert all(m.result.coords.shape == (24, 2) for m in snap)
    assert job.saved_path == run.path / "maps-24-train.npz"
    again = load_maps(run.path, 24, True, test_idx, train_idx)
    for m in snap:
        np.testing.assert_array_equal(again.maps[m.feature_set].coords, m.result.coords)


def test_saved_maps_are_read_without_any_tsne(trained, split, monkeypatch):
    where, run, _ = trained
    calls = _count_tsne(monkeypatch)
    test_idx, train_idx = explorer_rows(split.test_labels, 64, explorer_maps.DEFAULT_MAX_POINTS, False)
    maps = load_maps(run.path, explorer_maps.DEFAULT_MAX_POINTS, False, test_idx, train_idx)
    job = MapJob.from_saved(maps, run.path)
    assert job.done and [m.state for m in job.snapshot()] == [READY] * 3 and not calls


def test_damaged_or_foreign_maps_files_are_refused(trained, split, tmp_path):
    where, run, _ = trained
    test_idx, train_idx = explorer_rows(split.test_labels, 64, explorer_maps.DEFAULT_MAX_POINTS, False)
    good = load_maps(run.path, explorer_maps.DEFAULT_MAX_POINTS, False, test_idx, train_idx)
    folder = tmp_path / "run"
    folder.mkdir()
    name = folder / maps_file_name(explorer_maps.DEFAULT_MAX_POINTS, False)
    assert load_maps(folder, explorer_maps.DEFAULT_MAX_POINTS, False, test_idx, train_idx) is None  # none saved
    name.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ArtifactError, match="maps-2000.npz"):
        load_maps(folder, explorer_maps.DEFAULT_MAX_POINTS, False, test_idx, train_idx)
    save_maps(folder, good)
    assert load_maps(folder, explorer_maps.DEFAULT_MAX_POINTS, False, test_idx, train_idx) is not None
    with pytest.raises(ArtifactError, match="other images"):  # a sample of other images than the ones shown
        load_maps(folder, explorer_maps.DEFAULT_MAX_POINTS, False, test_idx[::-1].copy(), train_idx)
    with pytest.raises(ArtifactError):  # fewer rows than shown
        load_maps(folder, explorer_maps.DEFAULT_MAX_POINTS, False, test_idx[:10], train_idx)
    coords = dict(np.load(name))  # plain arrays; NaN coordinates are refused
    coords["doc"] = np.full_like(coords["doc"], np.nan)
    np.savez(name, **coords)
    with pytest.raises(ArtifactError, match="NaN"):
        load_maps(folder, explorer_maps.DEFAULT_MAX_POINTS, False, test_idx, train_idx)
    obj = dict(np.load(name))
    obj["notes"] = np.asarray(["", "", ""], dtype=object)  # would need pickle: never loaded
    np.savez(name, **obj)
    with pytest.raises(ArtifactError, match="pickle"):
        load_maps(folder, explorer_maps.DEFAULT_MAX_POINTS, False, test_idx, train_idx)
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_missing_pretrained_map_is_saved_with_its_reason(trained, split, monkeypatch):
    from doc_core.model.backbones import WeightsNotFoundError

    where, run, _ = trained

    def missing(config):
        raise WeightsNotFoundError("no weights in /nowhere")

    monkeypatch.setattr(embedding, "pretrained_backbone", missing)
    maps = compute_maps(_inputs(where, run, split), 30, False)
    assert maps.maps["pretrained"].coords is None and "/nowhere" in maps.maps["pretrained"].note
    save_maps(run.path, maps)
    test_idx, train_idx = explorer_rows(split.test_labels, 64, 30, False)
    job = MapJob.from_saved(load_maps(run.path, 30, False, test_idx, train_idx))
    states = {m.feature_set: m for m in job.snapshot()}
    assert states["pretrained"].state == FAILED and "/nowhere" in states["pretrained"].message
    assert states["raw"].state == states["doc"].state == READY


def test_a_stopped_job_ends_without_saving(trained, split, tmp_path):
    where, run, _ = trained
    job = MapJob(tmp_path, lambda: _inputs(where, run, split), 40, False)
    job.stop()
    job.start()
    assert job.join(60)
    assert job.error == "stopped" and all(m.state == FAILED for m in job.snapshot())
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ the explorer page

from test_app import assert_clean, count_calls, fashion, open_app, runs_dir, tiny_run_dir  # noqa: E402,F401
from test_app_explore import map_args, maps_pending, wait_for_maps  # noqa: E402
from ui import nav  # noqa: E402

TSNE = ("doc_core.explain.embedding.tsne_2d", "doc_core.explain.explorer_maps.tsne_2d",
        "doc_core.explain.embedding.pretrained_backbone")
TITLES = ["Raw pixels", "Pretrained backbone (before DOC)", "DOC-trained backbone"]


def _maps_file(runs_dir):  # noqa: F811
    run = runs.list_runs(runs_dir)[0]
    return run.path / maps_file_name(explorer_maps.DEFAULT_MAX_POINTS, False)


def test_the_page_draws_saved_maps_without_any_tsne(runs_dir, monkeypatch):  # noqa: F811
    assert _maps_file(runs_dir).is_file()  # saved by the training job that made the fixture run
    calls = count_calls(monkeypatch, TSNE)
    at = open_app(nav.EXPLORER)  # the default settings: the saved maps
    assert_clean(at)
    assert not maps_pending(at) and not at.get("progress")
    args = map_args(at)
    assert args["titles"] == TITLES and len(args["hover"]) == explorer_maps.DEFAULT_MAX_POINTS
    assert not any(calls.values()), calls


def test_a_run_without_saved_maps_shows_each_map_once_it_is_ready(runs_dir, monkeypatch):  # noqa: F811
    import threading
    import time

    path = _maps_file(runs_dir)
    path.unlink()  # a run saved before the maps stage existed
    gate, real = threading.Event(), explorer_maps.compute_map

    def gated(feature_set, *args, **kwargs):  # the pretrained map waits until the test lets it go
        if feature_set == "pretrained":
            gate.wait(120)
        return real(feature_set, *args, **kwargs)

    monkeypatch.setattr(explorer_maps, "compute_map", gated)
    try:
        at = open_app(nav.EXPLORER)
        assert_clean(at)
        assert maps_pending(at)  # computed in the background: the page is not blocked
        for _ in range(240):  # raw pixels and DOC come first, while the pretrained map waits
            if len(at.get("component_instance")) and len(map_args(at)["figures"]) == 2:
                break
            time.sleep(0.5)
            at.run()
        assert map_args(at)["titles"] == ["Raw pixels", "DOC-trained backbone"]
        lines = [p.proto.text for p in at.get("progress")]
        assert len(lines) == 1 and lines[0].startswith("Map of the pretrained backbone (before DOC): "), lines
    finally:
        gate.set()
    wait_for_maps(at)
    assert_clean(at)
    assert map_args(at)["titles"] == TITLES and not at.get("progress")
    assert path.is_file()  # saved with the run for the next visit, by any session
    calls = count_calls(monkeypatch, TSNE)
    again = open_app(nav.EXPLORER)  # another session: the same finished job, nothing computed again
    assert map_args(again)["titles"] == TITLES and not any(calls.values()), calls


def test_a_damaged_maps_file_is_set_aside_with_a_note_and_computed_again(runs_dir):  # noqa: F811
    path = _maps_file(runs_dir)
    path.write_bytes(b"PK\x03\x04 truncated")
    at = open_app(nav.EXPLORER)
    assert_clean(at)
    assert any("saved maps could not be used" in i.value and "maps-2000.npz" in i.value for i in at.info)
    wait_for_maps(at)
    assert_clean(at)
    assert map_args(at)["titles"] == TITLES
    run = runs.list_runs(runs_dir)[0]
    stored = runs.load_scores(run.run_id, runs_dir)
    test_idx, train_idx = explorer_rows(stored.labels, len(stored.train_scores), explorer_maps.DEFAULT_MAX_POINTS,
                                        False)
    assert load_maps(run.path, explorer_maps.DEFAULT_MAX_POINTS, False, test_idx, train_idx) is not None  # replaced


# ------------------------------------------------------------------------------------------------ the CLI


from test_cli import TINY as CLI_TINY, fake_fmnist  # noqa: E402,F401


def test_cli_train_saves_a_dashboard_run_with_its_maps(tmp_path, fake_fmnist, capsys, monkeypatch):  # noqa: F811
    import json

    from doc_core.cli import main
    from doc_core.data import load_fashion_mnist
    from doc_core.data.datasets import DatasetSpec, load_dataset

    monkeypatch.setattr(explorer_maps, "DEFAULT_MAX_POINTS", 150)  # a small map keeps the test quick
    where = tmp_path / "runs"
    args = ["--data-dir", str(fake_fmnist), "--protocol", "one-vs-rest", "--normal-class", "3", *CLI_TINY]
    assert main(["train", *args, "--runs", str(where), "--name", "from the CLI"]) == 0
    out = json.loads(capsys.readouterr().out)
    (run,) = runs.list_runs(where)
    assert run.run_id == out["run_id"] and run.name == "from the CLI" and run.auc == pytest.approx(out["auc"])
    assert "detector" not in out and out["maps"].endswith("maps-150.npz")
    split, _ = load_dataset(DatasetSpec.from_dict(run.dataset), load_fashion_mnist(fake_fmnist))  # the dashboard's way
    assert len(split.test_images) == run.n_test
    stored = runs.load_scores(run.run_id, where)
    test_idx, train_idx = explorer_rows(stored.labels, len(stored.train_scores), 150, False)
    maps = load_maps(run.path, 150, False, test_idx, train_idx)
    n = min(150, run.n_test)
    assert all(m.coords is not None and m.coords.shape == (n, 2) for m in maps.maps.values())
    # --no-maps: the run without them; no place to save at all: an error before anything is read
    assert main(["train", *args, "--runs", str(where), "--no-maps", "--out", str(tmp_path / "det")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "maps" not in out and (tmp_path / "det" / "detector.json").is_file()
    assert not list(runs.get_run(out["run_id"], where).path.glob("maps-*"))
    with pytest.raises(SystemExit) as exc:
        main(["train", *args])
    assert exc.value.code == 2 and "--out" in capsys.readouterr().err
