"""The faiss backends of KNNScorer: same neighbours as exact search, leave-one-out, IVF, install message."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from doc_core.scoring import KNNScorer, knn_distances, make_scorer

faiss = pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(3000, 64)).astype(np.float32)
    queries = rng.normal(size=(200, 64)).astype(np.float32)
    return bank, queries


def test_flat_neighbours_match_exact(data):
    bank, queries = data
    exact = KNNScorer(k=5).fit(bank)
    fast = KNNScorer(k=5, backend="faiss").fit(bank)
    d_e, i_e = exact.neighbors(queries, 10)
    d_f, i_f = fast.neighbors(queries, 10)
    np.testing.assert_array_equal(i_f, i_e)
    np.testing.assert_allclose(d_f, d_e, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fast.score_samples(queries), exact.score_samples(queries), rtol=1e-4)
    assert fast.score_samples(queries).dtype == np.float32


def test_flat_leave_one_out_matches_exact(data):
    bank, _ = data
    small = bank[:500]
    d_e, i_e = knn_distances(small, small, 5, exclude_self=True)
    fast = KNNScorer(k=5, backend="faiss").fit(small)
    assert not (fast._search(small, 5, exclude_self=True)[1] == np.arange(500)[:, None]).any()
    np.testing.assert_array_equal(fast._search(small, 5, exclude_self=True)[1], i_e)
    np.testing.assert_allclose(fast.training_scores(), KNNScorer(k=5).fit(small).training_scores(), rtol=1e-4)


def test_leave_one_out_with_duplicates(data):
    bank = np.repeat(data[0][:50], 2, axis=0)  # every vector twice: self may not come first
    fast = KNNScorer(k=3, backend="faiss").fit(bank)
    _, idx = fast._search(bank, 3, exclude_self=True)
    assert not (idx == np.arange(100)[:, None]).any()
    # a duplicate's distance is sqrt(rounding error), so the two backends agree only to ~1e-3 there
    np.testing.assert_allclose(fast.training_scores(), KNNScorer(k=3).fit(bank).training_scores(), atol=1e-2)


def test_ivf_is_exact_when_every_cell_is_searched_and_close_otherwise(data):
    bank, queries = data
    _, i_e = KNNScorer(k=5).fit(bank).neighbors(queries, 5)
    full = KNNScorer(k=5, backend="faiss-ivf", nlist=20, nprobe=20).fit(bank)
    np.testing.assert_array_equal(full.neighbors(queries, 5)[1], i_e)
    # clustered data (as real features are): a few cells already find nearly all neighbours
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(20, 64)).astype(np.float32) * 4
    clustered = (centres[rng.integers(0, 20, 3000)] + rng.normal(size=(3000, 64))).astype(np.float32)
    q = (centres[rng.integers(0, 20, 200)] + rng.normal(size=(200, 64))).astype(np.float32)
    _, i_e = knn_distances(q, clustered, 5)
    _, i_a = KNNScorer(k=5, backend="faiss-ivf", nlist=20, nprobe=4).fit(clustered).neighbors(q, 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(i_a, i_e)])
    assert recall > 0.9


def test_backend_validation_and_make_scorer(data):
    bank, queries = data
    with pytest.raises(ValueError, match="backend"):
        KNNScorer(backend="annoy").fit(bank)
    with pytest.raises(ValueError, match="LOF"):
        make_scorer("lof", backend="faiss")
    sc = make_scorer("knn", backend="faiss").fit(bank[:100])
    assert sc.backend == "faiss" and sc.index_.ntotal == 100


def test_missing_faiss_says_how_to_install(monkeypatch, data):
    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        KNNScorer(backend="faiss").fit(data[0][:50])
    KNNScorer().fit(data[0][:50])  # the exact backend never needs faiss


def test_knn_scaling_benchmark_small():
    from doc_core.evaluation.knn_scaling import format_scaling_table, knn_scaling

    res = knn_scaling((200, 2000), n_queries=50, dim=32, k=5, log=lambda m: None)
    assert [r["bank_size"] for r in res["results"]] == [200, 2000]
    for row in res["results"]:
        assert row["exact"]["recall_at_k"] == 1.0 and row["faiss"]["recall_at_k"] == 1.0
        assert 0.0 < row["faiss-ivf"]["recall_at_k"] <= 1.0 and row["faiss-ivf"]["nlist"] >= 1
        assert row["exact"]["mean_score"] == pytest.approx(row["faiss"]["mean_score"], rel=1e-4)
    assert "bank size" in format_scaling_table(res)


def test_knn_scaling_cli(tmp_path):
    import json

    from doc_core.cli import main

    out = tmp_path / "s.json"
    assert main(["benchmark", "--protocol", "knn-scaling", "--bank-sizes", "300", "--queries", "20", "--dim", "16",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["results"][0]["bank_size"] == 300
