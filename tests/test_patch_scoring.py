"""Tests of doc_core.scoring.patch against brute force: neighbourhood averaging, patch and image scores, the
leave-one-image-out training scores, the greedy coreset, map alignment, combining layers, faiss, saving, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from doc_core.scoring import patch as patch_scoring
from doc_core.scoring.patch import (PatchKNNScorer, combine_maps, greedy_coreset, neighbourhood_average,
                                    random_subset, resize_bilinear)


def brute_average(maps: np.ndarray, size: int) -> np.ndarray:
    """size x size mean at every position, the window clamped to the map (edge positions repeated)."""
    n, h, w, c = maps.shape
    r = size // 2
    out = np.zeros(maps.shape, np.float64)
    for i in range(h):
        for j in range(w):
            for di in range(-r, r + 1):
                for dj in range(-r, r + 1):
                    out[:, i, j] += maps[:, min(max(i + di, 0), h - 1), min(max(j + dj, 0), w - 1)]
    return out / size**2


def brute_patch_scores(maps: np.ndarray, bank: np.ndarray, k: int, size: int) -> np.ndarray:
    """Double loop over positions and bank rows: mean distance to the k nearest bank rows."""
    avg = brute_average(maps.astype(np.float64), size)
    n, h, w, _ = maps.shape
    out = np.zeros((n, h, w))
    for a in range(n):
        for i in range(h):
            for j in range(w):
                d = [np.sqrt(((avg[a, i, j] - row) ** 2).sum()) for row in bank.astype(np.float64)]
                out[a, i, j] = np.mean(np.sort(d)[:k])
    return out


def brute_loio(train: np.ndarray, bank: np.ndarray, bank_image: np.ndarray, k: int, size: int) -> np.ndarray:
    """Each training image scored against the bank rows of the other images only."""
    return np.array([brute_patch_scores(train[a:a + 1], bank[bank_image != a], k, size).max()
                     for a in range(len(train))])


def brute_k_center(x: np.ndarray, first: int, m: int) -> list[int]:
    """Greedy k-center: from ``first``, repeatedly the point farthest from all chosen ones (float64)."""
    chosen = [first]
    for _ in range(m - 1):
        d = np.min(np.sqrt(((x[:, None, :].astype(np.float64) - x[chosen][None]) ** 2).sum(-1)), axis=1)
        d[chosen] = -1.0
        chosen.append(int(np.argmax(d)))
    return chosen


def random_maps(rng: np.random.Generator, n: int, h: int = 5, w: int = 6, c: int = 3) -> np.ndarray:
    return rng.normal(size=(n, h, w, c)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ neighbourhood


@pytest.mark.parametrize("size", [1, 3, 5])
def test_neighbourhood_average_matches_brute_force(size):
    maps = random_maps(np.random.default_rng(size), 2, 4, 7, 3)
    got = neighbourhood_average(maps, size)
    assert got.dtype == np.float32 and got.shape == maps.shape
    np.testing.assert_allclose(got, brute_average(maps, size), rtol=1e-5, atol=1e-5)
    if size == 1:
        np.testing.assert_array_equal(got, maps)


# ---------------------------------------------------------------------------------------------- scores vs brute


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("size", [1, 3])
def test_patch_and_image_scores_match_brute_force(k, size):
    rng = np.random.default_rng(10 * k + size)
    train, test = random_maps(rng, 4), random_maps(rng, 3)
    scorer = PatchKNNScorer(k=k, max_bank_size=None, neighbourhood=size).fit(train)
    bank = brute_average(train, size).reshape(-1, train.shape[-1])
    np.testing.assert_allclose(scorer.bank_, bank, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(scorer.bank_image_, np.repeat(np.arange(4), 30))
    expected = brute_patch_scores(test, bank, k, size)
    got = scorer.patch_scores(test)
    assert got.dtype == np.float32 and got.shape == (3, 5, 6)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    images = scorer.score_samples(test)
    assert images.dtype == np.float32 and images.shape == (3,)
    np.testing.assert_allclose(images, expected.max(axis=(1, 2)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("coreset", ["greedy", "random"])
def test_scores_with_a_subsampled_bank_match_brute_force_on_that_bank(coreset):
    rng = np.random.default_rng(5)
    train, test = random_maps(rng, 5), random_maps(rng, 2)
    scorer = PatchKNNScorer(k=2, max_bank_size=40, coreset=coreset).fit(train)
    assert scorer.bank_.shape == (40, 3) and len(np.unique(scorer.bank_, axis=0)) == 40
    # every bank row is an averaged training patch of the image bank_image_ names
    avg = brute_average(train, 3)
    for row, image in zip(scorer.bank_, scorer.bank_image_):
        assert np.abs(avg[image].reshape(-1, 3) - row).max(axis=1).min() < 1e-5
    np.testing.assert_allclose(scorer.patch_scores(test), brute_patch_scores(test, scorer.bank_, 2, 3),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k,bank_size", [(1, None), (3, None), (1, 50), (2, 70)])
def test_leave_one_image_out_training_scores_match_brute_force(k, bank_size):
    rng = np.random.default_rng(k)
    train = random_maps(rng, 6)
    scorer = PatchKNNScorer(k=k, max_bank_size=bank_size).fit(train)
    expected = brute_loio(train, scorer.bank_, scorer.bank_image_, k, 3)
    got = scorer.training_scores()
    assert got.dtype == np.float32 and got.shape == (6,)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # leaving the image out matters: with its own patches in the bank every score would be 0
    assert (got > 0.05).all()


def test_leave_one_image_out_when_all_near_hits_are_the_own_image():
    """Each image's 25 patches are close together and the images far apart, so the first k + 16 hits of every
    patch are its own image: the exact fallback must find the nearest patch of another image."""
    rng = np.random.default_rng(3)
    n, h, w, c = 4, 5, 5, 4
    offsets = rng.normal(size=(n, 1, 1, c)) * 50.0
    train = (offsets + rng.normal(size=(n, h, w, c)) * 0.01).astype(np.float32)
    assert h * w > 1 + patch_scoring.LOIO_EXTRA
    for k in (1, 2):
        scorer = PatchKNNScorer(k=k, max_bank_size=None, neighbourhood=1).fit(train)
        expected = brute_loio(train, scorer.bank_, scorer.bank_image_, k, 1)
        np.testing.assert_allclose(scorer.training_scores(), expected, rtol=1e-4, atol=1e-3)
        assert (scorer.training_scores() > 10.0).all()


def test_blocks_do_not_change_the_scores(monkeypatch):
    rng = np.random.default_rng(8)
    train, test = random_maps(rng, 7), random_maps(rng, 9)
    whole = PatchKNNScorer(k=2, max_bank_size=100).fit(train)
    monkeypatch.setattr(patch_scoring, "QUERY_BLOCK_PATCHES", 1)  # one image per block
    blocked = PatchKNNScorer(k=2, max_bank_size=100).fit(train)
    np.testing.assert_array_equal(blocked.bank_, whole.bank_)
    np.testing.assert_allclose(blocked.patch_scores(test), whole.patch_scores(test), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(blocked.training_scores(), whole.training_scores(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------- coreset


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_coreset_picks_the_farthest_point_each_step(seed):
    x = np.random.default_rng(seed).uniform(0, 10, size=(40, 2)).astype(np.float32)
    idx = greedy_coreset(x, 12, seed=seed)
    assert idx.dtype == np.int64 and idx.shape == (12,) and len(set(idx.tolist())) == 12
    assert idx.tolist() == brute_k_center(x, int(idx[0]), 12)


def test_greedy_coreset_after_projection_is_farthest_up_to_rounding_and_covers_clusters():
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(6, 300)) * 20.0
    x = (centres[rng.integers(6, size=600)] + rng.normal(size=(600, 300))).astype(np.float32)
    idx = greedy_coreset(x, 6, seed=1, projection_dim=32)
    labels = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    assert sorted(labels[idx].tolist()) == list(range(6))  # one point from each far cluster
    # without projection each step is the farthest point (up to float32 rounding of near-ties)
    idx = greedy_coreset(x, 60, seed=1, projection_dim=None)
    z = x.astype(np.float64)
    for step in range(1, 60):
        d = np.min(np.sqrt(((z[:, None] - z[idx[:step]][None]) ** 2).sum(-1)), axis=1)
        assert d[idx[step]] >= d.max() * (1 - 1e-4)
    assert len(set(idx.tolist())) == 60


def test_greedy_coreset_with_duplicates_candidates_and_seeds():
    x = np.repeat(np.arange(5, dtype=np.float32)[:, None], 4, axis=0)  # 20 rows, 5 distinct values
    idx = greedy_coreset(x, 20)
    assert sorted(idx.tolist()) == list(range(20))  # distinct even when all remaining rows are duplicates
    assert sorted(x[greedy_coreset(x, 5)][:, 0].tolist()) == [0, 1, 2, 3, 4]
    y = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    sub = greedy_coreset(y, 30, seed=2, max_candidates=100)
    assert len(set(sub.tolist())) == 30 and sub.max() < 500
    np.testing.assert_array_equal(sub, greedy_coreset(y, 30, seed=2, max_candidates=100))
    assert not np.array_equal(greedy_coreset(y, 30, seed=0), greedy_coreset(y, 30, seed=1))
    r = random_subset(y, 30, seed=0)
    assert r.dtype == np.int64 and len(set(r.tolist())) == 30 and np.all(np.diff(r) > 0)


@pytest.mark.parametrize("m", [17, 40, 64])  # > 16 patches per image: other images are in the bank
def test_coreset_bank_memory_is_m_times_c_times_4_bytes(m):
    rng = np.random.default_rng(m)
    scorer = PatchKNNScorer(max_bank_size=m).fit(random_maps(rng, 4, 4, 4, 5))
    assert scorer.bank_.shape == (m, 5) and scorer.bank_.dtype == np.float32
    assert scorer.bank_bytes_ == m * 5 * 4
    assert scorer.bank_image_.shape == (m,) and scorer.bank_image_.dtype == np.int64


# ------------------------------------------------------------------------------------------ maps and alignment


def smooth_maps(rng: np.random.Generator, n: int, h: int, w: int, c: int) -> np.ndarray:
    raw = rng.normal(size=(n, h, w, c))
    return (gaussian_filter(raw, sigma=(0, 1.5, 1.5, 0), mode="wrap") * 3.0).astype(np.float32)


@pytest.mark.parametrize("where", [(3, 8), (9, 3), (0, 11), (11, 0)])
def test_planted_defect_lands_under_the_hottest_pixel(where):
    rng = np.random.default_rng(sum(where))
    h, w, c = 12, 12, 8
    train = smooth_maps(rng, 20, h, w, c)
    test = smooth_maps(rng, 2, h, w, c)
    i, j = where
    yy, xx = np.mgrid[:h, :w]
    bump = np.exp(-((yy - i) ** 2 + (xx - j) ** 2) / (2 * 0.8**2))  # a small blob centred on patch (i, j)
    test[1] += (bump[..., None] * 5.0 * np.sign(rng.normal(size=c))).astype(np.float32)  # far from normal maps
    scorer = PatchKNNScorer(max_bank_size=1000).fit(train)
    maps = scorer.anomaly_maps(test, size=(96, 96))
    assert maps.shape == (2, 96, 96) and maps.dtype == np.float32
    y, x = np.unravel_index(np.argmax(maps[1]), (96, 96))
    # patch (i, j) covers pixels [8i, 8i + 8) x [8j, 8j + 8); allow the neighbouring half patch
    assert 8 * i - 4 <= y < 8 * i + 12 and 8 * j - 4 <= x < 8 * j + 12, (y, x)
    assert maps[1].max() > maps[0].max()
    assert scorer.score_samples(test)[1] == scorer.patch_scores(test)[1, i, j]


def test_anomaly_maps_sigma_and_size():
    rng = np.random.default_rng(0)
    scorer = PatchKNNScorer().fit(random_maps(rng, 3))
    test = random_maps(rng, 2)
    raw = scorer.anomaly_maps(test, size=(50, 60), sigma=0)
    np.testing.assert_allclose(raw, resize_bilinear(scorer.patch_scores(test), (50, 60)), rtol=1e-6)
    smooth = scorer.anomaly_maps(test, size=(50, 60))  # default sigma 4 * 55 / 224
    np.testing.assert_allclose(smooth, gaussian_filter(raw, (0, 4 * 55 / 224, 4 * 55 / 224), mode="nearest"),
                               rtol=1e-5, atol=1e-6)
    assert smooth.std() < raw.std()


@pytest.mark.parametrize("src,dst", [((3, 4), (12, 16)), ((5, 5), (17, 9)), ((8, 8), (4, 4)), ((6, 7), (6, 7))])
def test_resize_bilinear_matches_cv2(src, dst):
    cv2 = pytest.importorskip("cv2")
    maps = np.random.default_rng(0).normal(size=(2, *src, 3)).astype(np.float32)
    got = resize_bilinear(maps, dst)
    expected = np.stack([cv2.resize(m, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR) for m in maps])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(resize_bilinear(maps[..., 0], dst), expected[..., 0], rtol=1e-4, atol=1e-4)


def test_combine_maps_shapes_and_plain_concatenation():
    rng = np.random.default_rng(0)
    fine, coarse = random_maps(rng, 2, 8, 8, 3), random_maps(rng, 2, 4, 4, 5)
    both = combine_maps([fine, coarse])
    assert both.shape == (2, 8, 8, 8) and both.dtype == np.float32
    np.testing.assert_array_equal(both[..., :3], fine)
    np.testing.assert_allclose(both[..., 3:], resize_bilinear(coarse, (8, 8)), rtol=1e-6)
    assert combine_maps([coarse, fine]).shape == (2, 8, 8, 8)
    other = random_maps(rng, 2, 8, 8, 2)
    np.testing.assert_array_equal(combine_maps([fine, other]), np.concatenate([fine, other], axis=3))
    np.testing.assert_array_equal(combine_maps([fine]), fine)


# ----------------------------------------------------------------------------------------- faiss and saving


def test_faiss_backend_matches_exact():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    train, test = random_maps(rng, 6, 6, 6, 16), random_maps(rng, 4, 6, 6, 16)
    exact = PatchKNNScorer(k=3, max_bank_size=150).fit(train)
    fast = PatchKNNScorer(k=3, max_bank_size=150, backend="faiss").fit(train)
    np.testing.assert_array_equal(fast.bank_, exact.bank_)
    np.testing.assert_allclose(fast.patch_scores(test), exact.patch_scores(test), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fast.training_scores(), exact.training_scores(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_arrays_round_trip_through_npz_gives_identical_scores(tmp_path, backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    rng = np.random.default_rng(6)
    train, test = random_maps(rng, 5), random_maps(rng, 3)
    scorer = PatchKNNScorer(k=2, max_bank_size=60, neighbourhood=3, backend=backend).fit(train)
    config = json.loads(json.dumps(scorer.get_config()))
    np.savez(tmp_path / "patch.npz", **scorer.to_arrays())
    with np.load(tmp_path / "patch.npz", allow_pickle=False) as f:
        loaded = PatchKNNScorer.from_arrays(config, dict(f))
    assert loaded.get_config() == scorer.get_config()
    assert loaded.map_shape_ == scorer.map_shape_ and loaded.bank_bytes_ == scorer.bank_bytes_
    np.testing.assert_array_equal(loaded.bank_image_, scorer.bank_image_)
    np.testing.assert_array_equal(loaded.patch_scores(test), scorer.patch_scores(test))
    np.testing.assert_array_equal(loaded.score_samples(test), scorer.score_samples(test))
    np.testing.assert_array_equal(loaded.training_scores(), scorer.training_scores())


def test_from_arrays_rejects_broken_state():
    scorer = PatchKNNScorer(max_bank_size=20).fit(random_maps(np.random.default_rng(0), 3))
    config, good = scorer.get_config(), scorer.to_arrays()
    broken = [
        ({**config, "evil": 1}, good, "unknown config"),
        ({**config, "k": 0}, good, "k must be"),
        (config, {key: v for key, v in good.items() if key != "bank_"}, "missing"),
        (config, {**good, "bank_": good["bank_"].astype(object)}, "dtype"),
        (config, {**good, "bank_": np.full_like(good["bank_"], np.nan)}, "finite"),
        (config, {**good, "bank_image_": good["bank_image_"][:-1]}, "bank_image_"),
        (config, {**good, "bank_image_": good["bank_image_"] + 100}, "index"),
        (config, {**good, "map_shape_": np.array([5], np.int64)}, "map_shape_"),
        (config, {**good, "train_scores_": np.zeros(0, np.float32)}, "train_scores_"),
    ]
    for cfg, arrays, message in broken:
        with pytest.raises(ValueError, match=message):
            PatchKNNScorer.from_arrays(cfg, arrays)


# ------------------------------------------------------------------------------------------------- bad input


def test_bad_input_raises_clear_errors():
    rng = np.random.default_rng(0)
    train = random_maps(rng, 3)
    with pytest.raises(ValueError, match="not fitted"):
        PatchKNNScorer().score_samples(train)
    with pytest.raises(ValueError, match="4-D"):
        PatchKNNScorer().fit(train[0])
    with pytest.raises(ValueError, match="empty"):
        PatchKNNScorer().fit(train[:0])
    nan = train.copy()
    nan[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        PatchKNNScorer().fit(nan)
    with pytest.raises(ValueError, match="real numbers"):
        PatchKNNScorer().fit(train.astype(str))
    for kwargs, message in [({"k": 0}, "k must"), ({"max_bank_size": 0}, "max_bank_size"),
                            ({"coreset": "kmeans"}, "unknown coreset"), ({"neighbourhood": 2}, "odd"),
                            ({"backend": "annoy"}, "unknown k-NN backend"),
                            ({"backend": "faiss-ivf"}, "no 'faiss-ivf'")]:
        with pytest.raises(ValueError, match=message):
            PatchKNNScorer(**kwargs).fit(train)
    with pytest.raises(ValueError, match="at least 2 images"):
        PatchKNNScorer().fit(train[:1])
    with pytest.raises(ValueError, match="k=5"):
        PatchKNNScorer(k=5, max_bank_size=4).fit(train)
    scorer = PatchKNNScorer().fit(train)
    with pytest.raises(ValueError, match="channels"):
        scorer.score_samples(random_maps(rng, 2, c=4))
    with pytest.raises(ValueError, match="positions"):
        scorer.patch_scores(random_maps(rng, 2, h=6))
    bad = random_maps(rng, 2)
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        scorer.score_samples(bad)
    with pytest.raises(ValueError, match="sigma"):
        scorer.anomaly_maps(random_maps(rng, 1), sigma=-1)
    with pytest.raises(ValueError, match="size"):
        scorer.anomaly_maps(random_maps(rng, 1), size=(0, 10))
    with pytest.raises(ValueError, match="same number of images"):
        combine_maps([train, train[:2]])
    with pytest.raises(ValueError, match="at least one"):
        combine_maps([])
    with pytest.raises(ValueError, match="m must"):
        greedy_coreset(np.zeros((5, 2), np.float32), 6)
    with pytest.raises(ValueError, match="m must"):
        random_subset(np.zeros((5, 2), np.float32), 0)
    with pytest.raises(ValueError, match="NaN"):
        greedy_coreset(np.full((5, 2), np.nan, np.float32), 2)
    with pytest.raises(ValueError, match="size"):
        neighbourhood_average(train, 4)


def test_training_scores_of_a_seeded_subset_are_the_brute_force_ones():
    """max_train_scores bounds the leave-one-image-out work: only that many images are scored, exactly."""
    rng = np.random.default_rng(7)
    maps = rng.normal(size=(6, 3, 3, 4)).astype(np.float32)
    sc = PatchKNNScorer(k=1, max_bank_size=None, neighbourhood=1, max_train_scores=3, seed=2).fit(maps)
    assert sc.train_scores_.shape == (3,) and sc.n_train_ == 6
    picked = np.sort(np.random.default_rng(2).choice(6, 3, replace=False))
    flat = maps.reshape(6, 9, 4)
    for score, i in zip(sc.train_scores_, picked):
        others = np.concatenate([flat[j] for j in range(6) if j != i])
        want = max(np.sqrt(((others - p) ** 2).sum(axis=1)).min() for p in flat[i])
        assert score == pytest.approx(want, rel=1e-4)
    again = PatchKNNScorer.from_arrays(sc.get_config(), sc.to_arrays())
    assert again.n_train_ == 6 and np.array_equal(again.train_scores_, sc.train_scores_)
    with pytest.raises(ValueError, match="max_train_scores"):
        PatchKNNScorer(max_train_scores=0).fit(maps)


# ----------------------------------------------------------------------------------------------- image scores


def brute_image_score(patch_scores: np.ndarray, how: str) -> np.ndarray:
    """One image at a time: sort its patch scores, then max / mean of the ceil(p * q / 100) largest (topq) / mean."""
    out = []
    for scores in patch_scores.reshape(len(patch_scores), -1).astype(np.float64):
        ranked = sorted(scores.tolist(), reverse=True)
        tops = {f"top{q}": math.ceil(len(ranked) * q / 100) for q in (10, 25, 50)}
        rules = {"max": ranked[0], "mean": sum(ranked) / len(ranked),
                 **{k: sum(ranked[:t]) / t for k, t in tops.items()}}
        out.append(rules[how])
    return np.array(out)


@pytest.mark.parametrize("how", patch_scoring.IMAGE_SCORES)
@pytest.mark.parametrize("shape", [(3, 1, 1), (2, 5, 6), (4, 12, 12), (1, 3, 7)])
def test_aggregate_patch_scores_matches_brute_force(how, shape):
    scores = np.random.default_rng(sum(shape)).gamma(2.0, size=shape).astype(np.float32)
    got = patch_scoring.aggregate_patch_scores(scores, how)
    assert got.dtype == np.float32 and got.shape == (shape[0],)
    np.testing.assert_allclose(got, brute_image_score(scores, how), rtol=1e-6)


def test_image_scores_are_ordered_and_top_rules_take_the_ceiling():
    # 12 patches: top10 averages the 2 largest (ceil(1.2)), top25 the 3 largest, top50 the 6 largest; one hot patch
    # moves max most, mean least
    scores = np.array([[0.0] * 9 + [2.0, 1.0, 9.0]], np.float32)
    agg = {how: float(patch_scoring.aggregate_patch_scores(scores, how)[0]) for how in patch_scoring.IMAGE_SCORES}
    assert agg == pytest.approx({"max": 9.0, "top10": 5.5, "top25": 4.0, "top50": 2.0, "mean": 1.0})
    assert patch_scoring.DEFAULT_IMAGE_SCORE in patch_scoring.IMAGE_SCORES
    with pytest.raises(ValueError, match="unknown image score 'median'"):
        patch_scoring.aggregate_patch_scores(scores, "median")
    with pytest.raises(ValueError, match="shape"):
        patch_scoring.aggregate_patch_scores(np.zeros(4, np.float32), "max")
    with pytest.raises(ValueError, match="at least one patch"):
        patch_scoring.aggregate_patch_scores(np.zeros((2, 0, 3), np.float32), "top10")
    empty = patch_scoring.aggregate_patch_scores(np.zeros((0, 4, 4), np.float32), "top10")
    assert empty.shape == (0,) and empty.dtype == np.float32


@pytest.mark.parametrize("how", ["top10", "top25", "mean"])
def test_scorer_image_and_training_scores_follow_the_image_score_rule(how):
    rng = np.random.default_rng(11)
    train, test = random_maps(rng, 6), random_maps(rng, 3)
    scorer = PatchKNNScorer(k=2, max_bank_size=None, image_score=how).fit(train)
    patches = brute_patch_scores(test, scorer.bank_, 2, 3)
    np.testing.assert_allclose(scorer.score_samples(test), brute_image_score(patches, how), rtol=1e-4, atol=1e-4)
    loio = np.concatenate([brute_image_score(brute_patch_scores(train[a:a + 1], scorer.bank_[scorer.bank_image_ != a],
                                                                 2, 3), how) for a in range(len(train))])
    np.testing.assert_allclose(scorer.training_scores(), loio, rtol=1e-4, atol=1e-4)
    # the rule changes the numbers (else this test could not tell the rules apart)
    assert not np.allclose(scorer.score_samples(test), patches.max(axis=(1, 2)))


def test_image_score_is_saved_and_old_configs_load_as_max(tmp_path):
    rng = np.random.default_rng(12)
    train, test = random_maps(rng, 4), random_maps(rng, 2)
    scorer = PatchKNNScorer(max_bank_size=None, image_score="top10").fit(train)
    config = json.loads(json.dumps(scorer.get_config()))
    assert config["image_score"] == "top10"
    loaded = PatchKNNScorer.from_arrays(config, scorer.to_arrays())
    np.testing.assert_array_equal(loaded.score_samples(test), scorer.score_samples(test))
    old = {key: value for key, value in config.items() if key != "image_score"}  # written before the option existed
    assert PatchKNNScorer.from_arrays(old, scorer.to_arrays()).image_score == "max"
    with pytest.raises(ValueError, match="unknown image score"):
        PatchKNNScorer(image_score="p95").fit(train)


def test_every_place_that_lists_the_image_score_rules_agrees():
    """The edge bundle's numpy twin, the CLI (which does not import this module), the Training page and the session
    defaults name the same rules and the same default as doc_core.scoring.patch."""
    import ast
    from pathlib import Path

    from doc_core.cli import build_parser
    from doc_core.edge import edge_scorer
    from ui import state

    assert edge_scorer.PATCH_IMAGE_SCORES == patch_scoring.IMAGE_SCORES
    assert edge_scorer.PATCH_TOP_FRACTIONS == patch_scoring.TOP_FRACTIONS
    scores = np.random.default_rng(5).gamma(2.0, size=(3, 7, 5)).astype(np.float32)
    for how in patch_scoring.IMAGE_SCORES:
        np.testing.assert_allclose(edge_scorer.aggregate_patch_scores(scores, how),
                                   patch_scoring.aggregate_patch_scores(scores, how), rtol=1e-6)
    train = next(a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                 if a.dest == "image_score")
    assert set(train.choices) == set(patch_scoring.IMAGE_SCORES)
    assert train.default == patch_scoring.DEFAULT_IMAGE_SCORE == state.DEFAULTS[state.TR_IMAGE_SCORE]
    page = Path(__file__).resolve().parent.parent / "pages" / "2_training.py"
    labels = next(ast.literal_eval(node.value) for node in ast.parse(page.read_text()).body
                  if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "IMAGE_SCORE_LABELS")
    assert set(labels) == set(patch_scoring.IMAGE_SCORES) and next(iter(labels)) == patch_scoring.DEFAULT_IMAGE_SCORE
