"""Scoring: anomaly scores from feature vectors (one per image) or feature maps (one per patch).

================  ===================================================================================================
``knn``           k-NN distance and Local Outlier Factor on pooled feature vectors (:class:`KNNScorer`)
``patch``         PatchCore-style patch memory bank with coreset, image score and anomaly map (:class:`PatchKNNScorer`)
``faiss_search``  optional faiss nearest-neighbour search for large banks (the ``backend`` of both scorers)
================  ===================================================================================================

Higher scores mean more anomalous for every scorer. Only numpy, scipy and scikit-learn are imported here; faiss only
when a faiss backend is used.
"""

from __future__ import annotations

from .knn import KNN_BACKENDS, SCORERS, KNNScorer, LOFScorer, check_backend, knn_distances, make_scorer, subsample_bank
from .patch import PatchKNNScorer

__all__ = ["SCORERS", "KNN_BACKENDS", "KNNScorer", "LOFScorer", "make_scorer", "check_backend", "knn_distances",
           "subsample_bank", "PatchKNNScorer"]
