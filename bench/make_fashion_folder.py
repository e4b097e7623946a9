"""Write a Fashion-MNIST one-class problem as an image folder (train/, test/normal, test/anomaly; no reference/),
to benchmark the own-images path on a second data set:

    .venv/bin/python bench/make_fashion_folder.py /tmp/fmnist-folder --normal 7 --anomaly 9 --n-train 2000 --n-test 500
    .venv/bin/python -m doc_core benchmark --protocol folder --folder /tmp/fmnist-folder --seeds 0 \\
        --no-fashion-reference --json bench/results-folder-fashion.json

Normal training images are the first ``--n-train`` training images of the normal class; the test images are the
first ``--n-test`` test images of each class. The folder must not exist yet (nothing is overwritten).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from doc_core.data import FASHION_MNIST_CLASSES, load_fashion_mnist  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--normal", type=int, default=7)
    ap.add_argument("--anomaly", type=int, default=9)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=500)
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        print(f"error: {out} exists; choose a new folder", file=sys.stderr)
        return 1
    fm = load_fashion_mnist(download=False)
    groups = {"train": fm.train_images[fm.train_labels == args.normal][:args.n_train],
              "test/normal": fm.test_images[fm.test_labels == args.normal][:args.n_test],
              "test/anomaly": fm.test_images[fm.test_labels == args.anomaly][:args.n_test]}
    for sub, images in groups.items():
        (out / sub).mkdir(parents=True)
        for i, im in enumerate(images):
            Image.fromarray(np.asarray(im)[..., 0]).save(out / sub / f"{i:05d}.png")
    print(f"wrote {out}: normal {FASHION_MNIST_CLASSES[args.normal]}, anomaly {FASHION_MNIST_CLASSES[args.anomaly]}, "
          + ", ".join(f"{k} {len(v)}" for k, v in groups.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
