"""The command line on a folder of one's own images without reference/: auto preset, patch scoring, defect maps,
and the folder benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from doc_core.cli import main
from doc_core.workflow.selection import synthetic_defects

TINY = ["--backbone", "tiny", "--input-size", "32", "--weights", "none", "--epochs", "1", "--batch-size", "16"]


@pytest.fixture(scope="module")
def own_folder(tmp_path_factory, make_normal) -> Path:
    """train/ (40 normal), test/normal (8) and test/anomaly (8, a spot each), ground_truth/ masks; no reference/."""
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    bad, masks, _ = synthetic_defects(make_normal(rng, 8), seed=1, kinds=("spot",))
    groups = {"train": make_normal(rng, 40), "test/normal": make_normal(rng, 8), "test/anomaly": bad}
    for sub, images in groups.items():
        (root / sub).mkdir(parents=True)
        for i, im in enumerate(images):
            Image.fromarray(im[..., 0]).save(root / sub / f"img_{i:02d}.png")
    (root / "ground_truth").mkdir()
    for i, m in enumerate(masks):
        Image.fromarray((m * 255).astype(np.uint8)).save(root / "ground_truth" / f"img_{i:02d}_mask.png")
    return root


def test_train_on_a_folder_without_reference_uses_auto_and_shows_its_evidence(own_folder, tmp_path, capsys):
    out = tmp_path / "det"
    assert main(["train", "--folder", str(own_folder), "--image-size", "32", *TINY, "--out", str(out)]) == 0
    cap = capsys.readouterr()
    result = json.loads(cap.out)
    assert "reference: none" in cap.err and "preset auto" in cap.err and "<- chosen" in cap.err
    assert result["preset"] == "auto" and len(result["selection"]["rows"]) == 5
    chosen = [r for r in result["selection"]["rows"] if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["name"] == result["selection"]["chosen"]
    assert 0.0 <= result["auc"] <= 1.0
    saved = json.loads((out / "detector.json").read_text())
    assert saved["metadata"]["evaluation"]["selection"]["chosen"] == result["selection"]["chosen"]


def test_train_told_the_anomalies_are_objects_compares_global_scoring_only(own_folder, tmp_path, capsys):
    assert main(["train", "--folder", str(own_folder), "--image-size", "32", *TINY, "--anomalies", "objects",
                 "--out", str(tmp_path / "det")]) == 0
    cap = capsys.readouterr()
    result = json.loads(cap.out)
    assert [r["name"] for r in result["selection"]["rows"]] == ["pretrained, global k-NN", "DOC, global k-NN"]
    assert result["selection"]["anomalies"] == "objects" and "global scoring only" in cap.err
    assert result["scorer"]["name"] == "knn"
    # the option only chooses auto's candidates: with manual settings it is an error, before any data is read
    assert main(["train", "--folder", str(own_folder / "missing"), "--preset", "manual", "--anomalies",
                 "defects", "--out", str(tmp_path / "det2")]) == 2
    assert "--anomalies chooses the auto preset's candidates" in capsys.readouterr().err


def test_patch_detector_and_its_defect_maps(own_folder, tmp_path, capsys):
    out = tmp_path / "det"
    assert main(["train", "--folder", str(own_folder), "--image-size", "32", *TINY, "--preset", "manual",
                 "--scorer", "patch", "--image-score", "mean", "--epochs", "0", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["scorer"]["name"] == "patch" and (out / "patch_bank.npz").is_file()
    assert result["scorer"]["image_score"] == "mean"
    assert json.loads((out / "detector.json").read_text())["config"]["scorer"]["image_score"] == "mean"
    maps_dir = tmp_path / "maps"
    images = sorted((own_folder / "test" / "anomaly").glob("*.png"))[:3]
    assert main(["explain", "--detector", str(out), *map(str, images), "--out", str(maps_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "patch" and [r["overlay"] for r in summary["results"]] == \
        ["img_00_defectmap.png", "img_01_defectmap.png", "img_02_defectmap.png"]
    assert all((maps_dir / r["overlay"]).is_file() for r in summary["results"])
    knn = tmp_path / "knn"
    assert main(["train", "--folder", str(own_folder), "--image-size", "32", *TINY, "--preset", "manual",
                 "--out", str(knn)]) == 0
    capsys.readouterr()
    assert main(["explain", "--detector", str(knn), str(images[0]), "--out", str(tmp_path / "m2"),
                 "--method", "patch"]) == 2
    assert "--scorer patch" in capsys.readouterr().err


@pytest.mark.slow
def test_folder_benchmark_protocol(own_folder, tmp_path, capsys):
    path = tmp_path / "res.json"
    assert main(["benchmark", "--protocol", "folder", "--folder", str(own_folder), "--image-size", "32", *TINY,
                 "--seeds", "0", "--no-fashion-reference", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    res = json.loads(path.read_text())
    assert res["protocol"] == "folder" and res["data"]["pixel_masks"] is True
    assert res["data"]["n_test_normal"] == 8 and res["data"]["n_test_anomaly"] == 8
    assert res["methods"]["pretrained_patch"]["pixel_auc"] is not None and "auto picked" in out
    assert main(["benchmark", "--protocol", "folder", *TINY]) == 2
    assert "--folder" in capsys.readouterr().err
