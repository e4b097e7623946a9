"""Backbones: pretrained CNNs cut at a feature layer, split into a frozen trunk and a trainable tail.

A backbone maps images to feature vectors ``g(x)`` (float32, shape (n, k)). The layers after ``trainable_from`` are
fine-tuned by DOC; the ones before it are frozen, so their output (the *trunk* activations) can be computed once and
reused by every training epoch.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

import keras

from ..workflow.artifacts import ArtifactError, Fields, short_repr

REPO_ROOT = Path(__file__).resolve().parents[2]  # doc_core/model/backbones.py -> the repository root
SHARED_WEIGHTS_DIR = REPO_ROOT.parent / "shared" / "weights"
BACKBONES = ("mobilenet_v2", "vgg16", "tiny")
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 32, 512  # pixels; the dashboard offers 32-224
MAX_ALPHA = 2.0  # MobileNetV2 width multiplier; ImageNet weights exist up to 1.4

# Per backbone: default feature layer, default last frozen layer, preprocessing, known weight file names.
_DEFAULTS = {
    # At 96 px, block_13_expand_relu is a 6x6x576 map (stride 16); the final 3x3x1280 map is too coarse for 28 px
    # Fashion-MNIST items. Blocks 9-13 are trained. Both chosen on a split cut from the Fashion-MNIST training set,
    # never on test labels: `python -m doc_core benchmark --protocol validation` (bench/results-validation.json).
    "mobilenet_v2": {"feature_layer": "block_13_expand_relu", "trainable_from": "block_8_add"},
    "vgg16": {"feature_layer": "block5_conv3", "trainable_from": "block4_pool"},
    "tiny": {"feature_layer": "conv3_relu", "trainable_from": "conv1_relu"},
}

# Layers whose maps the patch scorer combines by default: a stride-8 and a stride-16 map of mid-level features, the
# recipe of PatchCore (Roth et al., 2022: ResNet "layer2 + layer3"), chosen a priori, not on any test set.
DEFAULT_PATCH_LAYERS = {
    "mobilenet_v2": ("block_6_expand_relu", "block_10_expand_relu"),
    "vgg16": ("block3_conv3", "block4_conv3"),
    "tiny": ("conv2_relu", "conv3_relu"),
}


class WeightsNotFoundError(FileNotFoundError):
    """No pretrained weights file was found and Keras could not download one."""


@dataclass(frozen=True)
class BackboneConfig:
    """Which network to build and how.

    Parameters
    ----------
    name : {"mobilenet_v2", "vgg16", "tiny"}
        ``tiny`` is a small random CNN for tests and demos (no pretrained weights).
    alpha : float
        MobileNetV2 width multiplier (ImageNet weights exist for 0.35, 0.5, 0.75, 1.0, 1.3, 1.4).
    input_size : int
        Images are resized to (input_size, input_size, 3); at least 32.
    weights : str or None
        ``"imagenet"`` (found as described in :func:`resolve_weights`), a path to a weights file, or None (random).
    feature_layer : str or None
        Layer whose output, average-pooled over space, is the feature vector; None = the backbone's default.
    trainable_from : str or None
        Last *frozen* layer: every layer after it up to ``feature_layer`` is trained. None = the default;
        ``"all"`` trains every layer; ``"none"`` freezes everything.
    """

    name: str = "mobilenet_v2"
    alpha: float = 1.0
    input_size: int = 96
    weights: str | None = "imagenet"
    feature_layer: str | None = None
    trainable_from: str | None = None

    def resolved(self) -> "BackboneConfig":
        """The same config with the defaults filled in (after :meth:`validate`)."""
        self.validate()
        d = _DEFAULTS[self.name]
        return replace(self, feature_layer=self.feature_layer or d["feature_layer"],
                       trainable_from=self.trainable_from or d["trainable_from"])

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self, where: str = "backbone config") -> None:
        """Raise ValueError (an :class:`doc_core.workflow.artifacts.ArtifactError`) for an unknown backbone, ``alpha``
        outside (0, :data:`MAX_ALPHA`], ``input_size`` outside [:data:`MIN_INPUT_SIZE`, :data:`MAX_INPUT_SIZE`], or a
        value of the wrong type; ``where`` starts the message."""
        self._values(asdict(self), where)

    @classmethod
    def from_dict(cls, d: dict, where: str = "backbone config") -> "BackboneConfig":
        """The config saved by :meth:`to_dict`; missing keys take their defaults, unknown keys are ignored.

        Raises
        ------
        ValueError (ArtifactError)
            ``d`` is not a dict, or a value has the wrong type or is out of range; the message names it.
        """
        return cls(**cls._values(d, where))

    @classmethod
    def _values(cls, d: dict, where: str) -> dict:
        f = Fields(d, where)
        dflt = {k: v.default for k, v in cls.__dataclass_fields__.items()}
        name = d.get("name", dflt["name"])
        if name not in BACKBONES:
            raise ArtifactError(f"{where}: unknown backbone {short_repr(name)}; choose one of {', '.join(BACKBONES)}")
        size = d.get("input_size", dflt["input_size"])
        if isinstance(size, (int, float)) and not isinstance(size, bool) and not (
                MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE):
            raise ArtifactError(f"{where}: input_size must be at least {MIN_INPUT_SIZE} and at most {MAX_INPUT_SIZE} "
                                f"pixels, got {short_repr(size)}")
        return {"name": name,
                "alpha": f.float("alpha", 0.0, MAX_ALPHA, default=dflt["alpha"], lo_open=True),
                "input_size": f.int("input_size", MIN_INPUT_SIZE, MAX_INPUT_SIZE, default=dflt["input_size"]),
                "weights": f.str("weights", default=dflt["weights"], optional=True),
                "feature_layer": f.str("feature_layer", default=dflt["feature_layer"], optional=True, max_chars=200),
                "trainable_from": f.str("trainable_from", default=dflt["trainable_from"], optional=True,
                                        max_chars=200)}


def known_weight_files(config: BackboneConfig) -> list[str]:
    """File names under which ImageNet weights (no top) of this backbone are known, most specific first."""
    if config.name == "mobilenet_v2":
        a = f"{config.alpha:g}" if config.alpha not in (1.0,) else "1.0"
        sizes = [config.input_size] if config.input_size in (96, 128, 160, 192, 224) else []
        return ([f"mobilenet_v2_{a}_imagenet_no_top.weights.h5"]
                + [f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{a}_{s}_no_top.h5" for s in sizes + [224]])
    if config.name == "vgg16":
        return ["vgg16_imagenet_no_top.weights.h5", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"]
    return []


def weight_search_dirs() -> list[tuple[str, Path]]:
    """Folders searched for ImageNet weight files, in order."""
    places = []
    env = os.environ.get("DOC_WEIGHTS")
    if env and Path(env).is_dir():
        places.append(("DOC_WEIGHTS", Path(env)))
    places.append(("Keras cache", Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"))
    places.append(("project shared folder", SHARED_WEIGHTS_DIR))
    return places


def resolve_weights(config: BackboneConfig) -> str | None:
    """Path of the weights file to load, ``"imagenet"`` to let Keras download, or None for random weights.

    For ``weights="imagenet"`` the order is: ``$DOC_WEIGHTS`` (a file, or a folder holding a known file name), the
    Keras cache (``~/.keras/models``), this project's ``../shared/weights``, then Keras' download.
    """
    if config.weights is None or config.name == "tiny":
        return None
    if config.weights != "imagenet":
        path = Path(config.weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file {path} does not exist")
        return str(path)
    env = os.environ.get("DOC_WEIGHTS")
    if env and Path(env).is_file():
        return env
    for _, folder in weight_search_dirs():
        for name in known_weight_files(config):
            if (folder / name).is_file():
                return str(folder / name)
    return "imagenet"


def _weights_error(config: BackboneConfig, exc: Exception) -> WeightsNotFoundError:
    places = "\n  - ".join(f"{label}: {folder}" for label, folder in weight_search_dirs())
    return WeightsNotFoundError(
        f"no ImageNet weights for {config.name} (alpha {config.alpha}) were found and Keras could not download them "
        f"({type(exc).__name__}: {exc}).\nLooked for {', '.join(known_weight_files(config))} in:\n  - {places}\n"
        "Fix: set DOC_WEIGHTS to a weights file or a folder holding one, pass a weights path, or use weights=None."
    )


def _tiny_cnn(input_size: int) -> keras.Model:
    inp = keras.Input((input_size, input_size, 3), name="input")
    x = inp
    for i, (filters, stride) in enumerate([(8, 2), (16, 2), (32, 2)], start=1):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", name=f"conv{i}",
                                kernel_initializer=keras.initializers.GlorotUniform(seed=i))(x)
        x = keras.layers.ReLU(name=f"conv{i}_relu")(x)
    return keras.Model(inp, x, name="tiny")


def _base_model(config: BackboneConfig) -> keras.Model:
    shape = (config.input_size, config.input_size, 3)
    if config.input_size < 32:
        raise ValueError(f"input_size must be at least 32, got {config.input_size}")
    if config.name == "tiny":
        return _tiny_cnn(config.input_size)
    weights = resolve_weights(config)
    builder = {"mobilenet_v2": lambda w: keras.applications.MobileNetV2(
                   input_shape=shape, alpha=config.alpha, include_top=False, weights=w),
               "vgg16": lambda w: keras.applications.VGG16(input_shape=shape, include_top=False, weights=w)}[config.name]
    if weights == "imagenet":
        try:
            return builder("imagenet")
        except Exception as exc:  # noqa: BLE001 - offline download failures come in many types
            raise _weights_error(config, exc) from exc
    model = builder(None)
    if weights is not None:
        model.load_weights(weights)
    return model


def preprocess(images: tf.Tensor, config: BackboneConfig) -> tf.Tensor:
    """Turn a batch of uint8 images into the backbone's input.

    Parameters
    ----------
    images : tf.Tensor, uint8 or float in [0, 255], shape (b, h, w, c) with c in {1, 3}
    config : BackboneConfig

    Returns
    -------
    tf.Tensor, float32, shape (b, input_size, input_size, 3)
        Resized (bilinear), gray repeated to RGB, then normalised as the backbone expects.
    """
    x = tf.cast(images, tf.float32)
    size = config.input_size
    if x.shape[1] != size or x.shape[2] != size:
        x = tf.image.resize(x, (size, size), method="bilinear")
    if x.shape[-1] == 1:
        x = tf.repeat(x, 3, axis=-1)
    elif x.shape[-1] is None:  # a trace relaxed by reduce_retracing serves gray and RGB batches alike
        x = tf.broadcast_to(x, tf.concat([tf.shape(x)[:-1], [3]], axis=0))
    if config.name == "vgg16":
        return x[..., ::-1] - tf.constant([103.939, 116.779, 123.68])
    return x / 127.5 - 1.0


class Backbone:
    """A feature extractor ``g`` built from a :class:`BackboneConfig`.

    Attributes
    ----------
    config : BackboneConfig (resolved)
    model : keras.Model
        Preprocessed images (b, s, s, 3) -> feature vectors (b, k), float32.
    feature_map_model : keras.Model
        Preprocessed images -> the feature layer's map (b, h', w', k) (for Grad-CAM).
    trunk : keras.Model
        Preprocessed images -> activations of the last frozen layer.
    tail : keras.Model
        Trunk activations -> feature vectors; holds every trainable weight.
    """

    def __init__(self, config: BackboneConfig) -> None:
        self.config = config.resolved()
        base = _base_model(self.config)
        names = [layer.name for layer in base.layers]
        for what in ("feature_layer", "trainable_from"):
            value = getattr(self.config, what)
            if value not in ("all", "none") and value not in names:
                raise ValueError(f"{what}={value!r} is not a layer of {self.config.name}; some layers: "
                                 f"{', '.join(n for n in names if n.endswith(('_relu', '_add', 'BN', 'pool')))[:600]}")
        fmap = base.get_layer(self.config.feature_layer).output
        pooled = keras.layers.GlobalAveragePooling2D(name="feature_pool")(fmap)
        self.feature_map_model = keras.Model(base.input, fmap, name="feature_map")
        self.model = keras.Model(base.input, pooled, name="g")
        cut = self.config.trainable_from
        if cut == "all":
            self.trunk = None
            self.tail = self.model
        else:
            cut_layer = self.config.feature_layer if cut == "none" else cut
            if names.index(cut_layer) > names.index(self.config.feature_layer):
                raise ValueError(f"trainable_from={cut!r} comes after feature_layer={self.config.feature_layer!r}")
            cut_tensor = base.get_layer(cut_layer).output
            self.trunk = keras.Model(base.input, cut_tensor, name="trunk")
            self.tail = keras.Model(cut_tensor, pooled, name="tail")
            self.trunk.trainable = False
        for layer in self.model.layers:
            layer.trainable = self.trunk is None or layer in self.tail.layers and cut != "none" \
                and layer.name != self.tail.layers[0].name
        if cut == "none":
            self.model.trainable = False

    @property
    def feature_dim(self) -> int:
        return int(self.model.output.shape[-1])

    @property
    def trainable_layer_names(self) -> list[str]:
        return [layer.name for layer in self.model.layers if layer.trainable and layer.weights]

    def trunk_cache_bytes(self, n_images: int) -> int:
        """Bytes that :meth:`trunk_features` of ``n_images`` images take (float16); 0 without a trunk."""
        if self.trunk is None:
            return 0
        return int(n_images) * int(np.prod(self.trunk.output.shape[1:])) * 2

    def trunk_features(self, images: np.ndarray, batch_size: int = 256, progress=None) -> np.ndarray:
        """Trunk activations of uint8 images, computed batch by batch (float16 to halve memory).

        ``progress``, if given, is called with the number of images done after each batch.
        """
        if self.trunk is None:
            raise ValueError("this backbone trains every layer; it has no frozen trunk")
        out = None  # filled batch by batch: no float32 copy of the whole set is ever held
        for i in range(0, len(images), batch_size):
            batch = self._trunk_step(tf.convert_to_tensor(images[i:i + batch_size])).numpy()
            if out is None:
                out = np.empty((len(images),) + batch.shape[1:], np.float16)
            out[i:i + len(batch)] = batch
            if progress is not None:
                progress(min(i + batch_size, len(images)))
        return out if out is not None else np.zeros((0,) + tuple(self.trunk.output.shape[1:]), np.float16)

    @tf.function(reduce_retracing=True)
    def _trunk_step(self, images):
        return self.trunk(preprocess(images, self.config), training=False)

    @tf.function(reduce_retracing=True)
    def _embed_step(self, images):
        return self.model(preprocess(images, self.config), training=False)

    def embed(self, images: np.ndarray, batch_size: int = 256, progress=None) -> np.ndarray:
        """Feature vectors of uint8 images (n, h, w, c) -> float32 (n, k), batch by batch.

        ``progress``, if given, is called with the number of images done after each batch.
        """
        if len(images) == 0:
            return np.zeros((0, self.feature_dim), np.float32)
        out = np.empty((len(images), self.feature_dim), np.float32)
        for i in range(0, len(images), batch_size):
            batch = self._embed_step(tf.convert_to_tensor(images[i:i + batch_size])).numpy()
            out[i:i + len(batch)] = batch
            if progress is not None:
                progress(min(i + batch_size, len(images)))
        return out

    def patch_layers(self, layers: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """``layers``, or the backbone's :data:`DEFAULT_PATCH_LAYERS`, checked to be spatial layers of :attr:`model`
        (at or before the feature layer; later layers are not part of the model)."""
        layers = tuple(layers) if layers else DEFAULT_PATCH_LAYERS[self.config.name]
        names = [layer.name for layer in self.model.layers]
        for name in layers:
            if name not in names:
                raise ValueError(f"patch layer {name!r} is not a layer of the {self.config.name} backbone up to its "
                                 f"feature layer {self.config.feature_layer!r}")
            if len(self.model.get_layer(name).output.shape) != 4:
                raise ValueError(f"patch layer {name!r} has no spatial map (output shape "
                                 f"{tuple(self.model.get_layer(name).output.shape)})")
        return layers

    def patch_maps(self, images: np.ndarray, layers: tuple[str, ...] | None = None, batch_size: int = 64,
                   progress=None, with_features: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Local feature maps of uint8 images for the patch scorer: float32 (n, h', w', C).

        The maps of ``layers`` (default :data:`DEFAULT_PATCH_LAYERS`) are computed batch by batch; coarser maps are
        resized bilinearly to the finest one's grid and the channels concatenated
        (:func:`doc_core.scoring.patch.combine_maps`). At 96 px the default MobileNetV2 layers give 12 x 12 x 576
        (332 KB per image). ``progress``, if given, is called with the number of images done after each batch.
        With ``with_features``, also the pooled feature vectors of :meth:`embed` (float32 (n, k)), from the same
        forward pass: returns ``(maps, features)``.
        """
        from ..scoring.patch import combine_maps

        layers = self.patch_layers(layers)
        if not hasattr(self, "_patch_models"):
            self._patch_models: dict[tuple, Callable] = {}
        key = (layers, with_features)
        if key not in self._patch_models:
            outs = [self.model.get_layer(name).output for name in layers]
            model = keras.Model(self.model.input, outs + ([self.model.output] if with_features else []),
                                name="patch_maps")
            self._patch_models[key] = tf.function(lambda x, m=model: m(preprocess(x, self.config), training=False),
                                                  reduce_retracing=True)
        step = self._patch_models[key]
        out = None
        feats = np.empty((len(images), self.feature_dim), np.float32) if with_features else None
        for i in range(0, len(images), batch_size):
            res = step(tf.convert_to_tensor(images[i:i + batch_size]))
            res = [r.numpy() for r in (res if isinstance(res, (list, tuple)) else [res])]
            if with_features:
                feats[i:i + len(res[-1])] = res.pop()
            batch = combine_maps(res)
            if out is None:
                out = np.empty((len(images),) + batch.shape[1:], np.float32)
            out[i:i + len(batch)] = batch
            if progress is not None:
                progress(min(i + batch_size, len(images)))
        if out is None:
            shapes = [self.model.get_layer(n).output.shape for n in layers]
            out = np.zeros((0, max(int(s[1]) for s in shapes), max(int(s[2]) for s in shapes),
                            sum(int(s[-1]) for s in shapes)), np.float32)
        return (out, feats) if with_features else out
