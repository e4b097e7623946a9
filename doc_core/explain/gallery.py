"""What the ranked-anomalies gallery, the embedding explorer and the upload page show, without any UI.

* :func:`rank` orders test images by anomaly score and filters them by true label and by side of the threshold;
  :func:`page_of` cuts one page of a ranking (:func:`page_bounds` of any list).
* :func:`identities` names each test image the way every page shows it (its file name and sub-folder, or its test
  index and class), and :func:`search` keeps the images whose name contains a text.
* :func:`sort_selection` orders a selection of images (by score, label or index) for paging, like a ranking.
* :func:`image_facts` and :func:`upload_facts` gather what the detail view says about one image (:class:`ImageFacts`:
  name, file and folder, score, rank among the test images, verdict at the threshold, label and class).
* :func:`explorer_sample` picks the images the explorer embeds: all of them, or a seeded, label-stratified sample
  when there are more than the cap.
* :func:`decode_upload` turns an uploaded file into an image shaped like the run's dataset images.
* :func:`thumbnail_atlas` packs many thumbnails into one PNG sprite sheet, so the explorer's hover can show any
  point's image without a round trip to the server.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..data.images import DataError, _pil_to_rgb, resize_image

LABELS = ("anomaly", "normal", "unlabelled")
LABEL_CODES = {"anomaly": 1, "normal": 0, "unlabelled": -1}
SIDES = ("all", "above", "below")  # above = flagged as anomaly (score > threshold), below = passed as normal
ORDERS = ("highest", "lowest")  # highest score (most anomalous) first, or lowest first


def label_names(labels: np.ndarray) -> np.ndarray:
    """1/0/-1 labels as "anomaly"/"normal"/"unlabelled"."""
    labels = np.asarray(labels)
    return np.where(labels == 1, "anomaly", np.where(labels == 0, "normal", "unlabelled"))


def score_ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of each score among all of them: 1 = the highest (most anomalous); ties keep index order."""
    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), np.int64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


@dataclass(frozen=True)
class Ranking:
    """Test images that pass a filter, in display order.

    Attributes
    ----------
    indices : np.ndarray, int64
        Test image indices, in the order shown.
    ranks : np.ndarray, int64
        Their rank among *all* test images by score (1 = most anomalous), so a tile says where it stands overall.
    total : int
        Number of test images before filtering.
    """

    indices: np.ndarray
    ranks: np.ndarray
    total: int

    def __len__(self) -> int:
        return len(self.indices)


def rank(scores: np.ndarray, labels: np.ndarray, threshold: float, label: str | list[str] | tuple = (),
         side: str = "all", order: str = "highest") -> Ranking:
    """Order test images by score and keep those with the given true label(s) and side of the threshold.

    Parameters
    ----------
    scores : np.ndarray, shape (m,)
        Higher = more anomalous.
    labels : np.ndarray, shape (m,)
        1 anomaly, 0 normal, -1 unlabelled.
    threshold : float
        Images scoring above it are flagged as anomalies ("above"), the others pass as normal ("below").
    label : str or sequence of str
        Any of :data:`LABELS`; empty keeps every label.
    side : {"all", "above", "below"}
    order : {"highest", "lowest"}
        Highest score first (most anomalous first) or lowest first (most normal-looking first).

    Examples
    --------
    The anomalies that look most normal (missed at this threshold): ``rank(s, y, t, "anomaly", "below", "lowest")``;
    the false alarms: ``rank(s, y, t, "normal", "above", "highest")``.
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of the same length, got {scores.shape} and {labels.shape}")
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    wanted = [label] if isinstance(label, str) else list(label)
    bad = [w for w in wanted if w not in LABELS]
    if bad:
        raise ValueError(f"label must be among {LABELS}, got {bad}")
    keep = np.ones(len(scores), bool)
    if wanted:
        keep &= np.isin(labels, [LABEL_CODES[w] for w in wanted])
    if side == "above":
        keep &= scores > threshold
    elif side == "below":
        keep &= scores <= threshold
    all_ranks = score_ranks(scores)
    idx = np.flatnonzero(keep)
    ordered = idx[np.argsort(all_ranks[idx] if order == "highest" else -all_ranks[idx], kind="stable")]
    return Ranking(indices=ordered.astype(np.int64), ranks=all_ranks[ordered], total=len(scores))


def _display_path(path: str) -> str:
    """A test path relative to the dataset folder as shown to people: ``test/`` and the label folder
    (``normal/``, ``anomaly/``, ``unlabelled/``) dropped, so the sub-folder left is the user's own (a defect type)."""
    parts = [p for p in str(path).replace("\\", "/").split("/") if p]
    if parts and parts[0] == "test":
        parts = parts[1:]
    if len(parts) > 1 and parts[0] in LABELS:
        parts = parts[1:]
    return "/".join(parts) or str(path)


def identities(classes: Sequence[str] | np.ndarray, paths: Sequence[str] | np.ndarray | None = None) -> np.ndarray:
    """The name of each test image, the same on every tile, hover and detail view.

    Parameters
    ----------
    classes : sequence of str, length m
        Each test image's class (Fashion-MNIST class name, or ``normal``/``anomaly``/``unlabelled`` for folders).
    paths : sequence of str, length m, or None
        Test image paths relative to the dataset folder (folder datasets, ``RunScores.paths``); None otherwise.

    Returns
    -------
    np.ndarray of str, shape (m,)
        With paths: the path below the label folder, e.g. ``MT_Crack/exp1_num_123.jpg`` for
        ``test/anomaly/MT_Crack/exp1_num_123.jpg`` (``test/`` alone is dropped for loose unlabelled images).
        Without: ``test #<index> · <class>``, e.g. ``test #12 · Ankle boot``.
    """
    classes = np.asarray(classes).astype(str)
    if paths is None:
        return np.asarray([f"test #{i} · {c}" for i, c in enumerate(classes)], dtype=str)
    paths = np.asarray(paths).astype(str)
    if paths.shape != classes.shape:
        raise ValueError(f"{len(paths)} paths for {len(classes)} test images")
    return np.asarray([_display_path(p) for p in paths], dtype=str)


def matches(names: Sequence[str] | np.ndarray, query: str) -> np.ndarray:
    """Boolean mask, shape (m,): which names contain ``query`` (case-insensitive; blank matches every name)."""
    names = np.asarray(names).astype(str)
    q = str(query).strip().casefold()
    if not q:
        return np.ones(len(names), bool)
    return np.fromiter((q in n.casefold() for n in names), bool, count=len(names))


def search(ranking: Ranking, names: Sequence[str] | np.ndarray, query: str) -> Ranking:
    """The images of ``ranking`` whose name (:func:`identities`, indexed by test index) contains ``query``
    (case-insensitive substring; blank keeps all), in the same order with the same overall ranks."""
    keep = matches(np.asarray(names)[ranking.indices], query) if len(ranking) else np.zeros(0, bool)
    return Ranking(indices=ranking.indices[keep], ranks=ranking.ranks[keep], total=ranking.total)


SELECTION_ORDERS = ("score_desc", "score_asc", "label", "index")
SELECTION_ORDER_LABELS = {"score_desc": "Score, highest first", "score_asc": "Score, lowest first",
                          "label": "Label (anomaly, normal, unlabelled, training), then score",
                          "index": "Index"}


def sort_selection(scores: np.ndarray, labels: np.ndarray, order: str = "score_desc") -> np.ndarray:
    """The display order of selected images (positions into the given arrays).

    Parameters
    ----------
    scores : np.ndarray, shape (n,)
        Higher = more anomalous.
    labels : np.ndarray of int, shape (n,)
        1 anomaly, 0 normal, -1 unlabelled; any other value (e.g. -2 for a normal training image) sorts last.
    order : {"score_desc", "score_asc", "label", "index"}
        Score highest first (the default), lowest first, by label (anomalies first) and then score highest first,
        or as given (the positions' own order, i.e. by index when the selection is listed by index).

    Returns
    -------
    np.ndarray, int64, shape (n,)
        A permutation of ``range(n)``; ties keep the given order.
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of the same length, got {scores.shape} and {labels.shape}")
    if order not in SELECTION_ORDERS:
        raise ValueError(f"order must be one of {SELECTION_ORDERS}, got {order!r}")
    if order == "index":
        return np.arange(len(scores), dtype=np.int64)
    if order == "score_asc":
        return np.argsort(scores, kind="stable").astype(np.int64)
    by_score = np.argsort(-scores, kind="stable")
    if order == "score_desc":
        return by_score.astype(np.int64)
    group = {1: 0, 0: 1, -1: 2}
    rank_of_label = np.asarray([group.get(int(v), 3) for v in labels], np.int64)
    return by_score[np.argsort(rank_of_label[by_score], kind="stable")].astype(np.int64)


@dataclass(frozen=True)
class ImageFacts:
    """What the detail view says about one image, the same from every page.

    Attributes
    ----------
    name : str
        Its name as every page shows it (:func:`identities` for a test image, the file name for an upload).
    file : str
        The file name alone (the last part of ``name``), or ``name`` when it has no file (``test #i · class``).
    folder : str
        The sub-folder part of ``name`` (e.g. a defect type), "" when there is none.
    score : float
        Its anomaly score; higher = more anomalous.
    rank : int
        Its rank among the test images by score, 1 = the most anomalous. For an upload, the rank it would take among
        them (1 + the number of test images scoring strictly higher).
    total : int
        Number of test images ranked.
    threshold : float
        The operating threshold.
    flagged : bool
        ``score > threshold``: flagged as an anomaly, else passed as normal.
    label : int or None
        1 anomaly, 0 normal, -1 unlabelled; None for an upload (its truth is unknown).
    class_name : str
        Its class (Fashion-MNIST class, or the label folder of an own-images dataset); "" for an upload.
    index : int
        Its test index, or its position among the uploads.
    upload : bool
        True for an uploaded image, which is not one of the test images.
    """

    name: str
    file: str
    folder: str
    score: float
    rank: int
    total: int
    threshold: float
    flagged: bool
    label: int | None
    class_name: str
    index: int
    upload: bool = False

    @property
    def verdict(self) -> str:
        """"flagged" (score above the threshold) or "passed"."""
        return "flagged" if self.flagged else "passed"

    @property
    def label_word(self) -> str:
        """"anomaly", "normal", "unlabelled", or "unknown (uploaded)" for an upload."""
        return "unknown (uploaded)" if self.label is None else str(label_names(np.asarray([self.label]))[0])


def _file_and_folder(name: str) -> tuple[str, str]:
    if name.startswith("test #"):
        return name, ""
    folder, _, file = str(name).replace("\\", "/").rpartition("/")
    return file, folder


def image_facts(index: int, scores: np.ndarray, labels: np.ndarray, classes: Sequence[str] | np.ndarray,
                names: Sequence[str] | np.ndarray, threshold: float) -> ImageFacts:
    """The facts of test image ``index`` (:class:`ImageFacts`).

    Parameters
    ----------
    index : int
        Test index, ``0 <= index < m``.
    scores : np.ndarray, shape (m,)
        The test scores at the operating point; higher = more anomalous.
    labels : np.ndarray, int, shape (m,)
        1 anomaly, 0 normal, -1 unlabelled.
    classes : sequence of str, length m
    names : sequence of str, length m
        :func:`identities` of the test images.
    threshold : float

    Returns
    -------
    ImageFacts
        Its rank is the one :func:`score_ranks` gives (ties in index order), so it matches the Ranked page.

    Raises
    ------
    IndexError
        ``index`` is not a test index.
    """
    scores = np.asarray(scores, np.float64)
    m = len(scores)
    if not 0 <= int(index) < m:
        raise IndexError(f"test index {index} is not among the {m} test images")
    if not (len(labels) == len(classes) == len(names) == m):
        raise ValueError("scores, labels, classes and names must have one entry per test image")
    i, s = int(index), float(scores[int(index)])
    rank_ = 1 + int(np.sum(scores > s)) + int(np.sum(scores[:i] == s))
    name = str(np.asarray(names)[i])
    file, folder = _file_and_folder(name)
    return ImageFacts(name=name, file=file, folder=folder, score=s, rank=rank_, total=m, threshold=float(threshold),
                      flagged=s > threshold, label=int(np.asarray(labels)[i]), class_name=str(np.asarray(classes)[i]),
                      index=i)


def upload_facts(index: int, name: str, score: float, test_scores: np.ndarray, threshold: float) -> ImageFacts:
    """The facts of uploaded image ``index`` (its position among the uploads) named ``name``, scored ``score``
    under the same scorer as ``test_scores`` (shape (m,)): its rank is the one it would take among the test images."""
    test_scores = np.asarray(test_scores, np.float64)
    s = float(score)
    file, folder = _file_and_folder(str(name))
    return ImageFacts(name=str(name), file=file, folder=folder, score=s, rank=1 + int(np.sum(test_scores > s)),
                      total=len(test_scores), threshold=float(threshold), flagged=s > threshold, label=None,
                      class_name="", index=int(index), upload=True)


def n_pages(n: int, page_size: int) -> int:
    """Pages needed for ``n`` items (at least 1, so an empty gallery still has page 1)."""
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, got {page_size}")
    return max(1, -(-int(n) // page_size))


def page_bounds(n: int, page: int, page_size: int) -> tuple[int, int, int]:
    """``(page, lo, hi)`` of page ``page`` (1-based, clipped to the pages there are) of ``n`` items: items
    ``lo:hi`` are on it."""
    page = min(max(1, int(page)), n_pages(n, page_size))
    lo = (page - 1) * page_size
    return page, lo, min(int(n), lo + page_size)


def page_of(ranking: Ranking, page: int, page_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and ranks of page ``page`` (1-based; clipped to the pages there are)."""
    _, lo, hi = page_bounds(len(ranking), page, page_size)
    return ranking.indices[lo:hi], ranking.ranks[lo:hi]


def explorer_sample(labels: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Indices of the test images the explorer embeds: all when there are at most ``max_points``, else a seeded
    sample that keeps each label's share (every label present keeps at least one image). Sorted ascending."""
    labels = np.asarray(labels)
    n = len(labels)
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, got {max_points}")
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == v) for v in np.unique(labels)]
    quotas = [max(1, int(round(max_points * len(g) / n))) for g in groups]
    while sum(quotas) > max_points:  # rounding up can overshoot by a few: trim the largest group
        quotas[int(np.argmax(quotas))] -= 1
    picked = [rng.choice(g, size=min(q, len(g)), replace=False) for g, q in zip(groups, quotas)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def decode_upload(data: bytes, name: str, shape: tuple[int, ...], max_pixels: int = 50_000_000) -> np.ndarray:
    """Decode an uploaded image file into a uint8 array of ``shape`` (h, w, c), like the run's dataset images.

    The image is made RGB (alpha on white, 16-bit rescaled), resized to the square size (h == w) and turned to gray
    (luminance) when c == 1.

    Raises
    ------
    DataError
        Not a readable image, or too large; the message names the file.
    """
    from PIL import Image, ImageOps

    h, w, c = (tuple(shape) + (1,))[:3] if len(shape) == 2 else tuple(shape)
    if h != w or c not in (1, 3):
        raise ValueError(f"shape must be (size, size, 1 or 3), got {shape}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > max_pixels:
                raise DataError(f"{name}: {im.width}x{im.height} pixels is more than the limit of {max_pixels}")
            im.load()
            rgb = _pil_to_rgb(ImageOps.exif_transpose(im))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        raise DataError(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from exc
    rgb = resize_image(rgb, h)
    if c == 1:
        gray = np.round(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)
        return np.clip(gray, 0, 255).astype(np.uint8)[..., None]
    return rgb


def enlarge(image: np.ndarray, px: int, at_least: bool = False) -> np.ndarray:
    """Enlarge a small uint8 image by a whole factor (nearest neighbour, so pixels stay crisp and the aspect ratio is
    kept) to about ``px`` on its longer side (at most ``px`` unless the image is larger; with ``at_least``, the
    smallest factor that reaches ``px``); (h, w, 1) gray becomes (h', w')."""
    image = np.asarray(image)
    longer = max(image.shape[:2])
    f = max(1, -(-int(px) // longer) if at_least else int(px) // longer)
    out = np.repeat(np.repeat(image, f, axis=0), f, axis=1)
    return out[..., 0] if out.ndim == 3 and out.shape[-1] == 1 else out


def detail_picture(image: np.ndarray, min_px: int = 320, aspect: float | None = None) -> np.ndarray:
    """One image enlarged for the detail view: by the smallest whole factor that makes its longer side at least
    ``min_px`` (nearest neighbour, so pixels stay sharp), then, when ``aspect`` (the original file's width / height)
    differs from the stored image's, stretched back (nearest neighbour) to that aspect ratio, the longer side kept.

    Parameters
    ----------
    image : np.ndarray, uint8, (h, w), (h, w, 1) or (h, w, 3)
        The image as stored (datasets resize images to squares).
    min_px : int
    aspect : float or None
        Width / height of the original file; None keeps the stored image's aspect ratio.

    Returns
    -------
    np.ndarray, uint8, (H, W) for gray, (H, W, 3) for colour
    """
    big = enlarge(image, min_px, at_least=True)
    h, w = big.shape[:2]
    if aspect is None or not np.isfinite(aspect) or aspect <= 0 or abs(aspect - w / h) < 0.02 * (w / h):
        return big
    longer = max(h, w)
    new_h, new_w = (longer, max(1, round(longer * aspect))) if aspect < 1 else (max(1, round(longer / aspect)), longer)
    rows = np.minimum((np.arange(new_h) + 0.5) * h / new_h, h - 1).astype(np.int64)
    cols = np.minimum((np.arange(new_w) + 0.5) * w / new_w, w - 1).astype(np.int64)
    return big[rows][:, cols]


@dataclass(frozen=True)
class Atlas:
    """Thumbnails packed row-major into one PNG: image ``i`` is the ``tile`` x ``tile`` square at column
    ``i % columns``, row ``i // columns``.

    Attributes
    ----------
    png : bytes
        The PNG file: 8-bit grayscale when every image is gray, else 8-bit RGB.
    tile : int
        Side of one thumbnail in pixels.
    columns : int
        Thumbnails per row.
    count : int
        Number of thumbnails.
    """

    png: bytes
    tile: int
    columns: int
    count: int


def thumbnail_atlas(images: Sequence[np.ndarray] | np.ndarray, max_tile: int = 48) -> Atlas:
    """Pack images into one sprite sheet (:class:`Atlas`).

    Parameters
    ----------
    images : sequence of np.ndarray, uint8, each (h, w), (h, w, 1) or (h, w, 3)
        The images, in order. Sizes may differ.
    max_tile : int
        Largest thumbnail side in pixels. Images no larger than this keep their pixels (28 x 28 Fashion-MNIST
        stays exact); larger ones shrink (area averaging) to fit, keeping their aspect ratio, centred on black.

    Returns
    -------
    Atlas
        One PNG of ``ceil(n / columns)`` rows of ``columns = ceil(sqrt(n))`` tiles (n = 0 gives a 1 x 1 image).
    """
    from PIL import Image

    if max_tile < 1:
        raise ValueError(f"max_tile must be at least 1, got {max_tile}")
    imgs = [np.asarray(im) for im in images]
    for i, im in enumerate(imgs):
        if im.dtype != np.uint8 or not (im.ndim == 2 or (im.ndim == 3 and im.shape[-1] in (1, 3))):
            raise ValueError(f"image {i}: expected uint8 (h, w), (h, w, 1) or (h, w, 3), got {im.dtype} {im.shape}")
    gray = all(im.ndim == 2 or im.shape[-1] == 1 for im in imgs)
    channels = 1 if gray else 3
    tile = min(max_tile, max((max(im.shape[:2]) for im in imgs), default=1))
    n = len(imgs)
    columns = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / columns))
    sheet = np.zeros((rows * tile, columns * tile, channels), np.uint8)
    for i, im in enumerate(imgs):
        im = im.reshape(im.shape[0], im.shape[1], -1)
        if im.shape[-1] != channels:  # a gray image among colour ones
            im = np.repeat(im, 3, axis=-1)
        h, w = im.shape[:2]
        if max(h, w) > tile:
            f = tile / max(h, w)
            size = (max(1, round(w * f)), max(1, round(h * f)))
            pil = Image.fromarray(im[..., 0] if channels == 1 else im).resize(size, Image.Resampling.BOX)
            im = np.asarray(pil).reshape(size[1], size[0], channels)
            h, w = im.shape[:2]
        r, c = divmod(i, columns)
        y, x = r * tile + (tile - h) // 2, c * tile + (tile - w) // 2
        sheet[y:y + h, x:x + w] = im
    buf = io.BytesIO()
    Image.fromarray(sheet[..., 0] if channels == 1 else sheet).save(buf, "PNG")
    return Atlas(buf.getvalue(), int(tile), int(columns), n)
