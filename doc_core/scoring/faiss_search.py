"""Nearest-neighbour search with faiss for large memory banks (the ``backend`` of :class:`KNNScorer`).

``faiss`` (``IndexFlatL2``)
    Exact search, like :func:`doc_core.scoring.knn.knn_distances`, in faiss' blocked BLAS kernels; the same neighbours
    (up to ties and float rounding).
``faiss-ivf`` (``IndexIVFFlat``)
    Approximate: the bank is split into ``nlist`` k-means cells and a query looks in the ``nprobe`` nearest cells
    only. Much faster on large banks of *clustered* features (real image features are); recall is lower on
    structureless data such as uniform random vectors.

faiss is an optional dependency (``pip install faiss-cpu``); it is imported only when one of these backends is used.
"""

from __future__ import annotations

import numpy as np

FAISS_BACKENDS = ("faiss", "faiss-ivf")
INSTALL_HINT = ("the faiss backends need the faiss-cpu package: `.venv/bin/pip install faiss-cpu==1.15.1` (it is "
                "pinned in requirements.txt; `make setup` installs it), or use backend='exact'")


def import_faiss():
    """The ``faiss`` module, or an ImportError that says how to install it."""
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return faiss


def default_nlist(n: int) -> int:
    """IVF cells for a bank of ``n`` vectors: about sqrt(n), at least 1, at most n / 39 (faiss' minimum points/cell)."""
    return int(max(1, min(round(np.sqrt(n)), n // 39)))


def build_index(bank: np.ndarray, backend: str = "faiss", nlist: int | None = None, seed: int = 0,
                train_size: int | None = None):
    """A faiss index holding ``bank``.

    Parameters
    ----------
    bank : np.ndarray, float32, shape (n, d)
    backend : {"faiss", "faiss-ivf"}
    nlist : int, optional
        IVF cells (default :func:`default_nlist`).
    seed : int
        Seeds the k-means training sample and initialisation (IVF).
    train_size : int, optional
        Vectors the IVF k-means is trained on (a random subset; default ``min(n, 64 * nlist)``).

    Returns
    -------
    faiss.Index
        With ``ntotal == n``; faiss keeps its own float32 copy of the bank (another ``n * d * 4`` bytes).
    """
    faiss = import_faiss()
    if backend not in FAISS_BACKENDS:
        raise ValueError(f"unknown faiss backend {backend!r}; choose one of {', '.join(FAISS_BACKENDS)}")
    x = np.ascontiguousarray(bank, np.float32)
    n, d = x.shape
    if backend == "faiss":
        index = faiss.IndexFlatL2(d)
        index.add(x)
        return index
    nlist = default_nlist(n) if nlist is None else int(nlist)
    if not 1 <= nlist <= n:
        raise ValueError(f"nlist must be between 1 and the bank size {n}, got {nlist}")
    quantizer = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
    index.cp.seed = seed
    index.cp.niter = 10
    m = min(n, train_size or 64 * nlist)
    sample = x if m == n else x[np.sort(np.random.default_rng(seed).choice(n, m, replace=False))]
    index.train(np.ascontiguousarray(sample))
    index.add(x)
    return index


def search(index, queries: np.ndarray, k: int, nprobe: int | None = None,
           exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """k nearest bank vectors by Euclidean distance, like :func:`doc_core.scoring.knn.knn_distances`.

    Parameters
    ----------
    index : faiss.Index from :func:`build_index`
    queries : np.ndarray, float32, shape (m, d)
    k : int, 1 <= k <= ntotal (ntotal - 1 with ``exclude_self``)
    nprobe : int, optional
        IVF cells searched per query (ignored for flat indexes).
    exclude_self : bool
        Queries are the bank itself, in order: each row's own entry is skipped (leave-one-out).

    Returns
    -------
    distances : np.ndarray, float32, shape (m, k), ascending (not squared)
    indices : np.ndarray, int64, shape (m, k)

    Raises
    ------
    ValueError
        When an IVF search finds fewer than ``k`` neighbours (raise ``nprobe``).
    """
    n = int(index.ntotal)
    limit = n - 1 if exclude_self else n
    if not 1 <= k <= limit:
        raise ValueError(f"k must be between 1 and {limit} for a bank of {n} vectors, got {k}")
    if nprobe is not None and hasattr(index, "nprobe"):
        index.nprobe = int(min(nprobe, index.nlist))
    q = np.ascontiguousarray(queries, np.float32)
    kk = k + 1 if exclude_self else k
    d2, idx = index.search(q, kk)
    if exclude_self:
        m = len(q)
        is_self = idx == np.arange(m)[:, None]
        drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), kk - 1)
        keep = np.ones_like(is_self)
        keep[np.arange(m), drop] = False
        d2, idx = d2[keep].reshape(m, k), idx[keep].reshape(m, k)
    if (idx < 0).any():
        raise ValueError(f"the IVF search found fewer than k={k} neighbours for some queries; raise nprobe "
                         f"(now {getattr(index, 'nprobe', '-')}) or use backend='faiss'")
    return np.sqrt(np.maximum(d2, 0.0)).astype(np.float32), idx.astype(np.int64)
