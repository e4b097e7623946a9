"""One-class problems: cut Fashion-MNIST into a split (:func:`make_split`) or load the user's own image folders.

Images are kept as ``uint8`` arrays of shape (n, h, w, c) with ``c`` 1 (gray) or 3 (RGB) at their stored size;
resizing and the backbone's normalisation happen batch by batch in :mod:`doc_core.model.backbones`, so no float copy
of a whole dataset is ever held.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from .fashion_mnist import FashionMNIST, load_fashion_mnist
from .images import DataError, SkippedFile, list_images, read_images


@dataclass(frozen=True)
class SplitConfig:
    """How to cut Fashion-MNIST into a one-class problem.

    Parameters
    ----------
    normal_classes : tuple of int
        Classes treated as normal (target) data.
    anomaly_classes : tuple of int or None
        Test classes treated as anomalies; None means every class that is not normal.
    reference_classes : tuple of int or None
        Classes of the reference set for the descriptiveness loss; None means every class that is neither normal nor
        an anomaly class (when that leaves none, every class that is not normal).
    n_normal : int or None
        Number of normal training images (a random subset); None uses all of them.
    n_reference : int
        Number of reference training images, drawn at random from the reference classes.
    seed : int
        Seed of every random draw of the split.
    """

    normal_classes: tuple[int, ...] = (7,)
    anomaly_classes: tuple[int, ...] | None = (9,)
    reference_classes: tuple[int, ...] | None = (0, 1, 2, 3, 4, 5, 6, 8)
    n_normal: int | None = None
    n_reference: int = 6000
    seed: int = 0

    @classmethod
    def tutorial(cls, seed: int = 0) -> "SplitConfig":
        """The Keras write-up's experiment: Sneaker normal, Ankle boot anomalous, 6,000 reference images of 0-6, 8."""
        return cls(seed=seed)

    @classmethod
    def one_vs_rest(cls, normal_class: int, seed: int = 0, n_reference: int = 6000) -> "SplitConfig":
        """Normal = one class, anomalies = all others on the whole test set, reference = the other classes."""
        return cls(normal_classes=(normal_class,), anomaly_classes=None, reference_classes=None,
                   n_reference=n_reference, seed=seed)

    @classmethod
    def one_vs_rest_disjoint(cls, normal_class: int, seed: int = 0, n_reference: int = 6000) -> "SplitConfig":
        """Normal = one class; the other nine alternate between reference and anomaly classes (sorted, the 1st, 3rd,
        5th, 7th and 9th are reference classes, the 2nd, 4th, 6th and 8th anomalies), so the scored anomalies are
        classes DOC never sees in training. The test set is the normal class and those four classes."""
        if not 0 <= int(normal_class) <= 9:
            raise ValueError(f"normal_class must be 0-9, got {normal_class}")
        others = [k for k in range(10) if k != int(normal_class)]
        return cls(normal_classes=(int(normal_class),), anomaly_classes=tuple(others[1::2]),
                   reference_classes=tuple(others[0::2]), n_reference=n_reference, seed=seed)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SplitConfig":
        tup = lambda v: None if v is None else tuple(int(x) for x in v)  # noqa: E731
        return cls(normal_classes=tup(d["normal_classes"]), anomaly_classes=tup(d.get("anomaly_classes")),
                   reference_classes=tup(d.get("reference_classes")), n_normal=d.get("n_normal"),
                   n_reference=int(d.get("n_reference", 6000)), seed=int(d.get("seed", 0)))


# the one-vs-rest split of each benchmark protocol (``python -m doc_core ... --protocol NAME``), by name
ONE_VS_REST_SPLITS = {"one-vs-rest": SplitConfig.one_vs_rest, "one-vs-rest-disjoint": SplitConfig.one_vs_rest_disjoint}


@dataclass(frozen=True)
class OneClassSplit:
    """A one-class problem: normal training images, labelled reference images and a test set.

    Attributes
    ----------
    train_normal : np.ndarray, uint8, shape (n, h, w, c)
    reference : np.ndarray, uint8, shape (r, h, w, c)
    reference_labels : np.ndarray, int64, shape (r,)
        Indices into ``reference_names``.
    reference_names : tuple of str
    test_images : np.ndarray, uint8, shape (m, h, w, c)
    test_labels : np.ndarray, int64, shape (m,)
        1 = anomaly, 0 = normal, -1 = unknown (unlabelled test images).
    test_classes : tuple of str, length m
        Class name of each test image (for colouring and filtering).
    name : str
    info : dict
        JSON-serialisable description (source, config).
    """

    train_normal: np.ndarray
    reference: np.ndarray
    reference_labels: np.ndarray
    reference_names: tuple[str, ...]
    test_images: np.ndarray
    test_labels: np.ndarray
    test_classes: tuple[str, ...]
    name: str = "split"
    info: dict = field(default_factory=dict)

    @property
    def has_test_labels(self) -> bool:
        """Whether the test set has both normal and anomalous labelled images (so AUC is defined)."""
        return bool(np.any(self.test_labels == 0) and np.any(self.test_labels == 1))

    def summary(self) -> dict[str, int]:
        """Image counts per role."""
        return {
            "normal training": int(len(self.train_normal)),
            "reference": int(len(self.reference)),
            "test normal": int(np.sum(self.test_labels == 0)),
            "test anomaly": int(np.sum(self.test_labels == 1)),
            "test unlabelled": int(np.sum(self.test_labels == -1)),
        }


def _check_classes(classes: Iterable[int], what: str) -> tuple[int, ...]:
    out = tuple(int(c) for c in classes)
    bad = [c for c in out if not 0 <= c <= 9]
    if bad:
        raise ValueError(f"{what} must be Fashion-MNIST classes 0-9, got {bad}")
    return out


def make_split(config: SplitConfig = SplitConfig(), data: FashionMNIST | None = None) -> OneClassSplit:
    """Cut Fashion-MNIST into a :class:`OneClassSplit` as described by ``config`` (see :class:`SplitConfig`)."""
    data = data if data is not None else load_fashion_mnist()
    normal = _check_classes(config.normal_classes, "normal_classes")
    if not normal:
        raise ValueError("at least one normal class is needed")
    anomaly = (tuple(c for c in range(10) if c not in normal) if config.anomaly_classes is None
               else _check_classes(config.anomaly_classes, "anomaly_classes"))
    if set(anomaly) & set(normal):
        raise ValueError(f"classes {sorted(set(anomaly) & set(normal))} are both normal and anomalous")
    if not anomaly:
        raise ValueError("at least one anomaly class is needed")
    if config.reference_classes is None:
        reference = tuple(c for c in range(10) if c not in normal and c not in anomaly) or \
            tuple(c for c in range(10) if c not in normal)
    else:
        reference = _check_classes(config.reference_classes, "reference_classes")
    if set(reference) & set(normal):
        raise ValueError(f"reference classes {sorted(set(reference) & set(normal))} are also normal classes")
    if len(reference) < 2:
        raise ValueError("the descriptiveness loss needs at least 2 reference classes")
    rng = np.random.default_rng(config.seed)
    normal_idx = np.flatnonzero(np.isin(data.train_labels, normal))
    if config.n_normal is not None:
        if config.n_normal > len(normal_idx):
            raise ValueError(f"n_normal={config.n_normal} but only {len(normal_idx)} normal training images exist")
        normal_idx = np.sort(rng.choice(normal_idx, config.n_normal, replace=False))
    ref_pool = np.flatnonzero(np.isin(data.train_labels, reference))
    if config.n_reference > len(ref_pool):
        raise ValueError(f"n_reference={config.n_reference} but only {len(ref_pool)} reference images exist")
    ref_idx = np.sort(rng.choice(ref_pool, config.n_reference, replace=False))
    ref_map = {c: i for i, c in enumerate(reference)}
    test_idx = np.flatnonzero(np.isin(data.test_labels, normal + anomaly))
    test_y = data.test_labels[test_idx]
    names = data.class_names
    return OneClassSplit(
        train_normal=data.train_images[normal_idx],
        reference=data.train_images[ref_idx],
        reference_labels=np.array([ref_map[c] for c in data.train_labels[ref_idx]], np.int64),
        reference_names=tuple(names[c] for c in reference),
        test_images=data.test_images[test_idx],
        test_labels=np.isin(test_y, anomaly).astype(np.int64),
        test_classes=tuple(names[c] for c in test_y),
        name="fashion-mnist: normal " + "+".join(names[c] for c in normal),
        info={"source": "fashion-mnist", "data_path": data.source, "config": config.to_dict()},
    )


FOLDER_LAYOUT = """\
my_data/
  train/                 normal training images (any names, subfolders allowed)
  reference/             optional: labelled reference images, one subfolder per class (at least 2 classes);
    class_a/  class_b/ ...  without it, training needs no labelled reference set (see the README)
  test/                  optional
    normal/              test images known to be normal
    anomaly/             test images known to be anomalous
    unlabelled/          test images without a label (also: images directly in test/)
"""


def load_folder_split(root: str | os.PathLike, image_size: int = 96, min_train: int = 2,
                      min_reference_per_class: int = 1) -> tuple[OneClassSplit, list[SkippedFile]]:
    """Load the user's own images laid out as in :data:`FOLDER_LAYOUT`.

    Parameters
    ----------
    root : path
        The folder holding ``train/``, ``reference/`` and optionally ``test/``.
    image_size : int
        Every image is stored resized to (image_size, image_size, 3) uint8.
    min_train : int
        Fewest normal training images accepted (the compactness loss needs a batch of at least 2).

    Returns
    -------
    split : OneClassSplit
    skipped : list of SkippedFile
        Files that could not be read; the rest of the dataset is still loaded.

    Raises
    ------
    DataError
        Missing folders, empty folders or too few images, with the expected layout in the message.
    """
    root = Path(root)
    layout_hint = "\nExpected layout:\n" + FOLDER_LAYOUT
    if not root.is_dir():
        raise DataError(f"{root} is not a folder.{layout_hint}")
    train_dir, ref_dir, test_dir = root / "train", root / "reference", root / "test"
    if not train_dir.is_dir():
        raise DataError(f"missing folder {train_dir}.{layout_hint}")
    skipped: list[SkippedFile] = []
    train, _, sk = read_images(list_images(train_dir), image_size)
    skipped += sk
    if len(train) < min_train:
        raise DataError(f"{train_dir} has {len(train)} readable images; at least {min_train} are needed.{layout_hint}")
    ref_classes = sorted(d.name for d in ref_dir.iterdir() if d.is_dir() and not d.name.startswith(".")) \
        if ref_dir.is_dir() else []
    refs, ref_labels, ref_names = [], [], []
    for name in ref_classes:
        imgs, _, sk = read_images(list_images(ref_dir / name), image_size)
        skipped += sk
        if len(imgs) < min_reference_per_class:
            continue
        ref_labels.append(np.full(len(imgs), len(ref_names), np.int64))
        ref_names.append(name)
        refs.append(imgs)
    if len(ref_names) == 1:
        raise DataError(f"{ref_dir} needs at least 2 class subfolders with readable images, found 1 "
                        f"({ref_names[0]}); remove reference/ to train without a labelled reference set.{layout_hint}")
    test_imgs, test_labels, test_classes, test_paths = [], [], [], []
    if test_dir.is_dir():
        groups = [("normal", 0, list_images(test_dir / "normal") if (test_dir / "normal").is_dir() else []),
                  ("anomaly", 1, list_images(test_dir / "anomaly") if (test_dir / "anomaly").is_dir() else [])]
        loose = [p for p in list_images(test_dir)
                 if p.relative_to(test_dir).parts[0] not in ("normal", "anomaly")]
        groups.append(("unlabelled", -1, loose))
        for name, label, paths in groups:
            imgs, ok, sk = read_images(paths, image_size)
            skipped += sk
            test_imgs.append(imgs)
            test_labels += [label] * len(imgs)
            test_classes += [name] * len(imgs)
            test_paths += [str(p.relative_to(root)) for p in ok]
    test = np.concatenate(test_imgs) if test_imgs else np.zeros((0, image_size, image_size, 3), np.uint8)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable file(s), first: {skipped[0].path}: {skipped[0].reason}",
                      stacklevel=2)
    if not refs:  # no reference/ folder: an empty reference set (see doc_core.data.datasets.REFERENCE_CHOICES)
        refs, ref_labels = [np.zeros((0,) + train.shape[1:], np.uint8)], [np.zeros(0, np.int64)]
    split = OneClassSplit(
        train_normal=train, reference=np.concatenate(refs), reference_labels=np.concatenate(ref_labels),
        reference_names=tuple(ref_names), test_images=test, test_labels=np.asarray(test_labels, np.int64),
        test_classes=tuple(test_classes), name=f"folder: {root.name}",
        info={"source": "folder", "root": str(root), "image_size": image_size, "test_paths": test_paths,
              "skipped": [asdict(s) for s in skipped]},
    )
    return split, skipped
