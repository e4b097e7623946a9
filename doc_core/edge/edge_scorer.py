"""Score images with an exported edge bundle: a LiteRT (TFLite) model plus a k-NN memory bank, numpy only.

This file is standalone on purpose: it imports only the Python standard library, ``numpy`` and ``ai_edge_litert``
(``onnxruntime`` instead for an ONNX bundle; Pillow is used when installed, for JPEG and other formats; without it
PNG, PGM/PPM and ``.npy`` files are read by the small decoders below). It never imports TensorFlow, Keras or
``doc_core``. Image files may come from anyone: every reader checks the pixel count from the header before decoding
(:data:`MAX_PIXELS`, :data:`MAX_SIDE`), decompression is bounded, truncated or corrupt files raise
:class:`ImageError` (a ``ValueError``), and resizing costs O(input + output).

``doc_core.edge.export`` copies this file into every bundle as ``scorer.py``, so on the device::

    pip install numpy ai-edge-litert            # no TensorFlow needed (onnxruntime for model.onnx)
    python scorer.py IMAGE [IMAGE ...]          # JSON out: score, threshold, verdict per image
    python scorer.py --bundle DIR --threads 2 IMAGE ...
    python scorer.py --max-pixels 4000000 IMAGE # refuse images over 4 MP (default MAX_PIXELS, 50 MP)

or from Python::

    from scorer import EdgeScorer
    s = EdgeScorer("path/to/bundle")
    scores = s.score_samples(images)            # uint8 (n, h, w, c) -> float32 (n,), higher = more anomalous
    maps = s.anomaly_maps(images)               # patch bundles: defect maps float32 (n, H, W)

Bundle layout (``bundle.json`` describes it; nothing is pickled)::

    bundle.json   format, version, input shape/dtype, preprocessing, k, threshold, quantization, provenance
    model.tflite  uint8 images (b, H, W, C) -> features float32 (b, d); resizing and normalisation are inside
                  (or model.onnx, run by onnxruntime, when bundle.json says "runtime": "onnxruntime")
    bank.npy      float32 (n, d): features of the normal training images, computed by this very model
    scorer.py     this file

A *patch* bundle (``"scorer": {"name": "patch", ...}``, from a patch detector) has a model that outputs patch maps
float32 (b, h, w, c) and a bank of patch features float32 (m, c); the scorer averages each position with its
neighbours, scores every patch by its mean distance to the k nearest bank patches, and aggregates the patch scores
to an image score (``image_score``: max, top10, top25, top50 or mean) or upsamples and smooths them to a defect map
(:meth:`EdgeScorer.anomaly_maps`), all in numpy, as ``doc_core.scoring.patch.PatchKNNScorer`` does::

    python scorer.py --maps OUTDIR IMAGE ...    # also writes OUTDIR/<image name>.npy: float32 (H, W) defect maps
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
import time
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

BUNDLE_FORMAT = "doc-explorer-edge-bundle"
BUNDLE_FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"


class BundleError(ValueError):
    """A bundle folder is missing files, or its JSON or arrays do not fit together."""


# ------------------------------------------------------------------------------------------------ image reading
#
# Limits for untrusted image files. Every decoder below reads the image size from the file header and refuses an
# image over these limits before it decodes (or allocates) anything; decompression stops at the size the header
# declares; every header parser advances or fails, so a truncated file is an ImageError, never a hang.

MAX_PIXELS = 50_000_000
"""Largest image (width x height) read, about 7,000 x 7,000; larger ones are refused from their header.

The same number as ``doc_core.data.images.MAX_IMAGE_PIXELS`` (duplicated because this file must run without
``doc_core``; ``tests/test_edge_scorer.py`` checks that the two agree). Lower it with ``read_image(..., max_pixels=)``,
``EdgeScorer(..., max_pixels=)`` or ``scorer.py --max-pixels`` on devices with little memory.
"""
MAX_SIDE = 65_535
"""Largest width or height read (the JPEG maximum); also bounds the built-in PNG decoder's time."""
MAX_PNG_CHUNKS = 200_000
"""Most chunks a PNG may have for the built-in decoder (libpng writes 8 KiB IDAT chunks: 50,000 for 400 MB)."""
MAX_NETPBM_HEADER = 65_536
"""Longest PGM/PPM header (comments included), in bytes."""
_BLOCK = 1 << 18  # elements handled per numpy call in the row/column loops below (bounds temporary memory)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageError(ValueError):
    """An image file is not readable: not an image, unsupported, truncated, corrupt, or over a size limit."""


def _check_size(width: int, height: int, max_pixels: int, what: str = "image") -> None:
    """Raise :class:`ImageError` unless 1 <= width, height <= MAX_SIDE and width * height <= max_pixels."""
    if width < 1 or height < 1:
        raise ImageError(f"{what} has an empty size ({width}x{height})")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > max_pixels:
        raise ImageError(f"{what} is {width}x{height} pixels, more than the limit of {max_pixels:,} pixels "
                         f"(and {MAX_SIDE:,} per side); it was not decoded (downscale it first)")


def _as_file(data: bytes | bytearray | memoryview | BinaryIO) -> BinaryIO:
    return io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    got = f.read(n)
    if len(got) < n:
        raise ImageError(f"truncated {what}")
    return got


class _BoundedInflater:
    """zlib-inflates pieces of a stream into a buffer that may never grow past ``size`` bytes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = bytearray()
        self._z = zlib.decompressobj()

    def feed(self, data: bytes) -> None:
        while data and not self._z.eof:
            room = self.size - len(self.buf)
            try:
                out = self._z.decompress(data, min(room + 1, 1 << 22))
            except zlib.error as exc:
                raise ImageError(f"corrupt PNG image data ({exc})") from exc
            if len(out) > room:
                raise ImageError(f"PNG image data inflates beyond the {self.size:,} bytes its header declares")
            self.buf += out
            if not out and len(self._z.unconsumed_tail) >= len(data):
                break  # no progress (cannot happen with zlib, but never loop on it)
            data = self._z.unconsumed_tail


def _unfilter_rows(raw: np.ndarray, bpp: int) -> np.ndarray:
    """Undo PNG scanline filters, with numpy only; raw uint8 (h, 1 + stride) -> uint8 (h, stride).

    Images whose rows use only the None, Sub and Up filters are undone with a few numpy calls per block of rows.
    Average and Paeth depend on the pixel to the left, above and above-left, so they go along anti-diagonals
    (the pixels with x + y = t for t = 0, 1, ...): width + height - 1 numpy steps, each over a whole diagonal.
    """
    ftypes = raw[:, 0]
    if len(ftypes) and int(ftypes.max()) > 4:
        raise ImageError(f"bad PNG filter type {int(ftypes.max())}")
    if np.isin(ftypes, (3, 4)).any():
        return _unfilter_diagonals(raw, bpp)
    h, stride = raw.shape[0], raw.shape[1] - 1
    out = np.empty((h, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    rows_per_block = max(1, _BLOCK // max(stride, 1))
    for y0 in range(0, h, rows_per_block):
        ft, data = ftypes[y0:y0 + rows_per_block], raw[y0:y0 + rows_per_block, 1:]
        blk = out[y0:y0 + len(ft)]
        blk[...] = data
        sub = np.flatnonzero(ft == 1)
        if len(sub):  # Sub: running sum along each byte lane of the row, mod 256
            rows = blk[sub].reshape(len(sub), -1, bpp)
            blk[sub] = np.cumsum(rows, axis=1, dtype=np.uint8).reshape(len(sub), stride)
        up = ft == 2
        if up.any():  # Up: running sum down the column since the last row that is not Up (or the previous block)
            csum = np.cumsum(np.where(up[:, None], data, 0), axis=0, dtype=np.uint8)
            ext_vals = np.concatenate([prev[None], blk])  # row 0: the row above this block
            ext_csum = np.concatenate([np.zeros((1, stride), np.uint8), csum])
            anchor = np.maximum.accumulate(np.where(np.concatenate([[False], up]), 0, np.arange(len(ft) + 1)))
            rows = np.flatnonzero(up) + 1
            blk[rows - 1] = ext_vals[anchor[rows]] + ext_csum[rows] - ext_csum[anchor[rows]]
        prev = blk[-1]
    return out


def _unfilter_diagonals(raw: np.ndarray, bpp: int) -> np.ndarray:
    h, stride = raw.shape[0], raw.shape[1] - 1
    wp = stride // bpp  # pixels per row (bytes per row when the bit depth is below 8)
    ftypes = raw[:, 0]
    # rows of each filter type before row y, to see which types a diagonal meets with five look-ups
    before = [[0] + np.cumsum(ftypes == k).tolist() for k in range(5)]
    # padded output: pixel (y, x) at flat pixel index (y + 1) * (wp + 1) + x + 1; row 0 and column 0 stay zero
    pad = np.zeros(((h + 1) * (wp + 1), bpp), np.uint8)
    flat = raw.reshape(-1)
    row_step = stride + 1 - bpp  # bytes from pixel (y, x) to (y + 1, x - 1) in raw
    for t in range(wp + h - 1):
        y0, y1 = max(0, t - wp + 1), min(h - 1, t)
        n = y1 - y0 + 1
        start = (y0 + 1) * (wp + 1) + (t - y0) + 1  # pixel (y0, t - y0); the next is (y0 + 1, t - y0 - 1)
        stop = start + (n - 1) * wp + 1
        cur = pad[start:stop:wp]
        left, up = pad[start - 1:stop - 1:wp], pad[start - wp - 1:stop - wp - 1:wp]
        r = np.lib.stride_tricks.as_strided(flat[y0 * (stride + 1) + 1 + (t - y0) * bpp:], (n, bpp), (row_step, 1),
                                            writeable=False)
        kinds = [k for k in range(5) if before[k][y1 + 1] > before[k][y0]]
        preds = []
        for k in kinds:
            if k == 0:
                preds.append(np.zeros((1, 1), np.uint8))
            elif k == 1:
                preds.append(left)
            elif k == 2:
                preds.append(up)
            elif k == 3:
                preds.append(((left.astype(np.uint16) + up) >> 1).astype(np.uint8))
            else:
                a, b = left.astype(np.int16), up.astype(np.int16)
                c = pad[start - wp - 2:stop - wp - 2:wp].astype(np.int16)  # up-left
                pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
                preds.append(np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c)).astype(np.uint8))
        if len(kinds) == 1:
            pred = preds[0]
        elif len(kinds) == 5:
            pred = np.choose(ftypes[y0:y1 + 1, None], preds)
        else:
            pred = np.zeros((n, bpp), np.uint8)
            rows = ftypes[y0:y1 + 1, None]
            for k, pk in zip(kinds, preds):
                np.copyto(pred, pk, where=rows == k)
        np.add(r, pred, out=cur)  # mod 256
    return pad.reshape(h + 1, (wp + 1) * bpp)[1:, bpp:]


def _composite_on_white(img: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 colour (h, w, c) and alpha (h, w) -> uint8 (h, w, c) over white, exact integer rounding, in blocks."""
    out = np.empty(img.shape, np.uint8)
    rows = max(1, _BLOCK // max(img.shape[1] * img.shape[2], 1))
    for y in range(0, img.shape[0], rows):
        a = alpha[y:y + rows, :, None].astype(np.uint16)
        v = img[y:y + rows].astype(np.uint16) * a + 255 * (255 - a)  # <= 65,025
        out[y:y + rows] = (v + 127) // 255
    return out


def decode_png(data: bytes | BinaryIO, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a non-interlaced 1- to 16-bit PNG (gray, RGB, palette, with or without alpha) to uint8 (h, w, c).

    ``c`` is 1 (gray) or 3. Alpha is composited on white, as :func:`doc_core.data.images.read_image` does; 16-bit
    samples keep their high byte. ``data`` is the file's bytes or a binary file open for reading.

    Safe for untrusted files: the size in the header is checked (``max_pixels``, :data:`MAX_SIDE`) before anything is
    decompressed; the image data may not inflate beyond the size the header declares, nor be more than 1/8 larger
    than it compressed; at most :data:`MAX_PNG_CHUNKS` chunks are read. Memory stays within a few times the
    decoded size, time is linear in the pixel count (plus width + height numpy steps for Average/Paeth filters).

    Raises
    ------
    ImageError
        For anything that is not such a PNG, or is truncated, corrupt or too large.
    """
    f = _as_file(data)
    if f.read(8) != _PNG_SIGNATURE:
        raise ImageError("not a PNG file")
    length, kind = struct.unpack(">I4s", _read_exact(f, 8, "PNG header"))
    if kind != b"IHDR" or length != 13:
        raise ImageError("PNG without a valid IHDR chunk")
    width, height, depth, ctype, comp, filt, interlace = struct.unpack(">IIBBBBB", _read_exact(f, 13, "PNG header"))
    _read_exact(f, 4, "PNG header")  # CRC
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(ctype)
    if channels is None or depth not in {0: (1, 2, 4, 8, 16), 3: (1, 2, 4, 8)}.get(ctype, (8, 16)):
        raise ImageError(f"unsupported PNG (color type {ctype}, bit depth {depth}); install Pillow")
    if comp != 0 or filt != 0 or interlace not in (0, 1):
        raise ImageError("bad PNG header (compression, filter or interlace method)")
    if interlace:
        raise ImageError("interlaced PNG needs Pillow (pip install pillow)")
    _check_size(width, height, max_pixels, "PNG image")
    bits = channels * depth
    stride = (width * bits + 7) // 8
    expected = height * (stride + 1)
    max_idat = expected + expected // 8 + 65_536  # deflate never needs more (stored blocks: +5 bytes per 64 KiB)
    inflater = _BoundedInflater(expected)
    palette = trns = None
    idat_bytes, chunks = 0, 1
    while True:
        head = f.read(8)
        if len(head) < 8:
            break  # end of file without IEND: accepted if the image data is complete
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise ImageError(f"PNG with more than {MAX_PNG_CHUNKS:,} chunks")
        length, kind = struct.unpack(">I4s", head)
        if length > 0x7FFFFFFF:
            raise ImageError("bad PNG chunk length")
        if kind == b"IDAT":
            idat_bytes += length
            if idat_bytes > max_idat:
                raise ImageError(f"PNG image data ({idat_bytes:,} bytes so far) is larger than a "
                                 f"{width}x{height} image can need")
            left = length
            while left:
                piece = f.read(min(left, 1 << 20))
                if not piece:
                    break  # truncated: found below, by the missing image data
                left -= len(piece)
                inflater.feed(piece)
        elif kind == b"PLTE":
            if length == 0 or length > 768 or length % 3:
                raise ImageError(f"bad PNG palette ({length} bytes)")
            palette = np.frombuffer(_read_exact(f, length, "PNG palette"), np.uint8).reshape(-1, 3)
        elif kind == b"tRNS" and ctype == 3:
            trns = _read_exact(f, length, "PNG transparency")[:256]
        elif kind == b"IEND":
            break
        elif kind == b"IHDR":
            raise ImageError("PNG with two IHDR chunks")
        else:
            f.seek(length, 1)
        f.read(4)  # CRC (not checked)
    if idat_bytes == 0:
        raise ImageError("PNG without image data")
    if len(inflater.buf) < expected:
        raise ImageError(f"truncated PNG image data ({len(inflater.buf):,} of {expected:,} bytes)")
    raw = np.frombuffer(inflater.buf, np.uint8).reshape(height, stride + 1)
    rows = _unfilter_rows(raw, max(1, bits // 8))
    del raw, inflater
    if depth < 8:  # packed gray levels or palette indices, most significant bits first
        shifts = np.arange(8 - depth, -1, -depth, dtype=np.uint8)
        vals = ((rows[:, :, None] >> shifts) & ((1 << depth) - 1)).reshape(height, -1)[:, :width]
        if ctype == 0:
            vals = vals * np.uint8(255 // ((1 << depth) - 1))  # 1 -> 255, 2 -> 85, 4 -> 17: exact
        img = vals[..., None]
    elif depth == 16:
        img = rows.reshape(height, width, channels, 2)[..., 0]
    else:
        img = rows.reshape(height, width, channels)
    alpha = None
    if ctype == 3:
        if palette is None:
            raise ImageError("palette PNG without a palette")
        idx = np.minimum(img[..., 0], len(palette) - 1)
        if trns is not None:
            a = np.full(256, 255, np.uint8)
            a[:len(trns)] = np.frombuffer(trns, np.uint8)
            alpha = a[idx]
        img = palette[idx]
    elif ctype in (4, 6):
        img, alpha = img[..., :-1], img[..., -1]
    if alpha is not None:
        img = _composite_on_white(img, alpha)
    return np.ascontiguousarray(img)


def decode_netpbm(data: bytes | BinaryIO, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a binary PGM (P5) or PPM (P6) with maxval < 256 to uint8 (h, w, 1 or 3).

    ``data`` is the file's bytes or a binary file open for reading. The header (at most
    :data:`MAX_NETPBM_HEADER` bytes, ``#`` comments allowed) is parsed so that every step advances or fails, and the
    size is checked before the pixels are read. Samples above maxval are clipped to it.

    Raises
    ------
    ImageError
        For anything that is not such a file, or is truncated or too large.
    """
    f = _as_file(data)
    base = f.tell()
    magic = f.read(2)
    if magic not in (b"P5", b"P6"):
        raise ImageError("not a binary PGM/PPM (P5/P6) file")
    head = f.read(MAX_NETPBM_HEADER)
    fields: list[int] = []
    pos = 0
    if not head[:1].isspace():
        raise ImageError("bad PGM/PPM header")
    while len(fields) < 3:
        if pos >= len(head):
            raise ImageError("truncated PGM/PPM header" if len(head) < MAX_NETPBM_HEADER else
                             f"PGM/PPM header longer than {MAX_NETPBM_HEADER:,} bytes")
        ch = head[pos:pos + 1]
        if ch.isspace():
            pos += 1
        elif ch == b"#":
            ends = [i for i in (head.find(b"\n", pos), head.find(b"\r", pos)) if i >= 0]
            if not ends:
                raise ImageError("truncated PGM/PPM header")
            pos = min(ends) + 1
        elif ch.isdigit():
            end = pos
            while end < len(head) and head[end:end + 1].isdigit():
                end += 1
            if end - pos > 9:
                raise ImageError("bad PGM/PPM header (number too long)")
            fields.append(int(head[pos:end]))
            pos = end
        else:
            raise ImageError(f"bad PGM/PPM header (unexpected {ch!r})")
    if pos >= len(head) or not head[pos:pos + 1].isspace():
        raise ImageError("truncated PGM/PPM header")
    width, height, maxval = fields
    if not 0 < maxval < 65536:
        raise ImageError(f"bad PGM/PPM maxval {maxval}")
    if maxval > 255:
        raise ImageError("16-bit PGM/PPM needs Pillow (pip install pillow)")
    _check_size(width, height, max_pixels, "PGM/PPM image")
    channels = 1 if magic == b"P5" else 3
    n = width * height * channels
    f.seek(base + 2 + pos + 1)
    buf = bytearray(_read_exact(f, n, "PGM/PPM pixel data"))
    img = np.frombuffer(buf, np.uint8).reshape(height, width, channels)
    if maxval == 255:
        return img
    return (np.minimum(img, maxval).astype(np.uint16) * 255 // maxval).astype(np.uint8)


def _read_npy(path: Path, max_pixels: int) -> np.ndarray:
    """A uint8 (h, w) or (h, w, 1 or 3) ``.npy`` file, size-checked from its header; never unpickles."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        try:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except (ValueError, OSError, SyntaxError, TypeError) as exc:
            raise ImageError(f"{path}: not a readable .npy file ({exc})") from exc
        if dtype != np.uint8 or len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
            raise ImageError(f"{path}: .npy images must be uint8 (h, w) or (h, w, 1 or 3), got {dtype} {shape}")
        _check_size(int(shape[1]), int(shape[0]), max_pixels, str(path))
        n = int(np.prod(shape))
        buf = bytearray(n)
        if f.readinto(buf) != n:
            raise ImageError(f"{path}: truncated .npy file")
    arr = np.frombuffer(buf, np.uint8).reshape(shape, order="F" if fortran else "C")
    return arr[..., None] if arr.ndim == 2 else arr


def _read_with_pillow(path: Path, max_pixels: int, Image, ImageOps) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # our own limit is checked below, from the header; Pillow's bomb warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_size(im.width, im.height, max_pixels, str(path))  # before anything is decoded
                im = ImageOps.exif_transpose(im)
                gray = im.mode in ("L", "LA", "1", "I;16", "I;16B", "I;16L", "I", "F")
                if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    im = im.convert("RGBA")
                    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(bg, im)
                if gray and im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = (np.clip(np.asarray(im, np.int32), 0, 65535) >> 8).astype(np.uint8)[..., None]  # high byte
                elif gray:
                    arr = np.asarray(im.convert("L"), np.uint8)[..., None]
                else:
                    arr = np.asarray(im.convert("RGB"), np.uint8)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: too many pixels to decode safely ({exc}); it was not decoded") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        raise ImageError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc
    _check_size(arr.shape[1], arr.shape[0], max_pixels, str(path))
    return arr


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file into uint8 (h, w, c), c in {1, 3}.

    ``.npy`` files hold a uint8 array (h, w) or (h, w, 1 or 3) (no pickle). PNG and binary PGM/PPM are decoded here;
    anything else (JPEG, BMP, ...) needs Pillow, which is used for every format when it is installed.

    The pixel count is checked from the file's header before anything is decoded, by every path: images over
    ``max_pixels`` (default :data:`MAX_PIXELS`) or :data:`MAX_SIDE` per side are refused.

    Raises
    ------
    ImageError
        (a ``ValueError``) for an unreadable, unsupported, truncated, corrupt or oversized file, naming it.
    OSError
        When the built-in decoders cannot open the file at all.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return _read_npy(path, max_pixels)
    try:
        from PIL import Image, ImageOps
    except ImportError:
        with open(path, "rb") as f:
            magic = f.read(8)
            f.seek(0)
            try:
                if magic == _PNG_SIGNATURE:
                    return decode_png(f, max_pixels)
                if magic[:2] in (b"P5", b"P6"):
                    return decode_netpbm(f, max_pixels)
            except ImageError as exc:
                raise ImageError(f"{path}: {exc}") from exc
        raise ImageError(f"{path}: only PNG, PGM/PPM and .npy can be read without Pillow (pip install pillow)")
    return _read_with_pillow(path, max_pixels, Image, ImageOps)


def _area_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Shrink (h, w, c) along ``axis`` (0 or 1) to ``n_out`` by exact area averaging; float64 out.

    Output i averages the input interval [i * n_in / n_out, (i + 1) * n_in / n_out), partial pixels weighted by
    their overlap (as OpenCV's INTER_AREA). Sums go through :func:`numpy.add.reduceat` over blocks of the other
    axis, so time is O(input) and temporary memory is O(output of this pass + one block).
    """
    n_in = x.shape[axis]
    i = np.arange(n_out, dtype=np.int64)
    j0 = -(-i * n_in // n_out)  # first whole input pixel of output i (ceil); strictly increasing as n_in > n_out
    hi = (i + 1) * n_in
    j1 = hi // n_out  # input pixel straddling the end of output i, when r > 0
    r = hi - j1 * n_out  # its overlap with output i, in units of 1 / n_out
    cut = np.flatnonzero(r > 0)  # reduceat counts those pixels wholly in output i; move (1 - r) of them to i + 1
    shape = [1, 1, 1]
    shape[axis] = -1
    w_cut = ((n_out - r[cut]) / n_out).reshape(shape)
    other = 1 - axis
    out_shape = list(x.shape)
    out_shape[axis] = n_out
    out = np.empty(out_shape, np.float64)
    step = max(1, _BLOCK // max(n_in * x.shape[2], 1))
    for s in range(0, x.shape[other], step):
        blk = [slice(None)] * 3
        blk[other] = slice(s, s + step)
        xb = x[tuple(blk)]
        seg = np.add.reduceat(xb, j0, axis=axis, dtype=np.float64)
        moved = w_cut * np.take(xb, j1[cut], axis=axis)
        at, nxt = [slice(None)] * 3, [slice(None)] * 3
        at[axis], nxt[axis] = cut, cut + 1
        seg[tuple(at)] -= moved
        seg[tuple(nxt)] += moved
        out[tuple(blk)] = seg * (n_out / n_in)
    return out


def _linear_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Resample (h, w, c) along ``axis`` to ``n_out`` by linear interpolation (half-pixel centres, edges clamped,
    as OpenCV's INTER_LINEAR); float64 out, O(output of this pass) time and memory."""
    n_in = x.shape[axis]
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    x0 = np.floor(src).astype(np.intp)
    frac = src - x0
    x0 = np.minimum(x0, n_in - 1)
    x1 = np.minimum(x0 + 1, n_in - 1)
    shape = [1, 1, 1]
    shape[axis] = -1
    frac = frac.reshape(shape)
    return np.take(x, x0, axis=axis) * (1.0 - frac) + np.take(x, x1, axis=axis) * frac


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 (h, w, c) to float64 (height, width, c), unrounded.

    Area averaging when both sides shrink, else bilinear interpolation on both (the choice
    :func:`doc_core.data.images.resize_image` makes with OpenCV). Separable: one pass per axis, the cheaper order first,
    so time and memory are O(input + output) (never h * w * height * width).
    """
    h, w = image.shape[:2]
    one = _area_axis if (height < h and width < w) else _linear_axis

    def along(x, n, axis):
        return x if x.shape[axis] == n else one(x, n, axis)

    if height * w <= h * width:
        return along(along(image, height, 0), width, 1).astype(np.float64, copy=False)
    return along(along(image, width, 1), height, 0).astype(np.float64, copy=False)


def fit_image(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Bring a uint8 image (h, w, c), c in {1, 3}, to the bundle's input ``shape`` (H, W, C).

    Gray becomes RGB by repetition, RGB becomes gray by the ITU-R 601 luma weights (as Pillow's ``convert("L")``);
    the size changes by :func:`resize` (area averaging when shrinking, bilinear interpolation when enlarging, as
    :func:`doc_core.data.images.resize_image`), in O(input + output) time. Returns uint8 (H, W, C).
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3) or min(img.shape[:2]) < 1:
        raise ValueError(f"an image must be (h, w, 1 or 3), got {img.shape}")
    h, w, c = shape
    out = img if img.shape[:2] == (h, w) else resize(img, h, w)
    if out.shape[-1] != c:
        if c == 3:
            out = np.repeat(out, 3, axis=-1)
        else:
            out = out[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
            out = out[..., None]
    return out if out.dtype == np.uint8 else np.clip(np.round(out), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ scoring


def knn_mean_distance(queries: np.ndarray, bank: np.ndarray, k: int, bank_sq: np.ndarray | None = None,
                      batch_size: int = 1024) -> np.ndarray:
    """Mean Euclidean distance of each query to its ``k`` nearest bank vectors.

    Parameters
    ----------
    queries : np.ndarray, float32, shape (m, d)
    bank : np.ndarray, float32, shape (n, d)
    k : int, 1 <= k <= n
    bank_sq : np.ndarray, shape (n,), optional
        Precomputed squared norms of the bank rows.

    Returns
    -------
    np.ndarray, float32, shape (m,), >= 0; higher = farther from the normal data
    """
    q = np.asarray(queries, np.float32)
    bank_sq = np.einsum("ij,ij->i", bank, bank) if bank_sq is None else bank_sq
    out = np.empty(len(q), np.float32)
    for s in range(0, len(q), batch_size):
        b = q[s:s + batch_size]
        d2 = np.einsum("ij,ij->i", b, b)[:, None] + bank_sq[None, :] - 2.0 * (b @ bank.T)
        part = np.partition(d2, k - 1, axis=1)[:, :k] if k < len(bank) else d2
        out[s:s + len(b)] = np.sqrt(np.maximum(part, 0.0)).mean(axis=1)
    return out


# ------------------------------------------------------------------------------------------------ patch scoring
#
# numpy twins of doc_core.scoring.patch (neighbourhood_average, resize_bilinear, aggregate_patch_scores) and of
# scipy.ndimage.gaussian_filter(mode="nearest"), so a patch bundle needs neither doc_core nor scipy.

PATCH_IMAGE_SCORES = ("max", "top10", "top25", "top50", "mean")
"""Image-score rules of a patch bundle (``doc_core.scoring.patch.IMAGE_SCORES``)."""
PATCH_TOP_FRACTIONS = {"top10": 10, "top25": 4, "top50": 2}
"""``topN``: the mean of the ceil(p / d) highest of p patch scores (``doc_core.scoring.patch.TOP_FRACTIONS``)."""
SIGMA_AT_224 = 4.0
"""Gaussian smoothing of the defect maps, in pixels at 224 x 224 (``doc_core.scoring.patch.DEFAULT_SIGMA_AT_224``)."""


def _box_mean_axis(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Mean over a centred window of odd ``size`` along ``axis``, edges repeated; float32 out (as scipy's
    ``uniform_filter1d(mode="nearest")`` on float32 input)."""
    r = size // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    c = np.cumsum(np.pad(x.astype(np.float64), pad, mode="edge"), axis=axis)
    zero = np.zeros_like(np.take(c, [0], axis=axis))
    c = np.concatenate([zero, c], axis=axis)
    n = x.shape[axis]
    hi = np.take(c, np.arange(size, size + n), axis=axis)
    lo = np.take(c, np.arange(0, n), axis=axis)
    return ((hi - lo) / size).astype(np.float32)


def neighbourhood_average(maps: np.ndarray, size: int) -> np.ndarray:
    """Mean of each position's ``size x size`` neighbourhood, channel by channel, edges repeated.

    maps float (n, h, w, c) -> float32 (n, h, w, c); ``size`` odd, 1 = unchanged (as
    ``doc_core.scoring.patch.neighbourhood_average``).
    """
    out = np.asarray(maps, np.float32)
    if size == 1:
        return out
    return _box_mean_axis(_box_mean_axis(out, size, 1), size, 2)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of linear interpolation, half-pixel centres, edges clamped."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    r = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(r, (rows, i0), 1.0 - frac)
    np.add.at(r, (rows, i1), frac)
    return r.astype(np.float32)


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (half-pixel centres, as cv2 ``INTER_LINEAR``) of float (n, h, w) to float32 (n, H, W)."""
    arr = np.asarray(maps, np.float32)
    out_h, out_w = (int(v) for v in size)
    if arr.shape[1:3] == (out_h, out_w):
        return arr
    ry, rx = _interp_matrix(out_h, arr.shape[1]), _interp_matrix(out_w, arr.shape[2])
    return np.matmul(np.matmul(ry, arr), rx.T).astype(np.float32, copy=False)


def gaussian_smooth(maps: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Gaussian smoothing of float (n, H, W) along H then W, edges repeated -> float32 (n, H, W).

    The kernel of ``scipy.ndimage.gaussian_filter(maps, (0, sigma, sigma), mode="nearest")``: radius
    ``int(truncate * sigma + 0.5)``, weights ``exp(-x^2 / (2 sigma^2))`` normalised to sum 1; 0 = unchanged.
    """
    out = np.asarray(maps, np.float32)
    if sigma <= 0:
        return out
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 / (float(sigma) ** 2) * x ** 2)
    weights /= weights.sum()
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(out.astype(np.float64), pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros(out.shape, np.float64)
        for j, wj in enumerate(weights):
            acc += wj * np.take(padded, np.arange(j, j + n), axis=axis)
        out = acc.astype(np.float32)
    return out


def aggregate_patch_scores(patch_scores: np.ndarray, how: str) -> np.ndarray:
    """Image scores float32 (n,) from patch scores (n, ...): ``max``, ``top10`` / ``top25`` / ``top50`` (mean of the
    ceil(p/10) / ceil(p/4) / ceil(p/2) highest of p patches) or ``mean`` (as
    ``doc_core.scoring.patch.aggregate_patch_scores``)."""
    arr = np.asarray(patch_scores, np.float32)
    flat = arr.reshape(len(arr), int(np.prod(arr.shape[1:])))  # also for no images
    if how == "max":
        return flat.max(axis=1)
    if how == "mean":
        return flat.mean(axis=1, dtype=np.float64).astype(np.float32)
    divisor = PATCH_TOP_FRACTIONS.get(how)
    if divisor is None:
        raise ValueError(f"unknown image score {how!r}; expected one of {', '.join(PATCH_IMAGE_SCORES)}")
    top = -(-flat.shape[1] // divisor)
    return np.partition(flat, flat.shape[1] - top, axis=1)[:, -top:].mean(axis=1, dtype=np.float64).astype(np.float32)


class ModelRunner:
    """Runs a bundle's model on uint8 batches (b, H, W, C) -> float32 features (b, d).

    Parameters
    ----------
    path : str or Path
        ``model.tflite`` (runtime ``litert``) or ``model.onnx`` (runtime ``onnxruntime``).
    input_shape : tuple (H, W, C)
    runtime : {"litert", "onnxruntime"}
    num_threads : int
    """

    def __init__(self, path: str | os.PathLike, input_shape: tuple[int, int, int], runtime: str = "litert",
                 num_threads: int = 1) -> None:
        self.input_shape = tuple(input_shape)
        self.runtime = runtime
        if runtime == "onnxruntime":
            try:
                import onnxruntime as ort
            except ImportError as exc:
                raise ImportError("this bundle holds an ONNX model: pip install onnxruntime") from exc
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = num_threads
            opts.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            self._input_name = self._session.get_inputs()[0].name
            return
        if runtime != "litert":
            raise BundleError(f"unknown runtime {runtime!r}; expected 'litert' or 'onnxruntime'")
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise ImportError("the edge scorer needs the LiteRT interpreter: pip install ai-edge-litert "
                              "(numpy is the only other requirement)") from exc
        self._interp = Interpreter(model_path=str(path), num_threads=num_threads)
        self._in = self._interp.get_input_details()[0]["index"]
        self._out = self._interp.get_output_details()[0]["index"]
        self._batch = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, np.uint8)
        if self.runtime == "onnxruntime":
            out = self._session.run(None, {self._input_name: batch})[0]
            return np.asarray(out, np.float32).reshape(len(batch), -1)
        if self._batch != len(batch):
            self._interp.resize_tensor_input(self._in, [len(batch), *self.input_shape])
            self._interp.allocate_tensors()
            self._batch = len(batch)
        self._interp.set_tensor(self._in, batch)
        self._interp.invoke()
        return self._interp.get_tensor(self._out).reshape(len(batch), -1).astype(np.float32)


class EdgeScorer:
    """A loaded bundle: LiteRT model + memory bank + threshold.

    A k-NN bundle scores an image by the mean distance of its feature vector to the k nearest bank vectors; a patch
    bundle (``kind_ == "patch"``) scores each patch of the model's patch maps that way and aggregates them
    (``image_score_``), and also gives defect maps (:meth:`anomaly_maps`).

    Parameters
    ----------
    bundle : str or Path
        The bundle folder (holding ``bundle.json``).
    num_threads : int
        Interpreter (or onnxruntime intra-op) threads; 1 = one CPU core for the model.
    max_pixels : int
        :meth:`score_files` refuses image files with more pixels than this (checked from their headers).

    Attributes
    ----------
    config_ : dict
        ``bundle.json``.
    bank_ : np.ndarray, float32, shape (n, d)
    k_ : int
    threshold_ : float
        Images with a score above it are called anomalous.
    input_shape_ : tuple of int
        (H, W, C) the model takes (uint8).
    kind_ : {"knn", "patch"}
    neighbourhood_, image_score_, map_shape_ : int, str, (h, w)
        Patch bundles only (None otherwise): the neighbourhood averaged around each patch, how patch scores become
        an image score, and the patch grid the model outputs (its channels are ``bank_.shape[1]``).
    """

    def __init__(self, bundle: str | os.PathLike, num_threads: int = 1, max_pixels: int = MAX_PIXELS) -> None:
        self.bundle = Path(bundle)
        self.num_threads = num_threads
        self.max_pixels = int(max_pixels)
        cfg_path = self.bundle / BUNDLE_JSON
        if not cfg_path.is_file():
            raise BundleError(f"{self.bundle} is not an edge bundle (no {BUNDLE_JSON})")
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{cfg_path} is not valid JSON: {exc}") from exc
        if not isinstance(cfg, dict) or cfg.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{cfg_path} is not a {BUNDLE_FORMAT}")
        if cfg.get("format_version") != BUNDLE_FORMAT_VERSION:
            raise BundleError(f"{cfg_path} has format version {cfg.get('format_version')!r}; this scorer reads "
                              f"version {BUNDLE_FORMAT_VERSION}")
        self.config_ = cfg
        self.k_ = int(cfg["scorer"]["k"])
        self.threshold_ = float(cfg["threshold"])
        self.input_shape_ = tuple(int(v) for v in cfg["input"]["shape"])
        self.kind_ = cfg["scorer"].get("name", "knn") if isinstance(cfg["scorer"], dict) else None
        self.neighbourhood_ = self.image_score_ = self.map_shape_ = None
        if self.kind_ == "patch":
            self._read_patch_config(cfg)
        elif self.kind_ != "knn":
            raise BundleError(f"{cfg_path}: unknown scorer {self.kind_!r}; this scorer reads 'knn' and 'patch'")
        self.bank_ = np.load(self.bundle / cfg["bank"], allow_pickle=False).astype(np.float32, copy=False)
        if self.bank_.ndim != 2 or self.bank_.shape[1] != int(cfg["feature_dim"]) or len(self.bank_) < self.k_:
            raise BundleError(f"bank of shape {self.bank_.shape} does not fit feature_dim {cfg['feature_dim']} "
                              f"and k {self.k_}")
        if self.kind_ == "patch" and self.bank_.shape[1] != self._channels:
            raise BundleError(f"bank of shape {self.bank_.shape} does not fit the {self._channels} channels of the "
                              "patch maps recorded in bundle.json")
        if not np.isfinite(self.bank_).all():
            raise BundleError("the bank holds NaN or infinite values")
        self._bank_sq = np.einsum("ij,ij->i", self.bank_, self.bank_)
        self._run = ModelRunner(self.bundle / cfg["model"], self.input_shape_, cfg.get("runtime", "litert"),
                                num_threads)

    def _read_patch_config(self, cfg: dict) -> None:
        """Check and keep a patch bundle's scorer settings (``bundle.json`` may come from anyone)."""
        sc = cfg["scorer"]

        def integer(key: str, value) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BundleError(f"bundle.json scorer {key} must be an integer >= 1, got {value!r}")
            return value

        self.k_ = integer("k", sc.get("k"))
        self.neighbourhood_ = integer("neighbourhood", sc.get("neighbourhood"))
        if self.neighbourhood_ % 2 == 0:
            raise BundleError(f"bundle.json scorer neighbourhood must be odd, got {self.neighbourhood_}")
        if sc.get("image_score") not in PATCH_IMAGE_SCORES:
            raise BundleError(f"bundle.json scorer image_score must be one of {', '.join(PATCH_IMAGE_SCORES)}, got "
                              f"{sc.get('image_score')!r}")
        self.image_score_ = sc["image_score"]
        grid = sc.get("map_shape")
        if not isinstance(grid, list) or len(grid) != 2:
            raise BundleError(f"bundle.json scorer map_shape must be [h, w], got {grid!r}")
        self.map_shape_ = (integer("map_shape", grid[0]), integer("map_shape", grid[1]))
        self._channels = integer("channels", sc.get("channels"))
        sigma = sc.get("smoothing_sigma_at_224", SIGMA_AT_224)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma < 1e6:
            raise BundleError(f"bundle.json scorer smoothing_sigma_at_224 must be a number >= 0, got {sigma!r}")
        self._sigma_at_224 = float(sigma)

    def embed(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Features of uint8 images -> float32 (n, d).

        ``images`` is uint8 (n, h, w, c) or (n, h, w); images not at the bundle's input shape (H, W, C) are brought
        to it with :func:`fit_image` first (exact for gray <-> RGB repetition, resampled for other sizes).
        """
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (n, h, w, c), got {images.dtype} {images.shape}")
        if tuple(images.shape[1:]) != self.input_shape_:
            images = np.stack([fit_image(im, self.input_shape_) for im in images]) if len(images) else \
                np.zeros((0, *self.input_shape_), np.uint8)
        if len(images) == 0:
            return np.zeros((0, self._output_dim()), np.float32)
        out = np.concatenate([self._run(np.ascontiguousarray(images[i:i + batch_size]))
                              for i in range(0, len(images), batch_size)])
        if self.kind_ == "patch" and out.shape[1] != self._output_dim():
            raise BundleError(f"the model gives {out.shape[1]} values per image, bundle.json expects "
                              f"{self._output_dim()}")
        return out

    def _output_dim(self) -> int:
        if self.kind_ == "patch":
            return self.map_shape_[0] * self.map_shape_[1] * self.bank_.shape[1]
        return self.bank_.shape[1]

    def patch_scores(self, features: np.ndarray) -> np.ndarray:
        """Patch scores of a patch bundle's model outputs (m, h * w * c) (or maps (m, h, w, c)) -> float32 (m, h, w).

        Each position's neighbourhood-averaged feature: mean distance to its k nearest bank patches; higher = more
        anomalous.
        """
        if self.kind_ != "patch":
            raise BundleError("patch scores need a patch bundle; this bundle scores pooled features (k-NN)")
        (h, w), c = self.map_shape_, self.bank_.shape[1]
        maps = np.asarray(features, np.float32).reshape(-1, h, w, c)
        out = np.empty((len(maps), h, w), np.float32)
        step = max(1, 8192 // (h * w))  # bounded working memory for any number of images
        for s in range(0, len(maps), step):
            block = neighbourhood_average(maps[s:s + step], self.neighbourhood_)
            out[s:s + len(block)] = knn_mean_distance(block.reshape(-1, c), self.bank_, self.k_,
                                                      self._bank_sq).reshape(len(block), h, w)
        return out

    def score_features(self, features: np.ndarray) -> np.ndarray:
        """Anomaly scores of model outputs -> float32 (m,); higher = more anomalous.

        k-NN bundle: features (m, d), mean distance to the k nearest bank vectors. Patch bundle: flattened patch
        maps (m, h * w * c), the patch scores (:meth:`patch_scores`) aggregated by ``image_score_``.
        """
        if self.kind_ == "patch":
            return aggregate_patch_scores(self.patch_scores(features), self.image_score_)
        return knn_mean_distance(features, self.bank_, self.k_, self._bank_sq)

    def score_samples(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Anomaly scores of uint8 images (n, H, W, C) -> float32 (n,); higher = more anomalous."""
        return self.score_features(self.embed(images, batch_size))

    def anomaly_maps(self, images: np.ndarray, size: tuple[int, int] | None = None,
                     batch_size: int = 32) -> np.ndarray:
        """Defect maps of a patch bundle: uint8 images (n, h, w, c) -> float32 (n, H, W), higher = more anomalous.

        The patch scores upsampled bilinearly to ``size`` (default the bundle's input (H, W)) and smoothed with a
        Gaussian of sigma ``4 * (H + W) / 2 / 224`` pixels, edges repeated: the same numbers (to float32 rounding) as
        ``DOCDetector.anomaly_maps`` / ``PatchKNNScorer.anomaly_maps``, in score units.

        Raises
        ------
        BundleError
            For a k-NN bundle (it scores pooled features and has no patch scores).
        """
        if self.kind_ != "patch":
            raise BundleError("defect maps need a patch bundle (exported from a patch detector); this bundle scores "
                              "pooled features with k-NN")
        out_h, out_w = self.input_shape_[:2] if size is None else (int(v) for v in size)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"size must be two integers >= 1, got {size!r}")
        return self._maps_of_patch_scores(self.patch_scores(self.embed(images, batch_size)), (out_h, out_w),
                                          batch_size)

    def _maps_of_patch_scores(self, patches: np.ndarray, size: tuple[int, int], batch_size: int = 32) -> np.ndarray:
        """Patch scores float32 (m, h, w) upsampled to ``size`` and smoothed -> float32 (m, H, W)."""
        out_h, out_w = size
        sigma = self._sigma_at_224 * (out_h + out_w) / 2.0 / 224.0
        out = np.empty((len(patches), out_h, out_w), np.float32)
        for s in range(0, len(patches), batch_size):
            up = resize_maps(patches[s:s + batch_size], (out_h, out_w))
            out[s:s + len(up)] = gaussian_smooth(up, sigma)
        return out

    def predict(self, images: np.ndarray) -> np.ndarray:
        """1 (anomaly) where the score is above ``threshold_``, else 0; int64 (n,)."""
        return (self.score_samples(images) > self.threshold_).astype(np.int64)

    def score_files(self, paths: list[str], maps_dir: str | os.PathLike | None = None) -> dict:
        """Read, fit and score image files; unreadable or oversized ones are listed under ``skipped``.

        ``maps_dir`` (patch bundles): also write each image's defect map there, float32 (H, W) at the bundle's input
        size, as ``<file name>.npy`` (``<index>-<file name>.npy`` when two files share a name); each result then
        names its ``map`` file. Existing files there are replaced.
        """
        if maps_dir is not None and self.kind_ != "patch":
            raise BundleError("defect maps need a patch bundle (exported from a patch detector); this bundle scores "
                              "pooled features with k-NN")
        images, ok, skipped = [], [], []
        for p in paths:
            try:
                images.append(fit_image(read_image(p, self.max_pixels), self.input_shape_))
                ok.append(str(p))
            except Exception as exc:  # noqa: BLE001 - report any unreadable file and go on
                skipped.append({"path": str(p), "reason": f"{type(exc).__name__}: {exc}"})
        if maps_dir is None:
            scores = self.score_samples(np.stack(images)) if images else np.zeros(0, np.float32)
            return {"threshold": self.threshold_,
                    "results": [{"path": p, "score": float(s), "anomalous": bool(s > self.threshold_)}
                                for p, s in zip(ok, scores)],
                    "skipped": skipped}
        feats = self.embed(np.stack(images)) if images else np.zeros((0, self._output_dim()), np.float32)
        patches = self.patch_scores(feats)  # one k-NN search gives both the scores and the maps
        scores = aggregate_patch_scores(patches, self.image_score_)
        maps = self._maps_of_patch_scores(patches, self.input_shape_[:2])
        folder = Path(maps_dir)
        folder.mkdir(parents=True, exist_ok=True)
        names = [Path(p).name for p in ok]
        results = []
        for i, (p, s, m) in enumerate(zip(ok, scores, maps)):
            name = names[i] if names.count(names[i]) == 1 else f"{i}-{names[i]}"
            np.save(folder / f"{name}.npy", m, allow_pickle=False)
            results.append({"path": p, "score": float(s), "anomalous": bool(s > self.threshold_),
                            "map": str(folder / f"{name}.npy")})
        return {"threshold": self.threshold_, "results": results, "skipped": skipped}

    def time_per_image(self, images: np.ndarray, repeats: int = 1, warmup: int = 5) -> dict:
        """Milliseconds per image at batch size 1: model, k-NN and both (end to end, on this process's cores)."""
        images = np.asarray(images)
        for im in images[:warmup]:
            self.score_samples(im[None], batch_size=1)
        t_model = t_knn = 0.0
        n = 0
        for _ in range(repeats):
            for im in images:
                t0 = time.perf_counter()
                f = self._run(np.ascontiguousarray(im[None]))
                t1 = time.perf_counter()
                self.score_features(f)
                t_knn += time.perf_counter() - t1
                t_model += t1 - t0
                n += 1
        return {"model_ms": 1000 * t_model / n, "knn_ms": 1000 * t_knn / n, "total_ms": 1000 * (t_model + t_knn) / n,
                "images": n}


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(prog="scorer.py", description="Score images with a DOC Explorer edge bundle "
                                "(LiteRT or onnxruntime + numpy). Prints JSON: each image's anomaly score "
                                "(higher = more anomalous) "
                                "and verdict at the bundle's threshold.")
    p.add_argument("images", nargs="+", help="image files: PNG, PGM/PPM or uint8 .npy (any format with Pillow)")
    p.add_argument("--bundle", default=None,
                   help="bundle folder (default: the folder this script is in, if it holds bundle.json)")
    p.add_argument("--threads", type=int, default=1, help="LiteRT interpreter / onnxruntime threads (default 1)")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.add_argument("--maps", default=None, metavar="DIR",
                   help="patch bundles: also write each image's defect map (float32 (H, W), higher = more anomalous) "
                        "to DIR/<image file name>.npy")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"skip images with more pixels than this, checked from their headers (default {MAX_PIXELS:,})")
    args = p.parse_args(argv)
    bundle = Path(args.bundle) if args.bundle else here
    try:  # this process is ours: Pillow's own bomb limit follows ours (read_image checks it before decoding anyway)
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = args.max_pixels
    except ImportError:
        pass
    try:
        scorer = EdgeScorer(bundle, num_threads=args.threads, max_pixels=args.max_pixels)
        if args.maps is not None and scorer.kind_ != "patch":
            raise BundleError("--maps needs a patch bundle (exported from a patch detector); this bundle scores "
                              "pooled features with k-NN")
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = scorer.score_files(args.images, maps_dir=args.maps)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0 if result["results"] else 1


if __name__ == "__main__":
    sys.exit(main())
