"""The edge scorer's image readers and resize under untrusted input (issue #10, finding 3).

Regression tests for each finding (a 5-byte PGM that hung, PNGs that inflated to gigabytes, a Pillow path that decoded
any size, an O(h*w*H*W) resize), then property-based fuzzing with hypothesis like tests/test_fuzz_loaders.py:
bounded, derandomized, no deadline (``HYPOTHESIS_MAX_EXAMPLES`` fuzzes longer). No test asserts a wall-clock time;
``pytest.mark.timeout`` only turns a hang into a failure.
"""

from __future__ import annotations

import os
import struct
import sys
import tracemalloc
import zlib
from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from doc_core.edge import edge_scorer as es
from doc_core.edge.edge_scorer import ImageError, decode_netpbm, decode_png, fit_image, read_image, resize

N = int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "60"))
FUZZ = settings(max_examples=N, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
DEPTHS = {0: (1, 2, 4, 8, 16), 3: (1, 2, 4, 8), 2: (8, 16), 4: (8, 16), 6: (8, 16)}


# ------------------------------------------------------------------------------------------------ helpers


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def make_png(width: int, height: int, depth: int, ctype: int, idat: bytes, palette: bytes | None = None,
             trns: bytes | None = None, compress: bool = True) -> bytes:
    """A PNG with the given header and image data (``idat`` is the raw filtered rows unless ``compress=False``)."""
    out = es._PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, ctype, 0, 0, 0))
    if palette is not None:
        out += _chunk(b"PLTE", palette)
    if trns is not None:
        out += _chunk(b"tRNS", trns)
    return out + _chunk(b"IDAT", zlib.compress(idat) if compress else idat) + _chunk(b"IEND", b"")


@contextmanager
def peak_memory():
    """Yields a dict whose "peak" is the tracemalloc peak (bytes) of the block (numpy allocations included)."""
    result = {}
    tracemalloc.start()
    try:
        yield result
    finally:
        result["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


@contextmanager
def without_pillow():
    with mock.patch.dict(sys.modules, {"PIL": None}):
        yield


def _check_decoded(arr: np.ndarray, max_pixels: int) -> None:
    assert isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] in (1, 3)
    assert 1 <= arr.shape[0] * arr.shape[1] <= max_pixels


# ------------------------------------------------------------------------------------------------ regressions


def test_pixel_limit_is_the_main_pipelines():
    from doc_core.data import MAX_IMAGE_PIXELS

    assert es.MAX_PIXELS == MAX_IMAGE_PIXELS


@pytest.mark.timeout(30)
@pytest.mark.parametrize("data", [b"P5\n28", b"P5", b"P5 ", b"P6\n2 2", b"P5\n2 2 255", b"P5 # comment", b"P5\n2 x",
                                  b"P5\n2 2 255\n\x00", b"P5\n99999999999 1 255\n", b"P5\n2 2 0\n\x00\x00\x00\x00"])
def test_truncated_netpbm_is_an_error_not_a_hang(data, tmp_path):
    with pytest.raises(ImageError):
        decode_netpbm(data)
    (tmp_path / "x.pgm").write_bytes(data)
    with without_pillow(), pytest.raises(ImageError, match="x.pgm"):
        read_image(tmp_path / "x.pgm")


def test_netpbm_reads_comments_and_scales_maxval():
    img = decode_netpbm(b"P5 # a comment\n3\r2 # another\n15\n" + bytes([0, 15, 16, 5, 10, 255]))
    assert img.shape == (2, 3, 1)
    assert img[..., 0].tolist() == [[0, 255, 255], [85, 170, 255]]
    rgb = decode_netpbm(b"P6 1 1 255 " + b"\x01\x02\x03")
    assert rgb.tolist() == [[[1, 2, 3]]]


@pytest.mark.timeout(30)
def test_png_header_over_the_limit_is_refused_before_decompression(tmp_path):
    data = make_png(100_000, 100_000, 8, 2, b"\x00" * 1000)
    with peak_memory() as mem, pytest.raises(ImageError, match="100000x100000 pixels"):
        decode_png(data)
    assert mem["peak"] < 1_000_000  # the old decoder went to gigabytes
    (tmp_path / "huge.png").write_bytes(data)
    with pytest.raises(ImageError):  # the Pillow path (Pillow's own bomb check fires first at this size)
        read_image(tmp_path / "huge.png")
    with pytest.raises(ImageError, match="70000x1"):
        decode_png(make_png(70_000, 1, 8, 0, b"\x00" * 70_001))  # under the pixel limit, over MAX_SIDE


@pytest.mark.timeout(60)
def test_png_decompression_bomb_is_refused_in_bounded_memory():
    bomb = zlib.compress(b"\x00" * 20_000_000, 9)  # 20 MB of zeros in about 20 KB
    data = make_png(100, 100, 8, 0, bomb, compress=False)  # the header declares 100 * 101 bytes
    assert len(data) < 50_000
    with peak_memory() as mem, pytest.raises(ImageError, match="inflates beyond"):
        decode_png(data)
    assert mem["peak"] < 2_000_000


def test_png_image_data_and_chunk_count_are_bounded(monkeypatch):
    # deflate needs at most ~1/8 more than the raw size: empty stored blocks inflate to nothing but are refused
    padding = b"\x78\x01" + b"\x00\x00\x00\xff\xff" * 20_000
    with pytest.raises(ImageError, match="larger than a 10x10 image can need"):
        decode_png(make_png(10, 10, 8, 0, padding, compress=False))
    monkeypatch.setattr(es, "MAX_PNG_CHUNKS", 50)
    good = make_png(4, 4, 8, 0, b"\x00" * 20)
    assert decode_png(good).shape == (4, 4, 1)
    many = good[:33] + _chunk(b"tEXt", b"") * 60 + good[33:]
    with pytest.raises(ImageError, match="more than 50 chunks"):
        decode_png(many)


def test_truncated_png_is_an_error():
    raw = np.random.default_rng(0).integers(0, 256, (8, 1 + 8 * 3), dtype=np.uint8)
    raw[:, 0] = np.arange(8) % 5  # every filter type; random bytes do not compress, so every cut loses pixels
    good = make_png(8, 8, 8, 2, raw.tobytes())
    assert decode_png(good).shape == (8, 8, 3)
    for cut in range(len(good) - 12 - 4 - 4):  # the IEND chunk, IDAT's CRC and zlib's checksum are not needed
        with pytest.raises(ImageError):
            decode_png(good[:cut])


def _jpeg_header(width: int, height: int) -> bytes:
    """A JPEG's first markers up to the start of scan: enough for Pillow to report the size, no pixel data."""
    dqt = b"\xff\xdb" + struct.pack(">H", 67) + b"\x00" + bytes(range(1, 65))
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    dht = b"\xff\xc4" + struct.pack(">H", 20) + b"\x00" + b"\x01" + bytes(15) + b"\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00" + b"\x00\x3f\x00"
    return b"\xff\xd8" + dqt + sof + dht + sos + bytes(64) + b"\xff\xd9"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("size", [(12_000, 12_000), (9_000, 9_000), (60_000, 60_000)])
def test_pillow_path_refuses_a_huge_header_without_decoding(tmp_path, monkeypatch, size):
    path = tmp_path / "huge.jpg"
    path.write_bytes(_jpeg_header(*size))
    with monkeypatch.context() as m:
        m.setattr(Image, "MAX_IMAGE_PIXELS", None)
        with Image.open(path) as im:
            assert im.size == size  # a well-formed header: Pillow reads the size from it

    def no_decoding(self, *a, **k):
        raise AssertionError("decoded an image over the limit")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageError, match="huge.jpg"):
        read_image(path)


def test_pillow_path_follows_a_lower_limit_without_decoding(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    assert read_image(path).shape == (64, 64, 3)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: (_ for _ in ()).throw(AssertionError("decoded")))
    with pytest.raises(ImageError, match="64x64 pixels, more than the limit of 1,000 pixels"):
        read_image(path, max_pixels=1000)


def test_npy_is_size_checked_from_its_header(tmp_path):
    good = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.save(tmp_path / "good.npy", good)
    assert np.array_equal(read_image(tmp_path / "good.npy")[..., 0], good)
    np.save(tmp_path / "f.npy", np.asfortranarray(np.arange(24, dtype=np.uint8).reshape(2, 4, 3)))
    assert np.array_equal(read_image(tmp_path / "f.npy"), np.arange(24, dtype=np.uint8).reshape(2, 4, 3))
    header = {"descr": "|u1", "fortran_order": False, "shape": (100_000, 100_000)}
    with open(tmp_path / "huge.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
    with peak_memory() as mem, pytest.raises(ImageError, match="100000x100000"):
        read_image(tmp_path / "huge.npy")
    assert mem["peak"] < 1_000_000
    with open(tmp_path / "short.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {**header, "shape": (10, 10)})
        f.write(b"\x00" * 50)
    with pytest.raises(ImageError, match="truncated"):
        read_image(tmp_path / "short.npy")
    np.save(tmp_path / "obj.npy", np.array([[None]], dtype=object), allow_pickle=True)
    with pytest.raises(ImageError, match="uint8"):
        read_image(tmp_path / "obj.npy")


def test_resize_600_to_96_matches_the_main_pipeline_in_bounded_memory():
    from doc_core.data import resize_image

    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (600, 600, 3), dtype=np.uint8)
    big[:300] = (np.arange(600) % 256)[None, :, None]  # smooth half: interpolation errors would show
    with peak_memory() as mem:
        ours = fit_image(big, (96, 96, 3))
    assert ours.shape == (96, 96, 3) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - resize_image(big, 96).astype(int)).max() <= 1
    # O(input + output), in blocks: less than a float64 copy of the input (the old einsum made one, then did
    # h*w*H*W = 3.3e9 multiply-adds per channel)
    assert mem["peak"] < 6 * big.nbytes


@pytest.mark.timeout(120)  # a hang guard: the old einsum resize needed ~1e11 multiply-adds for this image
def test_resize_a_large_image_is_linear_in_its_size():
    img = np.random.default_rng(1).integers(0, 256, (3000, 2000, 3), dtype=np.uint8)
    with peak_memory() as mem:
        out = fit_image(img, (96, 96, 1))
    assert out.shape == (96, 96, 1)
    assert mem["peak"] < img.nbytes  # never a float copy of the whole input
    block = img[:31, :20].astype(float) @ [0.299, 0.587, 0.114]  # 3000/96 = 31.25 rows, 2000/96 = 20.83 columns
    assert abs(int(out[0, 0, 0]) - block.mean()) < 2


@pytest.mark.parametrize("src,dst", [((600, 600), (96, 96)), ((64, 48), (32, 32)), ((28, 28), (96, 96)),
                                     ((40, 200), (64, 64)), ((7, 3), (5, 2)), ((1, 1), (4, 4)), ((100, 33), (32, 32)),
                                     ((32, 32), (31, 31))])
@pytest.mark.parametrize("channels", [1, 3])
def test_resize_matches_opencv(src, dst, channels):
    import cv2

    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (*src, channels), dtype=np.uint8)
    interp = cv2.INTER_AREA if dst[0] < src[0] and dst[1] < src[1] else cv2.INTER_LINEAR
    ref = cv2.resize(img, dst[::-1], interpolation=interp).reshape(*dst, channels)
    ours = fit_image(img, (*dst, channels))
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1
    exact = resize(img, *dst)
    assert exact.dtype == np.float64 and exact.shape == (*dst, channels)


def test_fit_image_refuses_odd_channel_counts():
    with pytest.raises(ValueError, match="1 or 3"):
        fit_image(np.zeros((4, 4, 4), np.uint8), (2, 2, 3))


# ------------------------------------------------------------------------------------------------ fuzzing


@st.composite
def valid_png(draw) -> tuple[bytes, int]:
    """A structurally valid PNG: any color type and depth, random filter types (0-4) and row bytes."""
    ctype = draw(st.sampled_from(sorted(CHANNELS)))
    depth = draw(st.sampled_from(DEPTHS[ctype]))
    width, height = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    stride = (width * CHANNELS[ctype] * depth + 7) // 8
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    filters = rng.integers(0, 5 if draw(st.booleans()) else 3, height, dtype=np.uint8)
    rows = rng.integers(0, 256, (height, stride), dtype=np.uint8)
    palette = trns = None
    if ctype == 3:
        palette = rng.integers(0, 256, 768, dtype=np.uint8).tobytes()  # 256 entries: every index is in range
        if draw(st.booleans()):
            trns = rng.integers(0, 256, draw(st.integers(1, 256)), dtype=np.uint8).tobytes()
    raw = np.concatenate([filters[:, None], rows], axis=1).tobytes()
    return make_png(width, height, depth, ctype, raw, palette, trns), ctype * 100 + depth


def _mutate(draw, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["cut", "flip", "insert"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "cut":
            data = data[:pos]
        elif op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        else:
            data[pos:pos] = draw(st.binary(max_size=16))
    return bytes(data)


@st.composite
def png_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["random", "mutated", "prefix", "header"]))
    if kind == "random":
        return es._PNG_SIGNATURE + draw(st.binary(max_size=256))
    data, _ = draw(valid_png())
    if kind == "mutated":
        return _mutate(draw, data)
    if kind == "prefix":
        return data[:draw(st.integers(0, len(data)))]
    # a header claiming any size, ahead of the real (small) image data
    w, h = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
    return data[:16] + struct.pack(">II", w, h) + data[24:]


@st.composite
def netpbm_bytes(draw) -> bytes:
    magic = draw(st.sampled_from([b"P5", b"P6"]))
    w, h = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    maxval = draw(st.sampled_from([1, 15, 255, 256]))
    sep = draw(st.sampled_from([b" ", b"\n", b"\t", b" # c\n", b"\r\n"]))
    body = draw(st.binary(min_size=w * h * 3, max_size=w * h * 3 + 4))
    data = magic + sep + str(w).encode() + sep + str(h).encode() + sep + str(maxval).encode() + b"\n" + body
    kind = draw(st.sampled_from(["valid", "mutated", "prefix", "random"]))
    if kind == "mutated":
        return _mutate(draw, data)
    if kind == "prefix":
        return data[:draw(st.integers(0, len(data)))]
    if kind == "random":
        return magic + draw(st.binary(max_size=64))
    return data


@pytest.mark.timeout(120)
@FUZZ
@given(data=png_bytes())
def test_fuzz_png_decoder_returns_an_image_or_an_image_error(data):
    with peak_memory() as mem:
        try:
            arr = decode_png(data, max_pixels=4096)
        except ImageError:
            arr = None
    if arr is not None:
        _check_decoded(arr, 4096)
    assert mem["peak"] < 1_000_000


@pytest.mark.timeout(120)
@FUZZ
@given(data=netpbm_bytes())
def test_fuzz_netpbm_decoder_returns_an_image_or_an_image_error(data):
    with peak_memory() as mem:
        try:
            arr = decode_netpbm(data, max_pixels=4096)
        except ImageError:
            arr = None
    if arr is not None:
        _check_decoded(arr, 4096)
    assert mem["peak"] < 1_000_000


@pytest.mark.timeout(120)
@FUZZ
@given(png=valid_png())
def test_fuzz_png_decoder_agrees_with_pillow(png, tmp_path_factory):
    data, kind = png
    ours = decode_png(data)
    path = tmp_path_factory.mktemp("png") / "x.png"
    path.write_bytes(data)
    with Image.open(path) as im:
        mode = im.mode
    theirs = read_image(path)  # the Pillow path of the same module
    if kind == 416 and mode == "RGBA":  # Pillow opens 16-bit gray+alpha as RGBA: the same gray, three times
        assert (theirs == theirs[..., :1]).all()
        theirs = theirs[..., :1]
    assert ours.shape == theirs.shape
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


@pytest.mark.timeout(120)
@FUZZ
@given(data=st.one_of(png_bytes(), netpbm_bytes(), st.binary(max_size=128)),
       ext=st.sampled_from([".png", ".pgm", ".jpg", ".bin"]), pillow=st.booleans())
def test_fuzz_read_image_returns_an_image_or_an_image_error(data, ext, pillow, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / f"f{ext}"
    path.write_bytes(data)
    try:
        if pillow:
            arr = read_image(path, max_pixels=4096)
        else:
            with without_pillow():
                arr = read_image(path, max_pixels=4096)
    except ImageError as exc:
        assert path.name in str(exc)
    else:
        _check_decoded(arr, 4096)
        assert fit_image(arr, (8, 8, 3)).shape == (8, 8, 3)
