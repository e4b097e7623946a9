"""Score images with an exported edge bundle: a LiteRT (TFLite) model plus a k-NN memory bank, numpy only.

This file is standalone on purpose: it imports only the Python standard library, ``numpy`` and ``ai_edge_litert``
(``onnxruntime`` instead for an ONNX bundle; Pillow is used when installed, for JPEG and other formats; without it
PNG, PGM/PPM and ``.npy`` files are read by the small decoders below). It never imports TensorFlow, Keras or
``doc_core``. ``doc_core.export`` copies it into every bundle as ``scorer.py``, so on the device::

    pip install numpy ai-edge-litert            # no TensorFlow needed (onnxruntime for model.onnx)
    python scorer.py IMAGE [IMAGE ...]          # JSON out: score, threshold, verdict per image
    python scorer.py --bundle DIR --threads 2 IMAGE ...

or from Python::

    from scorer import EdgeScorer
    s = EdgeScorer("path/to/bundle")
    scores = s.score_samples(images)            # uint8 (n, h, w, c) -> float32 (n,), higher = more anomalous

Bundle layout (``bundle.json`` describes it; nothing is pickled)::

    bundle.json   format, version, input shape/dtype, preprocessing, k, threshold, quantization, provenance
    model.tflite  uint8 images (b, H, W, C) -> features float32 (b, d); resizing and normalisation are inside
                  (or model.onnx, run by onnxruntime, when bundle.json says "runtime": "onnxruntime")
    bank.npy      float32 (n, d): features of the normal training images, computed by this very model
    scorer.py     this file
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np

BUNDLE_FORMAT = "doc-explorer-edge-bundle"
BUNDLE_FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"


class BundleError(ValueError):
    """A bundle folder is missing files, or its JSON or arrays do not fit together."""


# ------------------------------------------------------------------------------------------------ image reading


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    """Undo PNG scanline filters; returns uint8 (height, stride)."""
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    pos = 0
    for y in range(height):
        ftype = raw[pos]
        line = np.frombuffer(raw, np.uint8, stride, pos + 1).copy()
        pos += 1 + stride
        if ftype == 1:  # Sub: cumulative sum per byte lane, mod 256
            for lane in range(bpp):
                line[lane::bpp] = np.cumsum(line[lane::bpp], dtype=np.uint64).astype(np.uint8)
        elif ftype == 2:  # Up
            line = (line.astype(np.uint16) + prev).astype(np.uint8)
        elif ftype in (3, 4):  # Average, Paeth: sequential along the row
            cur = bytearray(line.tobytes())
            up = prev.tobytes()
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                if ftype == 3:
                    cur[i] = (cur[i] + ((left + up[i]) >> 1)) & 0xFF
                else:
                    upleft = up[i - bpp] if i >= bpp else 0
                    cur[i] = (cur[i] + _paeth(left, up[i], upleft)) & 0xFF
            line = np.frombuffer(bytes(cur), np.uint8)
        elif ftype != 0:
            raise ValueError(f"bad PNG filter type {ftype}")
        out[y] = line
        prev = line
    return out


def decode_png(data: bytes) -> np.ndarray:
    """Decode a non-interlaced 8- or 16-bit PNG (gray, RGB, palette, with or without alpha) to uint8 (h, w, c).

    Alpha is composited on white, as :func:`doc_core.data.read_image` does. 16-bit samples keep their high byte.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, palette, trns = 8, [], None, None
    width = height = depth = ctype = interlace = None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"tRNS":
            trns = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if width is None or not idat:
        raise ValueError("truncated PNG")
    if interlace:
        raise ValueError("interlaced PNG needs Pillow (pip install pillow)")
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(ctype)
    if channels is None or depth not in {0: (1, 2, 4, 8, 16), 3: (1, 2, 4, 8)}.get(ctype, (8, 16)):
        raise ValueError(f"unsupported PNG (color type {ctype}, bit depth {depth}); install Pillow")
    raw = zlib.decompress(b"".join(idat))
    bits = channels * depth
    stride = (width * bits + 7) // 8
    rows = _unfilter(raw, height, stride, max(1, bits // 8))
    if depth < 8:  # packed gray or palette indices
        px = np.unpackbits(rows, axis=1).reshape(height, -1, depth)[:, :width]
        vals = (px * (1 << np.arange(depth - 1, -1, -1))).sum(-1).astype(np.uint8)
        if ctype == 0:
            vals = (vals.astype(np.uint16) * 255 // ((1 << depth) - 1)).astype(np.uint8)
        img = vals[..., None]
    elif depth == 16:
        img = rows.reshape(height, width, channels, 2)[..., 0]
    else:
        img = rows.reshape(height, width, channels)
    alpha = None
    if ctype == 3:
        if palette is None:
            raise ValueError("palette PNG without a palette")
        idx = img[..., 0]
        rgb = palette[np.minimum(idx, len(palette) - 1)]
        if trns is not None:
            a = np.full(256, 255, np.uint8)
            a[:len(trns)] = np.frombuffer(trns, np.uint8)
            alpha = a[idx]
        img = rgb
    elif ctype in (4, 6):
        img, alpha = img[..., :-1], img[..., -1]
    if alpha is not None:
        a = alpha.astype(np.float32)[..., None] / 255.0
        img = np.round(img.astype(np.float32) * a + 255.0 * (1.0 - a)).astype(np.uint8)
    return np.ascontiguousarray(img)


def decode_netpbm(data: bytes) -> np.ndarray:
    """Decode a binary PGM (P5) or PPM (P6) with maxval < 256 to uint8 (h, w, 1 or 3)."""
    fields, pos = [], 2
    while len(fields) < 3:
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(int(data[pos:end]))
        pos = end
    width, height, maxval = fields
    if maxval > 255:
        raise ValueError("16-bit PGM/PPM needs Pillow")
    channels = 1 if data[:2] == b"P5" else 3
    img = np.frombuffer(data, np.uint8, width * height * channels, pos + 1).reshape(height, width, channels)
    return img if maxval == 255 else (img.astype(np.uint16) * 255 // maxval).astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file into uint8 (h, w, c), c in {1, 3}.

    ``.npy`` files hold a uint8 array (h, w) or (h, w, c) (no pickle). PNG and binary PGM/PPM are decoded here;
    anything else (JPEG, BMP, ...) needs Pillow, which is used for every format when it is installed.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
            raise ValueError(f"{path}: .npy images must be uint8 (h, w) or (h, w, c), got {arr.dtype} {arr.shape}")
        return arr[..., None] if arr.ndim == 2 else arr
    try:
        from PIL import Image, ImageOps
    except ImportError:
        data = path.read_bytes()
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return decode_png(data)
        if data[:2] in (b"P5", b"P6"):
            return decode_netpbm(data)
        raise ValueError(f"{path}: only PNG, PGM/PPM and .npy can be read without Pillow (pip install pillow)")
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        gray = im.mode in ("L", "LA", "1", "I;16", "I;16B", "I;16L", "I", "F")
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        if gray and im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = (np.asarray(im, np.uint32) >> 8).astype(np.uint8)[..., None]  # high byte, as decode_png
        elif gray:
            arr = np.asarray(im.convert("L"), np.uint8)[..., None]
        else:
            arr = np.asarray(im.convert("RGB"), np.uint8)
    return arr


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: area averaging when shrinking, bilinear (half-pixel centres) when enlarging."""
    if n_in == n_out:
        return np.eye(n_out, dtype=np.float64)
    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    if n_out < n_in:
        for i in range(n_out):
            lo, hi = i * scale, (i + 1) * scale
            for j in range(int(np.floor(lo)), min(n_in, int(np.ceil(hi)))):
                m[i, j] = min(hi, j + 1) - max(lo, j)
        return m / scale
    for i in range(n_out):
        x = (i + 0.5) * scale - 0.5
        x0 = int(np.floor(x))
        w = x - x0
        m[i, min(max(x0, 0), n_in - 1)] += 1.0 - w
        m[i, min(max(x0 + 1, 0), n_in - 1)] += w
    return m


def fit_image(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Bring a uint8 image (h, w, c) to the bundle's input ``shape`` (H, W, C).

    Gray becomes RGB by repetition, RGB becomes gray by the ITU-R 601 luma weights (as Pillow's ``convert("L")``);
    the size changes by area averaging when shrinking and bilinear interpolation when enlarging (as
    :func:`doc_core.data.resize_image`). Returns uint8 (H, W, C).
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    h, w, c = shape
    if img.shape[-1] != c:
        if c == 3:
            img = np.repeat(img[..., :1], 3, axis=-1)
        else:
            img = np.round(img[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[..., None]
    if img.shape[:2] != (h, w):
        ry, rx = _resize_matrix(img.shape[0], h), _resize_matrix(img.shape[1], w)
        img = np.einsum("ij,jkc,lk->ilc", ry, img.astype(np.float64), rx)
    return np.clip(np.round(img), 0, 255).astype(np.uint8) if img.dtype != np.uint8 else img


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

    Parameters
    ----------
    bundle : str or Path
        The bundle folder (holding ``bundle.json``).
    num_threads : int
        Interpreter (or onnxruntime intra-op) threads; 1 = one CPU core for the model.

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
    """

    def __init__(self, bundle: str | os.PathLike, num_threads: int = 1) -> None:
        self.bundle = Path(bundle)
        self.num_threads = num_threads
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
        self.bank_ = np.load(self.bundle / cfg["bank"], allow_pickle=False).astype(np.float32, copy=False)
        if self.bank_.ndim != 2 or self.bank_.shape[1] != int(cfg["feature_dim"]) or len(self.bank_) < self.k_:
            raise BundleError(f"bank of shape {self.bank_.shape} does not fit feature_dim {cfg['feature_dim']} "
                              f"and k {self.k_}")
        self._bank_sq = np.einsum("ij,ij->i", self.bank_, self.bank_)
        self._run = ModelRunner(self.bundle / cfg["model"], self.input_shape_, cfg.get("runtime", "litert"),
                                num_threads)

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
            return np.zeros((0, self.bank_.shape[1]), np.float32)
        return np.concatenate([self._run(np.ascontiguousarray(images[i:i + batch_size]))
                               for i in range(0, len(images), batch_size)])

    def score_features(self, features: np.ndarray) -> np.ndarray:
        """Anomaly scores of features (m, d) -> float32 (m,): mean distance to the k nearest bank vectors."""
        return knn_mean_distance(features, self.bank_, self.k_, self._bank_sq)

    def score_samples(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Anomaly scores of uint8 images (n, H, W, C) -> float32 (n,); higher = more anomalous."""
        return self.score_features(self.embed(images, batch_size))

    def predict(self, images: np.ndarray) -> np.ndarray:
        """1 (anomaly) where the score is above ``threshold_``, else 0; int64 (n,)."""
        return (self.score_samples(images) > self.threshold_).astype(np.int64)

    def score_files(self, paths: list[str]) -> dict:
        """Read, fit and score image files; unreadable ones are listed under ``skipped``."""
        images, ok, skipped = [], [], []
        for p in paths:
            try:
                images.append(fit_image(read_image(p), self.input_shape_))
                ok.append(str(p))
            except Exception as exc:  # noqa: BLE001 - report any unreadable file and go on
                skipped.append({"path": str(p), "reason": f"{type(exc).__name__}: {exc}"})
        scores = self.score_samples(np.stack(images)) if images else np.zeros(0, np.float32)
        return {"threshold": self.threshold_,
                "results": [{"path": p, "score": float(s), "anomalous": bool(s > self.threshold_)}
                            for p, s in zip(ok, scores)],
                "skipped": skipped}

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
    args = p.parse_args(argv)
    bundle = Path(args.bundle) if args.bundle else here
    try:
        scorer = EdgeScorer(bundle, num_threads=args.threads)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = scorer.score_files(args.images)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0 if result["results"] else 1


if __name__ == "__main__":
    sys.exit(main())
