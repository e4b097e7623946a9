"""Issue #10, findings 4 and 6: tampered run and detector files are a clear error for that run only, .npz members are
checked from their headers before loading, and float images with NaN/Inf pixels are refused with their name.

Every crafted file is made here, small. The app test renders Home, Training, ROC and Score with broken runs beside a
good one.
"""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format
from PIL import Image

from doc_core.data import DataError, read_image, read_images
from doc_core.model.backbones import MAX_INPUT_SIZE, BackboneConfig
from doc_core.model.detector import DetectorFormatError, DOCDetector, ScorerConfig
from doc_core.model.training import StepRecord, TrainConfig
from doc_core.workflow import artifacts, runs
from doc_core.workflow.artifacts import ArraySpec, ArtifactError, Fields, parse_json, read_json, read_npz
from test_runs import _save, fitted  # noqa: F401 - the runs tests' tiny detector and save helper

RAW = "__raw__"  # placeholder replaced by raw JSON text (json.dumps cannot write 1e999 or a 5,000-digit number)


def _write_json_with_raw(path: Path, doc: dict, raw: str) -> None:
    path.write_text(json.dumps(doc).replace(json.dumps(RAW), raw))


# ------------------------------------------------------------------------------------------------------------ JSON


def test_json_reader_refuses_what_crashed_the_pages(tmp_path):
    f = tmp_path / "x.json"
    f.write_text('{"steps": 1e999, "n": NaN}')  # parses (as inf and nan) so the field can be named
    doc = read_json(f, 1000)
    with pytest.raises(ArtifactError, match="'steps' must be an integer"):
        Fields(doc, "x.json").int("steps", 0, 10)
    with pytest.raises(ArtifactError, match=r"x.json: 'n' must be a finite number, got nan"):
        Fields(doc, "x.json").float("n")
    f.write_text('{"steps": ' + "9" * 5000 + "}")
    with pytest.raises(ArtifactError, match="an integer with 5,000 digits"):
        read_json(f, 10**6)
    f.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError, match="nests 100000 levels deep"):
        read_json(f, 10**6)
    f.write_text('{"a": "[[[[{{{{ not nesting"}')  # brackets inside strings do not count
    assert artifacts.json_depth(f.read_text()) == 1 and read_json(f, 1000) == {"a": "[[[[{{{{ not nesting"}
    f.write_text('{"a": 1}' + " " * 100)
    with pytest.raises(ArtifactError, match="larger than the limit of 50 bytes"):
        read_json(f, 50)
    f.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ArtifactError, match="not UTF-8"):
        read_json(f, 1000)
    f.write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_json(f, 1000)
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json", 1000)


def test_a_fifo_is_refused_instead_of_blocking(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    os.mkfifo(tmp_path / "run.json")
    with pytest.raises(ArtifactError, match="not a regular file"):
        read_json(tmp_path / "run.json", 1000)


def test_fields_check_types_and_ranges():
    f = Fields({"i": 3, "b": True, "fl": 2.0, "s": "x", "big": 10**15, "none": None}, "doc")
    assert f.int("i", 0, 5) == 3 and f.int("fl", 0, 5) == 2 and f.float("i") == 3.0
    assert f.int("missing", 0, 5, default=None) is None and f.str("none", optional=True) is None
    for call, match in [(lambda: f.int("b", 0, 5), "'b' must be an integer"),  # a bool is not a number
                        (lambda: f.float("b"), "'b' must be a number"),
                        (lambda: f.int("i", 4, 5), r"'i' must be an integer in \[4, 5\], got 3"),
                        (lambda: f.float("s"), "'s' must be a number"),
                        (lambda: f.str("i"), "'i' must be a string"),
                        (lambda: f.str("s", choices=("a", "b")), "must be one of 'a', 'b'"),
                        (lambda: f.int("nope", 0, 1), "the field 'nope' is missing"),
                        (lambda: f.dict("s"), "'s' must be a JSON object")]:
        with pytest.raises(ArtifactError, match=match):
            call()
    with pytest.raises(ArtifactError, match="must be a JSON object"):
        Fields([1, 2], "doc")


@pytest.mark.parametrize("cls, d, match", [
    (TrainConfig, {"lam": "x"}, "'lam' must be a number"),
    (TrainConfig, {"lam": float("nan")}, "'lam' must be a finite number"),
    (TrainConfig, {"epochs": 10**9}, "'epochs' must be an integer in"),
    (TrainConfig, {"batch_size": 1}, "batch_size must be at least 2"),
    (TrainConfig, {"learning_rate": 0}, "'learning_rate' must be a number in \\(0"),
    (BackboneConfig, {"input_size": 4096}, f"input_size must be at least 32 and at most {MAX_INPUT_SIZE}"),
    (BackboneConfig, {"input_size": "96"}, "'input_size' must be an integer"),
    (BackboneConfig, {"alpha": float("inf")}, "'alpha' must be a finite number"),
    (BackboneConfig, {"name": ["tiny"]}, "unknown backbone"),
    (ScorerConfig, {"k": 0}, "'k' must be an integer in \\[1"),
    (ScorerConfig, {"k": 2.5}, "'k' must be an integer"),
    (ScorerConfig, {"name": "lof", "backend": "faiss"}, "no 'faiss' backend"),
    (StepRecord, {"epoch": 1, "step": 1, "steps_total": 1, "l_d": "x", "l_c": 0, "total": 0, "images_per_s": 1,
                  "elapsed_s": 0}, "'l_d' must be a number"),
])
def test_config_from_dict_checks_types_and_ranges(cls, d, match):
    with pytest.raises(ValueError, match=match):
        cls.from_dict(d)


def test_configs_round_trip_and_direct_construction_is_checked_too():
    for cfg in (TrainConfig(), BackboneConfig(name="tiny", input_size=32, weights=None), ScorerConfig("lof", k=3)):
        assert type(cfg).from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_dict({"epochs": 2.0}).epochs == 2 and isinstance(TrainConfig.from_dict({"epochs": 2.0})
                                                                             .epochs, int)
    with pytest.raises(ValueError, match="input_size must be at least 32 and at most"):
        BackboneConfig(name="tiny", input_size=4096).resolved()
    with pytest.raises(ValueError, match="'lam' must be a number"):
        TrainConfig(lam="x").validate()


# ------------------------------------------------------------------------------------------------------------- .npz


def _npz_with_header_only(path: Path, name: str, shape: tuple, descr: str = "<f8", data: bytes = b"\0" * 16) -> None:
    """An .npz whose member ``name`` has a .npy header claiming ``shape`` but holds only ``data``."""
    import io

    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}.npy", buf.getvalue() + data)


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_small_npz_claiming_a_huge_array_is_refused_from_its_header(tmp_path):
    """A 200-byte file whose header claims 8 GB (over the cap) or 512 MiB (under it, but more than it holds)."""
    huge, lying = tmp_path / "huge.npz", tmp_path / "lying.npz"
    _npz_with_header_only(huge, "x", (10**9,))
    _npz_with_header_only(lying, "x", (2**26,))
    assert huge.stat().st_size < 1000

    def refused(path, match):
        with pytest.raises(ArtifactError, match=match):
            read_npz(path, {"x": ArraySpec(("n",), "f")})

    assert _peak_bytes(lambda: refused(huge, "would take 8,000,000,000 bytes, more than the limit")) < 2**20
    assert _peak_bytes(lambda: refused(lying, "claims 536,870,912 bytes of data but the file holds only 16")) < 2**20


def test_scores_npz_claiming_a_huge_array_costs_no_memory(fitted, tmp_path):  # noqa: F811
    good = _save(fitted, tmp_path, run_id="good")
    bad = _save(fitted, tmp_path, run_id="bad")
    _npz_with_header_only(bad.path / "scores.npz", "scores", (10**9,))
    with pytest.raises(runs.RunError, match="bad/scores.npz: array 'scores'"):
        runs.load_scores("bad", tmp_path)
    assert _peak_bytes(lambda: pytest.raises(runs.RunError, runs.load_scores, "bad", tmp_path)) < 4 * 2**20
    assert len(runs.load_scores("good", tmp_path).scores) == good.n_test


def test_npz_dtype_size_ratio_and_shape_checks(tmp_path, monkeypatch):
    p = tmp_path / "a.npz"
    np.savez(p, x=np.zeros((3, 4), np.float32), y=np.zeros(3, np.int64), s=np.array(["ab", "c", "d"]),
             f=np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)))
    out = read_npz(p, {"x": ArraySpec(("n", 4), "f"), "y": ArraySpec(("n",), "iu"), "s": ArraySpec(("n",), "U"),
                       "f": ArraySpec((2, 3), "f"), "opt": ArraySpec(("n",), "f", required=False)})
    assert out["x"].shape == (3, 4) and list(out["s"]) == ["ab", "c", "d"] and "opt" not in out
    np.testing.assert_array_equal(out["f"], np.arange(6).reshape(2, 3))
    with pytest.raises(ArtifactError, match="'y' has 3 entries along axis 0 but run.json's n_test says 5"):
        read_npz(p, {"y": ArraySpec(("m",), "iu")}, {"m": (5, "run.json's n_test")})
    with pytest.raises(ArtifactError, match="'y' has 3 entries along axis 0 but array 'x' says 2"):
        np.savez(p, x=np.zeros(2, np.float32), y=np.zeros(3, np.int64))
        read_npz(p, {"x": ArraySpec(("n",), "f"), "y": ArraySpec(("n",), "iu")})
    with pytest.raises(ArtifactError, match="dtype int64; expected kind f"):
        read_npz(p, {"y": ArraySpec(("n",), "f")})
    with pytest.raises(ArtifactError, match="has no array 'z'"):
        read_npz(p, {"z": ArraySpec(("n",), "f")})
    np.savez(p, x=np.zeros(2, [("a", "<f4"), ("b", "<i4")]))
    with pytest.raises(ArtifactError, match="structured"):
        read_npz(p, {"x": ArraySpec(("n",), "fV")})
    np.savez(p, x=np.array([1.0, np.nan]))
    with pytest.raises(ArtifactError, match="1 NaN or infinite values"):
        read_npz(p, {"x": ArraySpec(("n",), "f", finite=True)})
    np.savez_compressed(p, x=np.zeros(2**20, np.float32))  # 4 MiB of zeros in a few kB
    with pytest.raises(ArtifactError, match="compressed more than 100:1"):
        read_npz(p, {"x": ArraySpec(("n",), "f")})
    np.savez(p, x=np.zeros(2**19, np.float32))  # 2 MiB, over a 1 MiB cap
    monkeypatch.setenv(artifacts.MAX_ARRAY_MB_ENV, "1")
    with pytest.raises(ArtifactError, match="more than the limit of 1,048,576 bytes"):
        read_npz(p, {"x": ArraySpec(("n",), "f")})
    p.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ArtifactError, match="not a readable .npz"):
        read_npz(p, {"x": ArraySpec(("n",), "f")})


def test_features_must_match_the_number_of_test_images(fitted, tmp_path):  # noqa: F811
    summary = _save(fitted, tmp_path)
    np.savez(summary.path / "features.npz", features=np.zeros((summary.n_test - 1, 4), np.float32))
    with pytest.raises(runs.RunError, match="features.npz is broken.*n_test says"):
        runs.load_features(summary.run_id, tmp_path)


# ------------------------------------------------------------------------------------------------ tampered runs


def _tamper_run_json(path: Path, how: str) -> None:
    doc = json.loads((path / "run.json").read_text())
    raw = None
    if how == "steps_1e999":
        doc["steps"], raw = RAW, "1e999"
    elif how == "steps_5000_digits":
        doc["steps"], raw = RAW, "7" * 5000
    elif how == "nested_100000":
        doc["dataset"], raw = RAW, "[" * 100_000 + "]" * 100_000
    elif how == "lam_x":
        doc["config"]["train"]["lam"] = "x"
    elif how == "saved_threshold_nan":
        doc["threshold"] = {"value": RAW, "policy": "manual", "param": None, "scorer": doc["config"]["scorer"],
                            "saved": "2026-01-01T00:00:00+00:00"}
        raw = "NaN"
    elif how == "default_threshold_inf":
        doc["default_threshold"], raw = RAW, "Infinity"
    elif how == "input_size_4096":
        doc["config"]["backbone"]["input_size"] = 4096
    elif how == "auc_string":
        doc["auc"] = "0.9"
    elif how == "name_list":
        doc["name"] = ["a"]
    elif how == "negative_n_test":
        doc["n_test"] = -1
    elif how == "config_missing":
        del doc["config"]
    _write_json_with_raw(path / "run.json", doc, raw or json.dumps(RAW))


RUN_DAMAGE = {"steps_1e999": "'steps' must be an integer", "steps_5000_digits": "5,000 digits",
              "nested_100000": "nests 100001 levels deep", "lam_x": "config.train: 'lam' must be a number",
              "saved_threshold_nan": "threshold: 'value' must be a finite number, got nan",
              "default_threshold_inf": "'default_threshold' must be a finite number, got inf",
              "input_size_4096": "input_size must be at least 32 and at most", "auc_string": "'auc' must be a number",
              "name_list": "'name' must be a string", "negative_n_test": "'n_test' must be an integer",
              "config_missing": "the field 'config' is missing"}


@pytest.mark.parametrize("how", list(RUN_DAMAGE))
def test_a_tampered_run_json_is_an_error_for_that_run_only(fitted, tmp_path, how):  # noqa: F811
    good = _save(fitted, tmp_path, run_id="good")
    bad = _save(fitted, tmp_path, run_id="bad")
    _tamper_run_json(bad.path, how)
    with pytest.raises(runs.RunError, match=RUN_DAMAGE[how]) as info:
        runs.get_run("bad", tmp_path)
    assert "bad/run.json" in str(info.value)
    for call in (runs.load_scores, runs.load_detector, runs.load_history):
        with pytest.raises(runs.RunError):
            call("bad", tmp_path)
    assert [r.run_id for r in runs.list_runs(tmp_path)] == ["good"]
    broken = runs.list_broken_runs(tmp_path)
    assert [b.run_id for b in broken] == ["bad"] and "bad/run.json" in broken[0].reason
    assert runs.load_detector("good", tmp_path).threshold_ == pytest.approx(good.default_threshold)


def test_a_good_run_json_reads_back_typed(fitted, tmp_path):  # noqa: F811
    saved = _save(fitted, tmp_path, run_id="r1")
    runs.save_threshold("r1", 0.5, "target_fpr", 0.05, runs_dir=tmp_path)
    r = runs.get_run("r1", tmp_path)
    assert r.threshold["value"] == 0.5 and r.threshold["scorer"] == saved.scorer.to_dict()
    assert isinstance(r.train["lam"], float) and isinstance(r.backbone["input_size"], int)
    assert "λ 1 · lr 0.001" in r.config_line() and r.operating_threshold == 0.5
    # an older run.json without a scorer in its saved threshold gets the run's own scorer
    doc = json.loads((r.path / "run.json").read_text())
    del doc["threshold"]["scorer"]
    (r.path / "run.json").write_text(json.dumps(doc))
    assert runs.get_run("r1", tmp_path).threshold["scorer"] == saved.scorer.to_dict()


def test_a_broken_history_is_an_error_for_that_run(fitted, tmp_path):  # noqa: F811
    s = _save(fitted, tmp_path)
    (s.path / "history.json").write_text('{"steps": [{"epoch": 1}]}')
    with pytest.raises(runs.RunError, match=r"steps\[0\]: the field 'step' is missing"):
        runs.load_history(s.run_id, tmp_path)
    (s.path / "history.json").write_text("[" * 50_000)
    with pytest.raises(runs.RunError, match="nests"):
        runs.load_history(s.run_id, tmp_path)


# ------------------------------------------------------------------------------------------------ tampered detectors


@pytest.fixture
def saved_detector(fitted, tmp_path) -> Path:  # noqa: F811
    return fitted[0].save(tmp_path / "det")


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(threshold=RAW), "'threshold' must be a finite number, got nan"),
    (lambda d: d["config"]["backbone"].update(input_size=4096), "input_size must be at least 32 and at most"),
    (lambda d: d["config"]["train"].update(lam="x"), "config.train: 'lam' must be a number"),
    (lambda d: d["config"]["scorer"].update(k=-3), "config.scorer: 'k' must be an integer"),
    (lambda d: d.update(feature_dim=10**12), "'feature_dim' must be an integer"),
    (lambda d: d.update(history=[{"epoch": "one"}]), r"history\[0\]: 'epoch' must be an integer"),
    (lambda d: d.update(reference_names=[1, 2]), r"'reference_names\[0\]' must be a string"),
    (lambda d: d.update(metadata=RAW), "nests"),
])
def test_a_tampered_detector_json_is_a_clear_error(saved_detector, edit, match):
    doc = json.loads((saved_detector / "detector.json").read_text())
    edit(doc)
    raw = "[" * 100_000 + "]" * 100_000 if match == "nests" else "NaN"
    _write_json_with_raw(saved_detector / "detector.json", doc, raw)
    with pytest.raises(DetectorFormatError, match=match):
        DOCDetector.load(saved_detector)


def test_a_nan_threshold_in_a_runs_detector_is_an_error_naming_the_run(fitted, tmp_path):  # noqa: F811
    _save(fitted, tmp_path, run_id="good")
    bad = _save(fitted, tmp_path, run_id="bad")
    doc = json.loads((bad.path / "detector" / "detector.json").read_text())
    doc["threshold"] = RAW
    _write_json_with_raw(bad.path / "detector" / "detector.json", doc, "NaN")
    with pytest.raises(runs.RunError, match="run 'bad'.*'threshold' must be a finite number"):
        runs.load_detector("bad", tmp_path)
    assert runs.load_detector("good", tmp_path).threshold_ == runs.get_run("good", tmp_path).default_threshold


def test_a_bank_with_nan_or_the_wrong_width_is_refused(saved_detector):
    feature_dim = json.loads((saved_detector / "detector.json").read_text())["feature_dim"]
    np.savez(saved_detector / "bank.npz", bank=np.full((4, feature_dim), np.nan, np.float32))
    with pytest.raises(DetectorFormatError, match="NaN or infinite"):
        DOCDetector.load(saved_detector)
    np.savez(saved_detector / "bank.npz", bank=np.zeros((4, feature_dim + 1), np.float32))
    with pytest.raises(DetectorFormatError, match=f"feature_dim says {feature_dim}"):
        DOCDetector.load(saved_detector)
    _npz_with_header_only(saved_detector / "bank.npz", "bank", (10**6, feature_dim), "<f4")
    with pytest.raises(DetectorFormatError, match="claims .* bytes of data but the file holds only 16"):
        DOCDetector.load(saved_detector)


# ------------------------------------------------------------------------------------------------ NaN/Inf pixels


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_a_float_image_with_a_nan_or_inf_pixel_is_refused_with_its_name(tmp_path, bad_value):
    a = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    a[3, 4] = bad_value
    Image.fromarray(a, "F").save(tmp_path / "float.tif")
    Image.fromarray(np.full((8, 8, 3), 50, np.uint8)).save(tmp_path / "ok.png")
    with pytest.raises(DataError, match=r"float.tif: 1 of 64 pixels .* NaN or infinite"):
        read_image(tmp_path / "float.tif", 16)
    arr, ok, skipped = read_images([tmp_path / "float.tif", tmp_path / "ok.png"], 16)
    assert len(arr) == 1 and ok == [tmp_path / "ok.png"] and "float.tif" in skipped[0].reason


def test_float_images_are_rescaled_even_at_float32_extremes(tmp_path):
    a = np.array([[-3e38, 3e38], [0.0, 0.0]], np.float32)  # (a - min) overflows float32
    Image.fromarray(a, "F").save(tmp_path / "wide.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "wide.tif")[..., 0], [[0, 255], [128, 128]])
    Image.fromarray(np.full((3, 3), 7.5, np.float32), "F").save(tmp_path / "flat.tif")
    assert read_image(tmp_path / "flat.tif").max() == 0


# ------------------------------------------------------------------------------------------------ the app


@pytest.mark.slow
def test_every_run_page_renders_with_broken_runs_beside_a_good_one(tmp_path, monkeypatch):
    from app_server import fashion_or_skip, make_tiny_run
    from streamlit.testing.v1 import AppTest

    root = Path(__file__).resolve().parent.parent
    where = make_tiny_run(tmp_path / "runs", fashion_or_skip(), "the good run", epochs=1)
    (good,) = runs.list_runs(where)
    # two broken copies, newer than the good run, and a readable one whose loss curves are broken
    for run_id, how in (("zz-broken-steps", "steps_1e999"), ("zz-broken-nesting", "nested_100000")):
        shutil.copytree(good.path, where / run_id)
        doc = json.loads((where / run_id / "run.json").read_text())
        doc.update(run_id=run_id, created="2999-01-01T00:00:00+00:00")
        (where / run_id / "run.json").write_text(json.dumps(doc))
        _tamper_run_json(where / run_id, how)
    shutil.copytree(good.path, where / "zz-bad-history")
    doc = json.loads((where / "zz-bad-history" / "run.json").read_text())
    doc.update(run_id="zz-bad-history", name="the run with broken curves", created="2998-01-01T00:00:00+00:00")
    (where / "zz-bad-history" / "run.json").write_text(json.dumps(doc))
    (where / "zz-bad-history" / "history.json").write_text('{"steps": [{"epoch": 1e999}]}')
    assert [r.run_id for r in runs.list_runs(where)] == ["zz-bad-history", good.run_id]
    monkeypatch.setenv(runs.RUNS_DIR_ENV, str(where))

    at = AppTest.from_file(str(root / "app.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "the run with broken curves" in "\n".join(m.value for m in at.markdown)
    for page in ("pages/2_training.py", "pages/3_roc_threshold.py", "pages/6_score_images.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
    at.switch_page("pages/2_training.py").run()
    assert any("loss curves of this run cannot be read" in w.value for w in at.warning)
