"""Tests of doc_core.model.backbones: the tiny CNN, trunk/tail split, trainability and weight lookup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import doc_core.model.backbones as backbones
from doc_core.model.backbones import (Backbone, BackboneConfig, WeightsNotFoundError, known_weight_files, preprocess,
                                resolve_weights)

SHARED_MOBILENET = backbones.SHARED_WEIGHTS_DIR / "mobilenet_v2_1.0_imagenet_no_top.weights.h5"


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return Backbone(BackboneConfig(name="tiny", input_size=32, weights=None))


def images(n: int, size: int = 28, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def test_tiny_builds_with_defaults(tiny):
    assert tiny.config.feature_layer == "conv3_relu" and tiny.config.trainable_from == "conv1_relu"
    assert tiny.feature_dim == 32
    assert tiny.model.output.shape[-1] == 32


@pytest.mark.parametrize("n,size,channels,batch_size", [(5, 28, 1, 256), (7, 32, 3, 3), (1, 40, 3, 1)])
def test_embed_shape_dtype_and_batching(tiny, n, size, channels, batch_size):
    x = images(n, size, channels)
    done = []
    e = tiny.embed(x, batch_size=batch_size, progress=done.append)
    assert e.shape == (n, 32) and e.dtype == np.float32 and np.isfinite(e).all()
    assert done[-1] == n and done == sorted(done)
    np.testing.assert_allclose(e, tiny.embed(x, batch_size=1000), rtol=1e-5, atol=1e-6)


def test_embed_empty(tiny):
    out = tiny.embed(np.zeros((0, 28, 28, 1), np.uint8))
    assert out.shape == (0, 32) and out.dtype == np.float32


def test_gray_equals_repeated_rgb(tiny):
    x = images(4)
    np.testing.assert_allclose(tiny.embed(x), tiny.embed(np.repeat(x, 3, axis=-1)), rtol=1e-5, atol=1e-6)


def test_embed_mixed_gray_and_rgb_batches_of_many_shapes():
    """Once tf.function relaxes its trace to unknown dimensions, gray batches must still be turned into RGB."""
    cfg = BackboneConfig(name="tiny", input_size=32, weights=None)
    b = Backbone(cfg)
    batches = [images(4, 28, 1, 0), images(3, 28, 1, 1), images(2, 40, 3, 2), images(5, 36, 3, 3),
               images(3, 28, 1, 4), images(2, 32, 1, 5)]
    for x in batches:
        expected = Backbone(cfg).model(preprocess(tf.constant(x), cfg)).numpy()
        np.testing.assert_allclose(b.embed(x), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b.trunk_features(x).astype(np.float32),
                                   b.trunk(preprocess(tf.constant(x), cfg)).numpy(), rtol=1e-2, atol=1e-2)


def test_preprocess_ranges():
    x = tf.constant(np.array([0, 255], np.uint8).reshape(1, 1, 2, 1))
    out = preprocess(x, BackboneConfig(name="tiny", input_size=32)).numpy()
    assert out.shape == (1, 32, 32, 3)
    assert out.min() == pytest.approx(-1.0) and out.max() == pytest.approx(1.0)
    vgg = preprocess(tf.fill((1, 32, 32, 3), 100.0), BackboneConfig(name="vgg16", input_size=32)).numpy()
    np.testing.assert_allclose(vgg[0, 0, 0], [100 - 103.939, 100 - 116.779, 100 - 123.68], rtol=1e-5)


def test_tail_of_trunk_equals_model(tiny):
    x = preprocess(tf.constant(images(6, 32, 3, seed=1)), tiny.config)
    np.testing.assert_allclose(tiny.tail(tiny.trunk(x)).numpy(), tiny.model(x).numpy(), atol=1e-4)
    np.testing.assert_allclose(tiny.tail(tiny.trunk_features(images(6, 32, 3, seed=1)).astype(np.float32)).numpy(),
                               tiny.model(x).numpy(), atol=2e-2)  # float16 cache
    assert tiny.trunk_features(images(3)).dtype == np.float16


def test_trunk_features_report_progress_per_batch(tiny):
    x = images(10, 32, 3, seed=2)
    done: list[int] = []
    batched = tiny.trunk_features(x, batch_size=4, progress=done.append)
    assert done == [4, 8, 10]  # images done after each batch, the last one partial
    np.testing.assert_array_equal(batched, tiny.trunk_features(x))  # same values as one batch, no callback


@pytest.mark.parametrize("trainable_from,expected", [
    (None, ["conv2", "conv3"]), ("conv1_relu", ["conv2", "conv3"]), ("conv2", ["conv3"]), ("conv2_relu", ["conv3"]),
    ("conv1", ["conv2", "conv3"]), ("all", ["conv1", "conv2", "conv3"]), ("none", []),
])
def test_only_layers_after_trainable_from_train(trainable_from, expected):
    b = Backbone(BackboneConfig(name="tiny", input_size=32, weights=None, trainable_from=trainable_from))
    assert b.trainable_layer_names == expected
    tail_vars = {v.path.split("/")[0] for v in b.tail.trainable_variables}
    assert tail_vars == set(expected)
    if trainable_from not in ("all", "none"):
        assert b.trunk is not None and b.trunk.trainable_variables == []
    if trainable_from == "all":
        assert b.trunk is None
        with pytest.raises(ValueError, match="no frozen trunk"):
            b.trunk_features(images(2))


def test_feature_layer_choice():
    b = Backbone(BackboneConfig(name="tiny", input_size=32, weights=None, feature_layer="conv2_relu",
                                trainable_from="conv1_relu"))
    assert b.feature_dim == 16 and b.trainable_layer_names == ["conv2"]
    assert b.feature_map_model.output.shape[1:] == (8, 8, 16)
    assert b.embed(images(2)).shape == (2, 16)


@pytest.mark.parametrize("kwargs,match", [
    ({"feature_layer": "block_99"}, "feature_layer='block_99' is not a layer"),
    ({"trainable_from": "nope"}, "trainable_from='nope' is not a layer"),
    ({"feature_layer": "conv2_relu", "trainable_from": "conv3"}, "comes after"),
    ({"input_size": 16}, "at least 32"),
])
def test_bad_layer_names_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Backbone(BackboneConfig(name="tiny", weights=None, **{"input_size": 32, **kwargs}))


def test_unknown_backbone_raises():
    with pytest.raises(ValueError, match="unknown backbone"):
        Backbone(BackboneConfig(name="resnet9000", weights=None))
    with pytest.raises(ValueError, match="unknown backbone"):
        BackboneConfig(name="").resolved()


def test_config_round_trip():
    cfg = BackboneConfig(name="tiny", input_size=48, weights=None, feature_layer="conv2_relu")
    assert BackboneConfig.from_dict({**cfg.to_dict(), "unrelated": 1}) == cfg


# --------------------------------------------------------------------------------------------------- weight files


@pytest.fixture
def no_weights_anywhere(monkeypatch, tmp_path):
    monkeypatch.setattr(backbones, "SHARED_WEIGHTS_DIR", tmp_path / "shared-empty")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))


def test_resolve_weights_from_doc_weights_folder(tmp_path, monkeypatch, no_weights_anywhere):
    cfg = BackboneConfig(name="mobilenet_v2", input_size=96)
    assert resolve_weights(cfg) == "imagenet"  # nothing found: let Keras download
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "unrelated.h5").touch()
    monkeypatch.setenv("DOC_WEIGHTS", str(folder))
    assert resolve_weights(cfg) == "imagenet"
    name = known_weight_files(cfg)[-1]  # the legacy 224 px name, accepted at any size
    (folder / name).touch()
    assert resolve_weights(cfg) == str(folder / name)
    (folder / known_weight_files(cfg)[0]).touch()  # a more specific name wins
    assert resolve_weights(cfg) == str(folder / known_weight_files(cfg)[0])
    vgg = BackboneConfig(name="vgg16", input_size=64)
    assert resolve_weights(vgg) == "imagenet"
    (folder / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5").touch()
    assert resolve_weights(vgg) == str(folder / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")


def test_resolve_weights_keras_cache_and_shared(tmp_path, monkeypatch, no_weights_anywhere):
    cfg = BackboneConfig(name="mobilenet_v2", input_size=128)
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setattr(backbones, "SHARED_WEIGHTS_DIR", shared)
    (shared / known_weight_files(cfg)[0]).touch()
    assert resolve_weights(cfg) == str(shared / known_weight_files(cfg)[0])
    cache = tmp_path / "keras-home" / "models"
    cache.mkdir(parents=True)
    (cache / known_weight_files(cfg)[1]).touch()
    assert resolve_weights(cfg) == str(cache / known_weight_files(cfg)[1])  # the Keras cache comes first


def test_resolve_weights_from_doc_weights_file(tmp_path, monkeypatch, no_weights_anywhere):
    f = tmp_path / "my.weights.h5"
    f.touch()
    monkeypatch.setenv("DOC_WEIGHTS", str(f))
    assert resolve_weights(BackboneConfig(name="mobilenet_v2")) == str(f)
    assert resolve_weights(BackboneConfig(name="tiny")) is None
    assert resolve_weights(BackboneConfig(name="mobilenet_v2", weights=None)) is None


def test_known_weight_files():
    names = known_weight_files(BackboneConfig(name="mobilenet_v2", alpha=0.5, input_size=160))
    assert names == ["mobilenet_v2_0.5_imagenet_no_top.weights.h5",
                     "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_160_no_top.h5",
                     "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"]
    assert known_weight_files(BackboneConfig(name="mobilenet_v2", input_size=32))[0] == \
        "mobilenet_v2_1.0_imagenet_no_top.weights.h5"
    assert known_weight_files(BackboneConfig(name="tiny")) == []


def test_explicit_weights_path(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_weights(BackboneConfig(name="mobilenet_v2", weights=str(missing)))
    with pytest.raises(WeightsNotFoundError):
        Backbone(BackboneConfig(name="mobilenet_v2", input_size=32, weights=str(missing)))
    present = tmp_path / "yes.h5"
    present.touch()
    assert resolve_weights(BackboneConfig(name="vgg16", weights=str(present))) == str(present)
    assert issubclass(WeightsNotFoundError, FileNotFoundError)


@pytest.mark.skipif(not SHARED_MOBILENET.is_file(), reason="shared MobileNetV2 weights are not available")
def test_real_mobilenet_v2_loads_shared_weights(tmp_path, monkeypatch):
    import h5py

    monkeypatch.setenv("DOC_WEIGHTS", str(SHARED_MOBILENET.parent))
    cfg = BackboneConfig(name="mobilenet_v2", input_size=32)
    assert resolve_weights(cfg) == str(SHARED_MOBILENET)
    b = Backbone(cfg)
    with h5py.File(SHARED_MOBILENET, "r") as f:
        first_kernel = f["layers/conv2d/vars/0"][()]
    np.testing.assert_array_equal(b.model.get_layer("Conv1").kernel.numpy(), first_kernel)
    assert b.config.feature_layer == "block_13_expand_relu" and b.feature_dim == 576
    # blocks 9-13 train by default (trainable_from block_8_add, chosen by benchmark --protocol validation)
    assert b.trunk is not None and "block_8_project" not in b.trainable_layer_names
    assert "block_9_expand" in b.trainable_layer_names and "block_14_expand" not in b.trainable_layer_names
    e = b.embed(images(2, 32, 3))
    assert e.shape == (2, 576) and np.isfinite(e).all()
