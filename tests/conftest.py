"""Shared fixtures: a tiny backbone config, synthetic uint8 images and an environment isolated from the user's."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from doc_core import BackboneConfig

IMAGE_SIZE = 32


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path_factory) -> None:
    """Keep the user's dataset/weights variables and Keras cache out of every test."""
    monkeypatch.delenv("DOC_DATA_DIR", raising=False)
    monkeypatch.delenv("DOC_WEIGHTS", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))


@pytest.fixture
def tiny_config() -> BackboneConfig:
    """The small random CNN used by every test that trains."""
    return BackboneConfig(name="tiny", input_size=IMAGE_SIZE, weights=None)


def smooth_noise(rng: np.random.Generator, n: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Normal images: low-contrast blocky noise around mid-gray, uint8 (n, size, size, 1)."""
    base = rng.normal(0.0, 1.0, (n, size // 4, size // 4))
    up = np.kron(base, np.ones((4, 4)))
    return np.clip(110 + 12 * up, 0, 255).astype(np.uint8)[..., None]


def stripes(rng: np.random.Generator, n: int, kind: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Reference images of class ``kind``: horizontal (0), vertical (1) or diagonal (2) stripes plus noise."""
    yy, xx = np.mgrid[:size, :size]
    pattern = [(yy // 4) % 2, (xx // 4) % 2, ((xx + yy) // 4) % 2][kind]
    out = 60 + 130 * pattern[None] + rng.normal(0.0, 8.0, (n, size, size))
    return np.clip(out, 0, 255).astype(np.uint8)[..., None]


def with_patch(rng: np.random.Generator, images: np.ndarray, patch: int = 6) -> np.ndarray:
    """Copies of ``images`` with a bright square planted at a random place in each."""
    out = images.copy()
    size = images.shape[1]
    for im in out:
        y, x = rng.integers(0, size - patch, 2)
        im[y:y + patch, x:x + patch] = 250
    return out


@pytest.fixture(scope="session")
def make_normal() -> Callable[..., np.ndarray]:
    return smooth_noise


@pytest.fixture(scope="session")
def make_reference() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """Factory ``(rng, per_class, n_classes=3) -> (images, labels)`` of striped reference classes."""

    def make(rng: np.random.Generator, per_class: int, n_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
        images = np.concatenate([stripes(rng, per_class, k) for k in range(n_classes)])
        return images, np.repeat(np.arange(n_classes), per_class).astype(np.int64)

    return make


@pytest.fixture(scope="session")
def make_anomalous() -> Callable[..., np.ndarray]:
    return with_patch
