"""doc_core.workflow.run_labels: analysts' labels laid over a run's test images, selections, the "enough" rule."""

from __future__ import annotations

import numpy as np
import pytest

from doc_core.workflow.labels import LabelRecord, LabelStore, image_key
from doc_core.workflow.run_labels import (MIN_PER_KIND, enough, image_keys, image_source, label_items, map_labels,
                                          no_labels, pending_normals, selection_test_indices)


def images(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    out = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    out[3] = out[1]  # two identical test images share a key, so they share a label
    return out


def rec(key: str, label: str, note: str | None = None) -> LabelRecord:
    return LabelRecord("run-1", key, label, note, None, "2025-01-01T00:00:00+00:00")


def test_keys_are_the_stores_image_keys():
    ims = images(5)
    keys = image_keys(ims)
    assert keys.shape == (5,) and list(keys) == [image_key(im) for im in ims] and keys[1] == keys[3]
    assert image_keys(ims[:0]).shape == (0,)


def test_map_labels_lays_labels_over_test_images_and_counts_the_rest():
    ims = images(6)
    keys = image_keys(ims)
    outside = image_key(np.zeros((8, 8, 1), np.uint8))  # e.g. an uploaded image
    mapped = map_labels([rec(keys[0], "anomaly", "scratch"), rec(keys[1], "normal"), rec(keys[4], "unsure"),
                         rec(outside, "normal")], keys)
    assert list(mapped.words) == ["anomaly", "normal", "", "normal", "unsure", ""]
    assert list(mapped.notes) == ["scratch", "", "", "", "", ""]
    assert list(mapped.codes) == [1, 0, -1, 0, -1, -1]  # unsure and unlabelled are left out
    assert (mapped.n_normal, mapped.n_anomaly, mapped.n_unsure, mapped.n_labelled, mapped.n_other) == (2, 1, 1, 4, 1)
    assert list(mapped.indices("normal")) == [1, 3]
    assert mapped.summary() == "2 normal, 1 anomaly, 1 unsure left out"
    empty = no_labels(4)
    assert empty.n_labelled == 0 and list(empty.codes) == [-1] * 4


def test_enough_needs_both_kinds():
    keys = image_keys(np.arange(2 * MIN_PER_KIND + 1, dtype=np.uint8).reshape(-1, 1, 1))
    normal = [rec(k, "normal") for k in keys[:MIN_PER_KIND]]
    anomaly = [rec(k, "anomaly") for k in keys[MIN_PER_KIND:2 * MIN_PER_KIND]]
    assert enough(map_labels(normal + anomaly, keys))
    assert not enough(map_labels(normal + anomaly[1:], keys))  # one anomaly short
    assert not enough(map_labels(normal[1:] + anomaly + [rec(keys[-1], "unsure")], keys))  # unsure does not count
    assert enough(map_labels(normal[1:] + anomaly, keys), min_per_kind=MIN_PER_KIND - 1)


def test_label_items_for_a_selection_round_trip_through_the_store(tmp_path):
    ims = images(6)
    keys = image_keys(ims)
    sources = [image_source(i) for i in range(6)]
    items = label_items([4, 1, 3, 1], keys, sources, "normal", "  fine  ")
    assert [r["source"] for r in items] == ["test:4", "test:1"]  # image 3 is image 1's twin; 1 selected twice
    assert all(r["note"] == "fine" and r["label"] == "normal" for r in items)
    assert label_items([0], keys, sources, "anomaly", "  ")[0]["note"] is None
    with pytest.raises(ValueError, match="not a label"):
        label_items([0], keys, sources, "bad")
    store = LabelStore(tmp_path / "labels.sqlite")
    assert store.set_many("run-1", items) == 2
    mapped = map_labels(store.labels("run-1"), keys)
    assert list(mapped.indices("normal")) == [1, 3, 4]


def test_sources_and_selections():
    assert image_source(7) == "test:7"
    assert image_source(1, np.array(["good/a.png", "MT_Crack/b.jpg"])) == "MT_Crack/b.jpg"
    test_idx = np.array([10, 20, 30])
    # rows 3 and 4 are normal training images of the explorer's maps: no test image, no label
    assert list(selection_test_indices([2, 3, 0, 4], test_idx)) == [30, 10]
    assert selection_test_indices([], test_idx).shape == (0,)


def test_pending_normals_skip_images_in_the_bank_and_twins():
    ims = images(6)
    keys = image_keys(ims)
    mapped = map_labels([rec(keys[i], "normal") for i in (0, 1, 3, 5)] + [rec(keys[2], "anomaly")], keys)
    assert list(pending_normals(mapped, keys, [])) == [0, 1, 5]  # 3 is 1's twin
    assert list(pending_normals(mapped, keys, [keys[0], keys[3]])) == [5]  # 1 and 3 are the same image
    assert pending_normals(no_labels(6), keys, []).shape == (0,)
