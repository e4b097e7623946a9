"""Edge export: a fitted :class:`DOCDetector` as a self-contained LiteRT bundle scored without TensorFlow.

A bundle is a folder::

    bundle.json   format and version, input shape/dtype, preprocessing, scorer (k-NN, k), threshold, quantization,
                  runtime, sizes and where it came from
    model.tflite  uint8 images (b, H, W, C) -> features float32 (b, d); resize, gray->RGB and the backbone's
                  normalisation are inside the model, so the device only decodes images
                  (``model.onnx`` instead for ``format="onnx"``: the same graph via tf2onnx, run by onnxruntime)
    bank.npy      float32 (n, d): features of the normal training images (optionally a random subsample)
    scorer.py     a copy of :mod:`doc_core.edge.edge_scorer` (numpy + ai_edge_litert or onnxruntime; Pillow optional)

A **patch detector** (``scorer.name == "patch"``) is exported the same way, but the model outputs its patch maps
float32 (b, h, w, c) (the patch layers, coarser ones resized bilinearly to the finest grid inside the model and the
channels concatenated, as :func:`doc_core.scoring.patch.combine_maps`), ``bank.npy`` holds the detector's patch bank
float32 (m, c) as it is, and the scorer averages neighbourhoods, scores patches by k-NN and aggregates them (image
score) or upsamples and smooths them (defect maps, ``EdgeScorer.anomaly_maps``) in numpy, as
:class:`doc_core.scoring.patch.PatchKNNScorer` does. Patch bundles are float32 only (``quantize="none"``) and keep
the whole patch bank and the detector's threshold.

Quantization (``quantize``):

``none``
    float32 weights; the features equal the Keras detector's to ~1e-6 and the detector's bank is used as it is.
``float16``
    weights stored as float16 (half the size), computed in float32.
``int8``
    full-integer quantization with float fallback, calibrated on normal *training* images only (never test data).

For ``float16``/``int8`` the bank is recomputed by the quantized model itself from the normal training images (when
they are available), so a query and its neighbours carry the same quantization error; the threshold is then moved
to the same quantile of the bundle's leave-one-out training scores as the detector's threshold is of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..model.detector import DOCDetector
from ..scoring.knn import knn_distances, subsample_bank
from ..scoring.patch import DEFAULT_SIGMA_AT_224
from ..workflow.output_folders import OutputKind, check_target, install_folder, prepare_save
from .edge_scorer import BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, BUNDLE_JSON, EdgeScorer

EXPORT_FORMATS = ("tflite", "onnx")
QUANTIZATIONS = ("none", "float16", "int8")
MODEL_FILES = {"tflite": "model.tflite", "onnx": "model.onnx"}
RUNTIMES = {"tflite": "litert", "onnx": "onnxruntime"}
MODEL_FILE, BANK_FILE, SCORER_FILE = MODEL_FILES["tflite"], "bank.npy", "scorer.py"
BUNDLE_FOLDER = OutputKind("edge bundle", BUNDLE_JSON, BUNDLE_FORMAT, frozenset({BUNDLE_JSON, BANK_FILE, SCORER_FILE}),
                           frozenset({BUNDLE_JSON, BANK_FILE, SCORER_FILE, *MODEL_FILES.values(), "__pycache__"}))
"""A folder :func:`export_bundle` writes (``__pycache__`` appears when its scorer is imported); only such a folder (or
an empty one) is replaced without ``force``."""


class ExportError(ValueError):
    """The detector cannot be exported as asked; the message says what to change."""


@dataclass(frozen=True)
class ExportConfig:
    """How to export.

    Parameters
    ----------
    format : {"tflite", "onnx"}
        ``onnx`` needs tf2onnx to export and onnxruntime to score, and is float32 only (``quantize="none"``).
    quantize : {"none", "float16", "int8"}
    input_shape : tuple (H, W, C) or None
        Shape of the uint8 images the model takes. None: the detector's training images (28x28x1 for
        Fashion-MNIST, image_size x image_size x 3 for folder datasets), else (input_size, input_size, 3).
    max_bank_size : int or None
        Keep a random subset of at most this many bank vectors (smaller bundle, faster k-NN).
    calibration_size : int
        Normal training images used to calibrate int8 (a random subset).
    reembed_bank : bool or None
        Recompute the bank with the exported model. None: yes for float16/int8 when normal images are given.
    calibration_extremes : bool
        Add synthetic images spanning the whole uint8 range (see :func:`range_images`) to the int8 calibration set,
        so that anomalies brighter or darker than any normal image are not clipped by the quantized input layers.
    seed : int
        Seeds the calibration subset and the bank subsample.
    """

    format: str = "tflite"
    quantize: str = "none"
    input_shape: tuple[int, int, int] | None = None
    max_bank_size: int | None = None
    calibration_size: int = 200
    reembed_bank: bool | None = None
    calibration_extremes: bool = True
    seed: int = 0

    def validate(self) -> None:
        if self.format not in EXPORT_FORMATS:
            raise ExportError(f"unknown export format {self.format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
        if self.quantize not in QUANTIZATIONS:
            raise ExportError(f"unknown quantization {self.quantize!r}; choose one of {', '.join(QUANTIZATIONS)}")
        if self.format == "onnx" and self.quantize != "none":
            raise ExportError("ONNX bundles are float32 only (quantize='none'); use format='tflite' for float16/int8")
        if self.input_shape is not None and (len(self.input_shape) != 3 or self.input_shape[2] not in (1, 3)
                                             or min(self.input_shape[:2]) < 1):
            raise ExportError(f"input_shape must be (H, W, 1 or 3), got {self.input_shape}")
        if self.calibration_size < 1:
            raise ExportError(f"calibration_size must be at least 1, got {self.calibration_size}")


def infer_input_shape(detector: DOCDetector, path: str | os.PathLike | None = None) -> tuple[int, int, int]:
    """The shape (H, W, C) of the images the detector was trained on, else (input_size, input_size, 3).

    Read from a dashboard run's ``run.json`` dataset when ``path`` is a run folder, else from the detector's saved
    metadata (``split``): 28x28x1 for Fashion-MNIST, image_size x image_size x 3 for folder datasets.
    """
    if path is not None and (Path(path) / "run.json").is_file():
        dataset = json.loads((Path(path) / "run.json").read_text()).get("dataset") or {}
        if dataset.get("kind") == "fashion-mnist":
            return (28, 28, 1)
        if dataset.get("kind") == "folder" and dataset.get("image_size"):
            return (int(dataset["image_size"]), int(dataset["image_size"]), 3)
    meta = getattr(detector, "metadata_", {}) or {}
    split = meta.get("split") or {}
    if split.get("source") == "fashion-mnist":
        return (28, 28, 1)
    if split.get("source") == "folder" and split.get("image_size"):
        s = int(split["image_size"])
        return (s, s, 3)
    s = int(detector.backbone_.config.input_size)
    return (s, s, 3)


def _served(detector: DOCDetector):
    """What the exported model computes from a uint8 batch, and the Keras model whose weights it uses.

    k-NN detector: the pooled features float32 (b, d). Patch detector: the patch maps float32 (b, h, w, c) of
    ``detector.backbone_.patch_layers(detector.scorer.patch_layers)``, coarser maps resized bilinearly (half-pixel
    centres, as :func:`doc_core.scoring.patch.resize_bilinear`) to the largest grid and the channels concatenated in
    layer order (:func:`doc_core.scoring.patch.combine_maps`).
    """
    import tensorflow as tf

    import keras

    from ..model.backbones import preprocess

    model, cfg = detector.backbone_.model, detector.backbone_.config
    if not detector.is_patch:
        return (lambda images: model(preprocess(images, cfg), training=False)), model
    layers = detector.backbone_.patch_layers(detector.scorer.patch_layers)
    sub = keras.Model(model.input, [model.get_layer(name).output for name in layers], name="patch_maps")

    def maps(images):
        outs = sub(preprocess(images, cfg), training=False)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        h, w = max(int(o.shape[1]) for o in outs), max(int(o.shape[2]) for o in outs)
        outs = [o if (int(o.shape[1]), int(o.shape[2])) == (h, w) else
                tf.image.resize(o, (h, w), method="bilinear", antialias=False) for o in outs]
        return outs[0] if len(outs) == 1 else tf.concat(outs, axis=-1)

    return maps, sub


def _bundle_header(model_file: str, fmt: str, shape: tuple[int, int, int], bb) -> dict:
    """The part of ``bundle.json`` that k-NN and patch bundles share: format, files, input and preprocessing."""
    return {
        "format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION,
        "model": model_file, "runtime": RUNTIMES[fmt], "bank": BANK_FILE, "scorer_script": SCORER_FILE,
        "input": {"shape": list(shape), "dtype": "uint8", "range": [0, 255], "batch": "dynamic (default 1)"},
        "preprocessing": {
            "in_model": True,
            "steps": [f"cast to float32; bilinear resize (half-pixel centres) to {bb.input_size}x{bb.input_size} "
                      "if the input differs", "gray repeated to RGB" if shape[2] == 1 else "RGB as given",
                      "BGR, minus ImageNet channel means" if bb.name == "vgg16" else "x / 127.5 - 1"],
            "outside_model": "the scorer converts channels (luma for RGB->gray, repeat for gray->RGB) and resizes "
                             "files to the input shape (area when shrinking, bilinear when enlarging)",
            "backbone": bb.to_dict(),
        },
    }


def _bundle_provenance(detector: DOCDetector, tmp: Path, model_bytes: bytes, convert_s: float,
                       source: str | None) -> dict:
    """The part of ``bundle.json`` after the scorer settings that every bundle shares: sizes, conversion time, where
    the detector came from and when (``bank.npy`` must already be in ``tmp``)."""
    return {
        "sizes_bytes": {"model": len(model_bytes), "bank": (tmp / BANK_FILE).stat().st_size},
        "convert_s": convert_s,
        "source": {"detector": str(source) if source else None, "config": detector.config_dict(),
                   "reference_names": list(detector.reference_names_)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def tflite_model(detector: DOCDetector, input_shape: tuple[int, int, int], quantize: str = "none",
                 calibration_images: np.ndarray | None = None) -> bytes:
    """Convert the detector's feature extractor (with its preprocessing) to a LiteRT flatbuffer.

    Parameters
    ----------
    detector : DOCDetector, fitted
    input_shape : (H, W, C)
        The model takes uint8 (b, H, W, C), b dynamic (1 by default).
    quantize : {"none", "float16", "int8"}
    calibration_images : np.ndarray, uint8, shape (n, H, W, C)
        Needed for int8: normal training images only.

    Returns
    -------
    bytes : the ``.tflite`` model; output float32 (b, d), or the patch maps (b, h, w, c) of a patch detector.
    """
    import tensorflow as tf

    import keras

    serve, model = _served(detector)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve,
                         input_signature=[tf.TensorSpec([None, *input_shape], tf.uint8, name="image")])
    tmp = Path(tempfile.mkdtemp(prefix="doc-export-"))
    try:
        archive.write_out(str(tmp / "saved_model"), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp / "saved_model"), signature_keys=["serve"])
        if quantize == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            if calibration_images is None or len(calibration_images) == 0:
                raise ExportError("int8 quantization needs normal training images to calibrate on")
            cal = np.asarray(calibration_images, np.uint8)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([cal[i:i + 1]] for i in range(len(cal)))
        elif quantize != "none":
            raise ExportError(f"unknown quantization {quantize!r}")
        return converter.convert()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def onnx_model(detector: DOCDetector, input_shape: tuple[int, int, int], opset: int = 17) -> bytes:
    """The detector's feature extractor with its preprocessing as an ONNX model (tf2onnx), serialized.

    Input ``image``: uint8 (b, H, W, C), b dynamic; output ``features``: float32 (b, d), or the patch maps
    (b, h, w, c) of a patch detector.
    """
    import tensorflow as tf

    try:
        import tf2onnx
    except ImportError as exc:
        raise ExportError("ONNX export needs tf2onnx: `.venv/bin/pip install tf2onnx==1.17.0` (pinned in "
                          "requirements.txt), and onnxruntime to score the bundle") from exc
    compute, _ = _served(detector)

    @tf.function(input_signature=[tf.TensorSpec([None, *input_shape], tf.uint8, name="image")])
    def serve(images):
        return {"features": compute(images)}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=opset)
    return proto.SerializeToString()


def range_images(shape: tuple[int, int, int], n_normal: int, seed: int = 0) -> np.ndarray:
    """Synthetic calibration images spanning the uint8 range: black, white, and uniform noise.

    About one per ten normal calibration images (at least 3): all-0, all-255, then uniform random pixels. They use
    no data at all, so they cannot leak test information; they widen the quantization ranges that normal images
    alone would set too narrow for anomalous inputs. Returns uint8 (m, H, W, C).
    """
    m = max(3, n_normal // 10)
    rng = np.random.default_rng(seed + 1)
    out = rng.integers(0, 256, (m, *shape), dtype=np.uint8)
    out[0], out[1] = 0, 255
    return out


def _fit_images(images: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 images (n, h, w, c) in the bundle's input shape (same conversions as the edge scorer)."""
    from .edge_scorer import fit_image

    images = np.asarray(images, np.uint8)
    if images.ndim == 3:
        images = images[..., None]
    if tuple(images.shape[1:]) == tuple(shape):
        return images
    return np.stack([fit_image(im, shape) for im in images])


def _loo_scores(bank: np.ndarray, k: int) -> np.ndarray:
    d, _ = knn_distances(bank, bank, k, exclude_self=True)
    return d.mean(axis=1)


def _mapped_threshold(detector: DOCDetector, bank: np.ndarray, k: int) -> tuple[float, float]:
    """The bundle's threshold at the detector threshold's quantile of training scores, and that quantile."""
    train = np.asarray(detector.train_scores_, np.float64)
    q = float(np.mean(train <= detector.threshold_))
    return float(np.quantile(_loo_scores(bank, k), q)), q


def export_bundle(detector: DOCDetector, out: str | os.PathLike, config: ExportConfig = ExportConfig(),
                  normal_images: np.ndarray | None = None, source: str | None = None, force: bool = False) -> dict:
    """Write an edge bundle folder (replaced atomically) and return its ``bundle.json`` content.

    Only an edge bundle written by this tool, or an empty folder, is replaced at ``out`` unless ``force`` (checked
    before the model is converted; see :mod:`doc_core.workflow.output_folders`); hidden temporary siblings of ``out``
    left by a killed export more than a day ago are removed.

    Parameters
    ----------
    detector : DOCDetector
        Fitted, with the k-NN scorer (the bundle scores by mean distance to the k nearest bank vectors) or the patch
        scorer (patch maps out of the model, the detector's patch bank, image scores and defect maps in numpy;
        ``quantize="none"`` only, the whole patch bank, the detector's threshold).
    out : path
        The bundle folder.
    config : ExportConfig
    normal_images : np.ndarray, uint8, shape (n, h, w, c), optional
        The detector's normal training images: int8 calibration and (for float16/int8) the recomputed bank.
    source : str, optional
        Where the detector came from: recorded, and a dashboard run folder's ``run.json`` gives the input shape.
    force : bool
        Replace whatever is at ``out``.

    Raises
    ------
    ExportError
        LOF scorer, int8 without normal images, a patch detector with float16/int8, a bank subsample or
        ``reembed_bank``, bad options.
    OutputExistsError
        ``out`` holds something this tool did not write and ``force`` is False; nothing was written or deleted.
    """
    config.validate()
    check_target(out, BUNDLE_FOLDER, force)
    detector._check_fitted()
    if detector.scorer.name not in ("knn", "patch"):
        raise ExportError(f"edge bundles score with k-NN (pooled features or patches); this detector uses "
                          f"{detector.scorer.name!r}. Export detector.with_scorer(ScorerConfig('knn')) instead (or a "
                          "run whose saved threshold is for the k-NN scorer)")
    patch = detector.is_patch
    if patch:
        check_patch_export(detector, config)
    shape = tuple(int(v) for v in (config.input_shape or infer_input_shape(detector, source)))
    k = int(detector.scorer_.k)
    rng = np.random.default_rng(config.seed)
    if patch:  # float32 only: the patch bank is the detector's, no calibration or re-embedding needs images
        normal_images = None
    normal = _fit_images(normal_images, shape) if normal_images is not None and len(normal_images) else None
    if normal is not None:  # the detector's calibration slice stays out of the bank and the int8 calibration
        normal = detector.training_images(normal)
    if config.quantize == "int8" and normal is None:
        raise ExportError("int8 quantization needs the detector's normal training images for calibration (the CLI "
                          "finds them from the detector's metadata, or pass --folder / --data-dir)")
    calibration = None
    if normal is not None and config.quantize == "int8":
        idx = np.sort(rng.choice(len(normal), min(config.calibration_size, len(normal)), replace=False))
        calibration = normal[idx]
        if config.calibration_extremes:
            calibration = np.concatenate([calibration, range_images(shape, len(calibration), config.seed)])
    t0 = time.perf_counter()
    model_bytes = onnx_model(detector, shape) if config.format == "onnx" else \
        tflite_model(detector, shape, config.quantize, calibration)
    convert_s = time.perf_counter() - t0
    model_file = MODEL_FILES[config.format]

    out = Path(out)
    prepare_save(out, BUNDLE_FOLDER, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / model_file).write_bytes(model_bytes)
        shutil.copyfile(Path(__file__).with_name("edge_scorer.py"), tmp / SCORER_FILE)
        if patch:
            doc = _patch_bundle_doc(detector, tmp, shape, config, model_file, model_bytes, convert_s, source)
        else:
            reembed = config.reembed_bank if config.reembed_bank is not None else \
                (config.quantize != "none" and normal is not None)
            if reembed and normal is None:
                raise ExportError("reembed_bank needs the normal training images")
            if reembed:
                # the exported model's own features of the normal images, subsampled as the detector's scorer does
                bank = _embed_with_model(tmp / model_file, shape, normal, RUNTIMES[config.format])
                bank = subsample_bank(bank, detector.scorer.max_bank_size, 0)
            else:
                bank = np.asarray(detector.scorer_.bank_, np.float32)
            bank = subsample_bank(bank, config.max_bank_size, config.seed)
            if len(bank) <= k:
                raise ExportError(f"a bank of {len(bank)} vectors is too small for k={k} (leave-one-out needs k+1)")
            if reembed or len(bank) != len(detector.scorer_.bank_):
                threshold, quantile = _mapped_threshold(detector, bank, k)
                threshold_source = "mapped to the same quantile of the bundle's leave-one-out training scores"
            else:
                threshold = float(detector.threshold_)
                quantile = float(np.mean(detector.train_scores_ <= detector.threshold_))
                threshold_source = "the detector's threshold"
            np.save(tmp / BANK_FILE, np.ascontiguousarray(bank, np.float32), allow_pickle=False)
            bb = detector.backbone_.config
            doc = {
                **_bundle_header(model_file, config.format, shape, bb),
                "scorer": {"name": "knn", "k": k, "metric": "euclidean",
                           "score": "mean distance to the k nearest bank vectors; higher = more anomalous"},
                "threshold": float(threshold), "threshold_source": threshold_source,
                "threshold_train_quantile": quantile, "detector_threshold": float(detector.threshold_),
                "quantize": config.quantize, "feature_dim": int(bank.shape[1]), "bank_size": int(len(bank)),
                "bank_source": "recomputed by this model from the normal training images" if reembed
                               else "the detector's bank (Keras features)",
                "calibration_images": int(len(calibration)) if calibration is not None else 0,
                "calibration": "normal training images" + (" + synthetic black/white/noise images"
                                                           if config.calibration_extremes else "")
                               if calibration is not None else None,
                **_bundle_provenance(detector, tmp, model_bytes, convert_s, source),
            }
        (tmp / BUNDLE_JSON).write_text(json.dumps(doc, indent=1))
        install_folder(tmp, out, BUNDLE_FOLDER, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    doc["sizes_bytes"]["bundle"] = bundle_size(out)
    return doc


def check_patch_export(detector: DOCDetector, config: ExportConfig) -> None:
    """Raise :class:`ExportError` for the export options a patch bundle does not support."""
    if config.quantize != "none":
        raise ExportError(f"patch bundles are float32 only (quantize='none'), not {config.quantize!r}: a quantized "
                          "model changes the patch features, so the patch bank would have to be recomputed from the "
                          "quantized model's patch maps of the training images (with the coreset) and the threshold "
                          "remapped, which this export does not do. Export with quantize='none', or export "
                          "detector.with_scorer(ScorerConfig('knn')) for a quantized image-level bundle")
    if config.reembed_bank:
        raise ExportError("reembed_bank is not supported for patch bundles: they keep the detector's patch bank")
    if config.max_bank_size is not None and config.max_bank_size < len(detector.scorer_.bank_):
        raise ExportError(f"patch bundles keep the detector's whole patch bank ({len(detector.scorer_.bank_)} "
                          f"patches, more than max_bank_size={config.max_bank_size}); refit the detector with "
                          "ScorerConfig('patch', max_bank_size=...) for a smaller (coreset) bank")


def _patch_bundle_doc(detector: DOCDetector, tmp: Path, shape: tuple[int, int, int], config: ExportConfig,
                      model_file: str, model_bytes: bytes, convert_s: float, source: str | None) -> dict:
    """Write the patch bank into ``tmp/bank.npy`` (the model is there) and return the patch bundle's JSON."""
    sc, scfg = detector.scorer_, detector.scorer
    bank = np.ascontiguousarray(sc.bank_, np.float32)
    grid = [int(v) for v in sc.map_shape_]
    k = int(sc.k)
    if len(bank) < k:
        raise ExportError(f"a patch bank of {len(bank)} patches is too small for k={k}")
    np.save(tmp / BANK_FILE, bank, allow_pickle=False)
    bb = detector.backbone_.config
    layers = list(detector.backbone_.patch_layers(scfg.patch_layers))
    return {
        **_bundle_header(model_file, config.format, shape, bb),
        "model_output": {"kind": "patch maps", "shape": ["b", *grid, int(bank.shape[1])], "layers": layers,
                         "combined": "coarser layers resized bilinearly (half-pixel centres) to the finest grid, "
                                     "channels concatenated in layer order"},
        "scorer": {"name": "patch", "k": k, "metric": "euclidean", "neighbourhood": int(sc.neighbourhood),
                   "image_score": str(sc.image_score), "map_shape": grid, "channels": int(bank.shape[1]),
                   "smoothing_sigma_at_224": DEFAULT_SIGMA_AT_224,
                   "score": "patch: mean distance of its neighbourhood-averaged feature to the k nearest bank "
                            "patches; image: the patch scores aggregated by image_score (max, topN = mean of the "
                            "ceil(p*N/100) largest for N = 10, 25, 50, mean); higher = more anomalous"},
        "threshold": float(detector.threshold_), "threshold_source": "the detector's threshold",
        "threshold_train_quantile": float(np.mean(detector.train_scores_ <= detector.threshold_)),
        "detector_threshold": float(detector.threshold_),
        "quantize": config.quantize, "feature_dim": int(bank.shape[1]), "bank_size": int(len(bank)),
        "bank_source": "the detector's patch bank (Keras patch features, coreset)",
        "calibration_images": 0, "calibration": None,
        **_bundle_provenance(detector, tmp, model_bytes, convert_s, source),
    }


def _embed_with_model(model_path: Path, shape: tuple[int, int, int], images: np.ndarray, runtime: str,
                      batch_size: int = 64) -> np.ndarray:
    from .edge_scorer import ModelRunner

    run = ModelRunner(model_path, shape, runtime, num_threads=os.cpu_count() or 1)
    return np.concatenate([run(images[s:s + batch_size]) for s in range(0, len(images), batch_size)])


def bundle_size(path: str | os.PathLike) -> int:
    """Total bytes of the files in a bundle folder."""
    return int(sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file()))


def estimate_bundle_bytes(detector: DOCDetector, n_normal: int = 0) -> int:
    """A conservative estimate (bytes) of the bundle :func:`export_bundle` writes for a fitted ``detector``.

    Model: the backbone's float32 parameters plus 10 % and 2 MiB (quantized models are smaller). Bank: float32
    vectors, as many as the detector's bank or ``n_normal`` (a recomputed bank), whichever is more. Plus the scorer
    script and 1 MiB for ``bundle.json`` and file system overhead.
    """
    detector._check_fitted()
    model = int(detector.backbone_.model.count_params() * 4 * 1.1) + 2 * 2**20
    bank = int(detector.scorer_.bank_.nbytes) if detector.is_patch else \
        max(len(detector.bank_), int(n_normal)) * int(detector.bank_.shape[1]) * 4  # patch: the detector's bank
    return model + bank + Path(__file__).with_name("edge_scorer.py").stat().st_size + 2**20


# ------------------------------------------------------------------------------------------------ finding images


def normal_images_for(detector: DOCDetector, path: str | os.PathLike | None = None,
                      data_dir: str | os.PathLike | None = None) -> np.ndarray | None:
    """The detector's normal training images, rebuilt from what it recorded about its data, or None.

    Looks at a dashboard run's ``run.json`` dataset (when ``path`` is a run folder) and at the detector's saved
    metadata (``split``: a Fashion-MNIST split config, or a folder). Never reads test labels.
    """
    from ..data.fashion_mnist import load_fashion_mnist
    from ..data.splits import SplitConfig, load_folder_split, make_split

    if path is not None and (Path(path) / "run.json").is_file():
        from ..data.datasets import DatasetSpec, load_dataset

        doc = json.loads((Path(path) / "run.json").read_text())
        if doc.get("dataset", {}).get("kind"):
            fashion = load_fashion_mnist(data_dir) if doc["dataset"]["kind"] == "fashion-mnist" else None
            split, _ = load_dataset(DatasetSpec.from_dict(doc["dataset"]), fashion)
            return split.train_normal
    split = (getattr(detector, "metadata_", {}) or {}).get("split") or {}
    if split.get("source") == "fashion-mnist" and split.get("config"):
        return make_split(SplitConfig.from_dict(split["config"]), load_fashion_mnist(data_dir)).train_normal
    if split.get("source") == "folder" and split.get("root") and Path(split["root"]).is_dir():
        return load_folder_split(split["root"], image_size=int(split.get("image_size", 96)))[0].train_normal
    return None


# ------------------------------------------------------------------------------------------------ measuring


_TIMING_SNIPPET = r"""
import json, os, sys, time
os.sched_setaffinity(0, {int(sys.argv[3])}) if hasattr(os, "sched_setaffinity") else None
sys.path.insert(0, sys.argv[1])
import numpy as np
from scorer import EdgeScorer
t0 = time.perf_counter()
s = EdgeScorer(sys.argv[1], num_threads=1)
load_s = time.perf_counter() - t0
images = np.load(sys.argv[2], allow_pickle=False)
timing = s.time_per_image(images[: int(sys.argv[4])])
scores = s.score_samples(images, batch_size=1)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "doc_core"))
np.save(sys.argv[2] + ".scores.npy", scores)
print(json.dumps({"timing": timing, "load_s": load_s, "heavy_modules": heavy}))
"""


def measure_bundle(bundle: str | os.PathLike, images: np.ndarray, n_timed: int = 500, core: int = 0) -> dict:
    """Score ``images`` with the bundle's own ``scorer.py`` in a fresh process pinned to one CPU core.

    The process runs the interpreter (or onnxruntime) with one thread and numpy's BLAS with one thread
    (``OMP/OPENBLAS/MKL_NUM_THREADS=1``), times ``n_timed`` images one at a time (batch 1: model, k-NN, total ms)
    and then scores every image.

    Returns
    -------
    dict
        ``{"scores": float32 (n,), "timing": {...}, "load_s": float, "heavy_modules": [...]}``; ``heavy_modules``
        lists any TensorFlow/Keras/doc_core module the scorer process imported (expected: none).
    """
    bundle = Path(bundle)
    images = _fit_images(images, tuple(json.loads((bundle / BUNDLE_JSON).read_text())["input"]["shape"]))
    with tempfile.TemporaryDirectory() as d:
        arr = Path(d) / "images.npy"
        np.save(arr, images, allow_pickle=False)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONPATH": ""}
        proc = subprocess.run([sys.executable, "-c", _TIMING_SNIPPET, str(bundle), str(arr), str(core), str(n_timed)],
                              capture_output=True, text=True, env=env, cwd=d, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"the bundle's scorer failed:\n{proc.stderr[-3000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        out["scores"] = np.load(str(arr) + ".scores.npy", allow_pickle=False)
    return out


def benchmark_export(detector: DOCDetector, normal_images: np.ndarray, test_images: np.ndarray,
                     test_labels: np.ndarray, out_dir: str | os.PathLike,
                     quantizations: tuple[str, ...] = QUANTIZATIONS, max_bank_size: int | None = None,
                     n_timed: int = 500, onnx: bool | None = None, log=print) -> dict:
    """Export one bundle per quantization and compare it with the Keras detector on a labelled test set.

    ``onnx``: also export and measure a float32 ONNX bundle (row ``onnx``); None = when tf2onnx and onnxruntime
    are installed.

    Returns a JSON-serialisable dict: the Keras detector's AUC and ms/image, and per quantization the bundle's AUC,
    the AUC difference, sizes (model, bank, bundle bytes), ms/image on one core (model, k-NN, total), the Spearman
    correlation of its scores with the Keras scores, and whether the scorer process stayed free of TensorFlow.
    """
    from scipy.stats import spearmanr

    from ..evaluation.benchmark import machine_info
    from ..evaluation.metrics import roc_auc

    det_scores = detector.decision_function(test_images[:64])
    t0 = time.perf_counter()
    det_scores = detector.decision_function(test_images)
    keras_ms = (time.perf_counter() - t0) * 1000 / len(test_images)
    keras_auc = roc_auc(test_labels, det_scores)
    log(f"keras detector: AUC {keras_auc:.4f}, {keras_ms:.2f} ms/image (batched, all cores)")
    res: dict = {"protocol": "export", "keras": {"auc": keras_auc, "score_ms_per_image": keras_ms,
                                                  "threshold": float(detector.threshold_),
                                                  "note": "batches of 256, every core (Keras/TensorFlow)"},
                 "bundles": {}, "n_test": int(len(test_images)), "n_timed": int(n_timed),
                 "timing": "batch 1, one process pinned to one core, 1 interpreter (or onnxruntime) thread, 1 BLAS "
                           "thread"}
    if onnx is None:
        import importlib.util

        onnx = all(importlib.util.find_spec(m) is not None for m in ("tf2onnx", "onnxruntime"))
    configs = {q: ExportConfig(quantize=q, max_bank_size=max_bank_size) for q in quantizations}
    if onnx:
        configs["onnx"] = ExportConfig(format="onnx", max_bank_size=max_bank_size)
    for q, cfg in configs.items():
        t0 = time.perf_counter()
        doc = export_bundle(detector, Path(out_dir) / f"bundle-{q}", cfg, normal_images)
        export_s = time.perf_counter() - t0
        m = measure_bundle(Path(out_dir) / f"bundle-{q}", test_images, n_timed=n_timed)
        auc = roc_auc(test_labels, m["scores"])
        preds = m["scores"] > doc["threshold"]
        res["bundles"][q] = {
            "auc": auc, "auc_diff": auc - keras_auc, "spearman_vs_keras": float(spearmanr(m["scores"], det_scores)[0]),
            "sizes_bytes": doc["sizes_bytes"], "ms_per_image": m["timing"], "export_s": export_s,
            "scorer_load_s": m["load_s"], "threshold": doc["threshold"], "bank_size": doc["bank_size"],
            "flagged_fraction": float(preds.mean()), "keras_flagged_fraction": float(np.mean(det_scores >
                                                                                             detector.threshold_)),
            "tensorflow_free": not m["heavy_modules"], "path": str(Path(out_dir) / f"bundle-{q}"),
            "format": cfg.format, "quantize": cfg.quantize, "runtime": doc["runtime"]}
        b = res["bundles"][q]
        log(f"{q}: AUC {auc:.4f} ({auc - keras_auc:+.4f}), bundle {doc['sizes_bytes']['bundle'] / 1e6:.2f} MB, "
            f"{b['ms_per_image']['total_ms']:.2f} ms/image on one core")
    res["machine"] = {**machine_info(), "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    return res


def format_export_table(result: dict) -> str:
    """A plain-text table of a :func:`benchmark_export` result."""
    k = result["keras"]
    lines = [f"edge export: {result['n_test']} test images; {result['timing']}",
             f"{'model':<10}{'AUC':>8}{'ΔAUC':>9}{'bundle MB':>11}{'model MB':>10}{'model ms':>10}{'k-NN ms':>9}"
             f"{'total ms':>10}",
             f"{'keras':<10}{k['auc']:>8.4f}{'':>9}{'':>11}{'':>10}{'':>10}{'':>9}{k['score_ms_per_image']:>10.2f}"
             "  (batched, all cores)"]
    for q, b in result["bundles"].items():
        t = b["ms_per_image"]
        lines.append(f"{q:<10}{b['auc']:>8.4f}{b['auc_diff']:>+9.4f}{b['sizes_bytes']['bundle'] / 1e6:>11.2f}"
                     f"{b['sizes_bytes']['model'] / 1e6:>10.2f}{t['model_ms']:>10.2f}{t['knn_ms']:>9.2f}"
                     f"{t['total_ms']:>10.2f}")
    return "\n".join(lines)


__all__ = ["ExportConfig", "ExportError", "EXPORT_FORMATS", "QUANTIZATIONS", "export_bundle", "tflite_model",
           "onnx_model", "infer_input_shape", "range_images", "normal_images_for", "measure_bundle",
           "benchmark_export", "format_export_table", "bundle_size"]
