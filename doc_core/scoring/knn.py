"""Anomaly scorers on feature vectors: k-NN distance and Local Outlier Factor.

A scorer is fitted on a *memory bank* of features of normal training images and then scores new features. Higher
scores mean more anomalous for every scorer.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from sklearn.neighbors import LocalOutlierFactor

SCORERS = ("knn", "lof")
KNN_BACKENDS = ("exact", "faiss", "faiss-ivf")
# exact search: at most 2**24 float32 distances (64 MiB) per block of queries; with the int64 partition and the
# temporaries of one block that is about 6 x 64 MiB of working memory, whatever the number of queries
_BLOCK_FLOATS = 2**24


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, k), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def subsample_bank(bank: np.ndarray, max_size: int | None, seed: int = 0) -> np.ndarray:
    """Random subset of at most ``max_size`` rows of ``bank`` (all rows, in order, when ``max_size`` is None)."""
    if max_size is None or len(bank) <= max_size:
        return bank
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")
    idx = np.sort(np.random.default_rng(seed).choice(len(bank), size=max_size, replace=False))
    return bank[idx]


def knn_distances(queries: np.ndarray, bank: np.ndarray, k: int, batch_size: int = 2048,
                  exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k nearest neighbours by batched matrix products.

    Parameters
    ----------
    queries : np.ndarray, shape (m, d), float32
    bank : np.ndarray, shape (n, d), float32
    k : int
        Number of neighbours, ``1 <= k <= n`` (``n - 1`` with ``exclude_self``).
    exclude_self : bool
        Queries are the bank itself (same order): skip each row's own entry (leave-one-out).

    Returns
    -------
    distances : np.ndarray, shape (m, k), float32, ascending
    indices : np.ndarray, shape (m, k), int64, into ``bank``
    """
    n = len(bank)
    limit = n - 1 if exclude_self else n
    if not 1 <= k <= limit:
        raise ValueError(f"k must be between 1 and {limit} for a bank of {n} vectors, got {k}")
    bank_sq = np.einsum("ij,ij->i", bank, bank)
    out_d = np.empty((len(queries), k), np.float32)
    out_i = np.empty((len(queries), k), np.int64)
    kk = k + 1 if exclude_self else k
    for start in range(0, len(queries), batch_size):
        q = queries[start:start + batch_size]
        d2 = np.einsum("ij,ij->i", q, q)[:, None] + bank_sq[None, :] - 2.0 * (q @ bank.T)
        if exclude_self:
            rows = np.arange(len(q))
            d2[rows, start + rows] = np.inf
        part = np.argpartition(d2, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (len(q), 1))
        dpart = np.take_along_axis(d2, part, axis=1)
        order = np.argsort(dpart, axis=1)[:, :k]
        out_i[start:start + len(q)] = np.take_along_axis(part, order, axis=1)
        out_d[start:start + len(q)] = np.sqrt(np.maximum(np.take_along_axis(dpart, order, axis=1), 0.0))
    return out_d, out_i


class Scorer(Protocol):
    """What every scorer offers: ``fit(bank)`` then ``score_samples(x)`` (higher = more anomalous)."""

    def fit(self, bank: np.ndarray) -> "Scorer": ...

    def score_samples(self, features: np.ndarray) -> np.ndarray: ...


class KNNScorer:
    """Mean Euclidean distance to the ``k`` nearest normal training features (DOC's default test-time score).

    Parameters
    ----------
    k : int
        Number of neighbours; 1 is the paper's nearest-neighbour distance. The default 5 is a little more robust to
        stray images in the normal set and scored as well or better on validation splits.
    max_bank_size : int or None
        Keep a random subset of at most this many bank vectors (faster scoring, less memory).
    seed : int
        Seed of that subsampling (and of the IVF k-means).
    backend : {"exact", "faiss", "faiss-ivf"}
        ``exact``: numpy matrix products (:func:`knn_distances`), the default. ``faiss``: exact search with faiss'
        ``IndexFlatL2`` (same neighbours; faster on large banks). ``faiss-ivf``: approximate ``IndexIVFFlat`` for
        very large banks (see :mod:`doc_core.scoring.faiss_search`). The faiss backends need ``pip install faiss-cpu``.
    nlist : int or None
        ``faiss-ivf``: number of k-means cells (None: about sqrt(bank size)).
    nprobe : int
        ``faiss-ivf``: cells searched per query; more = slower and closer to exact.
    """

    def __init__(self, k: int = 5, max_bank_size: int | None = None, seed: int = 0, backend: str = "exact",
                 nlist: int | None = None, nprobe: int = 16) -> None:
        self.k = k
        self.max_bank_size = max_bank_size
        self.seed = seed
        self.backend = backend
        self.nlist = nlist
        self.nprobe = nprobe

    def fit(self, bank: np.ndarray) -> "KNNScorer":
        bank = _as_features(bank, "bank")
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        check_backend("knn", self.backend)
        self.bank_ = subsample_bank(bank, self.max_bank_size, self.seed)
        if len(self.bank_) < self.k:
            raise ValueError(f"k={self.k} needs at least {self.k} bank vectors, got {len(self.bank_)}")
        if self.backend != "exact":
            from .faiss_search import build_index

            self.index_ = build_index(self.bank_, self.backend, self.nlist, self.seed)
        return self

    def _search(self, queries: np.ndarray, k: int, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if self.backend == "exact":
            batch = int(max(1, min(1024, _BLOCK_FLOATS // max(1, len(self.bank_)))))
            return knn_distances(queries, self.bank_, k, batch_size=batch, exclude_self=exclude_self)
        from .faiss_search import search

        return search(self.index_, queries, k, self.nprobe, exclude_self=exclude_self)

    def score_samples(self, features: np.ndarray) -> np.ndarray:
        """Anomaly scores, shape (m,) float32, >= 0; higher = farther from the normal data."""
        d, _ = self._search(_as_features(features, "features"), self.k)
        return d.mean(axis=1)

    def training_scores(self) -> np.ndarray:
        """Leave-one-out scores of the bank itself, shape (n,): what a normal training image scores."""
        d, _ = self._search(self.bank_, self.k, exclude_self=True)
        return d.mean(axis=1)

    def neighbors(self, features: np.ndarray, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Distances and bank indices of the ``n`` nearest normal features, each shape (m, n)."""
        return self._search(_as_features(features, "features"), min(n, len(self.bank_)))


class LOFScorer:
    """Local Outlier Factor of new features relative to the normal bank (as in the Keras write-up).

    The score is ``-LocalOutlierFactor.score_samples``, i.e. the LOF itself: about 1 for inliers, larger for outliers.
    """

    def __init__(self, k: int = 20, max_bank_size: int | None = None, seed: int = 0) -> None:
        self.k = k
        self.max_bank_size = max_bank_size
        self.seed = seed

    def fit(self, bank: np.ndarray) -> "LOFScorer":
        bank = _as_features(bank, "bank")
        self.bank_ = subsample_bank(bank, self.max_bank_size, self.seed)
        if len(self.bank_) <= self.k:
            raise ValueError(f"LOF with k={self.k} needs more than {self.k} bank vectors, got {len(self.bank_)}")
        self.lof_ = LocalOutlierFactor(n_neighbors=self.k, novelty=True).fit(self.bank_)
        return self

    def score_samples(self, features: np.ndarray) -> np.ndarray:
        """LOF scores, shape (m,) float32; about 1 for inliers, higher = more anomalous."""
        return (-self.lof_.score_samples(_as_features(features, "features"))).astype(np.float32)

    def training_scores(self) -> np.ndarray:
        """LOF of each bank vector among the others, shape (n,)."""
        return (-self.lof_.negative_outlier_factor_).astype(np.float32)

    def neighbors(self, features: np.ndarray, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
        return knn_distances(_as_features(features, "features"), self.bank_, min(n, len(self.bank_)))


def check_backend(name: str, backend: str, installed: bool = False) -> None:
    """Raise ValueError unless scorer ``name`` can search with ``backend`` (only "knn" has the faiss backends); with
    ``installed``, also ImportError (with the install command) when a faiss backend's package is missing."""
    if backend not in KNN_BACKENDS:
        raise ValueError(f"unknown k-NN backend {backend!r}; choose one of {', '.join(KNN_BACKENDS)}")
    if backend != "exact" and name != "knn" and not (name == "patch" and backend == "faiss"):
        raise ValueError(f"the {name!r} scorer has no {backend!r} backend (LOF always searches exactly; the patch "
                         "scorer searches exactly, with numpy or faiss; only the k-NN scorer has faiss-ivf)")
    if backend != "exact" and installed:
        from .faiss_search import import_faiss

        import_faiss()


def make_scorer(name: str, k: int | None = None, max_bank_size: int | None = None, seed: int = 0,
                backend: str = "exact") -> KNNScorer | LOFScorer:
    """Scorer by name: ``"knn"`` (default k 5; ``backend`` as in :class:`KNNScorer`) or ``"lof"`` (default k 20)."""
    if name == "knn":
        return KNNScorer(k=5 if k is None else k, max_bank_size=max_bank_size, seed=seed, backend=backend)
    if name == "lof":
        check_backend(name, backend)
        return LOFScorer(k=20 if k is None else k, max_bank_size=max_bank_size, seed=seed)
    raise ValueError(f"unknown scorer {name!r}; choose one of {', '.join(SCORERS)}")
