"""Does a larger input pay off on the magnetic tiles? Pretrained MobileNetV2 features only (no training), per size.

    .venv/bin/python bench/tile_image_size.py --sizes 96 160 224 --json bench/results-tile-image-size.json

For each image size: the magnetic-tile protocol's split (doc_core.evaluation.folder_benchmark.load_magnetic_tiles, seed
0), then global k-NN and the patch scorer over the default layer pair and the coarse layer alone, all with the library
defaults; image AUROC, pixel AUROC (masks at the same size), fit seconds, scoring ms per image and bank bytes. Nothing
here is tuned: every size runs the same configuration, and the numbers only inform the default image size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from doc_core import BackboneConfig, DOCDetector, ScorerConfig, TrainConfig  # noqa: E402
from doc_core.evaluation.benchmark import machine_info  # noqa: E402
from doc_core.evaluation.folder_benchmark import load_magnetic_tiles, pixel_auroc  # noqa: E402
from doc_core.evaluation.metrics import roc_auc  # noqa: E402
from doc_core.model.backbones import DEFAULT_PATCH_LAYERS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 160, 224])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = {"sizes": {}, "machine": machine_info()}
    for size in args.sizes:
        split, masks = load_magnetic_tiles(image_size=size)
        y, test = split.test_labels, split.test_images
        t0 = time.perf_counter()
        base = DOCDetector(BackboneConfig(input_size=size), TrainConfig(epochs=0), ScorerConfig("knn")).fit(
            split.train_normal, None, None)
        knn_fit = time.perf_counter() - t0
        rows = {}
        for name, scorer in (("pretrained_knn", None), ("pretrained_patch", ScorerConfig("patch")),
                             ("pretrained_patch_coarse",
                              ScorerConfig("patch", patch_layers=DEFAULT_PATCH_LAYERS["mobilenet_v2"][-1:]))):
            t0 = time.perf_counter()
            det = base if scorer is None else base.with_scorer(scorer, normal=split.train_normal)
            fit_s = knn_fit + time.perf_counter() - t0
            det.decision_function(test[:8])
            t0 = time.perf_counter()
            scores = det.decision_function(test)
            ms = (time.perf_counter() - t0) * 1000 / len(test)
            pixel = pixel_auroc(masks, det.anomaly_maps(test)) if det.is_patch else None
            bank = int(getattr(det.scorer_, "bank_bytes_", 0) or det.bank_.nbytes)
            rows[name] = {"auc": roc_auc(y, scores), "pixel_auc": pixel, "fit_s": fit_s, "score_ms_per_image": ms,
                          "bank_bytes": bank}
            px = "-" if pixel is None else f"{pixel:.4f}"
            print(f"{size} px {name}: image AUROC {rows[name]['auc']:.4f}, pixel {px}, fit {fit_s:.1f} s, "
                  f"{ms:.1f} ms/image, bank {bank / 2**20:.1f} MB", flush=True)
        out["sizes"][str(size)] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
