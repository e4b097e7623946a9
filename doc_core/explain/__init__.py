"""Explain: why a detector calls an image anomalous, and what the feature space looks like.

=================  ==================================================================================================
``gradcam``        Grad-CAM of the k-NN anomaly score (:class:`GradCAM`), :func:`overlay`, :func:`map_to_unit`
``embedding``      2-D t-SNE maps of raw, pretrained and DOC features, nearest normal images
``gallery``        thumbnails, atlases, ranks and upload decoding for the explorer and the ranked-anomalies page
``explorer_maps``  the explorer's three maps of a run: which points, computed in a background job, saved with the run
=================  ==================================================================================================

The patch scorer's defect maps come from :meth:`doc_core.scoring.patch.PatchKNNScorer.anomaly_maps` (through
:meth:`doc_core.model.detector.DOCDetector.anomaly_maps`) and are drawn with the same :func:`overlay` and
:func:`map_to_unit` as Grad-CAM.

``GradCAM``, ``explainable_layers``, ``overlay`` and ``map_to_unit`` are importable from here; they are imported on
first use, so ``from doc_core.explain.gallery import ...`` does not load TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import lazy_exports

_EXPORTS = {"GradCAM": "gradcam", "explainable_layers": "gradcam", "map_to_unit": "gradcam", "overlay": "gradcam"}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs only
    from .gradcam import GradCAM, explainable_layers, map_to_unit, overlay


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
