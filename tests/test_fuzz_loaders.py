"""Issue #5, point 7: property-based fuzzing (hypothesis) of the image, image-folder and zip loaders.

Bounded for CI: a fixed number of examples per test, derandomized (the same examples on every run), no deadline;
the whole module runs in a few seconds. Set ``HYPOTHESIS_MAX_EXAMPLES`` to fuzz longer locally.

Properties: whatever bytes a file or zip holds, a loader either returns well-formed data or raises ``DataError``
(never another exception), and a zip never writes outside its target folder.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from doc_core.data import DataError, load_folder_split, read_image
from doc_core.data.datasets import extract_zip

N = int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "60"))
FUZZ = settings(max_examples=N, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


SEEDS = {fmt: _encode(np.random.default_rng(0).integers(0, 255, (9, 7, 3), dtype=np.uint8), fmt)
         for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}


@st.composite
def mutated_image(draw) -> tuple[bytes, str]:
    """A valid small image in some format, then cut, overwritten or padded at random places."""
    fmt = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[fmt])
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["cut", "flip", "insert"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "cut":
            data = data[:pos]
        elif op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        else:
            data[pos:pos] = draw(st.binary(max_size=16))
    return bytes(data), fmt


def _check_image(arr: np.ndarray, size: int | None) -> None:
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    if size is not None:
        assert arr.shape[:2] == (size, size)


@FUZZ
@given(data=st.one_of(st.binary(max_size=512), mutated_image().map(lambda t: t[0])),
       ext=st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".tif", ".webp"]), size=st.sampled_from([None, 8, 32]))
def test_read_image_returns_an_image_or_a_data_error(data, ext, size):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"f{ext}"
        path.write_bytes(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = read_image(path, size, max_pixels=1_000_000)
        except DataError as exc:
            assert path.name in str(exc)
        else:
            _check_image(arr, size)


@FUZZ
@given(files=st.lists(st.tuples(st.sampled_from(["train", "reference/a", "reference/b", "test", "test/normal",
                                                  "test/anomaly"]),
                                 st.one_of(st.binary(max_size=64), mutated_image().map(lambda t: t[0]),
                                           st.just(SEEDS["PNG"]))),
                       max_size=12))
def test_image_folder_loader_loads_the_good_files_or_raises_a_data_error(files):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for sub in ("train", "reference/a", "reference/b"):
            (root / sub).mkdir(parents=True)
        for i, (sub, data) in enumerate(files):
            (root / sub).mkdir(parents=True, exist_ok=True)
            (root / sub / f"{i}.png").write_bytes(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                split, skipped = load_folder_split(root, image_size=8)
        except DataError:
            return
        n_files = len(files)
        assert len(split.train_normal) + len(split.reference) + len(split.test_images) + len(skipped) == n_files
        for arr in (split.train_normal, split.reference, split.test_images):
            assert arr.dtype == np.uint8 and arr.shape[1:] == (8, 8, 3)


NAME_PART = st.one_of(st.sampled_from(["train", "reference", "a", "b", "test", "..", ".", "", "C:", "__MACOSX",
                                       ".hidden", "~", "\\..", "x.png", "y.JPG", "n" * 300, "é" * 130]),
                      st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                              max_size=8))


@st.composite
def zip_entries(draw) -> list[tuple[str, bytes]]:
    entries = [(name, SEEDS["PNG"]) for name in ("train/1.png", "train/2.png", "reference/a/1.png",
                                                 "reference/b/1.png")] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 6))):
        parts = draw(st.lists(NAME_PART, min_size=1, max_size=4))
        lead = draw(st.sampled_from(["", "/", "\\", "../", "C:/"]))
        # "train/x.png" next to "train/x.png/..." is a file and a folder of the same name
        name = lead + "/".join(parts) + draw(st.sampled_from([".png", ".jpg", "", "/", ".txt"]))
        entries.append((name, draw(st.one_of(st.binary(max_size=32), st.just(SEEDS["PNG"])))))
    return entries


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are allowed (and kept) on purpose
        for name, data in entries:
            try:
                zf.writestr(zipfile.ZipInfo(name), data)
            except (ValueError, UnicodeEncodeError):
                continue
    return buf.getvalue()


def _extract_checked(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        dest = base / "uploads"
        try:
            root = extract_zip(data, dest)
        except DataError:
            pass
        else:
            assert root.resolve().is_relative_to(dest.resolve()) and (root / "train").is_dir()
        # nothing outside dest, no links anywhere, no temporary folder left behind on failure
        for p in base.rglob("*"):
            assert p == dest or p.is_relative_to(dest), p
            assert not p.is_symlink(), p
        if dest.exists():
            assert not [p for p in dest.iterdir() if ".tmp-" in p.name]
        shutil.rmtree(dest, ignore_errors=True)


@FUZZ
@given(entries=zip_entries())
def test_zip_loader_never_writes_outside_its_target(entries):
    _extract_checked(_zip(entries))


@st.composite
def clashing_entries(draw) -> list[tuple[str, bytes]]:
    """Image members named from a few parts, so that names repeat and files and folders share names often."""
    part = st.sampled_from(["train", "reference", "a", "x.png", "y.png"])
    names = draw(st.lists(st.lists(part, min_size=1, max_size=4).map("/".join), min_size=1, max_size=8))
    return [("train/1.png", SEEDS["PNG"]), ("reference/a/1.png", SEEDS["PNG"])] + \
        [(n if n.endswith(".png") else n + ".png", SEEDS["PNG"]) for n in names]


@FUZZ
@given(entries=clashing_entries())
def test_clashing_zip_names_give_a_data_error_or_a_safe_extraction(entries):
    _extract_checked(_zip(entries))


@FUZZ
@given(entries=zip_entries(), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                                             max_size=6), cut=st.one_of(st.none(), st.floats(0, 1)))
def test_damaged_zip_bytes_give_a_data_error_or_a_safe_extraction(entries, flips, cut):
    data = bytearray(_zip(entries))
    for where, value in flips:
        if data:
            data[int(where * len(data))] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    _extract_checked(bytes(data))


@FUZZ
@given(data=st.one_of(st.binary(max_size=512), mutated_image().map(lambda t: t[0])),
       shape=st.sampled_from([(8, 8, 1), (16, 16, 3)]))
def test_decode_upload_returns_an_image_or_a_data_error(data, shape):
    """The Score-images page decodes uploads in memory with doc_core.explain.gallery.decode_upload: same property."""
    from doc_core.explain.gallery import decode_upload

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = decode_upload(data, "upload.bin", shape, max_pixels=1_000_000)
    except DataError as exc:
        assert "upload.bin" in str(exc)
    else:
        assert arr.dtype == np.uint8 and arr.shape == shape
