"""The command line and the benchmark, end to end on tiny fake data with the tiny backbone."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from doc_core.cli import build_parser, main
from doc_core.data import FASHION_MNIST_FILES, FashionMNIST
from doc_core.evaluation import benchmark as bench
from doc_core.evaluation.report import roc_figure

TINY = ["--backbone", "tiny", "--input-size", "32", "--weights", "none", "--epochs", "1", "--batch-size", "16"]
ROOT = Path(__file__).resolve().parent.parent


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _fake_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each class is a bright bar at its own row, plus noise: separable, so AUCs are far from chance."""
    imgs = rng.integers(0, 40, size=(len(labels), 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        imgs[i, 2 + 2 * c: 5 + 2 * c, 4:24] = 220
    return imgs


@pytest.fixture(scope="module")
def fake_fmnist(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("fmnist")
    ytr = np.repeat(np.arange(10), 1200)  # 5 reference classes (one-vs-rest-disjoint) hold 6,000 images
    yte = np.repeat(np.arange(10), 10)
    arrays = {"train_images": _fake_images(ytr, rng), "train_labels": ytr, "test_images": _fake_images(yte, rng),
              "test_labels": yte}
    for key, name in FASHION_MNIST_FILES.items():
        _write_idx(folder / name, arrays[key])
    return folder


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("train", "evaluate", "score", "explain", "export", "benchmark", "label", "bank"):
        assert cmd in out


def test_help_and_argument_errors_do_not_import_tensorflow():
    code = (
        "import runpy, sys\n"
        "from doc_core.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['train'], ['train', '--backbone', 'nope', '--out', 'x']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, 2), exc.code\n"
        "sys.argv = ['doc_core', '--help']\n"
        "try:\n"
        "    runpy.run_module('doc_core', run_name='__main__')  # python -m doc_core --help\n"
        "except SystemExit:\n"
        "    pass\n"
        "import doc_core\n"
        "assert 'DOCDetector' in dir(doc_core) and 'DOCDetector' in doc_core.__all__\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'sklearn')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_tensorflow_start_up_notices_are_not_printed(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "doc_core", "score", "--detector", str(tmp_path / "none"), "x.png"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env={**env, "PYTHONPATH": str(ROOT)})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


def test_parser_choices_match_the_core():
    from doc_core import cli
    from doc_core.model.backbones import BACKBONES
    from doc_core.scoring import KNN_BACKENDS

    from doc_core.data.datasets import REFERENCE_CHOICES
    from doc_core.model.detector import SCORER_NAMES

    assert cli.BACKBONE_NAMES == BACKBONES and cli.KNN_BACKEND_NAMES == KNN_BACKENDS
    assert cli.SCORER_NAMES == SCORER_NAMES and cli.REFERENCE_NAMES == REFERENCE_CHOICES


def test_lazy_package_names():
    import doc_core
    from doc_core import DOCDetector
    from doc_core.model.detector import DOCDetector as defined

    assert DOCDetector is defined is doc_core.DOCDetector
    with pytest.raises(AttributeError):
        doc_core.no_such_name


def test_every_option_has_help():
    parser = build_parser()
    for sub in parser._subparsers._group_actions[0].choices.values():
        for action in sub._actions:
            if action.dest != "help" and action.option_strings:
                assert action.help, f"{sub.prog} {action.option_strings} has no help text"


def test_train_evaluate_score(tmp_path, fake_fmnist, capsys):
    out = tmp_path / "det"
    args = ["--data-dir", str(fake_fmnist), "--protocol", "one-vs-rest", "--normal-class", "3"]
    assert main(["train", *args, *TINY, "--out", str(out)]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["auc"] > 0.8 and (out / "detector.json").is_file()

    assert main(["evaluate", "--detector", str(out), *args, "--json", str(tmp_path / "ev.json")]) == 0
    evaluated = json.loads((tmp_path / "ev.json").read_text())
    assert evaluated["auc"] == pytest.approx(trained["auc"], abs=1e-6)
    capsys.readouterr()

    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["score", "--detector", str(out), str(img), str(bad), "--out", str(tmp_path / "s.json")]) == 0
    scored = json.loads((tmp_path / "s.json").read_text())
    assert [r["path"] for r in scored["results"]] == [str(img)]
    assert scored["results"][0]["anomalous"] == (scored["results"][0]["score"] > scored["threshold"])
    assert scored["skipped"][0]["path"] == str(bad)
    capsys.readouterr()
    # the same scores and threshold with faiss search, chosen at scoring time or saved at training time
    pytest.importorskip("faiss", reason="faiss-cpu is not installed")
    assert main(["score", "--detector", str(out), str(img), "--knn-backend", "faiss"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert fast["threshold"] == scored["threshold"]
    assert fast["results"][0]["score"] == pytest.approx(scored["results"][0]["score"], rel=1e-4)
    assert main(["train", *args, *TINY, "--knn-backend", "faiss", "--out", str(tmp_path / "fast")]) == 0
    assert json.loads((tmp_path / "fast" / "detector.json").read_text())["config"]["scorer"]["backend"] == "faiss"


def test_train_holds_out_calibration_images(tmp_path, fake_fmnist, capsys):
    args = ["--data-dir", str(fake_fmnist), "--protocol", "one-vs-rest", "--normal-class", "3", *TINY,
            "--epochs", "0"]
    assert main(["train", *args, "--out", str(tmp_path / "cal")]) == 0
    captured = capsys.readouterr()
    cal = json.loads(captured.out)["calibration"]
    assert cal == {"n": 120, "of": 1200, "threshold_source": "calibration", "note": ""}
    assert "120 of the 1200 normal training images held out for calibration" in captured.err
    assert main(["train", *args, "--calibration", "0", "--out", str(tmp_path / "off")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["calibration"]["n"] == 0 and "leave-one-out" in captured.err
    assert json.loads((tmp_path / "off" / "detector.json").read_text())["config"]["calibration_fraction"] == 0.0
    with pytest.raises(SystemExit):
        main(["train", *args, "--calibration", "0.9", "--out", str(tmp_path / "bad")])
    assert "between 0 (off) and 0.5" in capsys.readouterr().err


def test_clear_error_for_a_broken_detector(tmp_path, capsys):
    (tmp_path / "det").mkdir()
    assert main(["score", "--detector", str(tmp_path / "det"), "x.png"]) == 2
    assert "missing" in capsys.readouterr().err


def test_benchmark_json_schema(tmp_path, fake_fmnist, capsys):
    path, html = tmp_path / "r.json", tmp_path / "plots" / "roc.html"
    assert main(["benchmark", "--protocol", "tutorial", "--seeds", "0", "1", "--data-dir", str(fake_fmnist),
                 "--json", str(path), "--roc-html", str(html), *TINY]) == 0
    res = json.loads(path.read_text())
    assert res["protocol"] == "tutorial"
    assert set(res["methods"]) == {"raw_knn", "conv_ae", "pretrained_knn", "doc_knn", "doc_lof"}
    for m in res["methods"].values():
        assert 0.0 <= m["auc"] <= 1.0 and m["fit_s"] >= 0 and m["score_ms_per_image"] > 0
        fpr, tpr = np.array(m["roc"]["fpr"]), np.array(m["roc"]["tpr"])
        assert len(fpr) == 201 and fpr[0] == 0 and fpr[-1] == 1 and np.all(np.diff(tpr) >= 0) and tpr[-1] == 1
    page = html.read_text()  # one self-contained chart: plotly.js inside, every method in the legend
    assert "plotly.js v" in page and not re.search(r"<script[^>]*src=", page)
    for m in res["methods"].values():
        assert f"AUC {m['auc']:.4f}" in page
    assert len(res["methods"]["doc_knn"]["aucs"]) == 2
    assert res["gradcam_ms_per_image"] > 0 and res["tsne_s"] > 0
    assert res["explain_timing"]["tsne_points"] == 20 and res["explain_timing"]["detector_seed"] == 0
    out = capsys.readouterr().out
    assert "doc_knn" in out and "Grad-CAM" in out and "t-SNE of 20 points" in out
    # the default threshold's promise and what it delivers on the test normals, for the detector methods only
    for name in ("pretrained_knn", "doc_knn", "doc_lof"):
        m = res["methods"][name]
        assert m["intended_fpr"] == pytest.approx(0.05) and 0.0 <= m["realised_fpr"] <= 1.0
        assert m["threshold_source"] == ["calibration"] and m["n_calibration"] == 120  # 10 % of 1,200 sneakers
        assert all(0.0 <= p["realised_fpr"] <= 1.0 for p in m["per_seed"])
    assert "realised_fpr" not in res["methods"]["raw_knn"] and "realised_fpr" not in res["methods"]["conv_ae"]
    assert re.search(r"doc_knn.*\s5\.0%", out)


@pytest.mark.parametrize("protocol", ["one-vs-rest", "one-vs-rest-disjoint"])
def test_one_vs_rest_per_class(fake_fmnist, protocol):
    from doc_core.data import load_fashion_mnist
    from doc_core.model.backbones import BackboneConfig
    from doc_core.model.training import TrainConfig

    data = load_fashion_mnist(fake_fmnist)
    small = FashionMNIST(data.train_images, data.train_labels, data.test_images, data.test_labels, "fake")
    res = bench.benchmark(protocol, (0,), BackboneConfig("tiny", input_size=32, weights=None),
                          TrainConfig(epochs=1, batch_size=16), classes=(0, 5), data=small, log=lambda m: None)
    assert set(res["methods"]) == {"raw_knn", "conv_ae", "pretrained_knn", "doc_knn", "doc_lof"}
    assert all(set(m["per_class_roc"]) == {"T-shirt/top", "Sandal"} for m in res["methods"].values())
    fig = roc_figure(res)  # one small chart per normal class, every method on each
    assert len(fig.data) == 2 * 5
    assert [a.text for a in fig.layout.annotations] == [
        f"normal: {c} · DOC k-NN {res['methods']['doc_knn']['per_class'][c]:.3f}" for c in ("T-shirt/top", "Sandal")]
    doc = res["methods"]["doc_knn"]
    assert set(res["methods"]["doc_lof"]["per_class"]) == set(doc["per_class"])
    assert set(doc["per_class"]) == {"T-shirt/top", "Sandal"}
    assert set(doc["per_class_realised_fpr"]) == {"T-shirt/top", "Sandal"}
    assert doc["intended_fpr"] == pytest.approx(0.05)
    assert doc["threshold_source"] == ["calibration"] and 0.0 <= doc["realised_fpr"] <= 1.0
    assert doc["auc"] == pytest.approx(np.mean(list(doc["per_class"].values())), abs=1e-4)
    assert "per-class AUC" in bench.format_table(res) and res["protocol"] == protocol
