"""Fashion-MNIST: read the IDX files from the first place that has them (no download unless asked)."""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .images import DataError

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) of unsigned bytes into an array of its stated shape.

    Raises
    ------
    DataError
        When the file is not an IDX file of unsigned bytes, or is truncated or corrupt (also inside the gzip stream).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path} is truncated or corrupt: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(f"{path} is truncated or corrupt: {len(data)} bytes, expected {expected}")
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@dataclass(frozen=True)
class FashionMNIST:
    """The Fashion-MNIST arrays: images uint8 (n, 28, 28, 1), labels int64 (n,) in 0-9."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    class_names: tuple[str, ...] = FASHION_MNIST_CLASSES


def _keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets" / "fashion-mnist"


def fashion_mnist_candidates(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The folders searched for the four Fashion-MNIST ``.gz`` files, in order, each with a label."""
    places: list[tuple[str, Path]] = []
    if data_dir is not None:
        places.append(("data_dir argument", Path(data_dir)))
    if os.environ.get("DOC_DATA_DIR"):
        places.append(("DOC_DATA_DIR", Path(os.environ["DOC_DATA_DIR"])))
    places.append(("Debian package dataset-fashion-mnist", DEBIAN_FASHION_MNIST_DIR))
    places.append(("Keras cache", _keras_cache_dir()))
    return places


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, download: bool = True) -> FashionMNIST:
    """Load Fashion-MNIST from the first place that has it.

    Searched in order: ``data_dir``, ``$DOC_DATA_DIR``, ``/usr/share/datasets/fashion-mnist`` (Debian package
    ``dataset-fashion-mnist``), the Keras cache, then (if ``download``) Keras' own download.

    Raises
    ------
    DataError
        Naming every place tried and how to fix it, when none works.
    """
    tried: list[str] = []
    for label, folder in fashion_mnist_candidates(data_dir):
        paths = {k: folder / v for k, v in FASHION_MNIST_FILES.items()}
        missing = [p.name for p in paths.values() if not p.is_file()]
        if missing:
            tried.append(f"{label}: {folder} (missing {', '.join(missing)})")
            continue
        try:
            arrays = {k: read_idx(p) for k, p in paths.items()}
        except (OSError, EOFError, DataError) as exc:
            tried.append(f"{label}: {folder} (unreadable: {exc})")
            continue
        return _fashion_from_arrays(arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                                    arrays["test_labels"], str(folder))
    if download:
        try:
            import keras

            (xtr, ytr), (xte, yte) = keras.datasets.fashion_mnist.load_data()
            return _fashion_from_arrays(xtr, ytr, xte, yte, "keras download")
        except Exception as exc:  # noqa: BLE001 - any network or file failure ends up in the one message below
            tried.append(f"Keras download (failed: {type(exc).__name__}: {exc})")
    else:
        tried.append("Keras download (not attempted: download=False)")
    raise DataError(
        "Fashion-MNIST was not found. Tried:\n  - " + "\n  - ".join(tried)
        + "\nFix: install the Debian package (`apt-get install dataset-fashion-mnist`), or put the four files "
        + ", ".join(FASHION_MNIST_FILES.values()) + " in a folder and set DOC_DATA_DIR to it."
    )


def _fashion_from_arrays(xtr, ytr, xte, yte, source: str) -> FashionMNIST:
    xtr, xte = np.asarray(xtr, np.uint8), np.asarray(xte, np.uint8)
    if xtr.shape[1:] != (28, 28) or xte.shape[1:] != (28, 28) or len(xtr) != len(ytr) or len(xte) != len(yte):
        raise DataError(f"Fashion-MNIST from {source} has unexpected shapes {xtr.shape}, {xte.shape}")
    return FashionMNIST(xtr[..., None], np.asarray(ytr, np.int64), xte[..., None], np.asarray(yte, np.int64), source)
