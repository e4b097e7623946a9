"""Data: image files, Fashion-MNIST, one-class splits and the user's own datasets.

==================  =================================================================================================
``images``          decode image files into RGB ``uint8`` arrays, resize, list a folder (:class:`DataError`)
``fashion_mnist``   read Fashion-MNIST's IDX files from the first place that has them
``splits``          one-class problems: :class:`SplitConfig`, :func:`make_split`, :func:`load_folder_split`
``datasets``        the user's own datasets: folders, zips, uploads, reference choices
==================  =================================================================================================

Every public name of ``images``, ``fashion_mnist`` and ``splits`` is importable from here
(``from doc_core.data import make_split``); ``datasets`` is imported by its full path.
"""

from __future__ import annotations

from .fashion_mnist import (DEBIAN_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, FASHION_MNIST_FILES, FashionMNIST,
                            fashion_mnist_candidates, load_fashion_mnist, read_idx)
from .images import (IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, DataError, NonFinitePixelsError, SkippedFile, list_images,
                     read_image, read_images, resize_image)
from .splits import (FOLDER_LAYOUT, ONE_VS_REST_SPLITS, OneClassSplit, SplitConfig, load_folder_split, make_split)

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "FASHION_MNIST_FILES", "FashionMNIST", "fashion_mnist_candidates",
    "load_fashion_mnist", "read_idx",
    "IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS", "DataError", "NonFinitePixelsError", "SkippedFile", "list_images",
    "read_image", "read_images", "resize_image",
    "FOLDER_LAYOUT", "ONE_VS_REST_SPLITS", "OneClassSplit", "SplitConfig", "load_folder_split", "make_split",
]
