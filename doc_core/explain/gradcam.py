"""Grad-CAM of the k-NN anomaly score: which parts of an image make a detector call it anomalous.

Classic Grad-CAM explains a class logit. DOC has no logit at test time: an image's anomaly score is the mean
Euclidean distance of its pooled feature vector to its ``k`` nearest features of normal training images (exactly
what :class:`doc_core.scoring.knn.KNNScorer` computes). :class:`GradCAM` differentiates *that score* with respect to a
convolutional feature map ``A`` (shape (h', w', C)) of the backbone, inside one ``tf.function`` that also finds the
neighbours:

* channel weights ``w_c`` = spatial mean of ``d score / d A_c``,
* map = ``ReLU(sum_c w_c A_c)``, upsampled (bilinear) to the input image's size and divided by its maximum.

A bright region is one whose features *push the image away from its nearest normal neighbours* (raise the score);
regions that make the image look more normal are cut off by the ReLU. :func:`overlay` draws a map over its image.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import keras

from ..model.backbones import preprocess
from ..model.detector import DOCDetector
from ..scoring.knn import KNNScorer


class GradCAM:
    """Grad-CAM heatmaps of a fitted detector's k-NN anomaly score.

    Parameters
    ----------
    detector : DOCDetector
        Fitted (or loaded). With a k-NN scorer the score explained is exactly the detector's score, against the same
        (possibly subsampled) bank and ``k``. With another scorer (LOF) the k-NN score with the default ``k`` (5)
        against the detector's memory bank is explained instead; see :attr:`matches_detector`.
    layer : str, optional
        Name of the convolutional layer whose output map ``A`` is explained. Default: the detector's feature layer
        (for MobileNetV2 at 96 px ``block_13_expand_relu``, a 6x6 map of stride 16). Earlier layers give finer but
        noisier maps; the final 3x3 map of MobileNetV2 would be too coarse.

    Notes
    -----
    The memory bank and ``k`` are read when the object is made; make a new one after changing the detector. The
    first :meth:`explain` call (and each new image size) traces a ``tf.function``, which takes a second or two for
    MobileNetV2, so keep the object (e.g. cache it per detector) rather than making one per request.

    Raises
    ------
    ValueError
        ``layer`` is not a layer of the backbone, is not a 4-D (spatial) map, or comes after the feature layer
        (the score does not depend on it).

    Attributes
    ----------
    detector : DOCDetector
    layer : str
        The layer explained.
    k : int
        Neighbours of the explained k-NN score.
    map_shape : tuple of int
        ``(h', w', C)`` of the layer's map at the network's input size.
    matches_detector : bool
        True when the returned scores are the detector's own ``decision_function`` (k-NN scorer).

    Examples
    --------
    >>> cam = GradCAM(detector)
    >>> heatmaps, scores = cam.explain(images)        # (n, h, w) float32 in [0, 1], (n,) float32
    >>> picture = overlay(images[0], heatmaps[0], 0.5)  # (h, w, 3) uint8 RGB
    """

    def __init__(self, detector: DOCDetector, layer: str | None = None) -> None:
        detector._check_fitted()
        self.detector = detector
        backbone = detector.backbone_
        self._config = backbone.config
        model = backbone.model
        feature_layer = backbone.config.feature_layer
        self.layer = feature_layer if layer is None else str(layer)
        names = [lyr.name for lyr in model.layers]
        if self.layer not in names:
            some = [lyr.name for lyr in model.layers if lyr.name.endswith(("relu", "_add"))][-10:]
            raise ValueError(f"layer {self.layer!r} is not a layer of the {backbone.config.name} backbone up to its "
                             f"feature layer {feature_layer!r} (later layers do not affect the anomaly score); "
                             f"choose one of its layers, e.g. {', '.join(some)}")
        if names.index(self.layer) > names.index(feature_layer):
            raise ValueError(f"layer {self.layer!r} comes after the feature layer {feature_layer!r}: the anomaly "
                             "score does not depend on it; choose the feature layer or an earlier one")
        target = model.get_layer(self.layer)
        if isinstance(target, keras.layers.InputLayer):
            raise ValueError(f"layer {self.layer!r} is the input layer; Grad-CAM needs a convolutional feature map")
        if len(target.output.shape) != 4:
            raise ValueError(f"layer {self.layer!r} has output shape {tuple(target.output.shape)}; Grad-CAM needs a "
                             "convolutional feature map (batch, height, width, channels)")
        self.map_shape = tuple(int(d) for d in target.output.shape[1:])
        self._model = keras.Model(model.input, [target.output, model.output], name="gradcam")
        scorer = detector.scorer_
        self.matches_detector = isinstance(scorer, KNNScorer)
        bank = scorer.bank_ if self.matches_detector else detector.bank_
        self.k = int(scorer.k) if self.matches_detector else min(5, len(bank))
        self._bank = tf.constant(np.asarray(bank, np.float32))
        self._bank_sq = tf.reduce_sum(tf.square(self._bank), axis=1)
        self._step = tf.function(self._explain_step, reduce_retracing=True)

    def _explain_step(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = preprocess(images, self._config)
        with tf.GradientTape() as tape:
            tape.watch(x)  # records every op after the input, whether or not its weights are trainable
            fmap, feats = self._model(x, training=False)
            # the k nearest bank vectors, found as KNNScorer finds them (squared distances by matrix product)
            d2_all = (tf.reduce_sum(tf.square(feats), axis=1, keepdims=True) + self._bank_sq[None, :]
                      - 2.0 * tf.matmul(feats, self._bank, transpose_b=True))
            _, idx = tf.math.top_k(-tf.stop_gradient(d2_all), k=self.k)
            diff = feats[:, None, :] - tf.gather(self._bank, idx)  # (b, k, d)
            d2 = tf.reduce_sum(tf.square(diff), axis=-1)
            # sqrt with a zero gradient at distance 0 (an image identical to a bank image) instead of NaN
            safe = tf.maximum(d2, 1e-12)
            dist = tf.where(d2 > 1e-12, tf.sqrt(safe), tf.zeros_like(d2))
            scores = tf.reduce_mean(dist, axis=1)
        # each image's score depends only on its own map (inference-mode BatchNorm), so the gradient of the sum
        # is the per-image gradient
        grads = tape.gradient(scores, fmap)
        if grads is None:
            raise ValueError(f"the anomaly score does not depend on layer {self.layer!r}")
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # (b, 1, 1, C)
        cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1, keepdims=True))  # (b, h', w', 1)
        cam = tf.image.resize(cam, tf.shape(images)[1:3], method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        cam = tf.where(peak > 0, cam / tf.maximum(peak, 1e-30), tf.zeros_like(cam))
        return tf.clip_by_value(cam, 0.0, 1.0), scores

    def explain(self, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps and anomaly scores of a batch of images.

        Parameters
        ----------
        images : np.ndarray, uint8, shape (n, h, w, c) with c in {1, 3}, or (n, h, w) for gray
            Any size; they are resized to the network's input size as for scoring.
        batch_size : int
            Images per ``tf.function`` call (memory grows with it; 64 is fine on a laptop).

        Returns
        -------
        heatmaps : np.ndarray, float32, shape (n, h, w), values in [0, 1]
            At the input images' size. 1 marks the region that raises the anomaly score most. A map that is zero
            everywhere means no region raises the score (every gradient-weighted feature pulls the image towards its
            normal neighbours, or the gradient is zero): there is nothing anomalous for Grad-CAM to point at.
        scores : np.ndarray, float32, shape (n,)
            The k-NN anomaly scores (mean distance to the ``k`` nearest normal features), >= 0, higher = more
            anomalous; equal to ``detector.decision_function(images)`` when :attr:`matches_detector`.
        """
        images = _as_images(images)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        n, h, w = images.shape[:3]
        if n == 0:
            return np.zeros((0, h, w), np.float32), np.zeros(0, np.float32)
        maps, scores = [], []
        for i in range(0, n, batch_size):
            m, s = self._step(tf.convert_to_tensor(images[i:i + batch_size]))
            maps.append(m.numpy())
            scores.append(s.numpy())
        return np.concatenate(maps).astype(np.float32), np.concatenate(scores).astype(np.float32)


def explainable_layers(detector: DOCDetector) -> list[str]:
    """Names of the layers :class:`GradCAM` accepts, input side first, ending with the feature layer.

    These are the layers of the detector's backbone with a spatial (batch, height, width, channels) output, up to
    and including the feature layer (the default).
    """
    detector._check_fitted()
    model, feature_layer = detector.backbone_.model, detector.backbone_.config.feature_layer
    out = []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.InputLayer) and len(layer.output.shape) == 4:
            out.append(layer.name)
        if layer.name == feature_layer:
            break
    return out


def map_to_unit(maps: np.ndarray, low: float, high: float) -> np.ndarray:
    """Anomaly maps in score units -> [0, 1] on one fixed scale, for display.

    Unlike Grad-CAM's per-image normalisation, the same ``low``/``high`` serve every image, so a normal image stays
    cool instead of showing its least normal spot as hot. For a patch detector use ``low`` = the lowest training
    score (``detector.train_scores_.min()``) and ``high`` = the threshold.

    Parameters
    ----------
    maps : np.ndarray, float, any shape
    low, high : float
        Score mapped to 0 and to 1 (``high > low``; values outside are clipped).

    Returns
    -------
    np.ndarray, float32, same shape, values in [0, 1]
    """
    if not (np.isfinite(low) and np.isfinite(high)) or high <= low:
        raise ValueError(f"need finite low < high, got low={low!r}, high={high!r}")
    return np.clip((np.asarray(maps, np.float32) - low) / (high - low), 0.0, 1.0).astype(np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """Draw a heatmap over an image with the JET colormap (blue = 0, red = 1).

    Parameters
    ----------
    image : np.ndarray, uint8, shape (h, w), (h, w, 1) or (h, w, 3) RGB
    heatmap : np.ndarray, float, shape (h', w'), values in [0, 1]
        Resized (bilinear) to (h, w) when its size differs; values outside [0, 1] are clipped.
    opacity : float in [0, 1]
        Weight of the colored heatmap: 0 gives the image unchanged (as RGB), 1 the heatmap alone.

    Returns
    -------
    np.ndarray, uint8, shape (h, w, 3), RGB

    Raises
    ------
    ValueError
        Bad shapes or dtype, non-finite heatmap values, or ``opacity`` outside [0, 1].
    """
    import cv2

    try:
        opacity = float(opacity)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"opacity must be a number in [0, 1], got {opacity!r}") from exc
    if not 0.0 <= opacity <= 1.0:  # also rejects NaN
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must have shape (h, w), (h, w, 1) or (h, w, 3), got {image.shape}")
    heat = np.asarray(heatmap, np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must have shape (h, w), got {heat.shape}")
    if not np.isfinite(heat).all():
        raise ValueError("heatmap contains NaN or infinite values")
    h, w = image.shape[:2]
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    colored = cv2.applyColorMap(np.round(np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)
    out = (1.0 - opacity) * image.astype(np.float32) + opacity * colored.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _as_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape (n, h, w), (n, h, w, 1) or (n, h, w, 3), got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 in [0, 255], got {images.dtype}")
    return images
