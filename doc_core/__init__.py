"""doc_core: Deep One-Class Classification (Perera & Patel, 2019) for image anomaly detection.

The public API::

    from doc_core import DOCDetector, BackboneConfig, TrainConfig, ScorerConfig, SplitConfig, make_split

    split = make_split(SplitConfig.tutorial())
    det = DOCDetector().fit_split(split)
    scores = det.decision_function(split.test_images)   # higher = more anomalous

The names above are imported on first use (module ``__getattr__``), so ``import doc_core.cli`` or
``python -m doc_core --help`` does not load TensorFlow. The package never imports Streamlit.

Subpackages, by job:

==============  =====================================================================================================
``data``        image files, Fashion-MNIST, one-class splits, the user's own datasets (folders, zips, uploads)
``model``       backbones, DOC losses and training (also data-parallel), the detector that ties them together
``scoring``     anomaly scores from features: k-NN / LOF per image, the patch memory bank per patch, faiss search
``explain``     Grad-CAM and map overlays, 2-D embeddings of feature sets, what the explorer and gallery show
``workflow``    saved runs, background training jobs, the label-free ``auto`` selection, safe artifacts and folders
``edge``        export to a LiteRT bundle and its standalone (numpy-only) scorer
``evaluation``  metrics, benchmarks (Fashion-MNIST, folders, k-NN scaling), validation, ROC reports, baselines
==============  =====================================================================================================

``cli`` (``python -m doc_core``) is the command line.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any submodule imports TensorFlow

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "Backbone": "model.backbones", "BackboneConfig": "model.backbones", "WeightsNotFoundError": "model.backbones",
    "DataError": "data.images", "OneClassSplit": "data.splits", "SplitConfig": "data.splits",
    "load_fashion_mnist": "data.fashion_mnist", "load_folder_split": "data.splits", "make_split": "data.splits",
    "DetectorFormatError": "model.detector", "DOCDetector": "model.detector", "ScorerConfig": "model.detector",
    "DOCTrainer": "model.training", "StepRecord": "model.training", "TrainConfig": "model.training",
    "TrainingDivergedError": "model.training",
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs only
    from .data import DataError, OneClassSplit, SplitConfig, load_fashion_mnist, load_folder_split, make_split
    from .model.backbones import Backbone, BackboneConfig, WeightsNotFoundError
    from .model.detector import DetectorFormatError, DOCDetector, ScorerConfig
    from .model.training import DOCTrainer, StepRecord, TrainConfig, TrainingDivergedError


def lazy_exports(package: str, exports: dict[str, str]):
    """Module ``__getattr__`` and ``__dir__`` for ``package`` that import each name of ``exports`` (name -> submodule,
    relative to ``package``) on first use and keep it; used by this package and by :mod:`doc_core.explain`."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
