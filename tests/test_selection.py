"""Label-free selection: synthetic defects, the hold-out split, the auto preset and the folder benchmark."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from doc_core import BackboneConfig, ScorerConfig, TrainConfig
from doc_core.data import OneClassSplit
from doc_core.evaluation.folder_benchmark import (benchmark_folder, format_folder_table, pixel_auroc,
                                                  pixel_auroc_breakdown)
from doc_core.workflow.selection import (DEFECT_KINDS, MIN_HOLDOUT, Candidate, auto_candidates, holdout_split,
                                select_configuration, synthetic_defects)

TINY = BackboneConfig(name="tiny", input_size=32, weights=None)


def test_synthetic_defects_change_exactly_their_masks(make_normal):
    images = make_normal(np.random.default_rng(0), 9)
    out, masks, kinds = synthetic_defects(images, seed=3)
    assert out.shape == images.shape and out.dtype == np.uint8 and masks.shape == images.shape[:3]
    assert kinds == DEFECT_KINDS * 3
    diff = np.abs(out.astype(int) - images).max(axis=-1)
    for d, m, k in zip(diff, masks, kinds):
        assert m.sum() >= 4, k  # every image really got a defect
        # outside its mask an image is unchanged, but for the faint rim of a soft spot (under a quarter of its
        # strength, at most 120 grey levels)
        assert d[~m].max(initial=0) <= (30 if k == "spot" else 0), k
        assert np.count_nonzero(d[m] >= 15) >= 0.5 * m.sum(), k  # and inside it, most pixels changed clearly
    again, masks2, _ = synthetic_defects(images, seed=3)
    np.testing.assert_array_equal(again, out)  # seeded
    np.testing.assert_array_equal(masks2, masks)
    assert not np.array_equal(synthetic_defects(images, seed=4)[0], out)
    np.testing.assert_array_equal(images, make_normal(np.random.default_rng(0), 9))  # input untouched
    with pytest.raises(ValueError, match="kinds"):
        synthetic_defects(images, kinds=("crack",))
    with pytest.raises(ValueError, match="8 x 8"):
        synthetic_defects(np.zeros((2, 4, 4, 1), np.uint8))


def test_holdout_split_is_disjoint_seeded_and_bounded():
    fit, held = holdout_split(100, seed=1)
    assert len(held) == 20 and len(fit) == 80 and not set(fit) & set(held)
    assert sorted(np.r_[fit, held].tolist()) == list(range(100))
    np.testing.assert_array_equal(holdout_split(100, seed=1)[1], held)
    assert len(holdout_split(12)[1]) == MIN_HOLDOUT and len(holdout_split(10_000)[1]) == 200
    with pytest.raises(ValueError, match="at least"):
        holdout_split(5)


def test_selection_prefers_what_finds_the_synthetic_defects(make_normal):
    """A candidate that cannot see local defects (global features of a frozen random net at 1 px resolution)
    loses to patch scoring, and the table reports every candidate."""
    normal = make_normal(np.random.default_rng(0), 60)
    cands = [Candidate("global", TINY, TrainConfig(epochs=0), ScorerConfig("knn")),
             Candidate("patch", TINY, TrainConfig(epochs=0), ScorerConfig("patch", max_bank_size=500)),
             Candidate("broken", TINY, TrainConfig(epochs=0), ScorerConfig("patch", patch_layers=("nope",)))]
    sel = select_configuration(normal, cands, seed=0)
    rows = {r["name"]: r for r in sel.rows}
    assert rows["broken"]["val_auroc"] is None and "nope" in rows["broken"]["error"]
    assert rows["patch"]["val_auroc"] > rows["global"]["val_auroc"]
    assert sel.chosen.name == "patch" and rows["patch"]["chosen"] and not rows["global"]["chosen"]
    assert set(rows["patch"]["val_auroc_by_kind"]) == set(DEFECT_KINDS)
    assert sel.n_holdout == 12 and sel.n_fit == 48
    assert "<- chosen" in sel.table() and sel.to_dict()["chosen"] == "patch"
    assert sel.to_dict()["anomalies"] == "any" and "anomalies:" not in sel.table()
    sel.anomalies = "objects"  # set by the caller that chose the candidates
    assert sel.to_dict()["anomalies"] == "objects" and "global scoring only" in sel.table()


def test_auto_candidates_follow_what_the_user_says_the_anomalies_are_like():
    every = auto_candidates(TINY, TrainConfig(epochs=3))
    assert auto_candidates(TINY, TrainConfig(epochs=3), anomalies="any") == every
    objects = auto_candidates(TINY, TrainConfig(epochs=3), anomalies="objects")
    defects = auto_candidates(TINY, TrainConfig(epochs=3), anomalies="defects")
    assert [c.name for c in objects] == ["pretrained, global k-NN", "DOC, global k-NN"]
    assert [c.name for c in defects] == [c.name for c in every if c.scorer.name == "patch"] and len(defects) == 3
    with pytest.raises(ValueError, match="unknown anomaly kind 'scratches'"):
        auto_candidates(TINY, TrainConfig(), anomalies="scratches")


def test_the_cli_and_the_training_page_offer_the_same_anomaly_kinds():
    import ast
    from pathlib import Path

    from doc_core.cli import build_parser
    from doc_core.workflow.selection import ANOMALY_KINDS
    from ui import state

    commands = build_parser()._subparsers._group_actions[0].choices
    for command in ("train", "benchmark"):
        action = next(a for a in commands[command]._actions if a.dest == "anomalies")
        assert tuple(action.choices) == ANOMALY_KINDS and action.default == "any", command
    page = Path(__file__).resolve().parent.parent / "pages" / "2_training.py"
    labels = next(ast.literal_eval(node.value) for node in ast.parse(page.read_text()).body
                  if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ANOMALY_LABELS")
    assert tuple(labels) == ANOMALY_KINDS and state.DEFAULTS[state.TR_ANOMALIES] == "any"


def test_auto_candidates_cover_pretrained_and_doc_global_and_patch():
    cands = auto_candidates(TINY, TrainConfig(epochs=3))
    assert [c.train.epochs for c in cands] == [0, 0, 0, 3, 3]
    assert [c.scorer.name for c in cands] == ["knn", "patch", "patch", "knn", "patch"]
    assert cands[1].scorer.patch_layers is None and cands[2].scorer.patch_layers == ("conv3_relu",)
    assert len({c.name for c in cands}) == 5


def _folder_split(make_normal) -> tuple[OneClassSplit, np.ndarray]:
    rng = np.random.default_rng(5)
    normal, test_normal = make_normal(rng, 40), make_normal(rng, 10)
    bad, masks, _ = synthetic_defects(make_normal(rng, 10), seed=9, kinds=("spot",))
    empty = np.zeros((0,) + normal.shape[1:], np.uint8)
    split = OneClassSplit(train_normal=normal, reference=empty, reference_labels=np.zeros(0, np.int64),
                          reference_names=(), test_images=np.concatenate([test_normal, bad]),
                          test_labels=np.r_[np.zeros(10, np.int64), np.ones(10, np.int64)],
                          test_classes=("normal",) * 10 + ("anomaly",) * 10, name="toy", info={"source": "folder"})
    return split, np.concatenate([np.zeros_like(masks), masks])


@pytest.mark.slow
def test_folder_benchmark_runs_every_method_and_its_choice_ignores_test_labels(make_normal):
    split, masks = _folder_split(make_normal)
    kw = dict(backbone=TINY, train=TrainConfig(epochs=1, batch_size=16), fashion_reference=False)
    res = benchmark_folder(split, masks, **kw)
    assert set(res["methods"]) == {"raw_knn", "pretrained_knn", "pretrained_patch", "pretrained_patch_coarse",
                                   "pretrained_patch_top10", "pretrained_patch_coarse_top10",
                                   "pretrained_patch_max", "pretrained_patch_coarse_max", "doc_knn_noref",
                                   "doc_patch_noref", "auto"}
    assert res["methods"]["pretrained_patch"]["config"]["scorer"]["image_score"] == "top25"
    assert res["methods"]["pretrained_patch_top10"]["config"]["scorer"]["image_score"] == "top10"
    assert res["methods"]["pretrained_patch_max"]["config"]["scorer"]["image_score"] == "max"
    for name, m in res["methods"].items():
        assert 0.0 <= m["auc"] <= 1.0, name
    assert res["methods"]["pretrained_patch"]["pixel_auc"] is not None
    assert res["methods"]["pretrained_knn"]["pixel_auc"] is not None  # Grad-CAM maps
    breakdown = res["methods"]["pretrained_patch"]["pixel_breakdown"]
    assert breakdown["by_class"]["anomaly"] == pytest.approx(res["methods"]["pretrained_patch"]["pixel_auc"])
    assert res["methods"]["raw_knn"].get("pixel_breakdown") is None
    assert "within the anomalous images only" in format_folder_table(res)
    assert res["auto"]["chosen"] in res["auto"]["test_auc_of_candidates"]
    assert res["auto"]["picked_test_best"] == (res["auto"]["miss"] == 0.0)
    assert "auto picked" in format_folder_table(res)
    # permuting the test labels changes the reported numbers but not what auto chose, nor its evidence
    perm = np.random.default_rng(0).permutation(len(split.test_labels))
    shuffled = dataclasses.replace(split, test_labels=split.test_labels[perm])
    res2 = benchmark_folder(shuffled, masks, **kw)
    assert res2["auto"]["chosen"] == res["auto"]["chosen"]
    assert [r["val_auroc"] for r in res2["auto"]["rows"]] == [r["val_auroc"] for r in res["auto"]["rows"]]


def test_pixel_auroc_is_the_auroc_over_all_pixels():
    masks = np.zeros((2, 4, 4), bool)
    masks[1, :2, :2] = True
    maps = np.zeros((2, 4, 4), np.float32)
    maps[1, :2, :2] = 1.0
    assert pixel_auroc(masks, maps) == 1.0
    assert pixel_auroc(masks, -maps) == 0.0


def _brute_pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """P(random defect pixel scores above a random normal pixel), ties counting half."""
    pos, neg = maps[masks], maps[~masks]
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def test_pixel_auroc_breakdown_by_class_and_within_anomalous_images():
    rng = np.random.default_rng(3)
    labels = np.array([0, 0, 1, 1, 1])
    classes = ("Free", "Free", "crack", "spot", "crack")
    masks = np.zeros((5, 6, 6), bool)
    masks[2, 1:3, 1:4] = masks[3, 4, 4] = masks[4, 0, :] = True
    maps = rng.random((5, 6, 6)).astype(np.float32) + masks * 0.6
    maps[3] += 0.8  # a hot image: its normal pixels beat other images' defect pixels in the pooled AUROC
    got = pixel_auroc_breakdown(masks, maps, labels, classes)
    crack, spot = np.array([0, 1, 2, 4]), np.array([0, 1, 3])
    assert got["by_class"]["crack"] == pytest.approx(_brute_pixel_auroc(masks[crack], maps[crack]))
    assert got["by_class"]["spot"] == pytest.approx(_brute_pixel_auroc(masks[spot], maps[spot]))
    assert got["anomalous_only"] == pytest.approx(_brute_pixel_auroc(masks[2:], maps[2:]))
    assert pixel_auroc(masks, maps) == pytest.approx(_brute_pixel_auroc(masks, maps))
    # a class with no defect pixel has no AUROC rather than a made-up one
    masks[3] = False
    assert pixel_auroc_breakdown(masks, maps, labels, classes)["by_class"]["spot"] is None


def test_selection_never_sees_the_calibration_slice(make_normal, monkeypatch):
    """Given the detector's calibration setting, selection drops the detector's calibration slice first: no image of
    it is fitted, held out or scored during selection."""
    from doc_core.model.calibration import calibration_split
    from doc_core.model.detector import DOCDetector

    normal = make_normal(np.random.default_rng(0), 100)
    normal[:, 0, 0, 0] = np.arange(100)  # each image carries its index in one pixel
    seen: set[int] = set()
    fit, score = DOCDetector.fit, DOCDetector.decision_function

    def spy_fit(self, images, *args, **kw):
        seen.update(np.asarray(images)[:, 0, 0, 0].tolist())
        return fit(self, images, *args, **kw)

    def spy_score(self, images, *args, **kw):
        seen.update(np.asarray(images)[:, 0, 0, 0].tolist())
        return score(self, images, *args, **kw)

    monkeypatch.setattr(DOCDetector, "fit", spy_fit)
    monkeypatch.setattr(DOCDetector, "decision_function", spy_score)
    cands = [Candidate("global", TINY, TrainConfig(epochs=0, seed=5), ScorerConfig("knn"))]
    sel = select_configuration(normal, cands, seed=5, calibration_fraction=0.1, calibration_min=10)
    slice_ = set(calibration_split(100, 0.1, 10, seed=5).calibration_index.tolist())
    assert len(slice_) == 10 and sel.n_calibration == 10 and sel.n_fit + sel.n_holdout == 90
    assert seen and not seen & slice_
    # the final detector with the same setting and seed holds out exactly that slice
    det = DOCDetector(TINY, TrainConfig(epochs=0, seed=5), calibration_min=10).fit(normal, None, None)
    assert set(det.calibration_index_.tolist()) == slice_
    assert sel.to_dict()["n_calibration"] == 10 and "10 kept out" in sel.table()
