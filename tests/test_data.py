"""Tests of doc_core.data: IDX files, Fashion-MNIST lookup, one-class splits and the folder loader."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import doc_core.data as data
import doc_core.data.fashion_mnist as fashion_mnist
from doc_core.data import (FASHION_MNIST_FILES, FOLDER_LAYOUT, DataError, FashionMNIST, SplitConfig,
                           load_fashion_mnist, load_folder_split, make_split, read_idx, read_image)


def idx_bytes(a: np.ndarray) -> bytes:
    a = np.asarray(a, np.uint8)
    return bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape) + a.tobytes()


# --------------------------------------------------------------------------------------------------- IDX


def test_read_idx_plain_and_gzip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    (tmp_path / "a.idx").write_bytes(idx_bytes(a))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(idx_bytes(a)))
    for name in ("a.idx", "a.idx.gz"):
        got = read_idx(tmp_path / name)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, a)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    (tmp_path / "l.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(tmp_path / "l.gz"), labels)


def test_read_idx_truncated_or_wrong_type_raises(tmp_path):
    raw = idx_bytes(np.zeros((4, 6, 6), np.uint8))
    (tmp_path / "short.idx").write_bytes(raw[:-7])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "long.idx").write_bytes(raw + b"\x00")
    with pytest.raises(DataError):
        read_idx(tmp_path / "long.idx")
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-7]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(raw)[:-12])
    with pytest.raises(DataError, match="cut.gz"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "plain.gz").write_bytes(raw)
    with pytest.raises(DataError, match="plain.gz"):
        read_idx(tmp_path / "plain.gz")
    (tmp_path / "float.idx").write_bytes(bytes([0, 0, 0x0D, 1]) + (1).to_bytes(4, "big") + b"\0\0\0\0")
    with pytest.raises(DataError, match="unsigned bytes"):
        read_idx(tmp_path / "float.idx")


# --------------------------------------------------------------------------------------------------- Fashion-MNIST


def write_fake_fashion(folder: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
              "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "test_labels": (np.arange(n_test) % 10).astype(np.uint8)}
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in FASHION_MNIST_FILES.items():
        (folder / name).write_bytes(gzip.compress(idx_bytes(arrays[key])))
    return arrays


@pytest.fixture
def no_system_fashion(monkeypatch, tmp_path):
    """No Debian package and an empty Keras cache, so only the places a test sets up can be found."""
    empty = tmp_path / "no-debian"
    empty.mkdir()
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST_DIR", empty)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    return empty


def check_fake(ds: FashionMNIST, arrays: dict[str, np.ndarray]) -> None:
    assert ds.train_images.shape == (len(arrays["train_images"]), 28, 28, 1) and ds.train_images.dtype == np.uint8
    np.testing.assert_array_equal(ds.train_images[..., 0], arrays["train_images"])
    np.testing.assert_array_equal(ds.test_images[..., 0], arrays["test_images"])
    assert ds.train_labels.dtype == np.int64
    np.testing.assert_array_equal(ds.train_labels, arrays["train_labels"])
    np.testing.assert_array_equal(ds.test_labels, arrays["test_labels"])


def test_load_fashion_mnist_from_data_dir(tmp_path, no_system_fashion):
    arrays = write_fake_fashion(tmp_path / "fm")
    ds = load_fashion_mnist(data_dir=tmp_path / "fm", download=False)
    check_fake(ds, arrays)
    assert ds.source == str(tmp_path / "fm")


def test_load_fashion_mnist_from_env(tmp_path, monkeypatch, no_system_fashion):
    arrays = write_fake_fashion(tmp_path / "env", seed=1)
    monkeypatch.setenv("DOC_DATA_DIR", str(tmp_path / "env"))
    check_fake(load_fashion_mnist(download=False), arrays)
    # the argument comes first; a folder missing a file is passed over
    write_fake_fashion(tmp_path / "arg", seed=2)
    (tmp_path / "arg" / FASHION_MNIST_FILES["test_labels"]).unlink()
    check_fake(load_fashion_mnist(data_dir=tmp_path / "arg", download=False), arrays)


def test_load_fashion_mnist_skips_corrupt_folder(tmp_path, monkeypatch, no_system_fashion):
    arrays = write_fake_fashion(tmp_path / "good", seed=3)
    write_fake_fashion(tmp_path / "bad", seed=4)
    (tmp_path / "bad" / FASHION_MNIST_FILES["train_images"]).write_bytes(b"garbage")
    monkeypatch.setenv("DOC_DATA_DIR", str(tmp_path / "good"))
    check_fake(load_fashion_mnist(data_dir=tmp_path / "bad", download=False), arrays)


def test_load_fashion_mnist_error_names_every_place(tmp_path, monkeypatch, no_system_fashion):
    (tmp_path / "arg").mkdir()
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("DOC_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(DataError) as info:
        load_fashion_mnist(data_dir=tmp_path / "arg", download=False)
    msg = str(info.value)
    for place in (tmp_path / "arg", tmp_path / "env", no_system_fashion,
                  tmp_path / "keras-home" / "datasets" / "fashion-mnist"):
        assert str(place) in msg
    for words in ("data_dir argument", "DOC_DATA_DIR", "Debian", "Keras cache", "download=False",
                  "train-images-idx3-ubyte.gz", "apt-get install dataset-fashion-mnist"):
        assert words in msg


# --------------------------------------------------------------------------------------------------- splits


@pytest.fixture
def fake_fashion() -> FashionMNIST:
    rng = np.random.default_rng(0)
    per_class_train, per_class_test = 50, 10
    ytr = np.repeat(np.arange(10), per_class_train)
    yte = np.repeat(np.arange(10), per_class_test)
    # every image encodes its own index in the first pixels, so a split can be traced back to its sources
    xtr = rng.integers(0, 256, (len(ytr), 28, 28, 1), dtype=np.uint8)
    xte = rng.integers(0, 256, (len(yte), 28, 28, 1), dtype=np.uint8)
    xtr[:, 0, 0, 0], xtr[:, 0, 1, 0], xtr[:, 0, 2, 0] = ytr, np.arange(len(ytr)) // 256, np.arange(len(ytr)) % 256
    xte[:, 0, 0, 0] = yte
    return FashionMNIST(xtr, ytr, xte, yte, source="fake")


def image_ids(images: np.ndarray) -> np.ndarray:
    return images[:, 0, 1, 0].astype(int) * 256 + images[:, 0, 2, 0]


def test_tutorial_split_semantics(fake_fashion):
    split = make_split(SplitConfig(n_reference=120), fake_fashion)
    assert len(split.train_normal) == 50 and np.all(split.train_normal[:, 0, 0, 0] == 7)
    np.testing.assert_array_equal(image_ids(split.train_normal), np.flatnonzero(fake_fashion.train_labels == 7))
    assert len(split.reference) == len(split.reference_labels) == 120
    ref_classes = split.reference[:, 0, 0, 0]
    assert not np.isin(ref_classes, [7, 9]).any()
    assert split.reference_names == tuple(data.FASHION_MNIST_CLASSES[c] for c in (0, 1, 2, 3, 4, 5, 6, 8))
    mapping = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 8: 7}
    np.testing.assert_array_equal(split.reference_labels, [mapping[c] for c in ref_classes])
    test_classes = split.test_images[:, 0, 0, 0]
    assert sorted(set(test_classes)) == [7, 9] and len(test_classes) == 20
    np.testing.assert_array_equal(split.test_labels, (test_classes == 9).astype(int))
    assert split.test_classes == tuple(data.FASHION_MNIST_CLASSES[c] for c in test_classes)
    assert split.has_test_labels
    assert split.summary() == {"normal training": 50, "reference": 120, "test normal": 10, "test anomaly": 10,
                               "test unlabelled": 0}
    assert split.info["config"] == SplitConfig(n_reference=120).to_dict()


def test_split_is_seeded(fake_fashion):
    cfg = SplitConfig(n_normal=20, n_reference=100, seed=5)
    a, b = make_split(cfg, fake_fashion), make_split(cfg, fake_fashion)
    c = make_split(SplitConfig(n_normal=20, n_reference=100, seed=6), fake_fashion)
    np.testing.assert_array_equal(a.train_normal, b.train_normal)
    np.testing.assert_array_equal(a.reference, b.reference)
    np.testing.assert_array_equal(a.reference_labels, b.reference_labels)
    assert len(a.train_normal) == 20 and len(a.reference) == 100
    assert len(np.unique(image_ids(a.train_normal))) == 20 and len(np.unique(image_ids(a.reference))) == 100
    assert not np.array_equal(a.reference, c.reference)
    assert SplitConfig.from_dict(cfg.to_dict()) == cfg


def test_one_vs_rest_semantics(fake_fashion):
    split = make_split(SplitConfig.one_vs_rest(3, n_reference=90), fake_fashion)
    assert np.all(split.train_normal[:, 0, 0, 0] == 3) and len(split.train_normal) == 50
    assert len(split.test_images) == 100  # the whole test set
    test_classes = split.test_images[:, 0, 0, 0]
    np.testing.assert_array_equal(split.test_labels, (test_classes != 3).astype(int))
    assert len(split.reference_names) == 9 and data.FASHION_MNIST_CLASSES[3] not in split.reference_names
    assert not np.any(split.reference[:, 0, 0, 0] == 3) and len(split.reference) == 90


def test_one_vs_rest_disjoint_keeps_anomaly_classes_out_of_training(fake_fashion):
    split = make_split(SplitConfig.one_vs_rest_disjoint(3, n_reference=90), fake_fashion)
    ref_classes = set(np.unique(split.reference[:, 0, 0, 0]).tolist())
    test_classes = split.test_images[:, 0, 0, 0]
    anomaly_classes = set(np.unique(test_classes[split.test_labels == 1]).tolist())
    assert ref_classes == {0, 2, 5, 7, 9} and anomaly_classes == {1, 4, 6, 8}  # others 0,1,2,4,...,9 alternate
    assert not ref_classes & anomaly_classes and len(split.test_images) == 50  # 10 normal + 4 x 10 anomalies
    np.testing.assert_array_equal(split.test_labels, (test_classes != 3).astype(int))
    assert data.ONE_VS_REST_SPLITS["one-vs-rest-disjoint"](3) == SplitConfig.one_vs_rest_disjoint(3)
    with pytest.raises(ValueError, match="0-9"):
        SplitConfig.one_vs_rest_disjoint(10)


@pytest.mark.parametrize("kwargs,match", [
    ({"normal_classes": ()}, "normal class"),
    ({"normal_classes": (10,)}, "0-9"),
    ({"anomaly_classes": (7, 9)}, "both normal and anomalous"),
    ({"anomaly_classes": ()}, "anomaly class"),
    ({"reference_classes": (0, 7)}, "also normal"),
    ({"reference_classes": (0,)}, "at least 2"),
    ({"reference_classes": (-1, 2)}, "0-9"),
    ({"n_reference": 10_000}, "n_reference"),
    ({"n_normal": 51}, "n_normal"),
])
def test_invalid_split_configs_raise(fake_fashion, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_split(SplitConfig(**{"n_reference": 50, **kwargs}), fake_fashion)


# --------------------------------------------------------------------------------------------------- folders


def save(path: Path, array: np.ndarray, mode: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    im.save(path, **kwargs)
    return path


def rgb(h: int, w: int, colour: tuple[int, int, int]) -> np.ndarray:
    return np.full((h, w, 3), colour, np.uint8)


def build_folder(root: Path) -> dict[str, Path]:
    """A dataset in FOLDER_LAYOUT with every kind of image file, plus one corrupt file."""
    rng = np.random.default_rng(0)
    files = {
        "gray_png": save(root / "train" / "a_gray.png", np.full((40, 30), 100, np.uint8)),
        "rgb_jpg": save(root / "train" / "sub" / "b_rgb.jpg", rgb(50, 70, (200, 30, 30)), quality=95),
        "rgba_png": save(root / "train" / "c_rgba.png",
                         np.dstack([rgb(20, 20, (0, 0, 0)), np.zeros((20, 20), np.uint8)])),
        "gray16_png": save(root / "train" / "d_16bit.png",
                           np.linspace(0, 65535, 24 * 24).reshape(24, 24).astype(np.uint16)),
        "noise_jpg": save(root / "train" / "e_noise.jpeg", rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)),
    }
    palette = Image.fromarray(rgb(16, 16, (10, 200, 10))).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(root / "train" / "f_palette.png")
    files["palette_png"] = root / "train" / "f_palette.png"
    files["corrupt"] = root / "train" / "g_corrupt.png"
    files["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (root / "train" / ".hidden.png").write_bytes(b"hidden files are ignored")
    (root / "train" / "notes.txt").write_text("not an image")
    for cls, colour in (("cats", (0, 0, 255)), ("dogs", (255, 255, 0))):
        for i in range(3):
            save(root / "reference" / cls / f"{i}.png", rgb(30 + i, 30, colour))
    save(root / "test" / "normal" / "n0.png", rgb(32, 32, (100, 100, 100)))
    save(root / "test" / "normal" / "n1.png", rgb(32, 32, (101, 101, 101)))
    save(root / "test" / "anomaly" / "a0.png", rgb(32, 32, (255, 0, 0)))
    save(root / "test" / "loose.png", rgb(32, 32, (1, 2, 3)))
    save(root / "test" / "unlabelled" / "u0.png", rgb(32, 32, (4, 5, 6)))
    return files


def test_load_folder_split(tmp_path):
    files = build_folder(tmp_path / "my_data")
    with pytest.warns(UserWarning, match="skipped 1"):
        split, skipped = load_folder_split(tmp_path / "my_data", image_size=16)
    assert [s.path for s in skipped] == [str(files["corrupt"])]
    assert "not a readable image" in skipped[0].reason
    assert split.info["skipped"][0]["path"] == str(files["corrupt"])
    # sorted order: a_gray, c_rgba, d_16bit, e_noise, f_palette, sub/b_rgb
    tr = split.train_normal
    assert tr.shape == (6, 16, 16, 3) and tr.dtype == np.uint8
    assert np.all(tr[0] == 100)  # gray repeated to RGB
    assert np.all(tr[1] == 255)  # fully transparent, composited on white
    assert tr[2].min() < 20 and tr[2].max() > 235 and np.all(tr[2][..., 0] == tr[2][..., 2])  # 16-bit scaled
    np.testing.assert_array_equal(tr[4].reshape(-1, 3), np.tile([10, 200, 10], (256, 1)))  # palette colour kept
    assert np.abs(tr[5].astype(int) - [200, 30, 30]).max() <= 6  # JPEG, resized from 70x50
    assert split.reference_names == ("cats", "dogs")
    np.testing.assert_array_equal(split.reference_labels, [0, 0, 0, 1, 1, 1])
    assert np.all(split.reference[:3] == [0, 0, 255]) and np.all(split.reference[3:] == [255, 255, 0])
    paths = split.info["test_paths"]
    assert paths == ["test/normal/n0.png", "test/normal/n1.png", "test/anomaly/a0.png", "test/loose.png",
                     "test/unlabelled/u0.png"]
    np.testing.assert_array_equal(split.test_labels, [0, 0, 1, -1, -1])
    assert split.test_classes == ("normal", "normal", "anomaly", "unlabelled", "unlabelled")
    np.testing.assert_array_equal(split.test_images[:, 0, 0], [[100] * 3, [101] * 3, [255, 0, 0], [1, 2, 3], [4, 5, 6]])
    assert split.has_test_labels
    assert split.summary()["test unlabelled"] == 2


def test_folder_without_test_folder(tmp_path):
    root = tmp_path / "d"
    for i in range(2):
        save(root / "train" / f"{i}.png", np.full((8, 8), i, np.uint8))
    for cls in ("x", "y"):
        save(root / "reference" / cls / "0.png", np.full((8, 8), 9, np.uint8))
    split, skipped = load_folder_split(root, image_size=32)
    assert skipped == [] and split.test_images.shape == (0, 32, 32, 3) and not split.has_test_labels


def test_folder_without_reference_loads_an_empty_reference_set(tmp_path):
    root = tmp_path / "d"
    for i in range(3):
        save(root / "train" / f"{i}.png", np.full((8, 8), i, np.uint8))
    save(root / "test" / "anomaly" / "a.png", np.full((8, 8), 200, np.uint8))
    split, skipped = load_folder_split(root, image_size=32)
    assert skipped == [] and len(split.train_normal) == 3
    assert split.reference.shape == (0, 32, 32, 3) and split.reference.dtype == np.uint8
    assert split.reference_labels.shape == (0,) and split.reference_names == ()
    assert split.summary()["reference"] == 0 and split.test_classes == ("anomaly",)


def test_folder_missing_train_or_reference(tmp_path):
    root = tmp_path / "d"
    save(root / "reference" / "x" / "0.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="missing folder") as info:
        load_folder_split(root)
    assert FOLDER_LAYOUT in str(info.value)
    with pytest.raises(DataError, match="not a folder"):
        load_folder_split(tmp_path / "nowhere")


def test_folder_needs_two_reference_classes(tmp_path):
    root = tmp_path / "d"
    for i in range(3):
        save(root / "train" / f"{i}.png", np.zeros((8, 8), np.uint8))
    save(root / "reference" / "only" / "0.png", np.zeros((8, 8), np.uint8))
    (root / "reference" / "empty").mkdir()
    (root / "reference" / "broken").mkdir()
    (root / "reference" / "broken" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="at least 2 class") as info:
        load_folder_split(root)
    assert FOLDER_LAYOUT in str(info.value)


def test_folder_needs_min_train(tmp_path):
    root = tmp_path / "d"
    save(root / "train" / "0.png", np.zeros((8, 8), np.uint8))
    for cls in ("x", "y"):
        save(root / "reference" / cls / "0.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="at least 2") as info:
        load_folder_split(root)
    assert FOLDER_LAYOUT in str(info.value)


def test_read_image_applies_exif_rotation(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high; white band on the left
    stored[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif, quality=95)
    got = read_image(tmp_path / "r.jpg")
    assert got.shape == (40, 20, 3)
    expected = np.rot90(stored, k=-1)  # clockwise: the left band ends up on top
    assert np.abs(got.astype(int) - expected).max() <= 8
    assert got[:10].mean() > 240 and got[10:].mean() < 15


def test_read_image_resizes_and_names_bad_files(tmp_path):
    save(tmp_path / "big.png", np.full((64, 48, 3), 77, np.uint8))
    out = read_image(tmp_path / "big.png", size=20)
    assert out.shape == (20, 20, 3) and np.all(out == 77)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty.png"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(DataError, match="limit"):
        read_image(tmp_path / "big.png", max_pixels=100)
