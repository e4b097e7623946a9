"""Tests of doc_core.scoring.knn: exact k-NN against brute force, the scorers and their factory."""

from __future__ import annotations

import numpy as np
import pytest

from doc_core.scoring import KNNScorer, LOFScorer, knn_distances, make_scorer, subsample_bank


def brute_knn(queries: np.ndarray, bank: np.ndarray, k: int, exclude_self: bool = False):
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - bank[None, :, :]) ** 2).sum(-1))
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, axis=1), idx


def assert_knn_equal(got, expected, queries, bank):
    d, idx = got
    d_ref, _ = expected
    assert d.dtype == np.float32 and idx.dtype == np.int64 and d.shape == d_ref.shape == idx.shape
    np.testing.assert_allclose(d, d_ref, rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(d, axis=1) >= 0)
    # the returned indices really are at the returned distances (robust to near-ties in the order)
    at_idx = np.sqrt(((queries[:, None, :].astype(np.float64) - bank[idx]) ** 2).sum(-1))
    np.testing.assert_allclose(d, at_idx, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m,n,dim,k", [(1, 5, 3, 1), (13, 40, 8, 1), (13, 40, 8, 5), (20, 20, 4, 20), (7, 3, 2, 3)])
def test_knn_matches_brute_force(m, n, dim, k):
    rng = np.random.default_rng(m + n + dim + k)
    q = rng.normal(size=(m, dim)).astype(np.float32)
    bank = rng.normal(size=(n, dim)).astype(np.float32)
    got = knn_distances(q, bank, k)
    expected = brute_knn(q, bank, k)
    assert_knn_equal(got, expected, q, bank)
    if k == 1 or m * n < 500:
        np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize("batch_size", [1, 3, 7, 64])
@pytest.mark.parametrize("k", [1, 4, 29])
def test_knn_exclude_self_leave_one_out_across_batches(batch_size, k):
    rng = np.random.default_rng(k)
    bank = rng.normal(size=(30, 6)).astype(np.float32)
    got = knn_distances(bank, bank, k, batch_size=batch_size, exclude_self=True)
    expected = brute_knn(bank, bank, k, exclude_self=True)
    assert_knn_equal(got, expected, bank, bank)
    assert not np.any(got[1] == np.arange(30)[:, None])


def test_knn_exclude_self_keeps_duplicates_of_self():
    bank = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]], np.float32)
    d, idx = knn_distances(bank, bank, 1, exclude_self=True)
    np.testing.assert_array_equal(idx[:, 0], [1, 0, 0])
    np.testing.assert_allclose(d[:, 0], [0.0, 0.0, np.sqrt(50.0)], atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 4, 5, 1000])
def test_knn_batching_does_not_change_results(batch_size):
    rng = np.random.default_rng(11)
    q = rng.normal(size=(17, 5)).astype(np.float32)
    bank = rng.normal(size=(25, 5)).astype(np.float32)
    ref = knn_distances(q, bank, 3, batch_size=10_000)
    got = knn_distances(q, bank, 3, batch_size=batch_size)
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)
    assert_knn_equal(got, brute_knn(q, bank, 3), q, bank)


def test_knn_distance_zero_for_bank_member():
    rng = np.random.default_rng(2)
    bank = (100 * rng.normal(size=(10, 16))).astype(np.float32)
    d, idx = knn_distances(bank[3:4], bank, 1)
    assert idx[0, 0] == 3 and d[0, 0] >= 0.0 and d[0, 0] < 1e-2


@pytest.mark.parametrize("k,exclude_self", [(0, False), (6, False), (5, True), (-1, False)])
def test_knn_rejects_bad_k(k, exclude_self):
    bank = np.zeros((5, 2), np.float32)
    with pytest.raises(ValueError, match="k must be between"):
        knn_distances(bank, bank, k, exclude_self=exclude_self)


def test_knn_scorer_scores_far_point_higher():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(100, 8)).astype(np.float32)
    queries = np.stack([np.zeros(8), np.full(8, 6.0)]).astype(np.float32)
    for k in (1, 5):
        scorer = KNNScorer(k=k).fit(bank)
        s = scorer.score_samples(queries)
        assert s.shape == (2,) and s.dtype == np.float32
        assert s[1] > s[0] + 5
        expected = brute_knn(queries, bank, k)[0].mean(axis=1)
        np.testing.assert_allclose(s, expected, rtol=1e-4)


def test_knn_scorer_training_scores_are_leave_one_out():
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(40, 4)).astype(np.float32)
    scorer = KNNScorer(k=3).fit(bank)
    expected = brute_knn(bank, bank, 3, exclude_self=True)[0].mean(axis=1)
    np.testing.assert_allclose(scorer.training_scores(), expected, rtol=1e-4, atol=1e-5)
    assert np.all(scorer.training_scores() > 0)
    d, idx = scorer.neighbors(bank[:2], n=100)
    assert d.shape == idx.shape == (2, 40)


def test_subsampling_respects_max_bank_size_and_seed():
    bank = np.arange(200, dtype=np.float32).reshape(100, 2)
    a = KNNScorer(max_bank_size=30, seed=1).fit(bank).bank_
    b = KNNScorer(max_bank_size=30, seed=1).fit(bank).bank_
    c = KNNScorer(max_bank_size=30, seed=2).fit(bank).bank_
    assert a.shape == (30, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    rows = a[:, 0] / 2
    assert np.all(np.diff(rows) > 0) and np.all(np.isin(a, bank))  # distinct rows of the bank, in order
    np.testing.assert_array_equal(KNNScorer(max_bank_size=None).fit(bank).bank_, bank)
    np.testing.assert_array_equal(subsample_bank(bank, 500), bank)
    assert LOFScorer(k=5, max_bank_size=30, seed=1).fit(bank + 0.01 * np.arange(200).reshape(100, 2)).bank_.shape \
        == (30, 2)
    with pytest.raises(ValueError):
        subsample_bank(bank, 0)


def test_lof_about_one_for_inliers_and_larger_for_outlier():
    rng = np.random.default_rng(3)
    bank = rng.normal(size=(300, 3)).astype(np.float32)
    inliers = rng.normal(scale=0.5, size=(20, 3)).astype(np.float32)
    outlier = np.full((1, 3), 8.0, np.float32)
    scorer = LOFScorer(k=20).fit(bank)
    s_in = scorer.score_samples(inliers)
    s_out = scorer.score_samples(outlier)
    assert s_in.dtype == np.float32
    assert np.all(np.abs(s_in - 1.0) < 0.3)
    assert s_out[0] > 2.0
    train = scorer.training_scores()
    assert train.shape == (300,) and np.median(train) == pytest.approx(1.0, abs=0.1)


def test_make_scorer():
    assert isinstance(make_scorer("knn"), KNNScorer) and make_scorer("knn").k == 5
    assert isinstance(make_scorer("lof"), LOFScorer) and make_scorer("lof").k == 20
    s = make_scorer("knn", k=4, max_bank_size=10, seed=3)
    assert (s.k, s.max_bank_size, s.seed) == (4, 10, 3)
    for bad in ("KNN", "isolation_forest", ""):
        with pytest.raises(ValueError, match="unknown scorer"):
            make_scorer(bad)


def test_k_larger_than_bank_raises():
    bank = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError):
        KNNScorer(k=6).fit(bank)
    with pytest.raises(ValueError):
        KNNScorer(k=3, max_bank_size=2).fit(np.random.default_rng(0).normal(size=(10, 3)))
    with pytest.raises(ValueError):
        KNNScorer(k=0).fit(bank)
    with pytest.raises(ValueError):
        LOFScorer(k=5).fit(bank)


def test_scorers_reject_bad_features():
    with pytest.raises(ValueError, match="2-D"):
        KNNScorer().fit(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        KNNScorer().fit(np.array([[0.0, np.nan], [1.0, 1.0]]))
    scorer = KNNScorer(k=1).fit(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        scorer.score_samples(np.array([[np.inf, 0.0]]))
