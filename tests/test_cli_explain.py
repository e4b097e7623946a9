"""The ``explain`` command on a tiny detector saved to disk, as a detector folder and as a dashboard run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from doc_core import BackboneConfig, DOCDetector, TrainConfig
from doc_core.cli import main
from doc_core.data import read_images
from doc_core.workflow.runs import save_run, save_threshold

TINY = BackboneConfig(name="tiny", input_size=32, weights=None)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, make_normal, make_reference, make_anomalous):
    """(detector folder, runs folder, run id, image paths, bad path, detector)."""
    root = tmp_path_factory.mktemp("explain")
    rng = np.random.default_rng(0)
    reference, labels = make_reference(rng, 8)
    det = DOCDetector(TINY, TrainConfig(batch_size=8, epochs=1, seed=0)).fit(make_normal(rng, 24), reference, labels)
    det.save(root / "det")
    test = np.concatenate([make_normal(rng, 2), make_anomalous(rng, make_normal(rng, 2))])
    summary = save_run(det, det.decision_function(test), np.array([0, 0, 1, 1]), ["n", "n", "a", "a"],
                       runs_dir=root / "runs", run_id="tiny-run")
    (root / "imgs" / "sub").mkdir(parents=True)
    paths = []
    for i, im in enumerate(test):
        p = root / "imgs" / f"im{i}.png"
        Image.fromarray(im[..., 0]).resize((28, 28)).save(p)  # gray, not the network's size
        paths.append(p)
    rgb = root / "imgs" / "sub" / "im0.png"  # same name as imgs/im0.png, in another folder
    Image.fromarray(np.repeat(test[0], 3, axis=-1)).save(rgb)
    paths.append(rgb)
    bad = root / "imgs" / "broken.png"
    bad.write_bytes(b"not an image")
    return root / "det", root / "runs", summary.run_id, paths, bad, det


def test_explain_writes_overlays_and_json(saved, tmp_path, capsys):
    det_dir, _, _, paths, bad, det = saved
    out = tmp_path / "out"
    rc = main(["explain", "--detector", str(det_dir), *map(str, paths), str(bad), "--out", str(out),
               "--opacity", "0.4"])
    assert rc == 0
    captured = capsys.readouterr()
    assert f"skipped {bad}" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(captured.out)
    assert summary["layer"] == "conv3_relu" and summary["opacity"] == 0.4
    assert summary["threshold"] == pytest.approx(det.threshold_)
    assert [r["path"] for r in summary["results"]] == [str(p) for p in paths]
    assert [s["path"] for s in summary["skipped"]] == [str(bad)]
    names = [r["overlay"] for r in summary["results"]]
    assert len(set(names)) == len(paths)  # two inputs named im0.png get two files
    assert sorted(p.name for p in out.glob("*.png")) == sorted(names)
    for name in names:
        with Image.open(out / name) as im:
            assert im.mode == "RGB" and im.size == (32, 32)
    images, _, _ = read_images(paths, size=32)
    expected = det.decision_function(images)
    got = np.array([r["score"] for r in summary["results"]])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert all(r["anomalous"] == (r["score"] > summary["threshold"]) for r in summary["results"])


def test_explain_a_dashboard_run_uses_its_saved_threshold(saved, tmp_path, capsys):
    _, runs_dir, run_id, paths, _, _ = saved
    save_threshold(run_id, 0.0, runs_dir=runs_dir)  # everything is an anomaly at this operating point
    out = tmp_path / "out"
    assert main(["explain", "--detector", str(runs_dir / run_id), str(paths[0]), "--out", str(out),
                 "--layer", "conv2_relu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threshold"] == 0.0 and summary["layer"] == "conv2_relu"
    assert summary["results"][0]["anomalous"] and (out / summary["results"][0]["overlay"]).is_file()


@pytest.mark.parametrize("extra, message", [
    (["--layer", "feature_pool"], "comes after the feature layer"),
    (["--layer", "nope"], "not a layer"),
    (["--opacity", "1.5"], "opacity"),
])
def test_explain_errors(saved, tmp_path, capsys, extra, message):
    det_dir, _, _, paths, _, _ = saved
    assert main(["explain", "--detector", str(det_dir), str(paths[0]), "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_explain_needs_a_detector_or_run_folder(saved, tmp_path, capsys):
    _, _, _, paths, bad, _ = saved
    assert main(["explain", "--detector", str(tmp_path), str(paths[0]), "--out", str(tmp_path / "o")]) == 2
    assert "neither a detector folder" in capsys.readouterr().err
    det_dir = saved[0]
    assert main(["explain", "--detector", str(det_dir), str(bad), "--out", str(tmp_path / "o")]) == 1
    assert f"skipped {bad}" in capsys.readouterr().err


def test_explain_keeps_a_foreign_out_folder_and_reuses_its_own(saved, tmp_path, capsys):
    det_dir, _, _, paths, _, _ = saved
    foreign = tmp_path / "thesis"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "thesis.txt").write_text("years of work")
    (foreign / "im0_gradcam.png").write_bytes(b"my own picture")
    args = ["explain", "--detector", str(det_dir), str(paths[0]), "--out", str(foreign)]
    assert main(args) == 1
    assert "thesis.txt" in capsys.readouterr().err
    assert (foreign / "im0_gradcam.png").read_bytes() == b"my own picture" and not (foreign / "summary.json").exists()
    own = tmp_path / "own"
    assert main(["explain", "--detector", str(det_dir), str(paths[0]), "--out", str(own)]) == 0
    assert main(["explain", "--detector", str(det_dir), str(paths[0]), "--out", str(own)]) == 0  # its own: rewritten
    assert json.loads((own / "summary.json").read_text())["format"] == "doc-explorer-explanation"
    capsys.readouterr()
    assert main([*args, "--force"]) == 0
    assert (foreign / "thesis.txt").read_text() == "years of work" and "--force" in capsys.readouterr().err
