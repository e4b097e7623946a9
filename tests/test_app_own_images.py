"""Your own images through the dashboard (AppTest): a folder with train/ and test/ only (no reference/) is loaded on
the Dataset page, trained with the auto preset (tiny backbone) and with the patch scorer, and the patch runs' defect
maps are offered wherever Grad-CAM is.

The folder holds 40 synthetic normal images and 20 test images (10 with a bright square), 32 px PNGs.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import smooth_noise, with_patch
from PIL import Image
from streamlit.testing.v1 import AppTest

from test_app import ROOT, TIMEOUT, assert_clean, texts, wait_for_job
from doc_core.workflow import runs
from doc_core.workflow.jobs import SUCCEEDED
from ui import nav, state

DATASET, TRAINING, RANKED, SCORE, EXPLORER = nav.DATASET, nav.TRAINING, nav.RANKED, nav.SCORE, nav.EXPLORER


def _write(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im[..., 0]).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def no_reference_folder(tmp_path_factory) -> Path:
    """``parts/`` with train/ (40 normal images) and test/normal, test/anomaly (10 each); no reference/."""
    base = tmp_path_factory.mktemp("datasets")
    rng = np.random.default_rng(0)
    root = base / "parts"
    _write(root / "train", smooth_noise(rng, 40))
    _write(root / "test" / "normal", smooth_noise(rng, 10))
    _write(root / "test" / "anomaly", with_patch(rng, smooth_noise(rng, 10), patch=8))
    return root


@pytest.fixture
def env(tmp_path, monkeypatch, no_reference_folder) -> Path:
    """An empty runs folder, and the dataset's parent as the only folder the server may read."""
    monkeypatch.setenv(runs.RUNS_DIR_ENV, str(tmp_path / "runs"))
    monkeypatch.setenv("DOC_SERVER_FOLDERS", str(no_reference_folder.parent))
    return tmp_path / "runs"


def open_folder(root: Path) -> AppTest:
    """A new session with ``root`` (32 px) as the active dataset, chosen on the Dataset page as a user does."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.switch_page(DATASET).run()
    at.get("button_group")[0].set_value(state.SOURCE_FOLDER).run()
    at.select_slider(key=state.DS_IMAGE_SIZE).set_value(32).run()
    at.text_input(key=state.DS_FOLDER).input(str(root)).run()
    return at


def tiny(at: AppTest, preset: str, scorer: str = "knn", name: str = "") -> None:
    at.switch_page(TRAINING).run()
    at.selectbox(key=state.TR_BACKBONE).select("tiny").run()
    at.radio(key=state.TR_PRESET).set_value(preset).run()
    if preset == state.PRESET_MANUAL:
        at.selectbox(key=state.TR_SCORER).select(scorer).run()
    at.select_slider(key=state.TR_INPUT_SIZE).set_value(32)
    at.number_input(key=state.TR_EPOCHS).set_value(1)
    at.number_input(key=state.TR_BATCH).set_value(16)
    at.text_input(key=state.TR_NAME).input(name).run()


def train(at: AppTest):
    next(b for b in at.button if b.label == "Start training").click().run()
    snap = wait_for_job(at, 300)
    assert snap.status == SUCCEEDED, snap.error
    at.run()
    assert_clean(at)
    return snap


def test_a_folder_without_reference_loads_with_reference_none(env, no_reference_folder):
    at = open_folder(no_reference_folder)
    assert_clean(at)
    spec = at.session_state[state.DATASET]
    assert spec.kind == "folder" and spec.reference == "auto" and spec.image_size == 32
    assert {m.label: m.value for m in at.metric} == {"Normal training": "40", "Reference": "0", "Test normal": "10",
                                                    "Test anomaly": "10"}
    body = texts(at)
    assert "Reference set: none" in body and "no reference/ folder" in body  # the resolved reference and why
    assert "Reference set: none" in "\n".join(m.value for m in at.sidebar.markdown)
    assert any("reference/" in c.value and "optional" in c.value for c in at.code)  # the layout says so
    # a reference the folder does not have is a message, and the folder stays active with its own choice
    at.selectbox(key=state.DS_REF_CHOICE).select("folder").run()
    assert not at.exception and "needs a reference/ folder" in at.error[0].value
    assert at.session_state[state.DATASET].reference == "auto"
    at.selectbox(key=state.DS_REF_CHOICE).select("none").run()
    assert_clean(at)
    assert at.session_state[state.DATASET].reference == "none" and "chosen by the user" in texts(at)
    # the Training page defaults to the auto preset for own images and says there is no labelled reference set
    at.switch_page(TRAINING).run()
    assert_clean(at)
    assert at.radio(key=state.TR_PRESET).value == state.PRESET_AUTO
    assert at.selectbox(key=state.TR_SCORER).disabled  # auto chooses the scorer
    assert "no labelled reference set" in texts(at) and "synthetic defects" in texts(at)


def test_auto_preset_trains_and_shows_its_evidence(env, no_reference_folder):
    at = open_folder(no_reference_folder)
    tiny(at, state.PRESET_AUTO, name="auto on parts")
    snap = train(at)
    run = runs.get_run(snap.run.run_id, env)
    assert run.selection is not None and run.selection["n_fit"] + run.selection["n_holdout"] == 40
    assert len(runs.load_scores(run.run_id, env).scores) == 20 and run.auc is not None
    assert run.dataset["reference"] == "auto"
    # the evidence table: every candidate, the chosen one marked, with the honest note
    table = next(d.value for d in at.dataframe if "Candidate" in d.value.columns)
    assert list(table["Candidate"]) == [r["name"] for r in run.selection["rows"]]
    assert list(table["Chosen"]).count("✓") == 1
    assert table.loc[table["Chosen"] == "✓", "Candidate"].item() == run.selection["chosen"]
    assert {"Validation AUROC", "AUROC cutpaste", "AUROC scar", "AUROC spot", "Fit (s)", "ms / image"} <= \
        set(table.columns)
    assert "not a promise" in texts(at) and "no test image or label" in texts(at)
    # a fresh session shows the same table under the active run
    again = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    again.switch_page(TRAINING).run()
    assert_clean(again)
    assert any("Candidate" in d.value.columns for d in again.dataframe) and "not a promise" in texts(again)


def test_auto_told_the_anomalies_are_objects_compares_global_scoring_only(env, no_reference_folder):
    at = open_folder(no_reference_folder)
    tiny(at, state.PRESET_MANUAL)
    assert at.selectbox(key=state.TR_ANOMALIES).disabled  # it chooses auto's candidates only
    tiny(at, state.PRESET_AUTO, name="auto, objects")
    kind = at.selectbox(key=state.TR_ANOMALIES)
    assert kind.value == "any" and not kind.disabled
    kind.select("objects").run()
    assert "2 candidates (pretrained, global k-NN; DOC, global k-NN)" in texts(at)
    snap = train(at)
    run = runs.get_run(snap.run.run_id, env)
    assert run.selection["anomalies"] == "objects" and run.scorer.name == "knn"
    assert [r["name"] for r in run.selection["rows"]] == ["pretrained, global k-NN", "DOC, global k-NN"]
    assert "anomalies: different objects or whole-image changes" in texts(at)


def test_patch_run_offers_defect_maps_wherever_gradcam_is(env, no_reference_folder):
    at = open_folder(no_reference_folder)
    tiny(at, state.PRESET_MANUAL, scorer="patch", name="patch on parts")
    snap = train(at)
    assert snap.run.scorer.name == "patch" and snap.run.selection is None
    stored = runs.load_scores(snap.run.run_id, env)
    assert stored.has_labels and np.isfinite(stored.scores).all()

    at.switch_page(RANKED).run()
    assert_clean(at)
    choice = at.radio(key=state.RK_MAP)
    assert list(choice.options) == ["Off", "Grad-CAM", "Patch defect map"] and choice.value == "Off"
    choice.set_value("Patch defect map").run()
    assert_clean(at)
    assert "lowest training score" in texts(at) and "the threshold" in texts(at)  # the fixed scale, in numbers
    assert len(at.get("image")) == 10  # the 10 anomalies, each with its map
    at.radio(key=state.RK_MAP).set_value("Grad-CAM").run()
    assert_clean(at)

    at.session_state[state.EX_SELECTED] = ((snap.run.run_id, 2000, False), [0, 15])  # as the maps' on_select does
    at.switch_page(EXPLORER).run()
    assert_clean(at)
    assert "2 selected" in texts(at)
    at.radio(key=state.EX_MAP).set_value("Patch defect map").run()
    assert_clean(at)
    assert "lowest training score" in texts(at) and len(at.get("image")) == 2 * (1 + 5)

    at.switch_page(nav.ROC).run()  # patch scores have their own words on the ROC page
    assert_clean(at)
    assert "patch k-NN, k=1" in texts(at) and "most anomalous patch" in texts(at)
    at.switch_page(nav.COMPARE).run()
    next(b for b in at.button if b.label == "Run comparison").click().run()
    assert_clean(at)
    table = at.dataframe[0].value.set_index("Method")
    assert table.loc["DOC k-NN", "Note"] == "the run's own scorer (patch)"  # its stored (patch) scores, said so
    assert table["Test AUC"].between(0, 1).all()

    at.switch_page(SCORE).run()
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32), 110, np.uint8)).save(buf, format="PNG")
    at.get("file_uploader")[0].upload("flat.png", buf.getvalue()).run()
    assert_clean(at)
    assert at.radio(key=state.UP_MAP).value == "Patch defect map"  # a patch run shows its own maps by default
    assert "1 images scored" in texts(at) and len(at.get("image")) >= 2


def test_patch_map_scale_is_fixed_and_shared(env, no_reference_folder):
    """The defect maps are drawn on the run's scale (lowest training score to threshold), not stretched per image:
    a normal test image's map stays cooler than an anomalous one's."""
    at = open_folder(no_reference_folder)
    tiny(at, state.PRESET_MANUAL, scorer="patch")
    rule = at.selectbox(key=state.TR_IMAGE_SCORE)
    assert rule.value == "top25" and not rule.disabled
    rule.select("max").run()
    snap = train(at)
    assert snap.run.scorer.image_score == "max"  # the Training page's choice reaches the run
    from doc_core.data.datasets import DatasetSpec, load_dataset
    from ui import cached

    run = runs.get_run(snap.run.run_id, env)
    stored = runs.load_scores(run.run_id, env)
    low, high = cached.patch_map_scale(run)
    assert low == pytest.approx(float(stored.train_scores.min())) and high == pytest.approx(run.default_threshold)
    split, _ = load_dataset(DatasetSpec.from_dict(run.dataset))
    det = runs.load_detector(run.run_id, env)
    raw = det.anomaly_maps(split.test_images)
    from doc_core.explain import map_to_unit

    unit = map_to_unit(raw, low, high)
    normal, anomalous = split.test_labels == 0, split.test_labels == 1
    assert unit[anomalous].max(axis=(1, 2)).mean() > unit[normal].max(axis=(1, 2)).mean()
    assert unit[normal].max(axis=(1, 2)).min() < 1.0  # some normal image has no red spot at all


def test_runs_without_patch_scoring_offer_gradcam_only(env, no_reference_folder):
    at = open_folder(no_reference_folder)
    tiny(at, state.PRESET_MANUAL, scorer="knn")
    assert at.selectbox(key=state.TR_IMAGE_SCORE).disabled  # an image-score rule only for the patch scorer
    train(at)
    at.switch_page(RANKED).run()
    assert_clean(at)
    assert list(at.radio(key=state.RK_MAP).options) == ["Off", "Grad-CAM"]
    assert "patch scorer" in at.radio(key=state.RK_MAP).help  # why there is no defect map


def parts_zip() -> bytes:
    """A zip of flat 16 px images under parts/: train/ (2), test/normal (1) and test/anomaly (1); no reference/."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, value in [("train/a.png", 90), ("train/b.png", 95), ("test/normal/n.png", 92),
                            ("test/anomaly/o.png", 250)]:
            png = io.BytesIO()
            Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(png, format="PNG")
            zf.writestr(f"parts/{path}", png.getvalue())
    return buf.getvalue()


def test_a_zip_without_reference_loads(env, tmp_path, monkeypatch):
    monkeypatch.setenv("DOC_UPLOADS_DIR", str(tmp_path / "uploads"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.switch_page(DATASET).run()
    at.get("button_group")[0].set_value(state.SOURCE_ZIP).run()
    at.get("file_uploader")[0].upload("parts.zip", parts_zip()).run()
    assert_clean(at)
    spec = at.session_state[state.DATASET]
    assert spec.kind == "folder" and spec.label == "parts.zip" and spec.reference == "auto"
    assert {m.label: m.value for m in at.metric}["Reference"] == "0" and "Reference set: none" in texts(at)


@pytest.fixture(scope="module")
def named_run_dir(tmp_path_factory) -> Path:
    """A runs folder with one tiny run on ``tiles/``: its test anomalies sit in defect-type sub-folders
    (test/anomaly/MT_Crack/crack_00i.png, test/anomaly/MT_Blowhole/hole_00i.png, 5 each) beside 6 normal images."""
    from doc_core.data.datasets import DatasetSpec, load_dataset
    from doc_core.model.backbones import BackboneConfig
    from doc_core.model.training import TrainConfig
    from doc_core.workflow.jobs import TrainingJob

    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("named") / "tiles"
    _write(root / "train", smooth_noise(rng, 40))
    _write(root / "test" / "normal", smooth_noise(rng, 6))
    for kind, stem in (("MT_Crack", "crack"), ("MT_Blowhole", "hole")):
        folder = root / "test" / "anomaly" / kind
        folder.mkdir(parents=True)
        for i, im in enumerate(with_patch(rng, smooth_noise(rng, 5), patch=8)):
            Image.fromarray(im[..., 0]).save(folder / f"{stem}_{i:03d}.png")
    spec = DatasetSpec.folder(root, image_size=32)
    split, _ = load_dataset(spec)
    where = tmp_path_factory.mktemp("named-runs")
    job = TrainingJob(split, BackboneConfig(name="tiny", input_size=32), TrainConfig(epochs=1, batch_size=16),
                      dataset={**spec.to_dict(), "description": spec.describe()}, name="named tiles",
                      runs_dir=where).start()
    assert job.join(120) and job.snapshot().status == SUCCEEDED, job.snapshot().error
    return where


def test_ranked_captions_name_files_and_the_search_narrows_them(named_run_dir, monkeypatch):
    monkeypatch.setenv(runs.RUNS_DIR_ENV, str(named_run_dir))
    (run,) = runs.list_runs(named_run_dir)
    stored = runs.load_scores(run.run_id, named_run_dir)
    assert sorted(p for p in stored.paths if "MT_" in p)[0] == "test/anomaly/MT_Blowhole/hole_000.png"
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.switch_page(RANKED).run()
    assert_clean(at)
    body = texts(at)
    assert "10 images" in body and len(at.get("image")) == 10  # the 10 anomalies
    for kind, stem in (("MT_Crack", "crack"), ("MT_Blowhole", "hole")):
        for i in range(5):
            assert f"{kind}/{stem}_{i:03d}.png" in body
    assert "anomaly · anomaly" not in body and "test/anomaly/" not in body
    # the name search narrows the tiles (not case-sensitive), and says so when nothing matches
    at.text_input(key=state.RK_QUERY).input("mt_crack").run()
    assert_clean(at)
    body = texts(at)
    assert "5 images" in body and len(at.get("image")) == 5
    assert "MT_Crack/crack_000.png" in body and "MT_Blowhole" not in body
    at.text_input(key=state.RK_QUERY).input("hole_003").run()
    assert len(at.get("image")) == 1 and "MT_Blowhole/hole_003.png" in texts(at)
    at.text_input(key=state.RK_QUERY).input("no such file").run()
    assert not at.exception and len(at.get("image")) == 0 and "name search" in texts(at)
    # the explorer's hover text names the same files
    at.text_input(key=state.RK_QUERY).input("").run()
    at.session_state[state.EX_POINTS] = 500
    from test_app_explore import wait_for_maps

    wait_for_maps(at.switch_page(EXPLORER).run())
    assert_clean(at)
    (maps,) = at.get("component_instance")
    hover = json.loads(maps.proto.json_args)["hover"]
    assert {"MT_Crack/crack_000.png · anomaly", "MT_Blowhole/hole_004.png · anomaly"} <= {h[0] for h in hover}


def test_the_detail_view_names_the_file_and_its_sub_folder(named_run_dir, monkeypatch):
    from test_app_explore import detail_view, details_buttons, view_text

    monkeypatch.setenv(runs.RUNS_DIR_ENV, str(named_run_dir))
    (run,) = runs.list_runs(named_run_dir)
    stored = runs.load_scores(run.run_id, named_run_dir)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    at.switch_page(RANKED).run()
    at.text_input(key=state.RK_QUERY).input("hole_003").run()
    (i, button), = details_buttons(at, "ranked").items()
    assert stored.paths[i] == "test/anomaly/MT_Blowhole/hole_003.png"
    button.click().run()
    assert_clean(at)
    view = detail_view(at)
    body = view_text(view)
    assert "<b>hole_003.png</b> · folder <b>MT_Blowhole</b>" in body and f"{stored.scores[i]:.4g}" in body
    assert "of 16 test images" in body and "anomaly · anomaly" not in body
    assert "Nearest normal training images" in body and len(view.get("image")) == 2 + 5
    assert view.get("image")[0].captions[0].endswith("(the file is 32×32 px)")  # 10x: 320 px
