"""Does a fixed fusion of global and patch k-NN scores work on both defects and semantic anomalies? An experiment.

    nice -n 10 .venv/bin/python bench/score_fusion.py --fashion-folder /tmp/fmnist-folder \\
        --json bench/results-score-fusion.json

Pretrained MobileNetV2 features only (``TrainConfig(epochs=0)``, no DOC training), 96 px, seed 0, on

- the magnetic-tile protocol split (:func:`doc_core.evaluation.folder_benchmark.load_magnetic_tiles`, seed 0), and
- the Fashion-MNIST folder of ``bench/make_fashion_folder.py`` (sneakers normal, ankle boots anomalous), created with
  the script's defaults when the folder is missing;
- optionally any further labelled folders (``--folder DIR ...``; ``--datasets`` with no names skips the two above),
  e.g. a check on data not used in designing the fusion::

    nice -n 10 .venv/bin/python bench/score_fusion.py --datasets --folder /tmp/fusion-fm-0v6 /tmp/fusion-fm-2v4 \\
        /tmp/fusion-fm-5v9 /tmp/fusion-fm-1v3 --json bench/results-score-fusion-heldout.json

  (each made with ``bench/make_fashion_folder.py DIR --normal A --anomaly B``).

Single scorers, all with the library defaults and their calibration slice (10 % of the normal training images, held
out of the bank): global k-NN, patch k-NN over the default layer pair, patch k-NN over the coarse layer alone (as
``pretrained_patch_coarse`` in the folder benchmark). One backbone pass: the patch detectors come from
:meth:`DOCDetector.with_scorer` of the global one and share its calibration slice.

Fusion, with no label used anywhere: each score is put on a common scale with its own detector's calibration scores
(normal images held out of the bank), then the global and a patch score are combined by their mean or their maximum.

- ``thr``: ``s / t``, ``t`` = the detector's calibrated threshold (the 95th percentile of the calibration scores);
- ``robust``: ``(s - median_cal) / (p95_cal - median_cal)``.

Every fused variant is fixed in advance; the test labels only compute the AUROCs that are reported. Caveat: the
variants were designed after seeing these two data sets' single-scorer results, so they need checking on other data.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from doc_core import BackboneConfig, DOCDetector, ScorerConfig, TrainConfig  # noqa: E402
from doc_core.evaluation.benchmark import machine_info  # noqa: E402
from doc_core.evaluation.folder_benchmark import load_labelled_folder, load_magnetic_tiles  # noqa: E402
from doc_core.evaluation.metrics import roc_auc  # noqa: E402
from doc_core.model.backbones import DEFAULT_PATCH_LAYERS  # noqa: E402

NORMALISATIONS = ("thr", "robust")
COMBINERS = ("mean", "max")


def normalise(scores: np.ndarray, calibration: np.ndarray, threshold: float, how: str) -> np.ndarray:
    """Put scores (float (n,), higher = more anomalous) on a scale set by normal calibration scores (float (m,)).

    ``thr``: ``scores / threshold`` (1 = at the detector's threshold). ``robust``: ``(scores - median) / (p95 -
    median)`` of the calibration scores (0 = a typical normal image, 1 = at its 95th percentile).
    """
    s = np.asarray(scores, np.float64)
    if how == "thr":
        return s / float(threshold)
    cal = np.asarray(calibration, np.float64)
    med, p95 = np.median(cal), np.percentile(cal, 95)
    return (s - med) / max(p95 - med, 1e-12)


def fuse(a: np.ndarray, b: np.ndarray, how: str) -> np.ndarray:
    """Mean or maximum of two normalised score arrays of the same shape."""
    return (a + b) / 2 if how == "mean" else np.maximum(a, b)


def run_dataset(name: str, split, size: int, seed: int) -> dict:
    """Every single scorer and fused variant on one labelled split; returns AUROCs, timings and calibration info."""
    y, test = split.test_labels, split.test_images
    keep = y >= 0
    y, test = y[keep], test[keep]
    backbone, train = BackboneConfig(input_size=size), TrainConfig(epochs=0, seed=seed)
    coarse = DEFAULT_PATCH_LAYERS[backbone.name][-1:]
    t0 = time.perf_counter()
    base = DOCDetector(backbone, train, ScorerConfig("knn")).fit(split.train_normal, None, None)
    fit_global = time.perf_counter() - t0
    singles, info = {}, {}
    for key, scorer in (("global", None), ("patch", ScorerConfig("patch")),
                        ("patch_coarse", ScorerConfig("patch", patch_layers=coarse))):
        t0 = time.perf_counter()
        det = base if scorer is None else base.with_scorer(scorer, normal=split.train_normal)
        fit_s = time.perf_counter() - t0 + (fit_global if scorer is None else 0.0)
        t0 = time.perf_counter()
        scores = np.asarray(det.decision_function(test), np.float64)
        score_s = time.perf_counter() - t0
        if det.threshold_source_ != "calibration":
            raise RuntimeError(f"{name} {key}: no calibration slice ({det.calibration_note_})")
        cal = np.asarray(det.calibration_scores_, np.float64)
        singles[key] = {"scores": scores, "cal": cal, "thr": float(det.threshold_)}
        info[key] = {"auc": roc_auc(y, scores), "fit_s": fit_s, "score_s": score_s, "threshold": float(det.threshold_),
                     "cal_median": float(np.median(cal)), "n_calibration": int(len(cal))}
        print(f"{name} {key}: AUROC {info[key]['auc']:.4f} (fit {fit_s:.1f} s, score {score_s:.1f} s)", flush=True)
    fused = {}
    for patch in ("patch", "patch_coarse"):
        for norm in NORMALISATIONS:
            g, p = singles["global"], singles[patch]
            gn = normalise(g["scores"], g["cal"], g["thr"], norm)
            pn = normalise(p["scores"], p["cal"], p["thr"], norm)
            for comb in COMBINERS:
                key = f"global+{patch}/{norm}/{comb}"
                fused[key] = roc_auc(y, fuse(gn, pn, comb))
                print(f"{name} {key}: AUROC {fused[key]:.4f}", flush=True)
    best_patch = max(info["patch"]["auc"], info["patch_coarse"]["auc"])
    checks = {k: {"minus_global": v - info["global"]["auc"], "minus_best_patch": v - best_patch}
              for k, v in fused.items()}
    return {"n_train": int(len(split.train_normal)), "n_test_normal": int((y == 0).sum()),
            "n_test_anomaly": int((y == 1).sum()), "image_size": size, "single": info, "fused": fused,
            "fused_vs_singles": checks}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fashion-folder", default="/tmp/fmnist-folder")
    ap.add_argument("--datasets", nargs="*", default=["magnetic-tile", "fashion-folder"],
                    choices=["magnetic-tile", "fashion-folder"])
    ap.add_argument("--folder", nargs="*", default=[], metavar="DIR",
                    help="further labelled folders (test/normal, test/anomaly) to run the same scorers on, e.g. data "
                         "not used in designing the fused variants")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = {"command": " ".join(sys.argv), "seed": args.seed, "datasets": {}, "machine": machine_info()}
    for ds in [*args.datasets, *args.folder]:
        t0 = time.perf_counter()
        if ds not in ("magnetic-tile", "fashion-folder"):
            split, _ = load_labelled_folder(ds, image_size=args.image_size)
        elif ds == "magnetic-tile":
            split, _ = load_magnetic_tiles(image_size=args.image_size, seed=args.seed)
        else:
            folder = Path(args.fashion_folder)
            if not folder.exists():
                subprocess.run([sys.executable, str(Path(__file__).with_name("make_fashion_folder.py")), str(folder)],
                               check=True)
            split, _ = load_labelled_folder(folder, image_size=args.image_size)
        res = run_dataset(ds, split, args.image_size, args.seed)
        res["wall_s"] = time.perf_counter() - t0
        out["datasets"][ds] = res
        if args.json:  # written after each data set, so a cut run keeps what it finished
            Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
