"""Default names of training runs: the dataset and the start time, unique among the names already taken.

A run the user does not name gets ``"<dataset> · <YYYY-MM-DD HH:MM>"``, e.g. ``"Sneaker vs Ankle boot · 2024-05-01
14:03"`` or ``"tiles.zip · 2024-05-01 14:05"``; a second run started in the same minute on the same dataset gets
``" (2)"`` appended, and so on, so default names never repeat. Names the user types are kept as typed.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from doc_core.data import FASHION_MNIST_CLASSES
from doc_core.data.datasets import DatasetSpec

MAX_DATASET_CHARS = 60  # the dataset part of a default name is cut to this many characters


def dataset_short_name(spec: DatasetSpec) -> str:
    """A few words for the dataset: ``"Sneaker vs Ankle boot"``, ``"Sneaker vs rest"``, a zip's file name or a
    folder's last part."""
    if spec.kind == "folder":
        text = spec.label or (Path(spec.root).name if spec.root else "own images")
    else:
        c = spec.split
        names = lambda ids: ", ".join(FASHION_MNIST_CLASSES[i] for i in ids)  # noqa: E731
        rest = "rest" if c.anomaly_classes is None else names(c.anomaly_classes)
        text = f"{names(c.normal_classes)} vs {rest}"
    return text if len(text) <= MAX_DATASET_CHARS else text[:MAX_DATASET_CHARS - 1] + "…"


def default_run_name(spec: DatasetSpec, when: datetime, taken: Iterable[str] = ()) -> str:
    """The name of a run on ``spec`` started at ``when`` (local time, to the minute), different from every name in
    ``taken`` (e.g. the names of the saved runs)."""
    base = f"{dataset_short_name(spec)} · {when:%Y-%m-%d %H:%M}"
    used = set(taken)
    name, n = base, 1
    while name in used:
        n += 1
        name = f"{base} ({n})"
    return name
