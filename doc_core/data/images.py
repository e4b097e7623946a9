"""Image files: decode one file or many into RGB ``uint8`` arrays, resize, list a folder's images.

Every image is returned as ``uint8`` (h, w, 3); unreadable, oversized or NaN-holding files raise :class:`DataError`
naming the file (or, in :func:`read_images`, are skipped with a :class:`SkippedFile`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A dataset could not be found or read; the message says what to do (raised by every ``doc_core.data`` loader)."""


@dataclass(frozen=True)
class SkippedFile:
    """A file that could not be used, and why."""

    path: str
    reason: str


MAX_IMAGE_PIXELS = 50_000_000  # about 7,000 x 7,000; larger files are skipped with a message (see read_image)


def read_image(path: str | os.PathLike, size: int | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode one image file into an RGB ``uint8`` array (h, w, 3), resized to (size, size) when given.

    Handles gray, palette, 16-bit, 32-bit float, alpha (composited on white) and EXIF-rotated images; a float image
    with a NaN or infinite pixel is refused (never silently turned black). The pixel count is checked
    from the file header before anything is decoded, so an image over ``max_pixels`` (default
    :data:`MAX_IMAGE_PIXELS`, e.g. 10,000 x 10,000) costs no memory: it is refused with a message naming the file.

    Raises
    ------
    DataError
        For unreadable, non-image, empty or oversized files and NaN/infinite float pixels, naming the file.
    """
    from PIL import Image, ImageOps

    path = Path(path)
    try:
        with warnings.catch_warnings():
            # our own pixel limit (checked from the header, before decoding) replaces PIL's bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > max_pixels:
                    raise DataError(f"{path}: {im.width}x{im.height} pixels is more than the limit of "
                                    f"{max_pixels:,} pixels; the image was skipped (downscale it first)")
                im.load()
                im = ImageOps.exif_transpose(im)
                arr = _pil_to_rgb(im)
    except DataError:
        raise
    except NonFinitePixelsError as exc:
        raise DataError(f"{path}: {exc}; the image was skipped") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: too many pixels to decode safely ({exc}); the image was skipped") from exc
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc
    if size is not None:
        arr = resize_image(arr, size)
    return arr


class NonFinitePixelsError(ValueError):
    """A float image holds NaN or infinite pixels; it is refused, never silently turned into another image."""


def _pil_to_rgb(im) -> np.ndarray:
    """A decoded PIL image as RGB uint8 (h, w, 3).

    16-bit, 32-bit integer and 32-bit float ("F") gray images are rescaled so their minimum is 0 and their maximum
    255 (a constant image becomes 0). A float image with any NaN or infinite pixel raises
    :class:`NonFinitePixelsError`: there is no honest way to rescale it.
    """
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im)
        if a.dtype.kind == "f":
            bad = int(np.count_nonzero(~np.isfinite(a)))
            if bad:
                raise NonFinitePixelsError(f"{bad:,} of {a.size:,} pixels of this floating-point image are NaN or "
                                           "infinite; such images are refused rather than guessed at")
        out = np.zeros(a.shape, np.uint8)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if hi > lo:  # in float64 and in blocks: no overflow for float32 extremes, no full-size float64 copy
            scale = 255.0 / (hi - lo)
            flat_in, flat_out = a.reshape(-1), out.reshape(-1)
            for i in range(0, a.size, 1 << 20):
                block = (flat_in[i:i + (1 << 20)].astype(np.float64) - lo) * scale
                flat_out[i:i + (1 << 20)] = np.clip(np.round(block), 0, 255)
        return np.repeat(out[..., None], 3, axis=-1)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an (h, w, c) uint8 image to (size, size, c): area averaging when shrinking, bilinear when enlarging."""
    import cv2

    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    out = cv2.resize(image, (size, size), interpolation=interp)
    return out.reshape(size, size, -1) if out.ndim == 2 else out


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (by extension) directly inside ``folder`` and its subfolders, sorted; hidden files skipped."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_images(paths: Sequence[str | os.PathLike], size: int) -> tuple[np.ndarray, list[Path], list[SkippedFile]]:
    """Read many images at (size, size, 3), skipping bad files.

    Returns
    -------
    images : np.ndarray, uint8, shape (n_ok, size, size, 3)
    ok : list of Path, the files that were read, in order
    skipped : list of SkippedFile
    """
    images, ok, skipped = [], [], []
    for p in paths:
        try:
            images.append(read_image(p, size))
            ok.append(Path(p))
        except DataError as exc:
            skipped.append(SkippedFile(str(p), str(exc)))
    arr = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return arr, ok, skipped
