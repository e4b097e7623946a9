"""An analyst's labels of one run, laid over that run's images: what the dashboard shows and what the ROC page uses.

The label store (:mod:`doc_core.workflow.labels`) keeps labels by run and image content hash. This module maps them
onto a run's test images (:func:`map_labels`: every test image whose pixels carry a label in that run gets it), names
where an image came from (:func:`image_source`), builds the rows that label a whole selection at once
(:func:`label_items`), turns the labels into the 1 / 0 / -1 array the ROC metrics take (:attr:`RunLabels.codes`)
and states when there are enough of them to stand in for the test set's own labels (:func:`enough`). Nothing here
imports Streamlit; the pages only call these functions.

The "enough labels" rule: at least :data:`MIN_PER_KIND` test images labelled *normal* **and** at least
:data:`MIN_PER_KIND` labelled *anomaly* in this run. *unsure* labels are left out of every metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .labels import LABELS, LabelRecord, image_key

MIN_PER_KIND = 5
"""Test images of each kind (*normal* and *anomaly*) an analyst must have labelled before the ROC page offers their
labels instead of the test set's."""
LABEL_CODES = {"anomaly": 1, "normal": 0, "unsure": -1}
"""An analyst's label as the metrics read it: 1 anomaly, 0 normal, -1 left out (unsure, or no label)."""


def image_keys(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """:func:`doc_core.workflow.labels.image_key` of every image.

    Parameters
    ----------
    images : np.ndarray, uint8, shape (m, H, W, C), or a sequence of (H, W[, C]) uint8 images

    Returns
    -------
    np.ndarray of str, shape (m,)
        64 hex digits each.
    """
    return np.asarray([image_key(np.asarray(im)) for im in images], dtype="<U64")


def image_source(index: int, names: Sequence[str] | np.ndarray | None = None) -> str:
    """Where a test image came from, as stored with its label: ``test:<index>``, or its name for own images.

    Parameters
    ----------
    index : int
        Position in the run's test set (the order of the stored scores).
    names : sequence of str, optional
        :func:`doc_core.explain.gallery.identities` of a folder run's test images (file path below the label folder,
        e.g. ``MT_Crack/exp1_num_123.jpg``); None for Fashion-MNIST, whose images have no file.
    """
    if names is None:
        return f"test:{int(index)}"
    return str(names[int(index)])


@dataclass(frozen=True)
class RunLabels:
    """An analyst's labels of one run, mapped onto its test images.

    Attributes
    ----------
    words : np.ndarray of str, shape (m,)
        Each test image's label: "normal", "anomaly", "unsure", or "" (none).
    notes : np.ndarray of str, shape (m,)
        Each test image's note ("" when none).
    n_other : int
        Labels of this run whose image is not among its test images (e.g. uploaded images on Score images).
    """

    words: np.ndarray
    notes: np.ndarray
    n_other: int = 0

    @property
    def codes(self) -> np.ndarray:
        """int64 (m,): 1 anomaly, 0 normal, -1 unsure or unlabelled (left out by the metrics)."""
        out = np.full(len(self.words), -1, np.int64)
        out[self.words == "anomaly"] = 1
        out[self.words == "normal"] = 0
        return out

    def count(self, label: str) -> int:
        """How many test images carry ``label`` ("normal", "anomaly" or "unsure")."""
        return int(np.sum(self.words == label))

    @property
    def n_normal(self) -> int:
        return self.count("normal")

    @property
    def n_anomaly(self) -> int:
        return self.count("anomaly")

    @property
    def n_unsure(self) -> int:
        return self.count("unsure")

    @property
    def n_labelled(self) -> int:
        """Test images with any label (unsure included)."""
        return int(np.sum(self.words != ""))

    def indices(self, label: str) -> np.ndarray:
        """Test indices (int64, ascending) that carry ``label``."""
        return np.flatnonzero(self.words == label).astype(np.int64)

    def summary(self) -> str:
        """e.g. ``6 normal, 7 anomaly, 2 unsure left out``."""
        return f"{self.n_normal:,} normal, {self.n_anomaly:,} anomaly, {self.n_unsure:,} unsure left out"


def map_labels(records: Iterable[LabelRecord], keys: Sequence[str] | np.ndarray) -> RunLabels:
    """Lay one run's labels over its test images.

    Parameters
    ----------
    records : iterable of LabelRecord
        The run's labels (:meth:`doc_core.workflow.labels.LabelStore.labels`); their ``run_id`` is not checked.
    keys : sequence of str, shape (m,)
        :func:`image_keys` of the run's test images, in the order of its stored scores. Identical test images share a
        key, so they share a label.

    Returns
    -------
    RunLabels
    """
    keys = np.asarray(keys).astype(str)
    words = np.full(len(keys), "", dtype="<U7")
    notes = np.full(len(keys), "", dtype=object)
    where: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        where.setdefault(k, []).append(i)
    other = 0
    for rec in records:
        hits = where.get(rec.image_key)
        if not hits:
            other += 1
            continue
        words[hits] = rec.label
        for i in hits:
            notes[i] = rec.note or ""
    return RunLabels(words=words, notes=notes.astype(str), n_other=other)


def no_labels(m: int) -> RunLabels:
    """:class:`RunLabels` of ``m`` test images none of which is labelled."""
    return RunLabels(words=np.full(m, "", dtype="<U7"), notes=np.full(m, "", dtype=object).astype(str))


def enough(labels: RunLabels, min_per_kind: int = MIN_PER_KIND) -> bool:
    """True when at least ``min_per_kind`` test images are labelled *normal* and as many *anomaly* (the rule under
    which the ROC page offers the analysts' labels)."""
    return labels.n_normal >= min_per_kind and labels.n_anomaly >= min_per_kind


def label_items(indices: Iterable[int], keys: Sequence[str] | np.ndarray, sources: Sequence[str], label: str,
                note: str | None = None) -> list[dict]:
    """The rows that give every image of a selection the same label, for
    :meth:`doc_core.workflow.labels.LabelStore.set_many` (one transaction).

    Parameters
    ----------
    indices : iterable of int
        Positions of the selected images in ``keys`` / ``sources`` (test indices, or positions of uploads).
    keys : sequence of str
        :func:`image_keys` of all images.
    sources : sequence of str
        Where each image came from (:func:`image_source`, or an upload's file name), same length as ``keys``.
    label : {"normal", "anomaly", "unsure"}
    note : str, optional
        The same note for each; empty or None for none.

    Returns
    -------
    list of dict
        One row per distinct image (an image selected twice, or two identical images, give one row), in the order
        of ``indices``.
    """
    if label not in LABELS:
        raise ValueError(f"{label!r} is not a label; use one of {', '.join(LABELS)}")
    note = (note or "").strip() or None
    rows, seen = [], set()
    for i in indices:
        k = str(keys[int(i)])
        if k in seen:
            continue
        seen.add(k)
        rows.append({"image_key": k, "label": label, "note": note, "source": str(sources[int(i)])})
    return rows


def selection_test_indices(rows: Iterable[int], test_idx: np.ndarray) -> np.ndarray:
    """The test indices a selection on the explorer's maps covers.

    Parameters
    ----------
    rows : iterable of int
        Selected rows of the maps: ``0 <= row < len(test_idx)`` are test images, higher rows normal training images
        (which carry no analyst label: they are the normal bank).
    test_idx : np.ndarray, int, shape (n_test,)
        The test index of each test row (:func:`doc_core.explain.gallery.explorer_sample`).

    Returns
    -------
    np.ndarray, int64
        The selected test images' indices, in the order of ``rows``.
    """
    test_idx = np.asarray(test_idx, np.int64)
    rows = np.asarray(list(rows), np.int64)
    rows = rows[(rows >= 0) & (rows < len(test_idx))]
    return test_idx[rows]


def pending_normals(labels: RunLabels, keys: Sequence[str] | np.ndarray, in_bank: Iterable[str]) -> np.ndarray:
    """The test images marked *normal* that are not in the run's normal bank yet: what "Add the images marked normal
    to the normal bank" adds (:func:`doc_core.workflow.bank_growth.add_normals`).

    Parameters
    ----------
    labels : RunLabels
        The run's labels over its test images (:func:`map_labels` of ``keys``).
    keys : sequence of str, shape (m,)
        The test images' keys.
    in_bank : iterable of str
        Keys already added to the bank by the changes in force (``BankChange.added_keys`` of
        :func:`doc_core.workflow.bank_growth.bank_history`).

    Returns
    -------
    np.ndarray, int64
        Test indices, ascending, one per distinct image (identical test images are added once).
    """
    keys = np.asarray(keys).astype(str)
    seen = set(in_bank)
    out = []
    for i in labels.indices("normal"):
        if keys[i] not in seen:
            seen.add(keys[i])
            out.append(int(i))
    return np.asarray(out, np.int64)
