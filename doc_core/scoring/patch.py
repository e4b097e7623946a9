"""Patch-level anomaly scoring: a memory bank of local features, PatchCore style, and the anomaly maps it gives.

Roth et al. 2022, *Towards Total Recall in Industrial Anomaly Detection* (PatchCore):

1. **Locally aware patch features.** Every position of a CNN feature map is a patch feature;
   :func:`neighbourhood_average` averages each with its neighbours (3 x 3 by default) so a patch also sees a little
   context, and :func:`combine_maps` brings a coarser layer up to a finer layer's grid and stacks the channels.
2. **Memory bank with a coreset.** All patches of the normal training images would be a large bank
   (760 images x 10 x 10 positions = 76,000 patches); :func:`greedy_coreset` keeps a subset that covers them
   (approximate greedy k-center on a random projection), so memory is ``m * c * 4`` bytes for ``m`` patches of
   ``c`` channels (``bank_bytes_``).
3. **Scores.** A patch scores its distance to the nearest bank patch(es); an image scores its most anomalous patch
   (``image_score="max"``, PatchCore), the mean of its top 10, 25 (the default) or 50 % of patches (``"top10"``,
   ``"top25"``, ``"top50"``) or the mean of all of them (``"mean"``), see :func:`aggregate_patch_scores`; the
   patch scores upsampled to the image and smoothed are the anomaly map.

Every score is a Euclidean distance in feature space: higher = more anomalous. Only numpy and scipy are needed;
faiss (optional, ``backend="faiss"``) through :mod:`doc_core.scoring.faiss_search`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter

from .knn import _BLOCK_FLOATS, check_backend, knn_distances

CORESETS = ("greedy", "random")
IMAGE_SCORES = ("max", "top10", "top25", "top50", "mean")
"""How an image's patch scores become its score (:func:`aggregate_patch_scores`)."""
TOP_FRACTIONS = {"top10": 10, "top25": 4, "top50": 2}
"""``topN`` rules: the mean of the ``ceil(p / d)`` highest of an image's ``p`` patch scores, ``d`` given here."""
DEFAULT_IMAGE_SCORE = "top25"
"""The default rule (:class:`doc_core.model.detector.ScorerConfig`, ``train --image-score``, the Training page):
the broadest rule that ``auto``'s label-free synthetic-defect signal does not penalise by more than 0.01 on the
magnetic tiles and on Fashion-MNIST sneakers (``bench/tile_image_score.py``, README "Patch image score")."""
IMAGE_SCORE_WORDS = {"max": "the most anomalous patch", "top10": "the mean of the 10 % most anomalous patches",
                     "top25": "the mean of the 25 % most anomalous patches",
                     "top50": "the mean of the 50 % most anomalous patches", "mean": "the mean of all patches"}
"""Each image-score rule in words, for labels and help texts (what an image's score is taken from)."""
PATCH_BACKENDS = ("exact", "faiss")
# patches kept by default: 10,000 x 576 float32 = 23 MB for MobileNetV2's default layers, about 9 % of the 110,000
# patches of 761 magnetic tiles at 96 px (the greedy coreset's time grows with it)
DEFAULT_BANK_SIZE = 10_000
MAX_CANDIDATES = 200_000
"""Default cap on the patches :func:`greedy_coreset` looks at: larger sets are first subsampled at random to this
many rows (its cost is ``O(rows * m * projection_dim)``)."""
# leave-one-image-out training scores (for the threshold) are computed for at most this many training images, a
# seeded subset: each costs (patches per image) x (bank size) distances, as much as scoring a new image
MAX_TRAIN_SCORES = 300
QUERY_BLOCK_PATCHES = 8192
"""Patches (image positions) processed together when scoring: bounds the working memory for any number of images."""
LOIO_EXTRA = 16
"""Extra neighbours searched per training patch for the leave-one-image-out scores, to skip hits of the same image
(an exact fallback search covers patches whose hits are all from their own image)."""
DEFAULT_SIGMA_AT_224 = 4.0
"""Gaussian smoothing of the anomaly maps, in pixels at 224 x 224 (PatchCore's value); scaled with the map size."""


# ------------------------------------------------------------------------------------------------------------ maps


def aggregate_patch_scores(patch_scores: np.ndarray, how: str = "max") -> np.ndarray:
    """Image scores from patch scores.

    Parameters
    ----------
    patch_scores : np.ndarray, float, shape (n, ...)
        Patch scores of ``n`` images (any number of patches per image, e.g. (n, h, w)); higher = more anomalous.
    how : {"max", "top10", "top25", "top50", "mean"}
        ``max``: the most anomalous patch (PatchCore: sensitive to a defect of one patch, and to one odd normal
        patch); ``top10`` / ``top25`` / ``top50``: the mean of the ``ceil(p / 10)`` / ``ceil(p / 4)`` /
        ``ceil(p / 2)`` highest of the ``p`` patches (:data:`TOP_FRACTIONS`); ``mean``: the mean of all patches (a
        defect must cover a good share of the image to count).

    Returns
    -------
    np.ndarray, float32, shape (n,); higher = more anomalous
    """
    if how not in IMAGE_SCORES:
        raise ValueError(f"unknown image score {how!r}; choose one of {', '.join(IMAGE_SCORES)}")
    arr = np.asarray(patch_scores, dtype=np.float32)
    if arr.ndim < 2:
        raise ValueError(f"patch_scores must have shape (n, patches...), got {arr.shape}")
    if 0 in arr.shape[1:]:
        raise ValueError(f"patch_scores must hold at least one patch per image, got shape {arr.shape}")
    if len(arr) == 0:
        return np.zeros(0, np.float32)
    flat = arr.reshape(len(arr), -1)
    if how == "max":
        return flat.max(axis=1)
    if how == "mean":
        return flat.mean(axis=1, dtype=np.float64).astype(np.float32)
    top = -(-flat.shape[1] // TOP_FRACTIONS[how])
    return np.partition(flat, flat.shape[1] - top, axis=1)[:, -top:].mean(axis=1, dtype=np.float64).astype(np.float32)


def patch_score_maps(patch_scores: np.ndarray, size: tuple[int, int], sigma: float | None = None) -> np.ndarray:
    """Pixel anomaly maps from patch scores: upsampled bilinearly to ``size`` and smoothed with a Gaussian.

    Parameters
    ----------
    patch_scores : np.ndarray, float, shape (n, h, w); higher = more anomalous
    size : (H, W)
        Output size in pixels (the image size). The patch grid is stretched over the whole image (half-pixel
        centres, as ``cv2.resize`` ``INTER_LINEAR``), so patch (i, j) sits over its own receptive-field cell.
    sigma : float or None
        Gaussian standard deviation in output pixels; None = :data:`DEFAULT_SIGMA_AT_224` px at 224 x 224
        (PatchCore), scaled to the output: ``4 * (H + W) / 2 / 224``. 0 = no smoothing.

    Returns
    -------
    np.ndarray, float32, shape (n, H, W); the units of ``patch_scores``
    """
    out_h, out_w = (int(s) for s in size)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"size must be two integers >= 1, got {size!r}")
    if sigma is None:
        sigma = DEFAULT_SIGMA_AT_224 * (out_h + out_w) / 2.0 / 224.0
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    up = resize_bilinear(np.asarray(patch_scores, np.float32), (out_h, out_w))
    if sigma > 0:
        up = gaussian_filter(up, sigma=(0.0, float(sigma), float(sigma)), mode="nearest")
    return up.astype(np.float32, copy=False)


def _as_maps(maps: np.ndarray, name: str, convert: bool = True) -> np.ndarray:
    """Check a stack of feature maps (n, h, w, c); float32 and finite when ``convert``, else only the shape."""
    arr = np.asarray(maps)
    if arr.ndim != 4:
        raise ValueError(f"{name} must be a 4-D array (n, h, w, c) of feature maps, got shape {arr.shape}")
    if min(arr.shape) < 1:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if not convert:
        return arr
    arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values (or values beyond float32's range)")
    return arr


def _check_size(size: int, name: str = "neighbourhood") -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= 1 (1 = no averaging), got {size!r}")
    return int(size)


def neighbourhood_average(maps: np.ndarray, size: int = 3) -> np.ndarray:
    """Mean of each position's ``size x size`` neighbourhood, channel by channel (PatchCore's local aggregation).

    Parameters
    ----------
    maps : np.ndarray, shape (n, h, w, c)
        Feature maps.
    size : int
        Odd window side; 1 returns the maps unchanged (as float32).

    Returns
    -------
    np.ndarray, float32, shape (n, h, w, c)
        Stride 1 and the same (h, w): at the borders the window repeats the edge positions (``mode="nearest"``).
    """
    size = _check_size(size, "size")
    maps = _as_maps(maps, "maps")
    if size == 1:
        return maps
    return uniform_filter(maps, size=(1, size, size, 1), mode="nearest").astype(np.float32, copy=False)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of 1-D linear interpolation with half-pixel centres, clamped at the edges
    (the sampling of ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)`` and ``tf.image.resize(method="bilinear")``)."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    r = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(r, (rows, i0), 1.0 - frac)
    np.add.at(r, (rows, i1), frac)
    return r.astype(np.float32)


def resize_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (n, h, w) or (n, h, w, c) arrays to (H, W), aligned like cv2 ``INTER_LINEAR``.

    Any number of channels (cv2 itself stops at 512). Returns float32 of shape (n, H, W) or (n, H, W, c).
    """
    arr = np.asarray(maps, dtype=np.float32)
    if arr.ndim not in (3, 4):
        raise ValueError(f"maps must be (n, h, w) or (n, h, w, c), got shape {arr.shape}")
    out_h, out_w = (int(s) for s in size)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"size must be two integers >= 1, got {size!r}")
    h, w = arr.shape[1:3]
    if (h, w) == (out_h, out_w):
        return arr
    ry, rx = _interp_matrix(out_h, h), _interp_matrix(out_w, w)
    if arr.ndim == 3:
        return np.matmul(np.matmul(ry, arr), rx.T).astype(np.float32, copy=False)
    tmp = np.einsum("Hh,nhwc->nHwc", ry, arr, optimize=True)
    return np.einsum("Ww,nHwc->nHWc", rx, tmp, optimize=True).astype(np.float32, copy=False)


def combine_maps(maps_list: Sequence[np.ndarray]) -> np.ndarray:
    """Stack feature maps of several layers on the finest grid (PatchCore: layers 2 and 3 of a ResNet).

    Parameters
    ----------
    maps_list : sequence of np.ndarray, each (n, h_i, w_i, c_i)
        The same n images; coarser maps are resized bilinearly (:func:`resize_bilinear`) to the largest h and w.

    Returns
    -------
    np.ndarray, float32, shape (n, max h_i, max w_i, sum c_i)
        The channels in the order of ``maps_list``; plain concatenation when all sizes match.
    """
    if len(maps_list) == 0:
        raise ValueError("combine_maps needs at least one feature map")
    arrays = [_as_maps(m, f"maps_list[{i}]") for i, m in enumerate(maps_list)]
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError(f"every map needs the same number of images, got {[a.shape[0] for a in arrays]}")
    size = (max(a.shape[1] for a in arrays), max(a.shape[2] for a in arrays))
    return np.concatenate([resize_bilinear(a, size) for a in arrays], axis=3)


# --------------------------------------------------------------------------------------------------------- coreset


def _check_subset_args(x: np.ndarray, m: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D array (n, d), got shape {x.shape}")
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= len(x):
        raise ValueError(f"m must be an integer between 1 and the {len(x)} rows of x, got {m!r}")
    return x


def random_subset(x: np.ndarray, m: int, seed: int = 0) -> np.ndarray:
    """``m`` distinct row indices of ``x`` drawn uniformly at random (seeded), int64, ascending."""
    x = _check_subset_args(x, m)
    return np.sort(np.random.default_rng(seed).choice(len(x), size=int(m), replace=False)).astype(np.int64)


def greedy_coreset(x: np.ndarray, m: int, seed: int = 0, projection_dim: int | None = 128,
                   max_candidates: int | None = MAX_CANDIDATES) -> np.ndarray:
    """Approximate greedy k-center coreset (farthest-point sampling), as PatchCore selects its memory bank.

    Starting from a random row, each step adds the row whose distance to its nearest already selected row is
    largest, so the selected rows cover all of ``x`` with the smallest radius greedy search finds (a
    2-approximation of the optimal k-center radius). Distances are measured after a seeded Gaussian random
    projection to ``projection_dim`` dimensions (Johnson-Lindenstrauss: about the same distances, cheaper).

    Parameters
    ----------
    x : np.ndarray, shape (n, d)
        Rows to choose from (finite).
    m : int
        Rows to select, ``1 <= m <= n`` (and ``<= max_candidates``).
    seed : int
        Seeds the candidate subsample, the projection and the first row.
    projection_dim : int or None
        Project to this many dimensions when ``d`` is larger; None = never project.
    max_candidates : int or None
        When ``n`` is larger, only a random subset of this many rows is considered (default
        :data:`MAX_CANDIDATES`); None = all rows.

    Returns
    -------
    np.ndarray, int64, shape (m,)
        Distinct row indices into ``x``, in the order they were selected.

    Notes
    -----
    Time ``O(n' * m * d')`` with ``n' = min(n, max_candidates)`` and ``d' = min(d, projection_dim)`` in float32
    numpy (one matrix-vector product per step); on clustered data the triangle inequality spares most rows of most
    steps (the same selection, up to float32 rounding of near-ties). Memory ``(n' + m) * d' * 4`` bytes for the
    projected rows and the selected ones, plus a few vectors of ``n'``.
    """
    x = _check_subset_args(x, m)
    m = int(m)
    if projection_dim is not None and projection_dim < 1:
        raise ValueError(f"projection_dim must be >= 1 or None, got {projection_dim}")
    rng = np.random.default_rng(seed)
    candidates = None
    if max_candidates is not None and len(x) > max_candidates:
        if m > max_candidates:
            raise ValueError(f"m={m} is larger than max_candidates={max_candidates}")
        candidates = np.sort(rng.choice(len(x), size=int(max_candidates), replace=False))
        x = x[candidates]
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    if projection_dim is not None and x.shape[1] > projection_dim:
        proj = rng.standard_normal((x.shape[1], projection_dim), dtype=np.float32) / np.float32(np.sqrt(projection_dim))
        z = np.ascontiguousarray(x @ proj)
    else:
        z = np.ascontiguousarray(x)
    z = z - z.mean(axis=0, dtype=np.float64).astype(np.float32)  # small norms: accurate |a|^2 + |b|^2 - 2ab
    n = len(z)
    sq = np.einsum("ij,ij->i", z, z)
    tol = np.float32(1e-5 * max(float(sq.max()), 1e-30))  # float32 rounding of the squared distances, with room
    centres = np.empty((m, z.shape[1]), np.float32)
    centres_sq = np.empty(m, np.float32)
    min_d2 = np.full(n, np.inf, np.float32)  # squared distance of each row to its nearest selected row
    owner = np.zeros(n, np.int64)  # the step that selected that nearest row
    selected = np.empty(m, np.int64)
    current = int(rng.integers(n))
    next_check, check_every = 1, 1
    for step in range(m):
        selected[step] = current
        centre = z[current]
        centres[step], centres_sq[step] = centre, sq[current]
        rows = None
        if step >= next_check:
            # Triangle inequality: a row can only come closer to the new centre than to its own nearest centre o if
            # |new - o| < 2 |row - o|; only those rows need measuring. When that spares few rows (structureless
            # data), one product over all rows is cheaper, and the check itself is tried less often (up to every
            # 64th step) until it pays again.
            between = centres_sq[:step] + sq[current] - 2.0 * (centres[:step] @ centre)
            maybe = between[owner] < 4.0 * min_d2 + tol
            if np.count_nonzero(maybe) <= n // 4:
                rows, check_every = np.flatnonzero(maybe), 1
            else:
                check_every = min(64, 2 * check_every)
            next_check = step + check_every
        if rows is None:
            d2 = sq + sq[current] - 2.0 * (z @ centre)
            closer = d2 < min_d2
            min_d2[closer] = d2[closer]
            owner[closer] = step
        else:
            d2 = sq[rows] + sq[current] - 2.0 * (z[rows] @ centre)
            closer = d2 < min_d2[rows]
            min_d2[rows[closer]] = d2[closer]
            owner[rows[closer]] = step
        owner[current] = step
        min_d2[current] = -np.inf  # never again, even among exact duplicates
        current = int(np.argmax(min_d2))
    return selected if candidates is None else candidates[selected]


# ---------------------------------------------------------------------------------------------------------- scorer


class PatchKNNScorer:
    """Patch k-NN anomaly scorer with a coreset memory bank (PatchCore): image score = its most anomalous patch.

    Parameters
    ----------
    k : int
        Nearest bank patches averaged into a patch's score (PatchCore: 1).
    image_score : {"max", "top10", "top25", "top50", "mean"}
        How an image's patch scores become its score (:func:`aggregate_patch_scores`); the training scores use the
        same rule.
    max_bank_size : int or None
        Patches kept in the memory bank (None = every training patch). Memory: ``max_bank_size * c * 4`` bytes.
    coreset : {"greedy", "random"}
        How the bank is chosen when there are more patches: :func:`greedy_coreset` (covers the normal patches,
        PatchCore's choice) or :func:`random_subset`.
    neighbourhood : int
        Odd side of the :func:`neighbourhood_average` window applied to every map (training and scored); 1 = none.
    seed : int
        Seeds the coreset and the subset of training images scored.
    max_train_scores : int or None
        Training images whose leave-one-image-out scores are computed (None = all); default
        :data:`MAX_TRAIN_SCORES`.
    backend : {"exact", "faiss"}
        ``exact``: numpy (:func:`doc_core.scoring.knn.knn_distances`); ``faiss``: exact flat faiss index
        (:mod:`doc_core.scoring.faiss_search`, needs faiss-cpu). Both give the same scores up to float rounding.

    Attributes (after :meth:`fit`)
    ------------------------------
    bank_ : np.ndarray, float32, (m, c)
        The kept (neighbourhood-averaged) training patches.
    bank_image_ : np.ndarray, int64, (m,)
        Index of the training image each bank patch comes from.
    map_shape_ : tuple[int, int]
        (h, w) of the training maps; scored maps must match.
    train_scores_ : np.ndarray, float32, (n',)
        Leave-one-image-out scores of the training images: each patch is scored against the bank patches of the
        *other* images only, so a training image scores like an unseen normal image. For at most
        ``max_train_scores`` images (a seeded subset when there are more; ``n' = min(n, max_train_scores)``).
    n_train_ : int
        Number of training images fitted.
    bank_bytes_ : int
        ``bank_.nbytes = m * c * 4`` (``bank_image_`` adds ``m * 8``; the faiss backend keeps another copy of the bank).

    Notes
    -----
    Scoring works on blocks of at most :data:`QUERY_BLOCK_PATCHES` patches (whole images, at least one): working
    memory is about ``2 * block * c * 4`` bytes for the block's maps plus, for the exact backend, about 6 x 64 MiB for
    the distance blocks of :func:`doc_core.scoring.knn.knn_distances`, whatever the number of images.
    :meth:`fit` holds all ``n * h * w`` training patches (``n * h * w * c * 4`` bytes) while it selects the bank.
    """

    def __init__(self, k: int = 1, max_bank_size: int | None = DEFAULT_BANK_SIZE, coreset: str = "greedy",
                 neighbourhood: int = 3, seed: int = 0, backend: str = "exact",
                 max_train_scores: int | None = MAX_TRAIN_SCORES, image_score: str = "max") -> None:
        self.k = k
        self.image_score = image_score
        self.max_bank_size = max_bank_size
        self.coreset = coreset
        self.neighbourhood = neighbourhood
        self.seed = seed
        self.backend = backend
        self.max_train_scores = max_train_scores

    # -- configuration ------------------------------------------------------------------------------------------

    def get_config(self) -> dict:
        """The constructor arguments, JSON-serialisable (for :meth:`from_arrays`)."""
        return {"k": self.k, "max_bank_size": self.max_bank_size, "coreset": self.coreset,
                "neighbourhood": self.neighbourhood, "seed": self.seed, "backend": self.backend,
                "max_train_scores": self.max_train_scores, "image_score": self.image_score}

    def _check_config(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")
        if self.max_bank_size is not None and (isinstance(self.max_bank_size, bool)
                                               or not isinstance(self.max_bank_size, (int, np.integer))
                                               or self.max_bank_size < 1):
            raise ValueError(f"max_bank_size must be an integer >= 1 or None, got {self.max_bank_size!r}")
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(f"unknown image score {self.image_score!r}; choose one of {', '.join(IMAGE_SCORES)}")
        if self.coreset not in CORESETS:
            raise ValueError(f"unknown coreset {self.coreset!r}; choose one of {', '.join(CORESETS)}")
        if self.max_train_scores is not None and (isinstance(self.max_train_scores, bool)
                                                  or not isinstance(self.max_train_scores, (int, np.integer))
                                                  or self.max_train_scores < 1):
            raise ValueError(f"max_train_scores must be an integer >= 1 or None, got {self.max_train_scores!r}")
        _check_size(self.neighbourhood)
        check_backend("knn", self.backend)
        if self.backend not in PATCH_BACKENDS:
            raise ValueError(f"the patch scorer has no {self.backend!r} backend; choose one of "
                             f"{', '.join(PATCH_BACKENDS)} (its banks are small enough for exact search)")

    # -- fitting ------------------------------------------------------------------------------------------------

    def fit(self, maps: np.ndarray) -> "PatchKNNScorer":
        """Build the memory bank from feature maps of normal images.

        Parameters
        ----------
        maps : np.ndarray, float, shape (n, h, w, c)
            Feature maps of ``n >= 2`` normal training images (finite).

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Bad config or maps, or too few patches from other images for the leave-one-image-out scores.
        """
        self._check_config()
        maps = _as_maps(maps, "maps")
        n, h, w, c = maps.shape
        feats = neighbourhood_average(maps, self.neighbourhood).reshape(n * h * w, c)
        image_of = np.repeat(np.arange(n, dtype=np.int64), h * w)
        if self.max_bank_size is None or len(feats) <= self.max_bank_size:
            keep = np.arange(len(feats), dtype=np.int64)
        elif self.coreset == "greedy":
            keep = np.sort(greedy_coreset(feats, int(self.max_bank_size), seed=self.seed))
        else:
            keep = random_subset(feats, int(self.max_bank_size), seed=self.seed)
        bank = np.ascontiguousarray(feats[keep])
        bank_image = image_of[keep]
        self._check_loio(bank_image, n)
        self._set_state(bank, bank_image, (h, w))
        self.n_train_ = n
        scored = np.arange(n, dtype=np.int64)
        if self.max_train_scores is not None and n > self.max_train_scores:  # bounded cost: a seeded subset
            scored = np.sort(np.random.default_rng(self.seed).choice(n, int(self.max_train_scores), replace=False))
        sel = feats.reshape(n, h * w, c)[scored].reshape(-1, c)
        self.train_scores_ = self._loio_scores(sel, np.repeat(scored, h * w), len(scored), h * w)
        return self

    def _check_loio(self, bank_image: np.ndarray, n: int) -> None:
        counts = np.bincount(bank_image, minlength=n)
        fewest = int(len(bank_image) - counts.max())
        if fewest < self.k:
            raise ValueError(f"the leave-one-image-out training scores need at least k={self.k} bank patches from "
                             f"other images for every training image, but one image has only {fewest} (fit on at "
                             "least 2 images, with a larger max_bank_size or a smaller k)")

    def _set_state(self, bank: np.ndarray, bank_image: np.ndarray, map_shape: tuple[int, int]) -> None:
        self.bank_ = bank
        self.bank_image_ = bank_image
        self.map_shape_ = (int(map_shape[0]), int(map_shape[1]))
        self.bank_bytes_ = int(bank.nbytes)
        if self.backend == "faiss":
            from .faiss_search import build_index

            self.index_ = build_index(bank, "faiss")

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest bank patches of float32 queries (q, c): distances (q, k) ascending and bank indices."""
        if self.backend == "faiss":
            from .faiss_search import search

            return search(self.index_, queries, k)
        batch = int(max(1, min(1024, _BLOCK_FLOATS // max(1, len(self.bank_)))))
        return knn_distances(queries, self.bank_, k, batch_size=batch)

    def _loio_scores(self, feats: np.ndarray, image_of: np.ndarray, n: int, per_image: int) -> np.ndarray:
        """Leave-one-image-out image scores (n,) float32 of the training patches ``feats`` (n * per_image, c)."""
        k = self.k
        kk = min(len(self.bank_), k + LOIO_EXTRA)
        patch = np.empty(len(feats), np.float32)
        step = max(1, QUERY_BLOCK_PATCHES // per_image) * per_image
        for start in range(0, len(feats), step):
            q, img = feats[start:start + step], image_of[start:start + step]
            d, idx = self._search(q, kk)
            other = self.bank_image_[idx] != img[:, None]
            first_other = np.argsort(~other, axis=1, kind="stable")[:, :k]  # the k nearest hits of other images
            out = np.take_along_axis(d, first_other, axis=1).mean(axis=1)
            short = other.sum(axis=1) < k
            for i in np.unique(img[short]):  # (almost) all hits from the own image: search the other images only
                rows = np.flatnonzero(short & (img == i))
                others = self.bank_[self.bank_image_ != i]
                d_exact, _ = knn_distances(q[rows], others, k,
                                           batch_size=int(max(1, min(1024, _BLOCK_FLOATS // len(others)))))
                out[rows] = d_exact.mean(axis=1)
            patch[start:start + len(q)] = out
        return aggregate_patch_scores(patch.reshape(n, per_image), self.image_score)

    # -- scoring ------------------------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "bank_"):
            raise ValueError("this PatchKNNScorer is not fitted yet; call fit(maps) or from_arrays(...) first")

    def patch_scores(self, maps: np.ndarray) -> np.ndarray:
        """Anomaly score of every patch: mean distance of its (neighbourhood-averaged) feature to its ``k``
        nearest bank patches.

        Parameters
        ----------
        maps : np.ndarray, float, shape (n, h, w, c)
            Same (h, w) and c as the training maps.

        Returns
        -------
        np.ndarray, float32, shape (n, h, w), >= 0; higher = more anomalous
        """
        self._check_fitted()
        arr = _as_maps(maps, "maps", convert=False)
        n, h, w, c = arr.shape
        if c != self.bank_.shape[1]:
            raise ValueError(f"maps have {c} channels but the scorer was fitted on {self.bank_.shape[1]}")
        if (h, w) != self.map_shape_:
            raise ValueError(f"maps are {h}x{w} positions but the scorer was fitted on "
                             f"{self.map_shape_[0]}x{self.map_shape_[1]}")
        out = np.empty((n, h, w), np.float32)
        step = max(1, QUERY_BLOCK_PATCHES // (h * w))
        for start in range(0, n, step):
            block = neighbourhood_average(_as_maps(arr[start:start + step], "maps"), self.neighbourhood)
            d, _ = self._search(block.reshape(-1, c), self.k)
            out[start:start + len(block)] = d.mean(axis=1).reshape(len(block), h, w)
        return out

    def score_samples(self, maps: np.ndarray) -> np.ndarray:
        """Image anomaly scores, shape (n,) float32: each image's patch scores aggregated by ``image_score``
        (default: the largest)."""
        return aggregate_patch_scores(self.patch_scores(maps), self.image_score)

    def training_scores(self) -> np.ndarray:
        """Leave-one-image-out scores of the training images, shape (n,) float32 (for thresholds)."""
        self._check_fitted()
        return self.train_scores_.copy()

    def with_images(self, maps: np.ndarray) -> "PatchKNNScorer":
        """A new fitted scorer whose bank also holds patches of more normal images (this one is not changed).

        The bank stays bounded as at :meth:`fit`: of the ``n * h * w`` new patches it keeps the same share the bank
        holds of the patches of the images fitted so far, ``ceil(n * h * w * m / (n_train_ * h * w))`` (all of them
        when the bank holds every patch), chosen from the new patches by this scorer's coreset
        (:func:`greedy_coreset` or :func:`random_subset`, seeded). The new images are numbered after the fitted
        ones (``bank_image_``). Their leave-one-image-out scores are appended to ``train_scores_``; the scores of the
        images fitted before are kept, not recomputed (their patches are not stored): with more bank patches they
        could only be lower, so the kept ones are upper bounds.

        Parameters
        ----------
        maps : np.ndarray, float, shape (n, h, w, c)
            Feature maps of ``n >= 1`` normal images; same (h, w) and c as the bank.

        Returns
        -------
        PatchKNNScorer
            Fitted; ``n_train_`` grown by ``n``.
        """
        self._check_fitted()
        maps = _as_maps(maps, "maps")
        n, h, w, c = maps.shape
        if c != self.bank_.shape[1] or (h, w) != self.map_shape_:
            raise ValueError(f"maps are {h}x{w}x{c} but the bank holds {self.map_shape_[0]}x{self.map_shape_[1]}x"
                             f"{self.bank_.shape[1]} patches")
        n_before = int(getattr(self, "n_train_", len(self.train_scores_)))
        feats = neighbourhood_average(maps, self.neighbourhood).reshape(n * h * w, c)
        image_of = n_before + np.repeat(np.arange(n, dtype=np.int64), h * w)
        keep_n = min(len(feats), int(np.ceil(len(feats) * len(self.bank_) / max(1, n_before * h * w) - 1e-9)))
        keep_n = max(1, keep_n)
        if keep_n >= len(feats):
            keep = np.arange(len(feats), dtype=np.int64)
        elif self.coreset == "greedy":
            keep = np.sort(greedy_coreset(feats, keep_n, seed=self.seed))
        else:
            keep = random_subset(feats, keep_n, seed=self.seed)
        other = type(self)(**self.get_config())
        other._set_state(np.ascontiguousarray(np.concatenate([self.bank_, feats[keep]])),
                         np.concatenate([self.bank_image_, image_of[keep]]), self.map_shape_)
        other.n_train_ = n_before + n
        added = other._loio_scores(feats, image_of, n, h * w)
        other.train_scores_ = np.concatenate([self.train_scores_, added]).astype(np.float32)
        return other

    def anomaly_maps(self, maps: np.ndarray, size: tuple[int, int] = (224, 224),
                     sigma: float | None = None) -> np.ndarray:
        """Pixel anomaly maps: the :meth:`patch_scores` of ``maps`` through :func:`patch_score_maps` (upsampled
        bilinearly to ``size`` and smoothed with a Gaussian of ``sigma`` output pixels; None = 4 px at 224 x 224).

        Parameters
        ----------
        maps : np.ndarray, shape (n, h, w, c)
        size : (H, W)
        sigma : float or None

        Returns
        -------
        np.ndarray, float32, shape (n, H, W); same units as :meth:`patch_scores` (higher = more anomalous)
        """
        return patch_score_maps(self.patch_scores(maps), size, sigma)

    # -- saving -------------------------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted state as plain numpy arrays, for ``np.savez`` (no pickle): ``bank_`` float32 (m, c),
        ``bank_image_`` int64 (m,), ``train_scores_`` float32 (n,), ``map_shape_`` int64 (2,)."""
        self._check_fitted()
        return {"bank_": self.bank_, "bank_image_": self.bank_image_, "train_scores_": self.train_scores_,
                "map_shape_": np.asarray(self.map_shape_, np.int64),
                "n_train_": np.asarray([getattr(self, "n_train_", len(self.train_scores_))], np.int64)}

    @classmethod
    def from_arrays(cls, config: dict, arrays: dict) -> "PatchKNNScorer":
        """A fitted scorer from :meth:`get_config` and :meth:`to_arrays` (e.g. read with
        ``np.load(path, allow_pickle=False)``); the arrays are checked, nothing is executed.

        Raises
        ------
        ValueError
            Unknown config keys, a bad config, missing arrays or arrays of the wrong dtype, shape or values.
        """
        if not isinstance(config, dict):
            raise ValueError(f"config must be a dict, got {type(config).__name__}")
        unknown = set(config) - set(cls().get_config())
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        scorer = cls(**config)
        scorer._check_config()
        missing = [key for key in ("bank_", "bank_image_", "train_scores_", "map_shape_") if key not in arrays]
        if missing:
            raise ValueError(f"missing arrays: {', '.join(missing)}")
        raw = {key: np.asarray(arrays[key]) for key in ("bank_", "bank_image_", "train_scores_", "map_shape_")}
        for key, kind in (("bank_", "f"), ("bank_image_", "iu"), ("train_scores_", "f"), ("map_shape_", "iu")):
            if raw[key].dtype.kind not in kind:
                raise ValueError(f"{key} has dtype {raw[key].dtype}, expected {'float' if kind == 'f' else 'int'}")
        bank = np.ascontiguousarray(raw["bank_"], np.float32)
        bank_image = raw["bank_image_"].astype(np.int64)
        train_scores = raw["train_scores_"].astype(np.float32)
        map_shape = raw["map_shape_"].astype(np.int64)
        if bank.ndim != 2 or min(bank.shape) < 1 or not np.isfinite(bank).all():
            raise ValueError(f"bank_ must be a finite non-empty (m, c) array, got shape {bank.shape}")
        if bank_image.shape != (len(bank),):
            raise ValueError(f"bank_image_ must have shape ({len(bank)},), got {bank_image.shape}")
        if train_scores.ndim != 1 or len(train_scores) < 1 or not np.isfinite(train_scores).all():
            raise ValueError(f"train_scores_ must be a finite non-empty (n,) array, got shape {train_scores.shape}")
        n_train = int(np.asarray(arrays["n_train_"]).reshape(-1)[0]) if "n_train_" in arrays else len(train_scores)
        if not len(train_scores) <= n_train <= 10**9:
            raise ValueError(f"n_train_ must be at least the {len(train_scores)} training scores, got {n_train}")
        if bank_image.min() < 0 or bank_image.max() >= n_train:
            raise ValueError(f"bank_image_ must index the {n_train} training images")
        if map_shape.shape != (2,) or map_shape.min() < 1:
            raise ValueError(f"map_shape_ must be two integers >= 1, got {map_shape.tolist()}")
        if len(bank) < scorer.k:
            raise ValueError(f"k={scorer.k} needs at least {scorer.k} bank patches, got {len(bank)}")
        scorer._set_state(bank, bank_image, (int(map_shape[0]), int(map_shape[1])))
        scorer.train_scores_ = train_scores
        scorer.n_train_ = n_train
        return scorer
