"""Defect-map variants on the magnetic tiles' development split: does anything lift the pixel AUROC towards 0.90?

Uses no test normal tile and only the *development half* of the defects (the split of ``bench/tile_image_score.py``:
the protocol's seed-0 training tiles split 80/20 with seed 123, fit on the 80 %, the other 20 % scored as normal
against one half of each defect class). Pretrained MobileNetV2, no training. For every variant: pixel AUROC over all
pixels of the scored images (masks at the image size), the same restricted to the defective images (how well the map
finds the defect *within* a defective image), per defect class (normal images + that class), and the image AUROC
with the ``top10`` image score.

Variants: the product's patch detector (default layers, coarse layer; 10,000-patch coreset or the whole bank; a
stride-4 layer added; 128 and 160 px inputs), and two that are not product options, computed here from the
detector's own patch maps: a *position window* (each patch compared only with bank patches within ``r`` grid cells
of its own position, PaDiM-like; the whole bank) and *flip test-time augmentation* (the maps of the image and of its
horizontal and vertical flips, flipped back and averaged).

    .venv/bin/python bench/tile_map_variants.py --json bench/results-tile-map-variants.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tile_image_score import dev_and_held_out  # noqa: E402

from doc_core.evaluation.folder_benchmark import MT_DEFECTS, load_magnetic_tiles  # noqa: E402
from doc_core.evaluation.metrics import roc_auc  # noqa: E402
from doc_core.model.backbones import DEFAULT_PATCH_LAYERS, BackboneConfig  # noqa: E402
from doc_core.model.detector import DOCDetector, ScorerConfig  # noqa: E402
from doc_core.model.training import TrainConfig  # noqa: E402
from doc_core.scoring.knn import knn_distances  # noqa: E402
from doc_core.scoring.patch import aggregate_patch_scores, neighbourhood_average, patch_score_maps  # noqa: E402

DEFAULT = DEFAULT_PATCH_LAYERS["mobilenet_v2"]
COARSE = DEFAULT[-1:]
STRIDE4 = ("block_3_expand_relu",) + DEFAULT
WHOLE_BANK = 10**9
# name -> (input px, layers, bank size (None = every patch), extra)
VARIANTS = {
    "default layers, 10k coreset (product default)": (96, DEFAULT, 10_000, None),
    "default layers, whole bank": (96, DEFAULT, None, None),
    "coarse layer, 10k coreset": (96, COARSE, 10_000, None),
    "coarse layer, whole bank": (96, COARSE, None, None),
    "default + stride-4 layer, 10k coreset": (96, STRIDE4, 10_000, None),
    "default layers, 128 px, whole bank": (128, DEFAULT, None, None),
    "default layers, 160 px, whole bank": (160, DEFAULT, None, None),
    "coarse layer, 160 px, whole bank": (160, COARSE, None, None),
    "default layers, position window r=0": (96, DEFAULT, None, ("window", 0)),
    "default layers, position window r=1": (96, DEFAULT, None, ("window", 1)),
    "coarse layer, position window r=1": (96, COARSE, None, ("window", 1)),
    "default layers, flip TTA, whole bank": (96, DEFAULT, None, ("flips", None)),
}


def window_scores(bank_maps: np.ndarray, query_maps: np.ndarray, r: int) -> np.ndarray:
    """Distance of each query patch to its nearest bank patch within ``r`` cells of its own grid position."""
    n, h, w, c = query_maps.shape
    out = np.empty((n, h, w), np.float32)
    for i in range(h):
        for j in range(w):
            bank = bank_maps[:, max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].reshape(-1, c)
            out[:, i, j] = knn_distances(np.ascontiguousarray(query_maps[:, i, j]), bank, 1)[0][:, 0]
    return out


_SPLITS: dict = {}


def tiles_at(size: int):
    """The protocol's split (seed 0) with images at ``size`` px (masks at the size they were asked for)."""
    if size not in _SPLITS:
        _SPLITS[size] = load_magnetic_tiles(image_size=size, seed=0)
    return _SPLITS[size]


def measure(name: str, size: int, layers, bank, extra, idx) -> dict:
    """Maps at ``size`` px input, drawn at 96 x 96 and compared with the masks at 96 x 96 for every variant."""
    fit_i, devn_i, dev_a = idx
    split, _ = tiles_at(size)
    masks = tiles_at(96)[1]
    fit, normal, anomalous = split.train_normal[fit_i], split.train_normal[devn_i], split.test_images[dev_a]
    t0 = time.time()
    # ScorerConfig's None means the default coreset size: ask for more patches than there are to keep them all
    cfg = ScorerConfig("patch", patch_layers=layers, max_bank_size=WHOLE_BANK if bank is None else bank,
                       backend="faiss" if bank is None else "exact")
    det = DOCDetector(BackboneConfig(input_size=size), TrainConfig(epochs=0), cfg,
                      calibration_fraction=0.0).fit(fit, None, None)
    images = np.concatenate([normal, anomalous])
    maps = det.backbone_.patch_maps(images, det.backbone_.patch_layers(layers))
    if extra is None:
        patch = det.scorer_.patch_scores(maps)
    elif extra[0] == "window":
        bank_maps = neighbourhood_average(det.backbone_.patch_maps(fit, det.backbone_.patch_layers(layers)), 3)
        patch = window_scores(bank_maps, neighbourhood_average(maps, 3), extra[1])
    else:  # flips: score the flipped images, flip the patch scores back, average
        flips = [lambda a: a, lambda a: a[:, :, ::-1], lambda a: a[:, ::-1]]
        patch = np.mean([f(det.scorer_.patch_scores(det.backbone_.patch_maps(
            np.ascontiguousarray(f(images)), det.backbone_.patch_layers(layers)))) for f in flips], axis=0)
    pix = patch_score_maps(patch, masks.shape[1:3])  # as the product draws them
    n_norm = len(normal)
    mk = np.concatenate([np.zeros((n_norm,) + masks.shape[1:], bool), masks[dev_a]])
    y = np.r_[np.zeros(n_norm), np.ones(len(anomalous))]
    classes = np.asarray(split.test_classes)[dev_a]
    per_class = {}
    for d in MT_DEFECTS:
        sel = np.r_[np.ones(n_norm, bool), classes == d]
        per_class[d] = round(float(roc_auc(mk[sel].ravel().astype(np.int64), pix[sel].ravel())), 4)
    res = {"pixel_auroc": round(float(roc_auc(mk.ravel().astype(np.int64), pix.ravel())), 4),
           "pixel_auroc_defective_images_only": round(float(roc_auc(mk[n_norm:].ravel().astype(np.int64),
                                                                    pix[n_norm:].ravel())), 4),
           "pixel_auroc_per_class": per_class,
           "image_auroc_top10": round(float(roc_auc(y, aggregate_patch_scores(patch, "top10"))), 4),
           "grid": list(patch.shape[1:]), "seconds": round(time.time() - t0, 1)}
    print(f"{name}: {json.dumps(res)}", flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--only", nargs="*", default=None, help="run only the variants whose name contains one of these")
    args = ap.parse_args()
    t0 = time.time()
    split, masks = tiles_at(96)
    fit_i, devn_i, dev_a, _ = dev_and_held_out(split)
    out = {"variants": {}, "n_fit": len(fit_i), "n_dev_normal": len(devn_i), "n_dev_anomaly": len(dev_a),
           "mask_size": list(masks.shape[1:])}
    for name, (size, layers, bank, extra) in VARIANTS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        out["variants"][name] = measure(name, size, layers, bank, extra, (fit_i, devn_i, dev_a))
    out["seconds"] = round(time.time() - t0, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
