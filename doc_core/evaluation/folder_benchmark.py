"""Benchmarks on the user's kind of data: any image folder with test labels, and the magnetic-tile defects.

``python -m doc_core benchmark --protocol folder --folder DIR`` runs on a folder laid out as
:data:`doc_core.data.splits.FOLDER_LAYOUT` whose ``test/`` has ``normal/`` and ``anomaly/`` images; pixel masks are read
from an optional ``ground_truth/`` folder that mirrors ``test/anomaly/`` (same relative path and stem, any image
extension, ``_mask`` suffix allowed; white = defect).

``--protocol magnetic-tile`` reads the magnetic-tile surface-defect images (Huang, Qiu and Yuan, "Surface defect
saliency of magnetic tile", The Visual Computer 36 (2020) 85-96) from ``../shared/datasets/magnetic-tile`` (or
``--folder``): a seeded 80/20 split of ``MT_Free`` (761 train, 191 test normal) against all 392 defective images,
with their pixel masks.

Every method runs with one fixed configuration (the library defaults); ``auto`` chooses among its candidates with
:func:`doc_core.workflow.selection.select_configuration`, which sees the normal training images only. Test labels are
used for the reported numbers and nothing else. The result says whether ``auto`` picked the candidate that was best on
the test set, and by how much it missed.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.images import IMAGE_EXTENSIONS, DataError, read_image
from ..data.splits import OneClassSplit, load_folder_split
from ..model.backbones import DEFAULT_PATCH_LAYERS, REPO_ROOT, BackboneConfig
from ..model.calibration import DEFAULT_CALIBRATION_FRACTION
from ..model.detector import DOCDetector, ScorerConfig
from ..model.training import TrainConfig
from .benchmark import MethodResult, format_fpr, machine_info, run_raw_knn, threshold_check
from .metrics import roc_auc

MAGNETIC_TILE_DIR = REPO_ROOT.parent / "shared" / "datasets" / "magnetic-tile"
MT_DEFECTS = ("Blowhole", "Break", "Crack", "Fray", "Uneven")
TRAIN_FRACTION = 0.8


def _read_gray_resized(path: Path, size: int) -> np.ndarray:
    import cv2

    img = read_image(path)  # (h, w, 3) uint8, limits and EXIF handled
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if size < min(img.shape[:2])
                      else cv2.INTER_LINEAR)


def _read_mask(path: Path, size: int) -> np.ndarray:
    import cv2

    m = read_image(path)[..., 0]
    return cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) > 127


def load_magnetic_tiles(root: str | Path | None = None, image_size: int = 96,
                        seed: int = 0) -> tuple[OneClassSplit, np.ndarray]:
    """The magnetic-tile protocol: seeded 80/20 split of ``MT_Free``; all defect classes as anomalies.

    Returns
    -------
    split : OneClassSplit
        ``train_normal`` (761 of 952 defect-free tiles at seed 0), an empty reference set, and the test set:
        191 normal then 392 defective tiles (classes ``Free`` / the defect name), images (image_size,) * 2 RGB.
    masks : np.ndarray, bool, shape (m, image_size, image_size)
        Pixel masks of the test images (all False for the normal ones), resized with nearest neighbours.
    """
    root = Path(root) if root else MAGNETIC_TILE_DIR
    if not (root / "MT_Free" / "Imgs").is_dir():
        raise DataError(f"no magnetic-tile data set at {root} (expected MT_Free/Imgs/*.jpg); see "
                        "../shared/datasets/magnetic-tile/README.md")
    free = sorted((root / "MT_Free" / "Imgs").glob("*.jpg"))
    perm = np.random.default_rng(seed).permutation(len(free))
    n_train = int(round(TRAIN_FRACTION * len(free)))
    train_paths = [free[i] for i in np.sort(perm[:n_train])]
    test_paths = [(free[i], "Free") for i in np.sort(perm[n_train:])]
    for d in MT_DEFECTS:
        test_paths += [(p, d) for p in sorted((root / f"MT_{d}" / "Imgs").glob("*.jpg"))]
    train = np.stack([_read_gray_resized(p, image_size) for p in train_paths])
    test = np.stack([_read_gray_resized(p, image_size) for p, _ in test_paths])
    masks = np.stack([_read_mask(p.with_suffix(".png"), image_size) for p, _ in test_paths])
    labels = np.array([0 if c == "Free" else 1 for _, c in test_paths], np.int64)
    split = OneClassSplit(
        train_normal=train, reference=np.zeros((0,) + train.shape[1:], np.uint8),
        reference_labels=np.zeros(0, np.int64), reference_names=(), test_images=test, test_labels=labels,
        test_classes=tuple(c for _, c in test_paths), name="magnetic tiles",
        info={"source": "magnetic-tile", "root": str(root), "image_size": image_size, "seed": seed,
              "test_paths": [str(p.relative_to(root)) for p, _ in test_paths],
              "train_paths": [str(p.relative_to(root)) for p in train_paths]})
    return split, masks


def folder_masks(root: str | Path, split: OneClassSplit) -> np.ndarray | None:
    """Pixel masks for a folder split's test images from ``root/ground_truth`` (None when there is none).

    ``ground_truth/<path under test/anomaly without extension>[_mask].<image extension>``; normal and unlabelled test
    images get empty masks; an anomalous image without a mask file makes the whole set None (pixel AUROC needs all).
    """
    root = Path(root)
    gt = root / "ground_truth"
    if not gt.is_dir():
        return None
    size = split.test_images.shape[1]
    masks = np.zeros(split.test_images.shape[:3], bool)
    for i, rel in enumerate(split.info.get("test_paths", [])):
        parts = Path(rel).parts
        if len(parts) < 3 or parts[:2] != ("test", "anomaly"):
            continue
        stem = Path(*parts[2:]).with_suffix("")
        found = [p for p in (gt / stem.parent).glob(f"{stem.name}*") if p.suffix.lower() in IMAGE_EXTENSIONS
                 and p.stem in (stem.name, f"{stem.name}_mask")] if (gt / stem.parent).is_dir() else []
        if not found:
            return None
        masks[i] = _read_mask(found[0], size)
    return masks


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """AUROC over every pixel of every test image (normal images count with all-normal masks), as usual for
    MVTec-style data sets. ``masks`` bool (m, h, w), ``maps`` float (m, h, w), higher = more anomalous."""
    return roc_auc(masks.ravel().astype(np.int64), maps.ravel())


def pixel_auroc_breakdown(masks: np.ndarray, maps: np.ndarray, labels: np.ndarray,
                          classes: tuple[str, ...] | list[str]) -> dict:
    """Where the pooled :func:`pixel_auroc` comes from.

    Parameters
    ----------
    masks : np.ndarray, bool, shape (m, h, w)
    maps : np.ndarray, float, shape (m, h, w); higher = more anomalous
    labels : np.ndarray, int, shape (m,)
        0 normal, 1 anomalous.
    classes : sequence of str, length m
        Each test image's class (its defect type; any name for normal images).

    Returns
    -------
    dict
        ``by_class``: class -> pixel AUROC over the normal images and the anomalous images of that class (None for a
        class without defect pixels); ``anomalous_only``: pixel AUROC over the anomalous images alone (how well a
        map finds the defect *within* a defective image; None without both kinds of pixel there).
    """
    labels = np.asarray(labels)
    classes = np.asarray(classes)
    normal = labels == 0

    def auc(sel: np.ndarray) -> float | None:
        m = masks[sel]
        if not m.any() or m.all():
            return None
        return float(roc_auc(m.ravel().astype(np.int64), maps[sel].ravel()))

    names = sorted(set(classes[labels == 1].tolist()))
    return {"by_class": {c: auc(normal | ((labels == 1) & (classes == c))) for c in names},
            "anomalous_only": auc(labels == 1)}


def _gradcam_maps(det: DOCDetector, images: np.ndarray) -> np.ndarray:
    from ..explain.gradcam import GradCAM

    return GradCAM(det).explain(images)[0]


def _bank_bytes(det: DOCDetector) -> int:
    return int(getattr(det.scorer_, "bank_bytes_", None) or np.asarray(det.scorer_.bank_).nbytes)


def benchmark_folder(split: OneClassSplit, masks: np.ndarray | None = None,
                     backbone: BackboneConfig = BackboneConfig(), train: TrainConfig = TrainConfig(),
                     fashion_reference: bool = True, seed: int = 0,
                     log: Callable[[str], None] | None = None, anomalies: str = "any") -> dict:
    """Every method side by side on one labelled folder split; see the module docstring.

    ``anomalies`` restricts ``auto``'s candidates (:func:`doc_core.workflow.selection.auto_candidates`).

    Returns a JSON-serialisable dict: ``methods`` (name -> auc, pixel_auc, fit_s, score_ms_per_image, bank_bytes,
    config), ``auto`` (the selection table, its pick, the test-best candidate and the miss), ``machine`` and the data.
    """
    from ..data.datasets import with_reference
    from ..workflow.selection import auto_candidates, select_configuration

    log = log or (lambda msg: None)
    machine = machine_info()  # before the run: the commit and tree state of the code that runs
    if not split.has_test_labels or len(set(split.test_labels.tolist()) - {-1}) < 2:
        raise DataError("the folder benchmark needs labelled test images: test/normal and test/anomaly")
    labelled = split.test_labels >= 0
    if not labelled.all():  # unlabelled test images are left out of every number
        keep = np.nonzero(labelled)[0]
        split = replace(split, test_images=split.test_images[keep], test_labels=split.test_labels[keep],
                        test_classes=tuple(split.test_classes[i] for i in keep))
        masks = masks[keep] if masks is not None else None
    y, test = split.test_labels, split.test_images
    backbone, train = replace(backbone, input_size=test.shape[1]), replace(train, seed=seed)
    methods: dict[str, dict] = {}

    def record(name: str, res: MethodResult, det: DOCDetector | None = None, pixel: float | None = None,
               config: dict | None = None, pixel_breakdown: dict | None = None) -> None:
        methods[name] = {"auc": res.auc, "pixel_auc": pixel, "pixel_breakdown": pixel_breakdown, "fit_s": res.fit_s,
                         "score_ms_per_image": res.score_ms_per_image,
                         "bank_bytes": _bank_bytes(det) if det is not None else None, "config": config,
                         **(res.threshold or {})}
        px = "" if pixel is None else f", pixel AUROC {pixel:.4f}"
        fpr = "" if res.threshold is None or res.threshold["realised_fpr"] is None else \
            (f", false positives {res.threshold['realised_fpr']:.1%} at the threshold (intended "
             f"{res.threshold['intended_fpr']:.0%})")
        log(f"{name}: image AUROC {res.auc:.4f}{px}, fit {res.fit_s:.1f} s, {res.score_ms_per_image:.2f} ms/image{fpr}")

    def evaluate(name: str, det: DOCDetector, fit_s: float, gradcam: bool = False) -> DOCDetector:
        det.decision_function(test[:8])  # warm-up (traces the tf.functions once)
        t0 = time.perf_counter()
        scores = det.decision_function(test)
        ms = (time.perf_counter() - t0) * 1000 / len(test)
        pixel = breakdown = None
        if masks is not None and (det.is_patch or gradcam):
            maps = det.anomaly_maps(test) if det.is_patch else _gradcam_maps(det, test)
            pixel = pixel_auroc(masks, maps)
            breakdown = pixel_auroc_breakdown(masks, maps, y, split.test_classes)
        res = MethodResult.of(y, scores, fit_s, ms)
        res.threshold = threshold_check(det, y, scores)
        record(name, res, det, pixel, det.config_dict(), breakdown)
        return det

    def fit(det: DOCDetector, s: OneClassSplit) -> tuple[DOCDetector, float]:
        t0 = time.perf_counter()
        det.fit(s.train_normal, s.reference, s.reference_labels, s.reference_names)
        return det, time.perf_counter() - t0

    log(f"{len(split.train_normal)} normal training images, {int((y == 0).sum())} normal and {int((y == 1).sum())} "
        f"anomalous test images, {test.shape[1]} px")
    record("raw_knn", run_raw_knn(split))
    pre = replace(train, epochs=0)
    coarse = DEFAULT_PATCH_LAYERS[backbone.name][-1:]
    det, fit_s = fit(DOCDetector(backbone, pre, ScorerConfig("knn")), split)
    evaluate("pretrained_knn", det, fit_s, gradcam=True)
    dflt = ScorerConfig("patch").image_score
    for name, layers, how in (("pretrained_patch", None, dflt), ("pretrained_patch_coarse", coarse, dflt),
                              ("pretrained_patch_top10", None, "top10"),
                              ("pretrained_patch_coarse_top10", coarse, "top10"),
                              ("pretrained_patch_max", None, "max"), ("pretrained_patch_coarse_max", coarse, "max")):
        # *_top10: the default before; *_max: PatchCore's image score (the most anomalous patch), for comparison
        t0 = time.perf_counter()
        pdet = det.with_scorer(ScorerConfig("patch", patch_layers=layers, image_score=how), normal=split.train_normal)
        evaluate(name, pdet, fit_s + time.perf_counter() - t0)
    refs = [("none", "doc_knn_noref")]
    if len(split.reference_names) >= 2:
        refs.append(("folder", "doc_knn_folder_ref"))
    if fashion_reference:
        refs.append(("fashion-mnist", "doc_knn_fashion_ref"))
    for choice, name in refs:
        s = with_reference(split, choice)
        det, fit_s = fit(DOCDetector(backbone, train, ScorerConfig("knn")), s)
        evaluate(name, det, fit_s, gradcam=True)
        t0 = time.perf_counter()
        pdet = det.with_scorer(ScorerConfig("patch"), normal=split.train_normal)
        evaluate(name.replace("knn", "patch"), pdet, fit_s + time.perf_counter() - t0)
    # auto: chosen on the normal training images only, then refitted on all of them
    auto_split = with_reference(split, "auto")
    t0 = time.perf_counter()
    cands = auto_candidates(backbone, train, anomalies=anomalies)
    sel = select_configuration(auto_split.train_normal, cands, auto_split.reference, auto_split.reference_labels,
                               auto_split.reference_names, seed=seed, on_progress=log,
                               calibration_fraction=DEFAULT_CALIBRATION_FRACTION,  # never sees the threshold's slice
                               anomalies=anomalies)
    chosen = sel.chosen
    det, _ = fit(DOCDetector(chosen.backbone, chosen.train, chosen.scorer), auto_split)
    evaluate("auto", det, time.perf_counter() - t0)
    log(sel.table())
    # which candidate was best on the test set (reported, never used for the choice)
    ref = "noref" if auto_split.info.get("reference") == "none" else "folder_ref"
    cand_method = {"pretrained, global k-NN": "pretrained_knn", "pretrained, patch k-NN": "pretrained_patch",
                   "pretrained, patch k-NN (coarse layer)": "pretrained_patch_coarse",
                   "DOC, global k-NN": f"doc_knn_{ref}", "DOC, patch k-NN": f"doc_patch_{ref}"}
    test_aucs = {c.name: methods[cand_method[c.name]]["auc"] for c in cands if cand_method.get(c.name) in methods}
    best_name = max(test_aucs, key=test_aucs.get)
    auto = {**sel.to_dict(), "test_auc_of_candidates": test_aucs, "test_best": best_name,
            "picked_test_best": best_name == chosen.name,
            "miss": test_aucs[best_name] - test_aucs.get(chosen.name, np.nan),
            "reference": auto_split.info.get("reference"), "reference_reason": auto_split.info.get("reference_reason")}
    return {"data": {"name": split.name, "n_train": len(split.train_normal), "n_test_normal": int((y == 0).sum()),
                     "n_test_anomaly": int((y == 1).sum()), "image_size": int(test.shape[1]),
                     "pixel_masks": masks is not None},
            "methods": methods, "auto": auto, "seed": seed, "machine": machine}


def format_folder_table(result: dict) -> str:
    """The methods of :func:`benchmark_folder` as a plain-text table."""
    lines = [f"{'method':<28} {'image AUROC':>11} {'pixel AUROC':>11} {'fit s':>7} {'ms/img':>7} {'bank MB':>8}"
             f"{'FPR intended':>14}{'realised':>10}{'(LOO)':>8}"]
    for name, m in result["methods"].items():
        px = "-" if m["pixel_auc"] is None else f"{m['pixel_auc']:.4f}"
        mb = "-" if m["bank_bytes"] is None else f"{m['bank_bytes'] / 2**20:.1f}"
        lines.append(f"{name:<28} {m['auc']:>11.4f} {px:>11} {m['fit_s']:>7.1f} {m['score_ms_per_image']:>7.2f} "
                     f"{mb:>8}" + format_fpr(m))
    rows = {name: m["pixel_breakdown"] for name, m in result["methods"].items() if m.get("pixel_breakdown")}
    classes = sorted({c for b in rows.values() for c in b["by_class"]})
    if rows:
        lines.append("pixel AUROC by anomaly class (normal images + that class) and within the anomalous images only:")
        lines.append(f"{'method':<28}" + "".join(f"{c[:10]:>11}" for c in classes) + f"{'within':>11}")
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        for name, b in rows.items():
            lines.append(f"{name:<28}" + "".join(f"{fmt(b['by_class'].get(c)):>11}" for c in classes)
                         + f"{fmt(b['anomalous_only']):>11}")
    a = result["auto"]
    verdict = "yes" if a["picked_test_best"] else f"no (best on test: {a['test_best']}, missed by {a['miss']:.4f})"
    lines.append(f"auto picked {a['chosen']!r}; the test set's best candidate? {verdict}")
    return "\n".join(lines)


def load_labelled_folder(root: str | Path, image_size: int = 96) -> tuple[OneClassSplit, np.ndarray | None]:
    """A folder split for ``--protocol folder`` and its ``ground_truth/`` masks (None without them)."""
    split, _ = load_folder_split(root, image_size=image_size)
    return split, folder_masks(root, split)

