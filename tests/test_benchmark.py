"""The benchmark's bookkeeping (sample std, per-seed values, git commit) and the validation protocol that re-derives
the defaults on a split of the Fashion-MNIST training set (tiny backbone, tiny synthetic data)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from doc_core.data import FashionMNIST
from doc_core.evaluation import benchmark as bench
from doc_core.evaluation import validation as val
from doc_core.model.backbones import BackboneConfig
from doc_core.model.detector import DOCDetector
from doc_core.model.training import TrainConfig


class Poison:
    """Stands for the Fashion-MNIST test arrays: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the validation protocol touched the test set ({name})")

    def __len__(self):
        raise AssertionError("the validation protocol touched the test set (len)")

    def __getitem__(self, item):
        raise AssertionError("the validation protocol touched the test set ([])")

    def __array__(self, *args, **kwargs):
        raise AssertionError("the validation protocol touched the test set (np.asarray)")


def fake_train_set(per_class: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 images, one bright bar per class at its own row, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    imgs = rng.integers(0, 40, size=(len(labels), 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        imgs[i, 2 + 2 * c: 5 + 2 * c, 4:24] = 220
    return imgs[..., None], labels.astype(np.int64)


SMALL = val.ValidationConfig(n_fit=24, n_val_normal=10, n_val_anomaly=10, n_reference=40, seed=0)
TINY = BackboneConfig("tiny", input_size=32, weights=None)
TRAIN = TrainConfig(batch_size=8, epochs=1)


# ------------------------------------------------------------------------------------------------ bookkeeping


def test_std_is_the_sample_std_and_none_for_one_seed():
    results = [bench.MethodResult(a, 1.0, 0.5, seed=s) for s, a in zip((0, 1, 2), (0.90, 0.92, 0.97))]
    summ = bench._summarise(results)
    assert summ["auc_std"] == pytest.approx(np.std([0.90, 0.92, 0.97], ddof=1))
    assert summ["auc_std"] != pytest.approx(np.std([0.90, 0.92, 0.97]))  # not the population std
    assert [p["seed"] for p in summ["per_seed"]] == [0, 1, 2]
    assert [p["auc"] for p in summ["per_seed"]] == [0.90, 0.92, 0.97]
    one = bench._summarise(results[:1])
    assert one["auc_std"] is None and one["per_seed"][0]["seed"] == 0


def test_code_version_names_the_commit(tmp_path):
    v = bench.code_version()
    assert re.fullmatch(r"[0-9a-f]{40}", v["commit"]) and isinstance(v["dirty"], bool)
    assert bench.code_version(tmp_path) == {"commit": None, "dirty": None}  # not a git checkout
    assert bench.machine_info()["git"]["commit"] == v["commit"]


def test_format_table_shows_a_missing_std():
    res = {"protocol": "tutorial", "seeds": [0],
           "methods": {"doc_knn": {"auc": 0.9, "auc_std": None, "fit_s": 1.0, "score_ms_per_image": 0.5}}}
    assert re.search(r"doc_knn\s+0\.9000\s+-", bench.format_table(res))


# ------------------------------------------------------------------------------------------------ the split


def test_validation_split_reads_only_the_training_set():
    images, labels = fake_train_set()
    data = FashionMNIST(images, labels, Poison(), Poison(), "fake")
    split = val.validation_split(data, SMALL)
    assert len(split.train_normal) == 24 and len(split.reference) == 40
    assert list(split.test_labels) == [0] * 10 + [1] * 10
    assert set(split.test_classes[:10]) == {"Sneaker"} and set(split.test_classes[10:]) == {"Ankle boot"}
    # fit and held-out normal images are different training images; the reference holds no sneaker or ankle boot
    fit = {im.tobytes() for im in split.train_normal}
    assert not fit & {im.tobytes() for im in split.test_images[:10]}
    assert set(split.reference_names) == {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                          "Bag"}
    with pytest.raises(ValueError, match="only 40 images"):
        val.validation_split(data, val.ValidationConfig(n_fit=35, n_val_normal=10))


# ------------------------------------------------------------------------------------------------ the search


def fake_evaluator(calls: list):
    """AUROC peaks at lam 0.3 and k 10 (by more than min_gain); lr 3e-3 diverges."""

    def evaluate(points):
        calls.extend(val._key(p) for p in points)
        out = []
        for p in points:
            if p["learning_rate"] == 3e-3:
                out.append({"auc": None, "error": "TrainingDivergedError: diverged"})
                continue
            auc = 0.90 - abs(np.log10(p["lam"] / 0.3)) * 0.02 - abs(np.log10(p["k"] / 10)) * 0.02
            auc += 0.001 if p["epochs"] == 5 else 0.0  # below min_gain: not worth a move
            out.append({"auc": float(auc), "run_s": 1.0})
        return out

    return evaluate


GRID = {"feature_layer": ("a", "b"), "trainable_from": ("x",), "learning_rate": (1e-3, 3e-3), "lam": (0.1, 0.3, 1.0),
        "epochs": (3, 5), "k": (1, 5, 10)}
START = {"feature_layer": "b", "trainable_from": "x", "learning_rate": 1e-3, "lam": 1.0, "epochs": 3, "k": 5}


def test_coordinate_descent_moves_only_on_a_real_gain_and_reports_everything():
    calls: list = []
    res = val.coordinate_descent(fake_evaluator(calls), START, GRID, min_gain=0.002, max_rounds=3, log=lambda m: None)
    assert res["chosen"] == {**START, "lam": 0.3, "k": 10}
    assert res["chosen_auc"] == pytest.approx(0.90)
    assert len(calls) == len(set(calls)) == len(res["tried"])  # nothing is evaluated twice
    assert res["converged"] and res["rounds"] == 2  # round 2 changed nothing
    lam_step = next(s for s in res["steps"] if s["parameter"] == "lam")
    assert lam_step["moved"] and lam_step["best"] == 0.3 and set(lam_step["aucs"]) == {"0.1", "0.3", "1.0"}
    epochs_step = next(s for s in res["steps"] if s["parameter"] == "epochs" and s["round"] == 1)
    assert epochs_step["best"] == 5 and epochs_step["chosen"] == 3 and not epochs_step["moved"]  # gain < min_gain
    lr_step = next(s for s in res["steps"] if s["parameter"] == "learning_rate")
    assert lr_step["aucs"]["0.003"] is None and lr_step["chosen"] == 1e-3  # an error is never chosen
    assert any(t["error"] for t in res["tried"]) and all("config" in t and "round" in t for t in res["tried"])
    # with no margin the tiny epochs gain is taken
    res0 = val.coordinate_descent(fake_evaluator([]), START, GRID, min_gain=0.0, max_rounds=3, log=lambda m: None)
    assert res0["chosen"]["epochs"] == 5


def test_select_defaults_says_whether_the_choice_equals_todays_defaults(monkeypatch):
    images, labels = fake_train_set()
    data = FashionMNIST(images, labels, Poison(), Poison(), "fake")
    mobilenet = BackboneConfig()  # only resolved for its layer names: no network is built by the fake evaluator
    defaults = val.current_defaults()
    grid = {**{p: (defaults[p],) for p in val.PARAMS}, "lam": (0.3, 1.0), "k": (5, 10)}
    res = val.select_defaults(data, mobilenet, TrainConfig(), SMALL, grid, log=lambda m: None,
                              evaluate=fake_evaluator([]))
    assert res["start"] == defaults and res["defaults"] == defaults
    assert not res["equals_defaults"] and res["differences"] == {"lam": {"default": 1.0, "chosen": 0.3},
                                                                 "k": {"default": 5, "chosen": 10}}
    assert res["data"]["n_fit"] == 24 and "training set only" in res["data"]["split"]
    json.dumps(res)  # JSON-serialisable
    text = val.format_validation_table(res)
    assert "DIFFERS" in text and "lam 1.0 -> 0.3" in text
    same = val.select_defaults(data, mobilenet, TrainConfig(), SMALL, {p: (defaults[p],) for p in val.PARAMS},
                               log=lambda m: None, evaluate=fake_evaluator([]))
    assert same["equals_defaults"] and "equals today's defaults" in val.format_validation_table(same)


def test_benchmark_validation_protocol_records_the_commit(monkeypatch):
    images, labels = fake_train_set()
    data = FashionMNIST(images, labels, Poison(), Poison(), "fake")
    monkeypatch.setattr(val, "make_evaluator", lambda *a, **k: fake_evaluator([]))
    monkeypatch.setitem(val.GRIDS, "tiny", {"feature_layer": ("conv3_relu",), "trainable_from": ("conv1_relu",),
                                            "learning_rate": (1e-3,), "lam": (0.3, 1.0), "epochs": (1,), "k": (5,)})
    res = bench.benchmark("validation", (0, 1, 2), TINY, TRAIN, data=data, log=lambda m: None, validation=SMALL)
    assert res["protocol"] == "validation" and res["chosen"]["lam"] == 0.3
    assert re.fullmatch(r"[0-9a-f]{40}", res["machine"]["git"]["commit"])
    assert "protocol: validation" in bench.format_table(res)


# ------------------------------------------------------------------------------------------------ real training


def test_an_epoch_snapshot_is_the_shorter_run(make_normal, make_reference):
    """The evaluator reads ``epochs=e`` off a longer run: the weights after epoch e must be an ``epochs=e`` run's."""
    rng = np.random.default_rng(0)
    normal = make_normal(rng, 32)
    ref, ref_y = make_reference(rng, 12)
    probe = make_normal(rng, 6)
    cfg = TrainConfig(batch_size=8, epochs=2, seed=3)
    long = DOCDetector(TINY, cfg)
    after_1 = None
    for rec in long.fit_steps(normal, ref, ref_y):
        if rec.step == rec.steps_total // 2:
            after_1 = long.backbone_.embed(probe)
    final = long.backbone_.embed(probe)
    short = DOCDetector(TINY, TrainConfig(batch_size=8, epochs=1, seed=3)).fit(normal, ref, ref_y)
    np.testing.assert_allclose(short.embed(probe), after_1, rtol=1e-5, atol=1e-6)
    assert not np.allclose(after_1, final, rtol=1e-3)  # epoch 2 did change the weights


def test_validation_search_with_real_training_never_reads_the_test_set():
    images, labels = fake_train_set()
    grid = {"feature_layer": ("conv3_relu",), "trainable_from": ("conv1_relu", "conv3_relu"),
            "learning_rate": (1e-3,), "lam": (1.0,), "epochs": (0, 1), "k": (1, 3)}
    runs = []
    for test_images in (Poison(), np.zeros((20, 28, 28, 1), np.uint8)):
        test_labels = test_images if isinstance(test_images, Poison) else np.repeat(np.arange(10), 2)
        data = FashionMNIST(images, labels, test_images, test_labels, "fake")
        runs.append(val.select_defaults(data, TINY, TRAIN, SMALL, grid, k=3, log=lambda m: None))
    poisoned, plain = runs
    assert poisoned["chosen"] == plain["chosen"]
    assert [t["auc"] for t in poisoned["tried"]] == pytest.approx([t["auc"] for t in plain["tried"]], abs=1e-9)
    res = poisoned
    assert all(0.0 <= t["auc"] <= 1.0 for t in res["tried"] if t["auc"] is not None)
    # trainable_from conv3_relu == the feature layer leaves nothing to train: recorded as an error, never chosen
    bad = [t for t in res["tried"] if t["config"]["trainable_from"] == "conv3_relu"]
    assert bad and all(t["auc"] is None and "nothing to train" in t["error"] for t in bad)
    assert res["chosen"]["trainable_from"] == "conv1_relu"
    tried = {(t["config"]["epochs"], t["config"]["k"]) for t in res["tried"]}
    assert {(0, 3), (1, 1), (1, 3)} <= tried


# ------------------------------------------------------------------------------------------------ threshold check


def test_threshold_check_reports_intended_and_realised_fpr(make_normal, make_anomalous):
    rng = np.random.default_rng(3)
    det = DOCDetector(TINY, TrainConfig(epochs=0), calibration_min=8).fit(make_normal(rng, 64), None, None)
    test = np.concatenate([make_normal(rng, 40), make_anomalous(rng, make_normal(rng, 10))])
    y = np.r_[np.zeros(40, int), np.ones(10, int)]
    scores = det.decision_function(test)
    check = bench.threshold_check(det, y, scores)
    assert check["intended_fpr"] == pytest.approx(0.05) and check["n_test_normal"] == 40
    assert check["realised_fpr"] == pytest.approx(np.mean(scores[:40] > det.threshold_))
    assert check["realised_fpr_loo"] == pytest.approx(np.mean(scores[:40] > np.percentile(det.train_scores_, 95)))
    assert check["threshold_source"] == "calibration" and check["n_calibration"] == 8
    results = [bench.MethodResult(0.9, 1.0, 0.5, seed=s, threshold={**check, "realised_fpr": r})
               for s, r in ((0, 0.04), (1, 0.08))]
    summ = bench._summarise(results)
    assert summ["realised_fpr"] == pytest.approx(0.06) and summ["intended_fpr"] == pytest.approx(0.05)
    assert [p["realised_fpr"] for p in summ["per_seed"]] == [0.04, 0.08]
    table = bench.format_table({"protocol": "tutorial", "seeds": [0, 1], "methods": {"doc_knn": summ}})
    assert re.search(r"doc_knn.*\s5\.0%\s+6\.0%", table)
    no_threshold = bench._summarise([bench.MethodResult(0.9, 1.0, 0.5, seed=0)])  # raw k-NN, autoencoder
    assert "realised_fpr" not in no_threshold and bench.format_fpr(no_threshold).split() == ["-", "-", "-"]
