"""doc_core.data.datasets: dataset specs, counts and samples per role, and safe extraction of zip uploads."""

from __future__ import annotations

import io
import stat
import zipfile

import numpy as np
import pytest
from PIL import Image

from doc_core.data import DataError, FashionMNIST, OneClassSplit, SplitConfig
from doc_core.data.datasets import (DatasetSpec, extract_zip, find_dataset_root, load_dataset, resolve_reference,
                                    role_counts, role_samples, with_reference)


def _png(value: int = 128, size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _zip(files: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "../../etc/passwd")
    return buf.getvalue()


LAYOUT = {**{f"train/{i}.png": _png(100) for i in range(4)},
          **{f"reference/a/{i}.png": _png(30) for i in range(3)},
          **{f"reference/b/{i}.png": _png(220) for i in range(3)},
          "test/normal/n.png": _png(100), "test/anomaly/x.png": _png(250), "test/u.png": _png(5)}


@pytest.fixture
def split() -> OneClassSplit:
    img = np.zeros((1, 8, 8, 1), np.uint8)
    return OneClassSplit(train_normal=np.repeat(img, 5, 0), reference=np.repeat(img, 7, 0),
                         reference_labels=np.array([0, 0, 0, 1, 1, 1, 1]), reference_names=("Coat", "Bag"),
                         test_images=np.repeat(img, 4, 0), test_labels=np.array([0, 1, 1, -1]),
                         test_classes=("Sneaker", "Ankle boot", "Sandal", "unknown"), name="toy",
                         info={"source": "fashion-mnist", "config": SplitConfig(normal_classes=(7,)).to_dict()})


def test_spec_round_trip_and_description():
    spec = DatasetSpec.fashion_mnist()
    assert spec.is_reference_experiment and DatasetSpec.from_dict(spec.to_dict()) == spec
    assert spec.describe() == "Fashion-MNIST: normal Sneaker; anomalies Ankle boot (reference experiment)"
    small = DatasetSpec.fashion_mnist(SplitConfig(n_normal=200, n_reference=300, seed=2))
    assert small.describe() == ("Fashion-MNIST: normal Sneaker; anomalies Ankle boot; 200 normal training images; "
                                "300 reference images; seed 2")
    other = DatasetSpec.fashion_mnist(SplitConfig.one_vs_rest(0))
    assert not other.is_reference_experiment and "every other class" in other.describe()
    folder = DatasetSpec.folder("/data/x", 64, label="x.zip")
    assert DatasetSpec.from_dict(folder.to_dict()) == folder and folder.describe() == "Own images: x.zip (64 px)"
    with pytest.raises(ValueError):
        DatasetSpec.from_dict({"kind": "nope"})


def test_role_counts(split):
    rows = role_counts(split)
    assert rows == [{"role": "normal training", "class": "Sneaker", "count": 5},
                    {"role": "reference", "class": "Coat", "count": 3},
                    {"role": "reference", "class": "Bag", "count": 4},
                    {"role": "test normal", "class": "Sneaker", "count": 1},
                    {"role": "test anomaly", "class": "Ankle boot", "count": 1},
                    {"role": "test anomaly", "class": "Sandal", "count": 1},
                    {"role": "test unlabelled", "class": "unknown", "count": 1}]


def test_role_samples_cover_every_role_and_reference_class(split):
    samples = role_samples(split, per_role=4)
    assert list(samples) == ["normal training", "reference", "test normal", "test anomaly", "test unlabelled"]
    images, names = samples["reference"]
    assert set(names) == {"Coat", "Bag"} and len(images) == len(names) == 4
    assert len(samples["normal training"][0]) == 4 and samples["test anomaly"][1] == ["Ankle boot", "Sandal"]


def test_bad_fashion_split_is_a_data_error():
    spec = DatasetSpec.fashion_mnist(SplitConfig(normal_classes=(7,), anomaly_classes=(7,)))
    with pytest.raises(DataError, match="both normal and anomalous"):
        load_dataset(spec)


def test_zip_upload_is_extracted_and_loaded(tmp_path):
    data = _zip({f"my_data/{k}": v for k, v in LAYOUT.items()} | {"__MACOSX/._x.png": b"junk", "notes.txt": b"hi"})
    root = extract_zip(data, tmp_path)
    assert root.name == "my_data" and (root / "train").is_dir()
    assert not list(tmp_path.rglob("notes.txt")) and not list(tmp_path.rglob("__MACOSX"))
    assert extract_zip(data, tmp_path) == root  # same bytes, same folder, no second extraction
    split, skipped = load_dataset(DatasetSpec.folder(root, 32))
    assert skipped == [] and split.summary() == {"normal training": 4, "reference": 6, "test normal": 1,
                                                 "test anomaly": 1, "test unlabelled": 1}


@pytest.mark.parametrize("files, links, message", [
    ({"../evil.png": _png()}, (), "unsafe path"),
    ({"/abs/evil.png": _png()}, (), "unsafe path"),
    ({"train/a.png": _png()}, ("train/link.png",), "symbolic link"),
    ({"readme.txt": b"no images"}, (), "no image files"),
    ({"images/a.png": _png(), "other/b.png": _png()}, (), "no folder holding train/"),
])
def test_bad_zips_are_refused_with_a_message(tmp_path, files, links, message):
    with pytest.raises(DataError, match=message):
        extract_zip(_zip(files, links), tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_not_a_zip(tmp_path):
    with pytest.raises(DataError, match="not a valid zip"):
        extract_zip(b"hello, I am not a zip", tmp_path)


def test_zip_bombs_are_refused(tmp_path):
    data = _zip({"train/a.png": b"\0" * 5_000_000})
    with pytest.raises(DataError, match="compressed suspiciously well"):
        extract_zip(data, tmp_path)


def test_find_dataset_root_explains_the_layout(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="Expected layout"):
        find_dataset_root(tmp_path)
    (tmp_path / "top" / "train").mkdir(parents=True)  # reference/ is optional
    assert find_dataset_root(tmp_path) == tmp_path / "top"


def _folder_split(with_reference: bool) -> OneClassSplit:
    img = np.full((6, 16, 16, 3), 7, np.uint8)
    ref = np.full((4, 16, 16, 3), 9, np.uint8) if with_reference else np.zeros((0, 16, 16, 3), np.uint8)
    labels = np.array([0, 0, 1, 1]) if with_reference else np.zeros(0, np.int64)
    return OneClassSplit(train_normal=img, reference=ref, reference_labels=labels,
                         reference_names=("a", "b") if with_reference else (), test_images=img[:2],
                         test_labels=np.array([0, 1]), test_classes=("normal", "anomaly"), info={"source": "folder"})


def test_reference_choices_resolve_with_reasons():
    assert resolve_reference("auto", True)[0] == "folder"
    assert resolve_reference("auto", False)[0] == "none" and "pretrained" in resolve_reference("auto", False)[1]
    assert resolve_reference("fashion-mnist", True) == ("fashion-mnist", "chosen by the user")
    with pytest.raises(DataError, match="reference/ folder"):
        resolve_reference("folder", False)
    with pytest.raises(DataError, match="unknown reference"):
        resolve_reference("imagenet", False)
    spec = DatasetSpec.folder("/d", 32, reference="none")
    assert DatasetSpec.from_dict(spec.to_dict()) == spec and "reference: none" in spec.describe()
    assert DatasetSpec.from_dict({"kind": "folder", "root": "/d"}).reference == "auto"  # older specs
    with pytest.raises(ValueError, match="unknown reference"):
        DatasetSpec.folder("/d", reference="x")


def test_with_reference_builds_each_choice():
    fm = FashionMNIST(train_images=np.arange(30, dtype=np.uint8).reshape(30, 1, 1, 1).repeat(28, 1).repeat(28, 2),
                      train_labels=np.arange(30) % 10, test_images=np.zeros((0, 28, 28, 1), np.uint8),
                      test_labels=np.zeros(0, np.int64), source="test")
    own = with_reference(_folder_split(True), "auto", fm)
    assert own.reference_names == ("a", "b") and own.info["reference"] == "folder"
    none = with_reference(_folder_split(True), "none", fm)
    assert none.reference.shape == (0, 16, 16, 3) and none.reference_names == () and none.info["reference"] == "none"
    fashion = with_reference(_folder_split(False), "fashion-mnist", fm, n=12, seed=1)
    assert fashion.reference.shape == (12, 16, 16, 3) and fashion.reference.dtype == np.uint8
    assert len(fashion.reference_names) == 10 and fashion.info["reference"] == "fashion-mnist"
    # every drawn image is the Fashion-MNIST image of its label (value i has label i % 10), resized and gray->RGB
    values = fashion.reference[:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(values % 10, fashion.reference_labels)
    assert np.all(fashion.reference == fashion.reference[:, :1, :1, :1])
    np.testing.assert_array_equal(with_reference(_folder_split(False), "fashion-mnist", fm, n=12, seed=1).reference,
                                  fashion.reference)  # seeded
    assert with_reference(_folder_split(False), "auto", fm).info["reference"] == "none"
