"""Selection of the default hyper-parameters on a validation split cut from the Fashion-MNIST *training* set.

``python -m doc_core benchmark --protocol validation`` runs :func:`select_defaults`: the procedure that re-derives
the defaults of :class:`doc_core.model.training.TrainConfig` (learning rate, lambda, epochs), of
:class:`doc_core.model.backbones.BackboneConfig` (feature layer, trained layers) and of the k-NN scorer (k), without
ever touching the Fashion-MNIST test set.

Data (:func:`validation_split`; only ``data.train_images`` and ``data.train_labels`` are read): the training images
of the normal class (Sneaker) are shuffled and cut into a *fit* part (trained on, and the scorer's memory bank) and a
*validation-normal* part; validation anomalies are training images of the anomaly class (Ankle boot); the reference
set is drawn from the training images of the other classes (0-6, 8), as in the tutorial protocol.

Procedure (:func:`coordinate_descent`): start from the current defaults; for each parameter in turn
(:data:`PARAMS` order) try every value of its small grid with the other parameters held at the current point, and
move to the best value only when its validation AUROC beats the current point's by more than ``min_gain`` (about the
seed-to-seed noise of one run); a round visits every parameter; rounds repeat until one changes nothing or
``max_rounds`` is reached. One seed. Combinations the backbone cannot build (a trained layer after the feature
layer) or that diverge are recorded with their error and never chosen. Cheap because results are shared:
``epochs`` values are snapshots of one longer run (the batch order of epoch ``e`` does not depend on the total number
of epochs, so a snapshot after epoch ``e`` *is* an ``epochs=e`` run), ``k`` values rescore the same features, and a
configuration already tried is never trained again.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np

from ..data.fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST
from ..data.splits import OneClassSplit
from ..model.backbones import BackboneConfig
from ..model.training import TrainConfig, TrainingDivergedError
from ..scoring.knn import KNNScorer, make_scorer
from .metrics import roc_auc

PARAMS = ("feature_layer", "trainable_from", "learning_rate", "lam", "epochs", "k")
# parameters that need a training run of their own (epochs and k are read off a run)
TRAINING_PARAMS = ("feature_layer", "trainable_from", "learning_rate", "lam")

# Small grids around the defaults, per backbone. MobileNetV2 at 96 px: block_11/13_expand_relu are 6x6x576 maps
# (stride 16), block_15_expand_relu 3x3x960 and out_relu the final 3x3x1280 map; the trained layers are everything
# after the last frozen layer up to the feature layer (block_8_add: blocks 9-13; block_10_project_BN: 11-13;
# block_12_add: 13).
GRIDS: dict[str, dict[str, tuple]] = {
    "mobilenet_v2": {
        "feature_layer": ("block_11_expand_relu", "block_13_expand_relu", "block_15_expand_relu", "out_relu"),
        "trainable_from": ("block_8_add", "block_10_project_BN", "block_12_add"),
        "learning_rate": (3e-4, 1e-3, 3e-3),
        "lam": (0.1, 0.3, 1.0, 3.0),
        "epochs": (0, 1, 2, 3, 5),
        "k": (1, 3, 5, 10, 20),
    },
    "vgg16": {
        "feature_layer": ("block4_conv3", "block5_conv3"),
        "trainable_from": ("block4_pool", "block5_conv1"),
        "learning_rate": (3e-4, 1e-3, 3e-3),
        "lam": (0.1, 0.3, 1.0, 3.0),
        "epochs": (0, 1, 2, 3, 5),
        "k": (1, 3, 5, 10, 20),
    },
    "tiny": {
        "feature_layer": ("conv2_relu", "conv3_relu"),
        "trainable_from": ("conv1_relu", "conv2_relu"),
        "learning_rate": (1e-3, 1e-2),
        "lam": (0.1, 1.0),
        "epochs": (0, 1, 2),
        "k": (1, 5),
    },
}


@dataclass(frozen=True)
class ValidationConfig:
    """The validation split and the search settings of :func:`select_defaults`.

    Parameters
    ----------
    normal_class, anomaly_class : int
        Fashion-MNIST classes (default Sneaker 7 and Ankle boot 9, the tutorial's pair).
    reference_classes : tuple of int
        Classes the reference set is drawn from (default the tutorial's 0-6 and 8).
    n_fit : int
        Normal training images trained on (and the memory bank).
    n_val_normal, n_val_anomaly : int
        Held-out normal training images and anomaly-class training images scored for the validation AUROC.
    n_reference : int
        Reference images (from the training set).
    seed : int
        Seeds the cut and every training run.
    min_gain : float
        A value replaces the current one only when its validation AUROC is higher by more than this.
    max_rounds : int
        At most this many passes over the parameters.
    """

    normal_class: int = 7
    anomaly_class: int = 9
    reference_classes: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 8)
    n_fit: int = 2000
    n_val_normal: int = 1000
    n_val_anomaly: int = 1000
    n_reference: int = 2000
    seed: int = 0
    min_gain: float = 0.002
    max_rounds: int = 2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reference_classes"] = list(self.reference_classes)
        return d


def validation_split(data: FashionMNIST, cfg: ValidationConfig = ValidationConfig()) -> OneClassSplit:
    """A one-class problem cut from the Fashion-MNIST **training** set only (``data.test_*`` is never read).

    Returns
    -------
    OneClassSplit
        ``train_normal``: ``n_fit`` normal-class training images; ``reference`` / ``reference_labels``:
        ``n_reference`` training images of ``reference_classes`` (labels index ``reference_names``);
        ``test_images`` / ``test_labels``: ``n_val_normal`` other normal-class training images (0) then
        ``n_val_anomaly`` anomaly-class training images (1). All uint8 (n, 28, 28, 1).
    """
    images, labels = data.train_images, np.asarray(data.train_labels)
    normal, anomaly = int(cfg.normal_class), int(cfg.anomaly_class)
    reference = tuple(int(c) for c in cfg.reference_classes)
    if normal == anomaly or normal in reference or anomaly in reference:
        raise ValueError("the normal, anomaly and reference classes must be disjoint")
    rng = np.random.default_rng(cfg.seed)
    normal_idx = rng.permutation(np.flatnonzero(labels == normal))
    if cfg.n_fit + cfg.n_val_normal > len(normal_idx):
        raise ValueError(f"n_fit + n_val_normal = {cfg.n_fit + cfg.n_val_normal} but the training set has only "
                         f"{len(normal_idx)} images of class {normal}")
    anomaly_pool = np.flatnonzero(labels == anomaly)
    ref_pool = np.flatnonzero(np.isin(labels, reference))
    if cfg.n_val_anomaly > len(anomaly_pool) or cfg.n_reference > len(ref_pool):
        raise ValueError("the training set has too few anomaly-class or reference images for this configuration")
    fit_idx = np.sort(normal_idx[:cfg.n_fit])
    val_normal_idx = np.sort(normal_idx[cfg.n_fit:cfg.n_fit + cfg.n_val_normal])
    val_anomaly_idx = np.sort(rng.choice(anomaly_pool, cfg.n_val_anomaly, replace=False))
    ref_idx = np.sort(rng.choice(ref_pool, cfg.n_reference, replace=False))
    ref_map = {c: i for i, c in enumerate(reference)}
    names = data.class_names
    val_idx = np.concatenate([val_normal_idx, val_anomaly_idx])
    return OneClassSplit(
        train_normal=images[fit_idx], reference=images[ref_idx],
        reference_labels=np.array([ref_map[int(c)] for c in labels[ref_idx]], np.int64),
        reference_names=tuple(names[c] for c in reference), test_images=images[val_idx],
        test_labels=np.concatenate([np.zeros(len(val_normal_idx), np.int64), np.ones(len(val_anomaly_idx), np.int64)]),
        test_classes=tuple(names[int(c)] for c in labels[val_idx]),
        name=f"validation: {names[normal]} vs {names[anomaly]} (training set only)",
        info={"source": data.source, "split": "Fashion-MNIST training set only", **cfg.to_dict()})


# ------------------------------------------------------------------------------------------------ the search


def _key(point: dict) -> tuple:
    return tuple(point[p] for p in PARAMS)


def _better(a: float | None, b: float | None) -> bool:
    return a is not None and (b is None or a > b)


def coordinate_descent(evaluate: Callable[[list[dict]], list[dict]], start: dict, grids: dict[str, tuple],
                       min_gain: float = 0.002, max_rounds: int = 2,
                       log: Callable[[str], None] = print) -> dict:
    """Coordinate descent over ``grids`` from ``start``, maximising the validation AUROC ``evaluate`` reports.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(points) -> results``: ``points`` are configurations (dicts with every key of :data:`PARAMS`) that
        differ in one parameter; it returns one dict per point, ``{"auc": float or None, "error": str or None, ...}``
        (any further keys, e.g. timings, are kept in the record). Never called twice for the same configuration.
    start : dict
        The starting configuration (today's defaults); it is evaluated first.
    grids : dict
        Values tried for each parameter of :data:`PARAMS` (the current value is always tried too).
    min_gain, max_rounds : see :class:`ValidationConfig`.

    Returns
    -------
    dict
        ``chosen`` (configuration), ``chosen_auc``, ``tried`` (every configuration evaluated, in order, each with
        ``config``, ``auc``, ``error``, ``round``, ``parameter`` and the evaluator's extra keys), ``steps`` (one per
        parameter visit: ``round``, ``parameter``, ``aucs`` {value as text: AUROC or None}, ``best`` (the highest
        value), ``chosen`` (the value kept) and ``moved``), ``rounds`` (rounds run) and ``converged`` (the last
        round changed nothing).
    """
    cache: dict[tuple, dict] = {}
    tried: list[dict] = []

    def run(points: list[dict], rnd: int, param: str | None) -> list[dict]:
        todo = [p for p in points if _key(p) not in cache]
        if todo:
            for p, res in zip(todo, evaluate(todo)):
                res = {"auc": None, "error": None, **res}
                cache[_key(p)] = res
                tried.append({"config": dict(p), "round": rnd, "parameter": param, **res})
                log(f"  {param or 'start'} {p[param] if param else ''}: "
                    + (f"AUROC {res['auc']:.4f}" if res["auc"] is not None else f"error: {res['error']}"))
        return [cache[_key(p)] for p in points]

    current = dict(start)
    (current_res,) = run([current], 0, None)
    if current_res["auc"] is None:
        raise ValueError(f"the starting configuration cannot be evaluated: {current_res['error']}")
    steps: list[dict] = []
    rounds, converged = 0, False
    for rnd in range(1, max_rounds + 1):
        rounds, moved_any = rnd, False
        for param in PARAMS:
            values = list(dict.fromkeys([*grids[param], current[param]]))
            points = [{**current, param: v} for v in values]
            results = run(points, rnd, param)
            current_auc = cache[_key(current)]["auc"]
            best_i = None
            for i, res in enumerate(results):  # the first of equal AUROCs, so grid order breaks ties
                if best_i is None or _better(res["auc"], results[best_i]["auc"]):
                    best_i = i
            best_v, best_auc = values[best_i], results[best_i]["auc"]
            move = best_v != current[param] and best_auc is not None and best_auc > current_auc + min_gain
            steps.append({"round": rnd, "parameter": param,
                          "aucs": {str(v): r["auc"] for v, r in zip(values, results)},
                          "best": best_v, "chosen": best_v if move else current[param], "moved": bool(move)})
            if move:
                log(f"round {rnd}: {param} {current[param]} -> {best_v} (AUROC {current_auc:.4f} -> {best_auc:.4f})")
                current = {**current, param: best_v}
                moved_any = True
        if not moved_any:
            converged = True
            break
    return {"chosen": current, "chosen_auc": cache[_key(current)]["auc"], "tried": tried, "steps": steps,
            "rounds": rounds, "converged": converged}


# ------------------------------------------------------------------------------------------------ evaluation


def make_evaluator(split: OneClassSplit, backbone: BackboneConfig, train: TrainConfig,
                   log: Callable[[str], None] = print) -> Callable[[list[dict]], list[dict]]:
    """The real ``evaluate`` of :func:`coordinate_descent`: DOC training on ``split`` and the validation AUROC of
    k-NN scores of its held-out images (``split.test_images``, here cut from the training set).

    Points sharing every parameter of :data:`TRAINING_PARAMS` share one training run of the largest ``epochs``
    asked for, read off after each needed epoch (``epochs == 0``: the pretrained backbone, no training); every ``k``
    rescores the same features. ``backbone`` and ``train`` give everything the points do not set (backbone name,
    weights, input size, batch size, optimizer, seed). Each result also holds ``run_s``, the seconds of the training
    run (or pretrained embedding) it was read off.
    """
    from ..model.detector import DOCDetector, ScorerConfig

    def features_auc(det, ks, bank: np.ndarray | None = None) -> dict[int, float]:
        bank = det.backbone_.embed(split.train_normal) if bank is None else bank
        val = det.backbone_.embed(split.test_images)
        return {k: roc_auc(split.test_labels, KNNScorer(k=k).fit(bank).score_samples(val)) for k in ks}

    def evaluate(points: list[dict]) -> list[dict]:
        groups: dict[tuple, list[dict]] = {}
        for p in points:
            groups.setdefault(tuple(p[q] for q in TRAINING_PARAMS), []).append(p)
        out: dict[tuple, dict] = {}
        for gkey, members in groups.items():
            first = members[0]
            bb = replace(backbone, feature_layer=first["feature_layer"], trainable_from=first["trainable_from"])
            ks = sorted({int(p["k"]) for p in members})
            epochs = sorted({int(p["epochs"]) for p in members})
            aucs: dict[tuple[int, int], float] = {}
            error, seconds = None, {}
            # epochs == 0: the pretrained backbone; epochs > 0: one run to the largest, read off after each epoch
            runs = ([(0, [0])] if 0 in epochs else []) + ([(max(epochs), [e for e in epochs if e > 0])]
                                                        if any(e > 0 for e in epochs) else [])
            for e_run, wanted in runs:
                t0 = time.perf_counter()
                tc = TrainConfig(**{**train.to_dict(), "learning_rate": float(first["learning_rate"]),
                                    "lam": float(first["lam"]), "epochs": e_run})
                try:
                    det = DOCDetector(bb, tc, ScorerConfig("knn", k=ks[0]))
                    if e_run == 0:
                        det.fit(split.train_normal, split.reference, split.reference_labels, split.reference_names)
                        for k, a in features_auc(det, ks, det.bank_).items():
                            aucs[(0, k)] = a
                    else:
                        for rec in det.fit_steps(split.train_normal, split.reference, split.reference_labels,
                                                 split.reference_names):
                            per_epoch = rec.steps_total // e_run
                            if rec.step % per_epoch == 0 and rec.epoch in wanted:
                                for k, a in features_auc(det, ks).items():
                                    aucs[(rec.epoch, k)] = a
                except (ValueError, TrainingDivergedError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                seconds[e_run] = time.perf_counter() - t0
            log(f"  trained {dict(zip(TRAINING_PARAMS, gkey))}, epochs {epochs}, k {ks}: "
                f"{sum(seconds.values()):.0f} s" + (f" ({error})" if error else ""))
            for p in members:
                e, k = int(p["epochs"]), int(p["k"])
                a = aucs.get((e, k))
                out[_key(p)] = {"auc": a, "error": None if a is not None else (error or "not evaluated"),
                                "run_s": round(seconds.get(0 if e == 0 else max(epochs), 0.0), 2)}
        return [out[_key(p)] for p in points]

    return evaluate


def current_defaults(backbone_name: str = "mobilenet_v2") -> dict:
    """Today's defaults of the searched parameters (TrainConfig, BackboneConfig and the k-NN scorer's k)."""
    bb = BackboneConfig(name=backbone_name).resolved()
    tc = TrainConfig()
    return {"feature_layer": bb.feature_layer, "trainable_from": bb.trainable_from,
            "learning_rate": tc.learning_rate, "lam": tc.lam, "epochs": tc.epochs, "k": make_scorer("knn").k}


def select_defaults(data: FashionMNIST, backbone: BackboneConfig = BackboneConfig(),
                    train: TrainConfig = TrainConfig(), cfg: ValidationConfig = ValidationConfig(),
                    grids: dict[str, tuple] | None = None, k: int | None = None,
                    log: Callable[[str], None] = print,
                    evaluate: Callable[[list[dict]], list[dict]] | None = None) -> dict:
    """Run the selection (see the module docstring) and return it as a JSON-serialisable dict.

    Parameters
    ----------
    data : FashionMNIST
        Only its training arrays are read.
    backbone, train : the starting point (their feature layer, trained layers, learning rate, lambda and epochs) and
        everything not searched. ``train.seed`` is replaced by ``cfg.seed``.
    k : int, optional
        Starting k (default: the k-NN scorer's default).
    grids : dict, optional
        Values per parameter (default :data:`GRIDS` of the backbone).
    evaluate : callable, optional
        Replaces the training-based evaluator (tests).

    Returns
    -------
    dict
        ``protocol`` "validation", ``data`` (the cut: classes, sizes, seed, source), ``procedure`` (grids, order,
        ``min_gain``, ``max_rounds``, metric), ``start``, ``defaults`` (today's, :func:`current_defaults`), ``chosen``,
        ``chosen_auc``, ``start_auc``, ``equals_defaults``, ``differences`` {parameter: {"default", "chosen"}},
        ``tried``, ``steps``, ``rounds``, ``converged`` (see :func:`coordinate_descent`) and ``total_s``.
    """
    t_start = time.perf_counter()
    bb = backbone.resolved()
    grids = dict(grids if grids is not None else GRIDS[bb.name])
    train = replace(train, seed=cfg.seed)
    start = {"feature_layer": bb.feature_layer, "trainable_from": bb.trainable_from,
             "learning_rate": train.learning_rate, "lam": train.lam, "epochs": train.epochs,
             "k": k if k is not None else make_scorer("knn").k}
    split = validation_split(data, cfg)
    log(f"validation split from the training set: {len(split.train_normal)} fit, {int(np.sum(split.test_labels == 0))} "
        f"normal + {int(np.sum(split.test_labels == 1))} anomalous validation, {len(split.reference)} reference")
    evaluate = evaluate if evaluate is not None else make_evaluator(split, bb, train, log)
    search = coordinate_descent(evaluate, start, grids, cfg.min_gain, cfg.max_rounds, log)
    defaults = current_defaults(bb.name)
    chosen = search["chosen"]
    diffs = {p: {"default": defaults[p], "chosen": chosen[p]} for p in PARAMS if defaults[p] != chosen[p]}
    start_auc = search["tried"][0]["auc"]
    return {
        "protocol": "validation",
        "data": {"normal_class": FASHION_MNIST_CLASSES[cfg.normal_class],
                 "anomaly_class": FASHION_MNIST_CLASSES[cfg.anomaly_class],
                 "reference_classes": [FASHION_MNIST_CLASSES[c] for c in cfg.reference_classes],
                 "n_fit": len(split.train_normal), "n_val_normal": int(np.sum(split.test_labels == 0)),
                 "n_val_anomaly": int(np.sum(split.test_labels == 1)), "n_reference": len(split.reference),
                 "seed": cfg.seed, "split": "Fashion-MNIST training set only (the test set is never read)",
                 "source": data.source},
        "procedure": {"method": "coordinate descent from the start point, one parameter at a time",
                      "order": list(PARAMS), "grids": {p: list(grids[p]) for p in PARAMS},
                      "min_gain": cfg.min_gain, "max_rounds": cfg.max_rounds,
                      "metric": "validation AUROC of k-NN scores (held-out normal vs anomaly-class training images)",
                      "seeds": [cfg.seed],
                      "fixed": {"backbone": bb.name, "alpha": bb.alpha, "input_size": bb.input_size,
                                "weights": bb.weights, "batch_size": train.batch_size, "optimizer": train.optimizer,
                                "weight_decay": train.weight_decay}},
        "start": start, "start_auc": start_auc, "defaults": defaults,
        "chosen": chosen, "chosen_auc": search["chosen_auc"],
        "equals_defaults": not diffs, "differences": diffs,
        "steps": search["steps"], "tried": search["tried"], "rounds": search["rounds"],
        "converged": search["converged"], "total_s": time.perf_counter() - t_start,
    }


def format_validation_table(result: dict) -> str:
    """A plain-text summary of a :func:`select_defaults` result: every parameter visit and the choice."""
    d = result["data"]
    lines = [f"protocol: validation  ({d['n_fit']} fit + {d['n_val_normal']} normal / {d['n_val_anomaly']} anomalous "
             f"validation images, {d['n_reference']} reference; training set only; seed {d['seed']})"]
    for s in result["steps"]:
        vals = ", ".join(f"{v}: {'-' if a is None else f'{a:.4f}'}" for v, a in s["aucs"].items())
        lines.append(f"round {s['round']} {s['parameter']:<15} {vals}  -> {s['chosen']}"
                     + (" (moved)" if s["moved"] else ""))
    lines.append(f"start AUROC {result['start_auc']:.4f}; chosen AUROC {result['chosen_auc']:.4f}; "
                 f"{len(result['tried'])} configurations tried in {result['rounds']} round(s)"
                 + ("" if result["converged"] else " (not converged)"))
    lines.append("chosen: " + ", ".join(f"{p}={result['chosen'][p]}" for p in PARAMS))
    if result["equals_defaults"]:
        lines.append("the choice equals today's defaults")
    else:
        lines.append("the choice DIFFERS from today's defaults: " + ", ".join(
            f"{p} {v['default']} -> {v['chosen']}" for p, v in result["differences"].items()))
    return "\n".join(lines)
