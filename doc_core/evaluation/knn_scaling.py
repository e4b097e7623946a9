"""How k-NN scoring time grows with the memory bank: exact numpy search against faiss (flat and IVF).

Used by ``python -m doc_core benchmark --protocol knn-scaling``. The banks are random Gaussian vectors (the
default dimension 1280 is MobileNetV2's last layer): timing depends only on the sizes, but an IVF index has no
cluster structure to exploit on such data, so its recall here is a pessimistic bound for real image features.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np

from ..scoring.knn import KNNScorer

BACKENDS = ("exact", "faiss", "faiss-ivf")


def random_bank(n: int, dim: int, seed: int = 0, chunk: int = 100_000) -> np.ndarray:
    """Standard normal float32 (n, dim), generated in chunks (no float64 copy of the whole bank)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        out[s:s + chunk] = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
    return out


def knn_scaling(bank_sizes: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000), n_queries: int = 1000,
                dim: int = 1280, k: int = 5, nprobe: int | None = None, backends: tuple[str, ...] = BACKENDS,
                seed: int = 0, log: Callable[[str], None] = print) -> dict:
    """Time :class:`KNNScorer` fitting and scoring for each bank size and backend.

    Parameters
    ----------
    bank_sizes : tuple of int
        Banks of ``n`` random vectors each; memory is about ``n * dim * 4`` bytes for the bank plus as much again
        for a faiss index (they are built one at a time and freed).
    n_queries : int
        Query vectors scored per measurement (one :meth:`KNNScorer.score_samples` call).
    nprobe : int, optional
        IVF cells searched per query (default: KNNScorer's).

    Returns
    -------
    dict
        ``{"protocol": "knn-scaling", "results": [{"bank_size", "bank_mb", BACKEND: {"fit_s", "score_s",
        "ms_per_query", "recall_at_k", ...}}], ...}``; ``recall_at_k`` is the fraction of the exact k nearest
        neighbours found (1.0 = identical neighbour sets).
    """
    try:
        import faiss

        faiss_threads = int(faiss.omp_get_max_threads())
    except ImportError:
        faiss, faiss_threads = None, None
        backends = tuple(b for b in backends if b == "exact")
        log("faiss is not installed: timing the exact backend only (pip install faiss-cpu)")
    queries = random_bank(n_queries, dim, seed=seed + 10_000)
    results = []
    t_start = time.perf_counter()
    for n in bank_sizes:
        bank = random_bank(n, dim, seed=seed)
        row: dict = {"bank_size": int(n), "bank_mb": bank.nbytes / 1e6}
        exact_idx = None
        for backend in backends:
            kwargs = {"nprobe": nprobe} if nprobe is not None else {}
            t0 = time.perf_counter()
            scorer = KNNScorer(k=k, backend=backend, seed=seed, **kwargs).fit(bank)
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            dist, idx = scorer.neighbors(queries, k)  # what score_samples does, keeping the indices
            scores = dist.mean(axis=1)
            score_s = time.perf_counter() - t0
            entry = {"fit_s": fit_s, "score_s": score_s, "ms_per_query": 1000 * score_s / n_queries,
                     "mean_score": float(scores.mean())}
            if backend == "exact":
                exact_idx = idx
            if exact_idx is not None:
                entry["recall_at_k"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(idx, exact_idx)]))
            if backend == "faiss-ivf":
                entry.update(nlist=int(scorer.index_.nlist), nprobe=int(scorer.index_.nprobe))
            row[backend] = entry
            log(f"bank {n:>9,}: {backend:<9} fit {fit_s:7.2f} s, score {score_s:7.2f} s "
                f"({entry['ms_per_query']:.3f} ms/query)" + (f", recall@{k} {entry['recall_at_k']:.3f}"
                                                            if "recall_at_k" in entry else "")
                + f"  [{time.perf_counter() - t_start:.0f} s]")
            del scorer
        del bank
        results.append(row)
    from .benchmark import machine_info

    return {"protocol": "knn-scaling", "dim": dim, "n_queries": n_queries, "k": k, "backends": list(backends),
            "data": "standard normal random vectors (no cluster structure: IVF recall is a lower bound)",
            "results": results, "faiss_threads": faiss_threads, "total_s": time.perf_counter() - t_start,
            "machine": {**machine_info(), "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}}


def format_scaling_table(result: dict) -> str:
    """A plain-text table of a :func:`knn_scaling` result: ms per query (and recall) per bank size and backend."""
    backends = result["backends"]
    lines = [f"k-NN scoring of {result['n_queries']} queries, dim {result['dim']}, k {result['k']} "
             f"(faiss threads: {result['faiss_threads']})",
             f"{'bank size':>10}" + "".join(f"{b + ' ms/q':>16}{'fit s':>8}" for b in backends) + f"{'IVF recall':>12}"]
    for row in result["results"]:
        line = f"{row['bank_size']:>10,}"
        for b in backends:
            line += f"{row[b]['ms_per_query']:>16.3f}{row[b]['fit_s']:>8.2f}"
        ivf = row.get("faiss-ivf", {}).get("recall_at_k")
        lines.append(line + (f"{ivf:>12.3f}" if ivf is not None else f"{'-':>12}"))
    return "\n".join(lines)
