"""Ranking, filtering and paging of the gallery, the explorer's sample, and decoding of uploaded images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from doc_core.data import DataError
from doc_core.explain.gallery import (decode_upload, enlarge, explorer_sample, identities, image_facts, label_names,
                                     matches, n_pages, page_bounds, page_of, rank, score_ranks, search, sort_selection,
                                     thumbnail_atlas, upload_facts)

SCORES = np.array([0.1, 0.9, 0.5, 0.3, 0.8, 0.2])
LABELS = np.array([0, 1, 1, 0, 0, -1])


def test_score_ranks_put_the_highest_first():
    assert score_ranks(SCORES).tolist() == [6, 1, 3, 4, 2, 5]
    assert label_names(LABELS).tolist() == ["normal", "anomaly", "anomaly", "normal", "normal", "unlabelled"]


def test_rank_orders_and_filters():
    r = rank(SCORES, LABELS, 0.4)
    assert r.indices.tolist() == [1, 4, 2, 3, 5, 0] and r.ranks.tolist() == [1, 2, 3, 4, 5, 6] and r.total == 6
    # the anomalies that look most normal, and those missed at the threshold
    assert rank(SCORES, LABELS, 0.4, "anomaly", order="lowest").indices.tolist() == [2, 1]
    assert rank(SCORES, LABELS, 0.6, "anomaly", "below", "lowest").indices.tolist() == [2]
    # false alarms: normal images above the threshold, most anomalous first, with their overall ranks
    alarms = rank(SCORES, LABELS, 0.25, "normal", "above")
    assert alarms.indices.tolist() == [4, 3] and alarms.ranks.tolist() == [2, 4]
    assert rank(SCORES, LABELS, 0.4, ["normal", "unlabelled"], "below").indices.tolist() == [3, 5, 0]
    assert len(rank(SCORES, LABELS, 10.0, "anomaly", "above")) == 0


def test_rank_rejects_bad_arguments():
    for kw in ({"side": "left"}, {"order": "up"}, {"label": "cat"}):
        with pytest.raises(ValueError):
            rank(SCORES, LABELS, 0.5, **kw)
    with pytest.raises(ValueError):
        rank(SCORES, LABELS[:3], 0.5)


def test_paging():
    r = rank(np.arange(50.0), np.zeros(50, int), 10.0)
    assert n_pages(len(r), 24) == 3 and n_pages(0, 24) == 1
    idx, ranks = page_of(r, 3, 24)
    assert idx.tolist() == [1, 0] and ranks.tolist() == [49, 50]
    assert page_of(r, 99, 24)[0].tolist() == [1, 0]  # clipped to the last page
    assert page_of(r, 0, 24)[0][0] == 49
    with pytest.raises(ValueError):
        n_pages(5, 0)


def test_explorer_sample_is_seeded_and_keeps_label_shares():
    labels = np.array([0] * 3000 + [1] * 900 + [-1] * 100)
    a, b = explorer_sample(labels, 2000, seed=3), explorer_sample(labels, 2000, seed=3)
    assert np.array_equal(a, b) and len(a) == 2000 and len(np.unique(a)) == 2000 and np.all(np.diff(a) > 0)
    assert [int(np.sum(labels[a] == v)) for v in (0, 1, -1)] == [1500, 450, 50]
    assert not np.array_equal(a, explorer_sample(labels, 2000, seed=4))
    assert explorer_sample(labels[:10], 2000).tolist() == list(range(10))
    rare = np.array([0] * 999 + [1])
    assert set(rare[explorer_sample(rare, 10)]) == {0, 1}  # a rare label is kept
    assert len(explorer_sample(np.array([0] * 50 + [1] * 50 + [-1] * 50), 4)) <= 4


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_upload_matches_the_dataset_shape():
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 0] = 255
    gray = decode_upload(_png(rgb), "red.png", (28, 28, 1))
    assert gray.shape == (28, 28, 1) and gray.dtype == np.uint8 and int(gray[0, 0, 0]) == 76  # luminance of red
    assert decode_upload(_png(rgb), "red.png", (96, 96, 3)).shape == (96, 96, 3)
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent: composited on white
    assert int(decode_upload(_png(rgba), "clear.png", (8, 8, 1)).min()) == 255
    with pytest.raises(DataError, match="junk.png"):
        decode_upload(b"not an image", "junk.png", (28, 28, 1))
    with pytest.raises(DataError, match="pixels"):
        decode_upload(_png(rgb), "big.png", (28, 28, 1), max_pixels=100)


def test_embedding_map_colours():
    """The explorer's map: normal and anomaly in the theme's colours; the score scale is grey at the threshold."""
    from ui import charts, theme

    coords = np.random.default_rng(0).normal(size=(5, 2))
    roles = np.array(["test normal", "test anomaly", "test anomaly", "normal training", "test unlabelled"])
    scores = np.array([0.1, 0.9, 0.5, 0.2, 0.3])
    info = np.column_stack([np.arange(5).astype(object), ["a"] * 5, ["r"] * 5])
    fig = charts.embedding_map(coords, roles, scores, info, "role", 0.4)
    colors = {t.name.split(" (")[0]: t.marker.color for t in fig.data}
    assert colors["test normal"] == colors["normal training"] == theme.NORMAL
    assert colors["test anomaly"] == theme.ANOMALY and colors["test unlabelled"] == theme.UNLABELLED
    assert [t.customdata[0][0] for t in fig.data if t.name.startswith("test anomaly")] == [1]
    (trace,) = charts.embedding_map(coords, roles, scores, info, "score", 0.4).data
    scale = trace.marker.colorscale
    assert scale[0][1] == theme.NORMAL and scale[-1][1] == theme.ANOMALY
    assert trace.marker.cmin == pytest.approx(0.1) and scale[1][0] == pytest.approx((0.4 - 0.1) / (trace.marker.cmax - 0.1))


def _tiles(atlas):
    sheet = np.asarray(Image.open(io.BytesIO(atlas.png)))
    t, cols = atlas.tile, atlas.columns
    return [sheet[(i // cols) * t:(i // cols + 1) * t, (i % cols) * t:(i % cols + 1) * t] for i in range(atlas.count)]


def test_thumbnail_atlas_keeps_small_images_exact_and_in_order():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 28, 28, 1), dtype=np.uint8)
    atlas = thumbnail_atlas(images)
    assert (atlas.tile, atlas.columns, atlas.count) == (28, 4, 10)
    sheet = np.asarray(Image.open(io.BytesIO(atlas.png)))
    assert sheet.shape == (3 * 28, 4 * 28)  # gray, 3 rows of 4
    for i, t in enumerate(_tiles(atlas)):
        np.testing.assert_array_equal(t, images[i, ..., 0])


def test_thumbnail_atlas_shrinks_large_images_and_mixes_gray_with_colour():
    wide = np.zeros((100, 200, 3), np.uint8)
    wide[..., 0] = 255  # red, twice as wide as tall
    gray = np.full((20, 20), 128, np.uint8)
    atlas = thumbnail_atlas([wide, gray], max_tile=40)
    assert atlas.tile == 40 and atlas.columns == 2
    big, small = _tiles(atlas)
    assert big.shape == (40, 40, 3)
    assert (big[10:30, :, 0] == 255).all() and (big[:10] == 0).all() and (big[30:] == 0).all()  # 40x20, centred
    assert (small[10:30, 10:30] == 128).all() and (small[:10] == 0).all()  # 20x20 in the middle, as RGB


def test_thumbnail_atlas_rejects_bad_images_and_handles_none():
    with pytest.raises(ValueError, match="image 1"):
        thumbnail_atlas([np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.float32)])
    empty = thumbnail_atlas([])
    assert empty.count == 0 and Image.open(io.BytesIO(empty.png)).size == (1, 1)


def test_identities_name_files_by_their_folder_below_the_label_or_by_test_index():
    classes = ["anomaly", "normal", "unlabelled", "unlabelled"]
    paths = ["test/anomaly/MT_Crack/exp1_num_123.jpg", "test/normal/ok 1.png", "test/loose.jpg",
             "test/unlabelled/sub/x.PNG"]
    assert identities(classes, paths).tolist() == ["MT_Crack/exp1_num_123.jpg", "ok 1.png", "loose.jpg", "sub/x.PNG"]
    assert identities(["Sneaker", "Ankle boot"]).tolist() == ["test #0 · Sneaker", "test #1 · Ankle boot"]
    with pytest.raises(ValueError):
        identities(classes, paths[:2])


def test_search_keeps_matching_names_in_ranking_order_with_their_ranks():
    names = identities(["normal", "anomaly", "anomaly", "normal", "normal", "unlabelled"],
                       ["test/normal/a.png", "test/anomaly/MT_Crack/c1.png", "test/anomaly/MT_Blowhole/b.png",
                        "test/normal/crack_like.png", "test/normal/e.png", "test/f.png"])
    r = rank(SCORES, LABELS, 0.4)  # indices [1, 4, 2, 3, 5, 0]
    hit = search(r, names, "  CRACK ")
    assert hit.indices.tolist() == [1, 3] and hit.ranks.tolist() == [1, 4] and hit.total == 6
    assert search(r, names, "").indices.tolist() == r.indices.tolist()
    assert len(search(r, names, "no such file")) == 0
    assert matches(["Test #12 · Ankle boot", "test #3 · Sneaker"], "ankle").tolist() == [True, False]


def test_sort_selection_by_score_label_and_index():
    scores = np.array([0.5, 0.9, 0.1, 0.7, 0.3])
    labels = np.array([0, 1, -1, -2, 1])  # -2: a normal training image
    assert sort_selection(scores, labels).tolist() == [1, 3, 0, 4, 2]  # highest score first by default
    assert sort_selection(scores, labels, "score_asc").tolist() == [2, 4, 0, 3, 1]
    assert sort_selection(scores, labels, "label").tolist() == [1, 4, 0, 2, 3]  # anomalies, normal, unlabelled, train
    assert sort_selection(scores, labels, "index").tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        sort_selection(scores, labels, "colour")


def test_page_bounds_cut_any_list_like_the_gallery():
    assert page_bounds(30, 1, 12) == (1, 0, 12)
    assert page_bounds(30, 3, 12) == (3, 24, 30)
    assert page_bounds(30, 9, 12) == (3, 24, 30) and page_bounds(30, 0, 12) == (1, 0, 12)
    assert page_bounds(0, 2, 12) == (1, 0, 0)


def test_image_facts_of_a_test_image_match_the_ranking_and_name_it():
    classes = np.array(["normal", "anomaly", "anomaly", "normal", "normal", "unlabelled"])
    names = identities(classes, ["test/normal/a.png", "test/anomaly/MT_Crack/c1.png", "test/anomaly/c2.png",
                                 "test/normal/b.png", "test/normal/sub/d.png", "test/e.png"])
    f = image_facts(4, SCORES, LABELS, classes, names, 0.6)
    assert (f.name, f.file, f.folder) == ("sub/d.png", "d.png", "sub")
    assert (f.score, f.rank, f.total, f.threshold) == (0.8, 2, 6, 0.6)
    assert f.flagged and f.verdict == "flagged" and f.label == 0 and f.label_word == "normal" and not f.upload
    f = image_facts(1, SCORES, LABELS, classes, names, 0.95)
    assert (f.file, f.folder, f.rank, f.verdict, f.label_word) == ("c1.png", "MT_Crack", 1, "passed", "anomaly")
    assert image_facts(5, SCORES, LABELS, classes, names, 0.6).label_word == "unlabelled"
    # every image's rank is the one the Ranked page shows (ties in index order), and the score sits at the threshold
    tied = np.array([0.5, 0.7, 0.5, 0.5, 0.1])
    plain = identities(np.array(["Sneaker"] * 4 + ["Ankle boot"]))
    facts = [image_facts(i, tied, np.zeros(5, int), ["Sneaker"] * 5, plain, 0.5) for i in range(5)]
    assert [f.rank for f in facts] == score_ranks(tied).tolist() == [2, 1, 3, 4, 5]
    assert [f.verdict for f in facts] == ["passed", "flagged", "passed", "passed", "passed"]  # 0.5 is not above 0.5
    assert (facts[4].name, facts[4].file, facts[4].folder) == ("test #4 · Ankle boot", "test #4 · Ankle boot", "")
    with pytest.raises(IndexError):
        image_facts(6, SCORES, LABELS, classes, names, 0.5)
    with pytest.raises(ValueError):
        image_facts(0, SCORES, LABELS[:5], classes, names, 0.5)


def test_upload_facts_rank_an_upload_among_the_test_images():
    f = upload_facts(2, "photo.png", 0.85, SCORES, 0.6)
    assert (f.name, f.file, f.folder, f.index) == ("photo.png", "photo.png", "", 2)
    assert (f.rank, f.total, f.verdict, f.label, f.upload) == (2, 6, "flagged", None, True)  # only 0.9 is higher
    assert f.label_word.startswith("unknown")
    assert upload_facts(0, "x.png", 1.5, SCORES, 0.6).rank == 1
    lowest = upload_facts(0, "x.png", 0.0, SCORES, 0.6)
    assert lowest.rank == 7 and lowest.verdict == "passed"


def test_enlarge_at_least_reaches_the_size_and_keeps_the_aspect_ratio():
    im = np.arange(28 * 14, dtype=np.uint8).reshape(28, 14, 1)
    assert enlarge(im, 320).shape == (308, 154)  # the largest whole factor within 320 (11)
    big = enlarge(im, 320, at_least=True)
    assert big.shape == (336, 168)  # the smallest whole factor reaching 320 (12): 2:1 kept
    np.testing.assert_array_equal(big[::12, ::12], im[..., 0])  # nearest neighbour: every pixel a 12 x 12 block
    assert enlarge(np.zeros((400, 300, 3), np.uint8), 320, at_least=True).shape == (400, 300, 3)  # never shrunk


def test_detail_picture_is_large_sharp_and_can_take_the_original_aspect_ratio():
    from doc_core.explain.gallery import detail_picture

    im = (np.arange(32 * 32) % 251).astype(np.uint8).reshape(32, 32, 1)
    big = detail_picture(im)
    assert big.shape == (320, 320)  # 10x: at least 320 px
    np.testing.assert_array_equal(big[::10, ::10], im[..., 0])
    wide = detail_picture(im, aspect=2.0)  # an original file twice as wide as high, stored squashed to 32 x 32
    assert wide.shape == (160, 320) and set(np.unique(wide)) <= set(np.unique(im))  # nearest neighbour: no new values
    tall = detail_picture(np.zeros((28, 28, 3), np.uint8), aspect=0.5)
    assert tall.shape == (336, 168, 3)
    assert detail_picture(im, aspect=1.01).shape == (320, 320)  # a square file stays square
