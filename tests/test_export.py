"""Edge export: LiteRT bundles, the standalone scorer (no TensorFlow), its image decoders, and the CLI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from doc_core import DOCDetector, ScorerConfig, TrainConfig
from doc_core.edge.edge_scorer import BundleError, EdgeScorer, decode_png, fit_image, read_image
from doc_core.edge.export import ExportConfig, ExportError, export_bundle, infer_input_shape
from doc_core.evaluation.metrics import roc_auc

pytest.importorskip("ai_edge_litert")

HEAVY = ("tensorflow", "keras", "doc_core")


@pytest.fixture(scope="module")
def fitted(tiny_config, make_normal, make_reference, make_anomalous, tmp_path_factory):
    rng = np.random.default_rng(0)
    normal = make_normal(rng, 96)
    ref, ref_y = make_reference(rng, 16)
    det = DOCDetector(tiny_config, TrainConfig(epochs=1, batch_size=16)).fit(normal, ref, ref_y)
    test_normal = make_normal(rng, 30)
    test = np.concatenate([test_normal, make_anomalous(rng, make_normal(rng, 30))])
    labels = np.repeat([0, 1], 30)
    root = tmp_path_factory.mktemp("bundles")
    bundles = {q: root / q for q in ("none", "float16", "int8")}
    docs = {q: export_bundle(det, p, ExportConfig(quantize=q), normal_images=normal) for q, p in bundles.items()}
    return {"det": det, "normal": normal, "test": test, "labels": labels, "bundles": bundles, "docs": docs,
            "root": root}


@pytest.fixture(scope="module")
def tiny_config():  # module-scoped twin of the conftest fixture
    from doc_core import BackboneConfig

    return BackboneConfig(name="tiny", input_size=32, weights=None)


def test_bundle_layout_and_json(fitted):
    path, doc = fitted["bundles"]["none"], fitted["docs"]["none"]
    assert sorted(p.name for p in path.iterdir()) == ["bank.npy", "bundle.json", "model.tflite", "scorer.py"]
    on_disk = json.loads((path / "bundle.json").read_text())
    assert on_disk["format"] == "doc-explorer-edge-bundle" and on_disk["format_version"] == 1
    assert on_disk["input"] == {"shape": [32, 32, 3], "dtype": "uint8", "range": [0, 255],
                                "batch": "dynamic (default 1)"}
    assert on_disk["scorer"]["k"] == 5 and on_disk["quantize"] == "none"
    assert on_disk["preprocessing"]["in_model"] and on_disk["preprocessing"]["backbone"]["name"] == "tiny"
    bank = np.load(path / "bank.npy", allow_pickle=False)
    assert bank.dtype == np.float32 and bank.shape == (66, on_disk["feature_dim"])  # 96 less 30 calibration
    assert doc["sizes_bytes"]["bundle"] == sum(p.stat().st_size for p in path.iterdir())
    # float32 without re-embedding: the detector's own bank and threshold
    np.testing.assert_array_equal(bank, fitted["det"].bank_)
    assert on_disk["threshold"] == pytest.approx(fitted["det"].threshold_)


def test_float_bundle_matches_keras_scores(fitted):
    det, test = fitted["det"], fitted["test"]
    edge = EdgeScorer(fitted["bundles"]["none"])
    np.testing.assert_allclose(edge.embed(test), det.embed(test), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(edge.score_samples(test), det.decision_function(test), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(edge.predict(test), det.predict(test))


def test_quantized_bundles_keep_the_ranking(fitted):
    det, test, y = fitted["det"], fitted["test"], fitted["labels"]
    ref_auc = roc_auc(y, det.decision_function(test))
    for q, tol in (("float16", 0.01), ("int8", 0.05)):
        doc = fitted["docs"][q]
        # recomputed from the 66 training images: the detector's 30 calibration images stay out of the bank
        assert doc["bank_source"].startswith("recomputed") and doc["bank_size"] == 66 == len(det.train_index_)
        edge = EdgeScorer(fitted["bundles"][q])
        scores = edge.score_samples(test)
        assert abs(roc_auc(y, scores) - ref_auc) <= tol, q
        assert np.corrcoef(scores, det.decision_function(test))[0, 1] > 0.9
        # the threshold keeps the detector's training-score quantile
        assert doc["threshold_train_quantile"] == pytest.approx(np.mean(det.train_scores_ <= det.threshold_))
    assert fitted["docs"]["int8"]["calibration_images"] == 66 + 6
    assert fitted["docs"]["float16"]["sizes_bytes"]["model"] < fitted["docs"]["none"]["sizes_bytes"]["model"]


def test_int8_needs_normal_images_and_lof_is_refused(fitted, tmp_path):
    det = fitted["det"]
    with pytest.raises(ExportError, match="calibration"):
        export_bundle(det, tmp_path / "b", ExportConfig(quantize="int8"))
    with pytest.raises(ExportError, match="k-NN"):
        export_bundle(det.with_scorer(ScorerConfig("lof")), tmp_path / "b")
    with pytest.raises(ExportError, match="quantization"):
        export_bundle(det, tmp_path / "b", ExportConfig(quantize="int4"))
    assert not (tmp_path / "b").exists()


def test_bank_subsample_and_input_shape(fitted, tmp_path):
    det, normal = fitted["det"], fitted["normal"]
    doc = export_bundle(det, tmp_path / "small", ExportConfig(max_bank_size=40, input_shape=(28, 28, 1)), normal)
    assert doc["bank_size"] == 40 and doc["input"]["shape"] == [28, 28, 1]
    edge = EdgeScorer(tmp_path / "small")
    gray28 = fitted["test"][:4, 2:30, 2:30]
    assert edge.score_samples(gray28).shape == (4,)
    det.metadata_ = {"split": {"source": "fashion-mnist"}}
    try:
        assert infer_input_shape(det) == (28, 28, 1)
    finally:
        del det.metadata_


def _write_pngs(folder: Path, images: np.ndarray) -> list[str]:
    paths = []
    for i, im in enumerate(images):
        p = folder / f"img{i}.png"
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(p)
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("block_pillow", [False, True])
def test_scorer_script_runs_without_tensorflow(fitted, tmp_path, block_pillow):
    bundle = fitted["bundles"]["none"]
    paths = _write_pngs(tmp_path, fitted["test"][[0, 1, 40, 41]])
    paths.append(str(tmp_path / "broken.png"))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    # issue #10: a truncated PGM that used to hang, a PNG header of 10^10 pixels that used to inflate to gigabytes
    (tmp_path / "trunc.pgm").write_bytes(b"P5\n28")
    chunks = [(b"IHDR", (100_000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"),
              (b"IDAT", zlib.compress(bytes(1000))), (b"IEND", b"")]
    (tmp_path / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(
        len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
        for kind, body in chunks))
    paths += [str(tmp_path / "trunc.pgm"), str(tmp_path / "huge.png")]
    code = ("import sys, json\n"
            + ("sys.modules['PIL'] = None\n" if block_pillow else "")
            + f"sys.path.insert(0, {str(bundle)!r})\n"
            "import scorer\n"
            f"rc = scorer.main({paths!r} + ['--out', 'out.json'])\n"
            f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
            "print(json.dumps({'rc': rc, 'heavy': heavy}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status == {"rc": 0, "heavy": []}
    out = json.loads((tmp_path / "out.json").read_text())
    assert [r["path"] for r in out["results"]] == paths[:4]
    assert [Path(s["path"]).name for s in out["skipped"]] == ["broken.png", "trunc.pgm", "huge.png"]
    assert all(s["reason"].startswith("ImageError") for s in out["skipped"])
    expected = fitted["det"].decision_function(fitted["test"][[0, 1, 40, 41]])
    np.testing.assert_allclose([r["score"] for r in out["results"]], expected, rtol=1e-4, atol=1e-5)


def test_scorer_cli_pixel_limit(fitted, tmp_path, monkeypatch, capsys):
    from doc_core.edge.edge_scorer import main

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # main() sets it; restored after
    paths = _write_pngs(tmp_path, fitted["test"][[0]])
    assert main(["--bundle", str(fitted["bundles"]["none"]), "--max-pixels", "1000", *paths]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["results"] == [] and "32x32 pixels, more than the limit of 1,000 pixels" in out["skipped"][0]["reason"]
    assert Image.MAX_IMAGE_PIXELS == 1000
    assert main(["--bundle", str(fitted["bundles"]["none"]), *paths]) == 0


def test_scorer_as_script_in_the_bundle(fitted, tmp_path):
    bundle = fitted["bundles"]["int8"]
    paths = _write_pngs(tmp_path, fitted["test"][[0, 45]])
    proc = subprocess.run([sys.executable, "-X", "importtime", "scorer.py", *paths], capture_output=True, text=True,
                          cwd=bundle, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "numpy" in imported and "ai_edge_litert" in imported
    assert not imported & set(HEAVY)
    out = json.loads(proc.stdout)
    assert out["threshold"] == pytest.approx(fitted["docs"]["int8"]["threshold"])
    assert len(out["results"]) == 2


def test_bundle_errors(tmp_path, fitted):
    with pytest.raises(BundleError, match="not an edge bundle"):
        EdgeScorer(tmp_path)
    (tmp_path / "bundle.json").write_text(json.dumps({"format": "doc-explorer-edge-bundle", "format_version": 99}))
    with pytest.raises(BundleError, match="version"):
        EdgeScorer(tmp_path)
    edge = EdgeScorer(fitted["bundles"]["none"])
    with pytest.raises(ValueError, match="uint8"):
        edge.embed(fitted["test"][:2].astype(np.float32))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "1", "I;16", "P-trns"])
def test_png_decoder_matches_pillow(tmp_path, mode):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (13, 17, 1), dtype=np.uint8)], axis=-1)
    if mode == "RGBA":
        im = Image.fromarray(rgba, "RGBA")
    elif mode == "LA":
        im = Image.fromarray(rgba, "RGBA").convert("LA")
    elif mode == "I;16":
        im = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    elif mode == "P-trns":
        im = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        im.info["transparency"] = 3
    elif mode in ("P",):
        im = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    else:
        im = Image.fromarray(rgb).convert(mode)
    p = tmp_path / "x.png"
    im.save(p, transparency=3) if mode == "P-trns" else im.save(p)
    ours = decode_png(p.read_bytes())
    theirs = read_image(p)  # the Pillow path of the same module
    if mode == "I;16":
        theirs = rgb[..., :1]
    assert ours.shape == theirs.shape
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_fit_image_matches_doc_core_resizing():
    from doc_core.data import resize_image

    rng = np.random.default_rng(2)
    big = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    small = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
    assert np.abs(fit_image(big, (32, 32, 3)).astype(int) - resize_image(big, 32).astype(int)).max() <= 1
    up = fit_image(small, (96, 96, 3))
    assert up.shape == (96, 96, 3)
    assert np.abs(up.astype(int) - np.repeat(resize_image(small, 96), 3, -1).astype(int)).max() <= 1
    gray = fit_image(big, (64, 64, 1))
    assert np.abs(gray[..., 0].astype(int) - np.asarray(Image.fromarray(big).convert("L")).astype(int)).max() <= 1


def test_export_cli(fitted, tmp_path):
    from doc_core.cli import main

    det_dir = fitted["det"].save(tmp_path / "det")
    out = tmp_path / "edge"
    assert main(["export", "--detector", str(det_dir), "--format", "tflite", "--quantize", "float16",
                 "--out", str(out), "--max-bank-size", "50", "--keep-keras-bank"]) == 0
    doc = json.loads((out / "bundle.json").read_text())
    assert doc["quantize"] == "float16" and doc["bank_size"] == 50 and doc["source"]["detector"] == str(det_dir)
    # int8 without any record of the training images: a clear error, exit code 2
    assert main(["export", "--detector", str(det_dir), "--quantize", "int8", "--out", str(tmp_path / "e8")]) == 2


def test_export_cli_finds_a_runs_training_images(fitted, tmp_path, monkeypatch):
    """A dashboard run on a folder dataset: int8 calibration reads the run's own train/ images."""
    from doc_core.cli import main
    from doc_core.data import load_folder_split
    from doc_core.data.datasets import DatasetSpec
    from doc_core.workflow.runs import save_run

    root = tmp_path / "data"
    for sub, imgs in (("train", fitted["normal"][:24]), ("reference/a", fitted["test"][:4]),
                      ("reference/b", fitted["test"][40:44])):
        (root / sub).mkdir(parents=True)
        _write_pngs(root / sub, imgs)
    split, _ = load_folder_split(root, image_size=32)
    det = DOCDetector(fitted["det"].backbone, TrainConfig(epochs=0)).fit_split(split)
    summary = save_run(det, det.decision_function(fitted["test"]), fitted["labels"], ["x"] * 60,
                       dataset=DatasetSpec.folder(root, image_size=32).to_dict(), runs_dir=tmp_path / "runs")
    out = tmp_path / "edge8"
    assert main(["export", "--detector", str(summary.path), "--quantize", "int8", "--out", str(out)]) == 0
    doc = json.loads((out / "bundle.json").read_text())
    assert doc["bank_size"] == 24 and doc["calibration_images"] == 24 + 3 and doc["input"]["shape"] == [32, 32, 3]
    from doc_core.edge.export import infer_input_shape

    run_json = json.loads((summary.path / "run.json").read_text())
    run_json["dataset"] = {"kind": "fashion-mnist"}
    (summary.path / "run.json").write_text(json.dumps(run_json))
    assert infer_input_shape(det, summary.path) == (28, 28, 1)


def test_benchmark_export_measures_every_quantization(fitted, tmp_path):
    from doc_core.edge.export import benchmark_export, format_export_table

    res = benchmark_export(fitted["det"], fitted["normal"], fitted["test"], fitted["labels"], tmp_path,
                           quantizations=("none", "int8"), n_timed=10, onnx=False, log=lambda m: None)
    assert set(res["bundles"]) == {"none", "int8"}
    none = res["bundles"]["none"]
    assert abs(none["auc_diff"]) < 1e-6 and none["spearman_vs_keras"] > 0.999 and none["tensorflow_free"]
    for b in res["bundles"].values():
        assert b["sizes_bytes"]["bundle"] > b["sizes_bytes"]["model"] > 0
        assert b["ms_per_image"]["total_ms"] > 0 and b["ms_per_image"]["images"] == 10
    table = format_export_table(res)
    assert "int8" in table and "keras" in table


def test_onnx_bundle_matches_keras_and_needs_no_tensorflow(fitted, tmp_path):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    det, test = fitted["det"], fitted["test"]
    doc = export_bundle(det, tmp_path / "onnx", ExportConfig(format="onnx"))
    assert doc["model"] == "model.onnx" and doc["runtime"] == "onnxruntime"
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["bank.npy", "bundle.json", "model.onnx",
                                                                       "scorer.py"]
    np.testing.assert_allclose(EdgeScorer(tmp_path / "onnx").score_samples(test), det.decision_function(test),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ExportError, match="float32 only"):
        export_bundle(det, tmp_path / "onnx8", ExportConfig(format="onnx", quantize="int8"), fitted["normal"])
    paths = _write_pngs(tmp_path, test[[0, 45]])
    code = (f"import sys, json\nsys.path.insert(0, {str(tmp_path / 'onnx')!r})\nimport scorer\n"
            f"rc = scorer.main({paths!r} + ['--out', 'out.json'])\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    scores = [r["score"] for r in json.loads((tmp_path / "out.json").read_text())["results"]]
    np.testing.assert_allclose(scores, det.decision_function(test[[0, 45]]), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ patch bundles


@pytest.fixture(scope="module")
def patch_fitted(tiny_config, make_normal, make_anomalous, tmp_path_factory):
    """A tiny patch detector (default top25 image score; two layers, 8x8 and 4x4, so the model resizes one),
    exported once."""
    rng = np.random.default_rng(3)
    normal = make_normal(rng, 40)
    det = DOCDetector(tiny_config, TrainConfig(epochs=0), ScorerConfig("patch", max_bank_size=300))
    det.fit(normal, None, None)
    test = np.concatenate([make_normal(rng, 6), make_anomalous(rng, make_normal(rng, 6))])
    root = tmp_path_factory.mktemp("patch-bundles")
    doc = export_bundle(det, root / "top25", normal_images=normal)
    return {"det": det, "normal": normal, "test": test, "root": root, "bundle": root / "top25", "doc": doc}


def test_patch_bundle_matches_the_detector(patch_fitted):
    det, test, path, doc = patch_fitted["det"], patch_fitted["test"], patch_fitted["bundle"], patch_fitted["doc"]
    assert det.scorer.image_score == "top25"
    assert sorted(p.name for p in path.iterdir()) == ["bank.npy", "bundle.json", "model.tflite", "scorer.py"]
    on_disk = json.loads((path / "bundle.json").read_text())
    assert on_disk["scorer"]["name"] == "patch" and on_disk["scorer"]["image_score"] == "top25"
    assert on_disk["scorer"]["k"] == det.scorer_.k and on_disk["scorer"]["neighbourhood"] == 3
    assert on_disk["scorer"]["map_shape"] == [8, 8] and on_disk["scorer"]["channels"] == 16 + 32
    assert on_disk["input"]["shape"] == [32, 32, 3] and on_disk["quantize"] == "none"
    np.testing.assert_array_equal(np.load(path / "bank.npy", allow_pickle=False), det.scorer_.bank_)
    assert doc["threshold"] == on_disk["threshold"] == det.threshold_
    edge = EdgeScorer(path)
    assert edge.kind_ == "patch" and edge.threshold_ == det.threshold_
    maps = det.backbone_.patch_maps(test, det.backbone_.patch_layers(None))
    np.testing.assert_allclose(edge.embed(test).reshape(maps.shape), maps, rtol=1e-4, atol=1e-6)
    scores = det.decision_function(test)
    np.testing.assert_allclose(edge.score_samples(test), scores, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(edge.predict(test), det.predict(test))
    assert edge.predict(test)[6:].sum() > edge.predict(test)[:6].sum()  # the planted squares are found
    ref = det.anomaly_maps(test)
    got = edge.anomaly_maps(test)
    assert got.shape == ref.shape == (12, 32, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # another size: a larger smoothing kernel (sigma 4 * 52 / 224) over a non-square map
    np.testing.assert_allclose(edge.anomaly_maps(test[:3], size=(40, 64)), det.anomaly_maps(test[:3], (40, 64)),
                               rtol=1e-4, atol=1e-5)


def test_patch_bundle_max_rule_and_onnx(patch_fitted, tmp_path):
    det, test, normal = patch_fitted["det"], patch_fitted["test"], patch_fitted["normal"]
    det_max = det.with_scorer(ScorerConfig("patch", max_bank_size=300, image_score="max", neighbourhood=1),
                              normal=normal)
    doc = export_bundle(det_max, tmp_path / "max")
    assert doc["scorer"]["image_score"] == "max" and doc["threshold"] == det_max.threshold_
    edge = EdgeScorer(tmp_path / "max")
    np.testing.assert_allclose(edge.score_samples(test), det_max.decision_function(test), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(edge.anomaly_maps(test), det_max.anomaly_maps(test), rtol=1e-4, atol=1e-5)
    if importlib.util.find_spec("tf2onnx") and importlib.util.find_spec("onnxruntime"):
        doc = export_bundle(det, tmp_path / "onnx", ExportConfig(format="onnx"))
        assert doc["model"] == "model.onnx" and doc["scorer"]["name"] == "patch"
        onnx = EdgeScorer(tmp_path / "onnx")
        np.testing.assert_allclose(onnx.score_samples(test), det.decision_function(test), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(onnx.anomaly_maps(test), det.anomaly_maps(test), rtol=1e-4, atol=1e-5)


def test_patch_export_refuses_quantization_and_subsampling(patch_fitted, tmp_path):
    det, normal = patch_fitted["det"], patch_fitted["normal"]
    for q in ("float16", "int8"):
        with pytest.raises(ExportError, match="patch bundles are float32 only"):
            export_bundle(det, tmp_path / q, ExportConfig(quantize=q), normal_images=normal)
    with pytest.raises(ExportError, match="whole patch bank"):
        export_bundle(det, tmp_path / "small", ExportConfig(max_bank_size=10))
    with pytest.raises(ExportError, match="reembed_bank"):
        export_bundle(det, tmp_path / "re", ExportConfig(reembed_bank=True), normal_images=normal)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("field, value, message", [
    ("channels", 47, "channels"), ("image_score", "median", "image_score"), ("map_shape", [8], "map_shape"),
    ("neighbourhood", 2, "odd"), ("k", 0, "k must be"), ("name", "lof", "unknown scorer")])
def test_tampered_patch_bundle_is_refused(patch_fitted, tmp_path, field, value, message):
    import shutil

    shutil.copytree(patch_fitted["bundle"], tmp_path / "b")
    doc = json.loads((tmp_path / "b" / "bundle.json").read_text())
    doc["scorer"][field] = value
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=message):
        EdgeScorer(tmp_path / "b")


def test_knn_bundle_has_no_defect_maps(fitted, tmp_path):
    edge = EdgeScorer(fitted["bundles"]["none"])
    assert edge.kind_ == "knn"
    with pytest.raises(BundleError, match="patch bundle"):
        edge.anomaly_maps(fitted["test"][:2])
    from doc_core.edge.edge_scorer import main

    paths = _write_pngs(tmp_path, fitted["test"][[0]])
    assert main(["--bundle", str(fitted["bundles"]["none"]), "--maps", str(tmp_path / "maps"), *paths]) == 2
    assert not (tmp_path / "maps").exists()


def test_patch_scorer_script_writes_maps_without_tensorflow(patch_fitted, tmp_path):
    det, test, bundle = patch_fitted["det"], patch_fitted["test"], patch_fitted["bundle"]
    paths = _write_pngs(tmp_path, test[[0, 7]])
    proc = subprocess.run([sys.executable, "-X", "importtime", "scorer.py", "--maps", str(tmp_path / "maps"), "--out",
                           str(tmp_path / "out.json"), *paths], capture_output=True, text=True, cwd=bundle,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": "", "PYTHONDONTWRITEBYTECODE": "1"},
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "numpy" in imported and "ai_edge_litert" in imported
    assert not imported & {*HEAVY, "scipy"}
    out = json.loads((tmp_path / "out.json").read_text())
    np.testing.assert_allclose([r["score"] for r in out["results"]], det.decision_function(test[[0, 7]]),
                               rtol=1e-4, atol=1e-6)
    assert [Path(r["map"]).name for r in out["results"]] == ["img0.png.npy", "img1.png.npy"]
    maps = np.stack([np.load(r["map"], allow_pickle=False) for r in out["results"]])
    np.testing.assert_allclose(maps, det.anomaly_maps(test[[0, 7]]), rtol=1e-4, atol=1e-5)


def test_export_cli_patch_detector(patch_fitted, tmp_path):
    from doc_core.cli import main

    det_dir = patch_fitted["det"].save(tmp_path / "det")
    assert main(["export", "--detector", str(det_dir), "--out", str(tmp_path / "edge")]) == 0
    doc = json.loads((tmp_path / "edge" / "bundle.json").read_text())
    assert doc["scorer"]["name"] == "patch" and doc["threshold"] == pytest.approx(patch_fitted["det"].threshold_)
    test = patch_fitted["test"]
    np.testing.assert_allclose(EdgeScorer(tmp_path / "edge").score_samples(test),
                               patch_fitted["det"].decision_function(test), rtol=1e-4, atol=1e-6)
    assert main(["export", "--detector", str(det_dir), "--quantize", "float16", "--keep-keras-bank",
                 "--out", str(tmp_path / "e16")]) == 2
