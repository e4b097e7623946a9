"""doc_core: Deep One-Class Classification (Perera & Patel, 2019) for image anomaly detection.

The public API::

    from doc_core import DOCDetector, BackboneConfig, TrainConfig, ScorerConfig, SplitConfig, make_split

    split = make_split(SplitConfig.tutorial())
    det = DOCDetector().fit_split(split)
    scores = det.decision_function(split.test_images)   # higher = more anomalous

The names above are imported on first use (module ``__getattr__``), so ``import doc_core.cli`` or
``python -m doc_core --help`` does not load TensorFlow. The package never imports Streamlit.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any submodule imports TensorFlow

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "Backbone": "backbones", "BackboneConfig": "backbones", "WeightsNotFoundError": "backbones",
    "DataError": "data", "OneClassSplit": "data", "SplitConfig": "data", "load_fashion_mnist": "data",
    "load_folder_split": "data", "make_split": "data",
    "DetectorFormatError": "detector", "DOCDetector": "detector", "ScorerConfig": "detector",
    "DOCTrainer": "training", "StepRecord": "training", "TrainConfig": "training", "TrainingDivergedError": "training",
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs only
    from .backbones import Backbone, BackboneConfig, WeightsNotFoundError
    from .data import DataError, OneClassSplit, SplitConfig, load_fashion_mnist, load_folder_split, make_split
    from .detector import DetectorFormatError, DOCDetector, ScorerConfig
    from .training import DOCTrainer, StepRecord, TrainConfig, TrainingDivergedError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
