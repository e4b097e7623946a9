"""Convolutional autoencoder baseline: trained on normal images only, scored by reconstruction error.

This is the classic deep anomaly-detection baseline (the Keras write-up's earlier article used an autoencoder on the
same kind of images): an image the network has not learnt to reconstruct is anomalous. It needs no reference data
and no pretrained weights, so it shows what DOC's pretrained features and reference set buy.

Fixed defaults (chosen a priori for 28x28 gray images, never on test labels): two stride-2 convolutions (32, 64
filters), a 32-d bottleneck, a mirrored decoder with a sigmoid output, mean squared error, Adam 1e-3, batch 128,
10 epochs.
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

import keras


class ConvAutoencoder:
    """A small convolutional autoencoder with an sklearn-style ``fit`` / ``score_samples``.

    Parameters
    ----------
    image_size : int
        Images are converted to gray and resized to (image_size, image_size); a multiple of 4.
    latent_dim : int
        Size of the bottleneck vector.
    filters : tuple of int
        Filters of the two stride-2 encoder convolutions (the decoder mirrors them).
    epochs : int
    batch_size : int
    learning_rate : float
    seed : int
        Seeds the weights (seeded initialisers, one per layer) and the batch order (a numpy generator); Keras' and
        TensorFlow's global seeds are neither set nor used, so autoencoders trained at once in one process (for
        example beside training jobs) stay reproducible and leave the process's random state alone.

    Attributes
    ----------
    model_ : keras.Model
        (b, s, s, 1) float32 in [0, 1] -> reconstruction of the same shape.
    history_ : list of float
        Training loss (mean squared error) after each epoch.
    fit_seconds_ : float
    """

    def __init__(self, image_size: int = 28, latent_dim: int = 32, filters: tuple[int, int] = (32, 64),
                 epochs: int = 10, batch_size: int = 128, learning_rate: float = 1e-3, seed: int = 0) -> None:
        self.image_size = image_size
        self.latent_dim = latent_dim
        self.filters = filters
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.seed = seed

    def _check(self) -> None:
        if self.image_size < 4 or self.image_size % 4:
            raise ValueError(f"image_size must be a positive multiple of 4, got {self.image_size}")
        if self.epochs < 1 or self.batch_size < 1 or self.latent_dim < 1:
            raise ValueError("epochs, batch_size and latent_dim must be at least 1")

    def _build(self) -> keras.Model:
        s, (f1, f2) = self.image_size, self.filters
        seeds = iter(np.random.default_rng(self.seed).integers(0, 2**31 - 1, size=7).tolist())

        def init() -> keras.initializers.Initializer:  # a fresh seeded initialiser per layer (biases start at 0)
            return keras.initializers.GlorotUniform(seed=next(seeds))

        inp = keras.Input((s, s, 1), name="image")
        x = keras.layers.Conv2D(f1, 3, strides=2, padding="same", activation="relu", name="enc1",
                                kernel_initializer=init())(inp)
        x = keras.layers.Conv2D(f2, 3, strides=2, padding="same", activation="relu", name="enc2",
                                kernel_initializer=init())(x)
        z = keras.layers.Dense(self.latent_dim, name="latent", kernel_initializer=init())(keras.layers.Flatten()(x))
        x = keras.layers.Dense((s // 4) * (s // 4) * f2, activation="relu", name="dec_dense",
                               kernel_initializer=init())(z)
        x = keras.layers.Reshape((s // 4, s // 4, f2))(x)
        x = keras.layers.Conv2DTranspose(f2, 3, strides=2, padding="same", activation="relu", name="dec1",
                                         kernel_initializer=init())(x)
        x = keras.layers.Conv2DTranspose(f1, 3, strides=2, padding="same", activation="relu", name="dec2",
                                         kernel_initializer=init())(x)
        out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="reconstruction",
                                  kernel_initializer=init())(x)
        return keras.Model(inp, out, name="conv_autoencoder")

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (n, h, w, c) or (n, h, w) -> float32 (n, s, s, 1) in [0, 1]: gray (ITU-R 601 luma), resized
        (area when shrinking, bilinear when enlarging)."""
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (n, h, w, 1 or 3), got {x.dtype} {x.shape}")
        x = x.astype(np.float32) / 255.0
        if x.shape[-1] == 3:
            x = x @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
        s = self.image_size
        if x.shape[1:3] != (s, s):
            method = "area" if s < min(x.shape[1:3]) else "bilinear"
            x = tf.image.resize(x, (s, s), method=method).numpy()
        return np.clip(x, 0.0, 1.0).astype(np.float32)

    def fit(self, images: np.ndarray) -> "ConvAutoencoder":
        """Train on normal images only: uint8 (n, h, w, c). Returns self."""
        self._check()
        x = self.prepare(images)
        if len(x) < 2:
            raise ValueError(f"the autoencoder needs at least 2 training images, got {len(x)}")
        t0 = time.perf_counter()
        self.model_ = self._build()
        self.model_.compile(optimizer=keras.optimizers.Adam(self.learning_rate), loss="mse")
        # the batch order comes from this generator, not from Keras' shuffling (which draws on the global seed)
        rng = np.random.default_rng(self.seed)
        self.history_ = []
        for _ in range(self.epochs):
            order = rng.permutation(len(x))
            hist = self.model_.fit(x[order], x[order], epochs=1, batch_size=min(self.batch_size, len(x)),
                                   shuffle=False, verbose=0)
            self.history_.append(float(hist.history["loss"][-1]))
        # one traced function per fitted model (a class-level tf.function would retrace for every new instance)
        model = self.model_
        self._predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def reconstruct(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Reconstructions of uint8 images: float32 (n, s, s, 1) in [0, 1]."""
        return self._reconstruct(self.prepare(images), batch_size)

    def _reconstruct(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        if not hasattr(self, "model_"):
            raise RuntimeError("this ConvAutoencoder is not fitted yet; call fit()")
        if len(x) == 0:
            return x
        return np.concatenate([np.asarray(self._predict(tf.convert_to_tensor(x[i:i + batch_size])))
                               for i in range(0, len(x), batch_size)])

    def score_samples(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Anomaly scores: mean squared reconstruction error per image, float32 (n,), >= 0; higher = more anomalous.

        Errors are in units of [0, 1] intensities, averaged over the (image_size x image_size) gray pixels.
        """
        x = self.prepare(images)
        rec = self._reconstruct(x, batch_size)
        return np.mean((rec - x) ** 2, axis=(1, 2, 3)).astype(np.float32)
