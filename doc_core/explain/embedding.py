"""2-D maps of feature sets for the explorer: t-SNE, the three feature sets compared, and nearest normal images.

The explorer shows the same images three times side by side, embedded in 2-D with t-SNE:

* ``"raw"``: the pixels themselves,
* ``"pretrained"``: features of the backbone as it was before DOC training (ImageNet weights),
* ``"doc"``: features of the DOC-trained backbone (what the detector scores).

If DOC training helped, normal images form a tighter group, set further apart from the anomalies, in the last map.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..model.backbones import Backbone, BackboneConfig, WeightsNotFoundError
from ..model.detector import DOCDetector
from ..scoring.knn import knn_distances

FEATURE_SETS = ("raw", "pretrained", "doc")


class TSNECancelled(Exception):
    """:func:`tsne_2d` was asked to stop by its ``progress`` callback."""

FEATURE_SET_LABELS = {"raw": "raw pixels", "pretrained": "pretrained backbone (before DOC)",
                      "doc": "DOC-trained backbone"}


def tsne_2d(features: np.ndarray, seed: int = 0, perplexity: float = 30.0, max_pca_dims: int = 50,
            n_jobs: int = 1, progress: Callable[[float], bool | None] | None = None) -> np.ndarray:
    """2-D t-SNE embedding of feature vectors.

    Each column is standardised (zero mean, unit variance; constant columns become 0), the result is reduced with
    PCA to at most ``max_pca_dims`` dimensions, then embedded with openTSNE (PCA initialisation, Barnes-Hut
    gradients below 10,000 points). If openTSNE is not installed, scikit-learn's ``TSNE`` is used instead (slower,
    and its maps differ from openTSNE's).

    Parameters
    ----------
    features : np.ndarray, shape (n, d)
        Any real features (pixels, pooled CNN features, ...); must be finite.
    seed : int
        Seeds PCA, the neighbour search and the optimisation: the same inputs and seed give the same map.
    perplexity : float
        Roughly the number of neighbours each point attends to; capped at ``(n - 1) / 3`` for small ``n``.
    max_pca_dims : int
        PCA dimensions kept before t-SNE (also capped by ``n`` and ``d``).
    n_jobs : int
        Threads used by openTSNE. 1 is the default because it is the fastest on a busy 2-core machine (measured:
        8 s for 2,000 points with one thread, 32 s with two competing with other work).
    progress : callable, optional
        Called with the fraction of the optimisation done (0 to 1; openTSNE only, every 50 of its 750 iterations).
        If it returns True the optimisation stops at once and :class:`TSNECancelled` is raised.

    Returns
    -------
    np.ndarray, float32, shape (n, 2)
        Coordinates only make sense relative to each other (distances between far-apart groups are not
        meaningful in t-SNE). Fewer than 2 points, or points that are all identical, give zeros.

    Raises
    ------
    ValueError
        ``features`` is not 2-D or holds NaN or infinite values.
    TSNECancelled
        ``progress`` asked to stop.
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D array (n, d), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    n = len(x)
    if n < 2 or x.shape[1] == 0:
        return np.zeros((n, 2), np.float32)
    x = StandardScaler().fit_transform(x)
    if not np.any(x):  # every point is the same
        return np.zeros((n, 2), np.float32)
    dims = max(1, min(max_pca_dims, n, x.shape[1]))
    x = PCA(n_components=dims, svd_solver="full" if max(x.shape) <= 500 else "auto",
            random_state=seed).fit_transform(x)
    perplexity = float(min(perplexity, (n - 1) / 3.0))
    try:
        from openTSNE import TSNE
    except ImportError:
        from sklearn.manifold import TSNE as SkTSNE

        out = SkTSNE(n_components=2, perplexity=min(max(perplexity, 1.0), n - 1.0 - 1e-6), init="pca",
                     random_state=seed, n_jobs=n_jobs).fit_transform(x)
    else:
        tsne = TSNE(n_components=2, perplexity=perplexity, initialization="pca", random_state=seed, n_jobs=n_jobs,
                    verbose=False)
        stopped = [False]
        if progress is not None:
            total, seen = tsne.early_exaggeration_iter + tsne.n_iter, [0]

            def callback(iteration: int, error: float, embedding) -> bool:
                seen[0] += tsne.callbacks_every_iters  # openTSNE counts each of its two phases from 0
                stopped[0] = stopped[0] or bool(progress(min(seen[0] / total, 1.0)))
                return stopped[0]

            tsne.callbacks, tsne.callbacks_every_iters = [callback], 50
        out = np.asarray(tsne.fit(x))
        if stopped[0]:  # openTSNE ends a stopped phase quietly (and may go on to the next): say so
            raise TSNECancelled("the t-SNE was stopped")
    return np.asarray(out, np.float32)


def raw_pixel_features(images: np.ndarray) -> np.ndarray:
    """Pixels as feature vectors: uint8 images (n, h, w[, c]) -> float32 (n, h*w*c) in [0, 1]."""
    images = np.asarray(images)
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def pretrained_backbone(detector: DOCDetector | BackboneConfig) -> Backbone:
    """The backbone of a detector (or of a backbone config) as it was before DOC training: same config, original
    weights.

    For ``weights="imagenet"`` the ImageNet weights are looked up as in
    :func:`doc_core.model.backbones.resolve_weights`; with ``weights=None`` it is a freshly initialised network (for the
    ``tiny`` backbone, the same seeded initialisation that DOC training started from). Building it takes a second or
    two for MobileNetV2, so keep it if you embed several batches.

    Raises
    ------
    WeightsNotFoundError
        The original weights could not be found (nor downloaded); the message says where they were looked for.
    """
    if isinstance(detector, BackboneConfig):
        config = detector
    else:
        detector._check_fitted()
        config = detector.backbone
    try:
        return Backbone(config)
    except WeightsNotFoundError as exc:
        raise WeightsNotFoundError(
            f"the pretrained (before DOC training) features need the {config.name} backbone's original "
            f"weights ({config.weights!r}), which could not be found: {exc}") from exc


def feature_sets(detector: DOCDetector, images: np.ndarray, batch_size: int = 256,
                 pretrained: Backbone | None = None) -> dict[str, np.ndarray]:
    """The three feature sets of the same images that the explorer compares.

    Parameters
    ----------
    detector : DOCDetector
        Fitted.
    images : np.ndarray, uint8, shape (n, h, w, c)
    batch_size : int
    pretrained : Backbone, optional
        A backbone from :func:`pretrained_backbone` to reuse; built here when not given.

    Returns
    -------
    dict
        ``{"raw": (n, h*w*c), "pretrained": (n, k), "doc": (n, k)}``, all float32, in the order of
        :data:`FEATURE_SETS` (display names in :data:`FEATURE_SET_LABELS`).

    Raises
    ------
    WeightsNotFoundError
        The pretrained weights are not available (see :func:`pretrained_backbone`).
    """
    detector._check_fitted()
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if pretrained is None:
        pretrained = pretrained_backbone(detector)
    return {"raw": raw_pixel_features(images),
            "pretrained": pretrained.embed(images, batch_size),
            "doc": detector.embed(images, batch_size)}


def nearest_normal(detector: DOCDetector, features: np.ndarray, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The normal training images closest to each query, in the DOC-trained feature space.

    Unlike ``detector.scorer_.neighbors`` (which indexes the scorer's possibly subsampled bank), the indices here
    always point into ``detector.bank_``, whose rows are the normal training images in the order given to ``fit``.

    Parameters
    ----------
    detector : DOCDetector
        Fitted.
    features : np.ndarray, float32, shape (m, k)
        From ``detector.embed(images)``.
    n : int
        Neighbours per query (at most the bank size).

    Returns
    -------
    distances : np.ndarray, float32, shape (m, n), ascending Euclidean distances
    indices : np.ndarray, int64, shape (m, n), rows of ``detector.bank_`` (= normal training images)
    """
    detector._check_fitted()
    return nearest_in_bank(detector.bank_, features, n)


def nearest_in_bank(bank: np.ndarray, features: np.ndarray, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """:func:`nearest_normal` on a memory bank itself, e.g. one read by :func:`doc_core.model.detector.read_bank`
    without building the network: ``bank`` float32 (b, k), ``features`` (m, k); distances float32 (m, min(n, b))
    ascending, indices int64 (m, min(n, b)) = rows of ``bank``."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or features.shape[1] != bank.shape[1]:
        raise ValueError(f"features must have shape (m, {bank.shape[1]}), got {features.shape}")
    return knn_distances(features, bank, min(n, len(bank)))
