"""How the patch scorer's image-score rule (max / top10 / mean of the patch scores) was chosen, rerunnable.

Evidence that uses no test labels of the magnetic-tile protocol's final numbers:

1. **Development split of the tiles**: the protocol's (seed 0) training tiles split 80/20 (seed 123): fit on the 80 %,
   score the other 20 % (normal) against one half of each defect class (seed 123; "dev half"). The other defect half
   and the 190 test normal tiles are not used here for the choice; part 3 reports them afterwards.
2. **The label-free signal of ``auto``** (synthetic defects in held-out normal images,
   :func:`doc_core.workflow.selection.select_configuration`) on the tiles' training images and on 1,000 Fashion-MNIST
   training sneakers.
3. **Held-out report**: fit on all training tiles (default calibration slice), score the 190 test normal tiles
   against the *other* defect half, which played no part in 1.
4. **A semantic development set**: 2,000 Fashion-MNIST *training* sneakers fitted, 500 other training sneakers
   against 500 training ankle boots (no test image; the folder benchmark's test images are from the test split).

The rule (``choose_rule``, label-free): the broadest rule (max < top10 < top25 < top50 < mean) whose label-free
signal (2.) is within ``SIGNAL_TOLERANCE`` of the best rule's, for the default layers, on every data set. Why
"broadest": the synthetic defects are small by construction, so the signal favours narrow rules, while real
anomalies can cover much of an image (a boot is not a sneaker anywhere); a broader rule is taken unless the signal
says it costs small defects more than the tolerance.

    .venv/bin/python bench/tile_image_score.py --json bench/results-tile-image-score.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from doc_core.data.images import resize_image  # noqa: E402
from doc_core.evaluation.folder_benchmark import MT_DEFECTS, load_magnetic_tiles  # noqa: E402
from doc_core.evaluation.metrics import roc_auc  # noqa: E402
from doc_core.model.backbones import DEFAULT_PATCH_LAYERS, BackboneConfig  # noqa: E402
from doc_core.model.detector import DOCDetector, ScorerConfig  # noqa: E402
from doc_core.model.training import TrainConfig  # noqa: E402
from doc_core.scoring.patch import IMAGE_SCORES, aggregate_patch_scores  # noqa: E402

LAYERS = {"default layers": None, "coarse layer": DEFAULT_PATCH_LAYERS["mobilenet_v2"][-1:]}
SIGNAL_TOLERANCE = 0.01


def choose_rule(signal: dict, layers: str = "default layers", tolerance: float = SIGNAL_TOLERANCE) -> str:
    """The broadest image-score rule within ``tolerance`` of the best one on every data set's label-free signal.

    ``signal``: data set -> {"<layers>, <rule>": validation AUROC}.
    """
    ok = [how for how in IMAGE_SCORES
          if all(v[f"{layers}, {how}"] >= max(v[f"{layers}, {h}"] for h in IMAGE_SCORES) - tolerance
                 for v in signal.values())]
    return ok[-1]


def fashion_96(fm, label: int, n: int) -> np.ndarray:
    """The first ``n`` Fashion-MNIST *training* images of class ``label`` as 96 x 96 RGB uint8 (bilinear)."""
    return np.stack([np.repeat(resize_image(i, 96), 3, axis=-1)
                     for i in fm.train_images[fm.train_labels == label][:n]])


def dev_and_held_out(split, seed: int = 123):
    """Indices: (fit, dev normal) of the training tiles; (dev half, other half) of the defective test tiles."""
    rng = np.random.default_rng(seed)
    n = len(split.train_normal)
    perm = rng.permutation(n)
    n_dev = n // 5
    classes = np.asarray(split.test_classes)
    dev, other = [], []
    for d in MT_DEFECTS:
        idx = np.flatnonzero(classes == d)
        pick = rng.permutation(len(idx))[: len(idx) // 2]
        dev += idx[np.sort(pick)].tolist()
        other += np.setdiff1d(idx, idx[pick]).tolist()
    return np.sort(perm[n_dev:]), np.sort(perm[:n_dev]), np.array(dev), np.array(other)


def rule_aucs(det: DOCDetector, layers, normal: np.ndarray, anomalous: np.ndarray) -> dict:
    maps = det.backbone_.patch_maps(np.concatenate([normal, anomalous]), det.backbone_.patch_layers(layers))
    patch = det.scorer_.patch_scores(maps)
    y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    return {how: round(float(roc_auc(y, aggregate_patch_scores(patch, how))), 4) for how in IMAGE_SCORES}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--no-signal", action="store_true", help="skip part 2 (the label-free signal)")
    ap.add_argument("--no-semantic", action="store_true", help="skip part 4 (Fashion-MNIST sneakers vs boots)")
    args = ap.parse_args()
    t0 = time.time()
    split, _ = load_magnetic_tiles(image_size=96, seed=0)
    fit_i, devn_i, dev_a, other_a = dev_and_held_out(split)
    bb, pre = BackboneConfig(input_size=96), TrainConfig(epochs=0)
    out: dict = {"dev": {}, "held_out": {}, "signal": {}}
    for name, layers in LAYERS.items():
        cfg = ScorerConfig("patch", patch_layers=layers, image_score="max")
        det = DOCDetector(bb, pre, cfg, calibration_fraction=0.0).fit(split.train_normal[fit_i], None, None)
        out["dev"][name] = rule_aucs(det, layers, split.train_normal[devn_i], split.test_images[dev_a])
        print(f"dev split, {name}: {out['dev'][name]}", flush=True)
    for name, layers in LAYERS.items():
        det = DOCDetector(bb, pre, ScorerConfig("patch", patch_layers=layers)).fit(split.train_normal, None, None)
        normal = split.test_images[split.test_labels == 0]
        out["held_out"][name] = rule_aucs(det, layers, normal, split.test_images[other_a])
        print(f"held-out half, {name}: {out['held_out'][name]}", flush=True)
    if not (args.no_signal and args.no_semantic):
        from doc_core.data import load_fashion_mnist

        fm = load_fashion_mnist(download=False)
        sneakers = fashion_96(fm, 7, 2500)
    if not args.no_signal:
        from doc_core.workflow.selection import Candidate, select_configuration

        for data, normal in (("magnetic tiles", split.train_normal), ("Fashion-MNIST sneakers", sneakers[:1000])):
            cands = [Candidate(f"{name}, {how}", bb, pre, ScorerConfig("patch", patch_layers=layers, image_score=how))
                     for name, layers in LAYERS.items() for how in IMAGE_SCORES]
            sel = select_configuration(normal, cands, seed=0, calibration_fraction=0.1)
            out["signal"][data] = {r["name"]: round(r["val_auroc"], 4) for r in sel.rows}
            print(f"label-free signal, {data}: {out['signal'][data]}", flush=True)
        out["chosen_rule"] = choose_rule(out["signal"])
        out["signal_tolerance"] = SIGNAL_TOLERANCE
        print(f"rule chosen (broadest within {SIGNAL_TOLERANCE} of the best signal everywhere): "
              f"{out['chosen_rule']}", flush=True)
    if not args.no_semantic:
        boots = fashion_96(fm, 9, 500)
        out["semantic_dev"] = {}
        glob = DOCDetector(bb, pre, ScorerConfig("knn"), calibration_fraction=0.0).fit(sneakers[:2000], None, None)
        y = np.r_[np.zeros(500), np.ones(500)]
        out["semantic_dev"]["global k-NN"] = round(float(roc_auc(y, np.r_[glob.decision_function(sneakers[2000:]),
                                                                         glob.decision_function(boots)])), 4)
        for name, layers in LAYERS.items():
            det = DOCDetector(bb, pre, ScorerConfig("patch", patch_layers=layers),
                              calibration_fraction=0.0).fit(sneakers[:2000], None, None)
            out["semantic_dev"][name] = rule_aucs(det, layers, sneakers[2000:], boots)
        print(f"semantic dev (Fashion-MNIST training sneakers vs ankle boots): {out['semantic_dev']}", flush=True)
    out.update(n_fit=len(fit_i), n_dev_normal=len(devn_i), n_dev_anomaly=len(dev_a), n_held_out_anomaly=len(other_a),
               n_test_normal=int((split.test_labels == 0).sum()), seconds=round(time.time() - t0, 1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
