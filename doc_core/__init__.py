"""doc_core: Deep One-Class Classification (Perera & Patel, 2019) for image anomaly detection.

The public API::

    from doc_core import DOCDetector, BackboneConfig, TrainConfig, ScorerConfig, SplitConfig, make_split

    split = make_split(SplitConfig.tutorial())
    det = DOCDetector().fit_split(split)
    scores = det.decision_function(split.test_images)   # higher = more anomalous

The package never imports Streamlit.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .backbones import Backbone, BackboneConfig, WeightsNotFoundError  # noqa: E402
from .data import DataError, OneClassSplit, SplitConfig, load_fashion_mnist, load_folder_split, make_split  # noqa: E402
from .detector import DetectorFormatError, DOCDetector, ScorerConfig  # noqa: E402
from .training import DOCTrainer, StepRecord, TrainConfig, TrainingDivergedError  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Backbone", "BackboneConfig", "WeightsNotFoundError", "DataError", "OneClassSplit", "SplitConfig",
    "load_fashion_mnist", "load_folder_split", "make_split", "DetectorFormatError", "DOCDetector", "ScorerConfig",
    "DOCTrainer", "StepRecord", "TrainConfig", "TrainingDivergedError", "__version__",
]
