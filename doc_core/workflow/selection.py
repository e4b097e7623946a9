"""Label-free model selection: synthetic defects in held-out normal images, and the ``auto`` preset built on them.

A user's own data set usually has normal images only (and maybe a handful of unlabelled test images), so nothing
tells which configuration (pretrained or DOC-trained features, global or patch scoring, ...) will find *their*
defects. :func:`select_configuration` holds out part of the normal training images, pastes synthetic defects into
copies of them (:func:`synthetic_defects`: CutPaste-style patches of other normal images, thin scars and soft
spots), fits every candidate on the remaining normal images and ranks the candidates by the AUROC of held-out normal
images against their defective copies. Test labels are never read: the function is never given them.

The final detector's calibration slice (:mod:`doc_core.model.calibration`) is taken first: given the same
``calibration_fraction`` and seed as the detector, :func:`select_configuration` drops those images before anything
else, so selection never sees them and the threshold stays set on images no part of the process was fitted or chosen
on. The candidates fitted during selection hold out no calibration slice of their own (they need no threshold).

Label-free selection is known to be unreliable (synthetic defects are not the real ones); the benchmark reports,
per data set, whether the selected configuration was the best one on the real test set and by how much it missed
(``python -m doc_core benchmark --protocol magnetic-tile``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

DEFECT_KINDS = ("cutpaste", "scar", "spot")
HOLDOUT_FRACTION = 0.2
MIN_HOLDOUT = 8
MAX_HOLDOUT = 200
MIN_FIT = 2
# candidates whose validation AUROCs differ by less than this are treated as tied; the earlier (simpler) one wins
TIE_MARGIN = 0.005
ANOMALY_KINDS = ("any", "defects", "objects")
"""What the user says their anomalies are like, for ``auto`` (:func:`auto_candidates`): not known, local defects,
or different objects / whole-image changes."""
ANOMALY_KIND_WORDS = {"any": "not known: every candidate",
                      "defects": "local defects (scratches, spots, cracks): patch scoring only",
                      "objects": "different objects or whole-image changes: global scoring only"}


# ------------------------------------------------------------------------------------------------ synthetic defects


def _rect(rng: np.random.Generator, h: int, w: int, area: tuple[float, float], aspect: tuple[float, float]):
    a = rng.uniform(*area) * h * w
    r = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1])))
    ph = int(np.clip(round(np.sqrt(a * r)), 2, h - 1))
    pw = int(np.clip(round(np.sqrt(a / r)), 2, w - 1))
    return ph, pw


def _cutpaste(img: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    ph, pw = _rect(rng, h, w, (0.02, 0.08), (0.3, 3.3))
    sy, sx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    ty, tx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    patch = donor[sy:sy + ph, sx:sx + pw].astype(np.int16)
    if rng.random() < 0.5:
        patch = patch[::-1]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    shift = rng.choice([-1, 1]) * rng.integers(15, 50)  # brightness jitter, so a pasted copy of normal texture differs
    out = img.copy()
    out[ty:ty + ph, tx:tx + pw] = np.clip(patch + shift, 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), bool)
    mask[ty:ty + ph, tx:tx + pw] = True
    return out, mask


def _scar(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    h, w = img.shape[:2]
    length = rng.uniform(0.15, 0.4) * min(h, w)
    width = max(1.5, rng.uniform(0.015, 0.04) * min(h, w))
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    box = cv2.boxPoints(((cx, cy), (length, width), rng.uniform(0, 180)))
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [np.round(box).astype(np.int32)], 1)
    mask = m.astype(bool)
    out = img.astype(np.int16)
    base = float(img[mask].mean()) if mask.any() else 128.0
    value = base + rng.choice([-1, 1]) * rng.uniform(50, 110)
    out[mask] = np.clip(value + rng.normal(0, 8, out[mask].shape), 0, 255)
    return out.astype(np.uint8), mask


def _spot(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    h, w = img.shape[:2]
    r = rng.uniform(0.03, 0.08) * min(h, w)
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    yy, xx = np.mgrid[0:h, 0:w]
    ry, rx = r * rng.uniform(0.6, 1.4), r * rng.uniform(0.6, 1.4)
    d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    soft = np.clip(1.5 - d, 0.0, 1.0)  # 1 inside, soft edge out to 1.5 radii
    soft = cv2.GaussianBlur(soft.astype(np.float32), (0, 0), max(0.5, r / 4))
    amount = rng.choice([-1, 1]) * rng.uniform(60, 120)
    out = np.clip(img.astype(np.float32) + (amount * soft)[..., None], 0, 255).astype(np.uint8)
    return out, soft > 0.25


def synthetic_defects(images: np.ndarray, seed: int = 0,
                      kinds: tuple[str, ...] = DEFECT_KINDS) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """One synthetic defect pasted into a copy of each image.

    Parameters
    ----------
    images : np.ndarray, uint8, shape (n, h, w, c)
        Normal images (h, w >= 8).
    seed : int
    kinds : tuple of {"cutpaste", "scar", "spot"}
        Used in turn (image ``i`` gets ``kinds[i % len(kinds)]``): ``cutpaste`` moves a brightness-shifted, flipped
        rectangle (2-8 % of the area) of another of the images to a random place (Li et al., CutPaste, 2021);
        ``scar`` draws a thin rotated bar much darker or brighter than its surroundings; ``spot`` darkens or
        brightens a soft ellipse (3-8 % of the side), like a blowhole or a stain.

    Returns
    -------
    defective : np.ndarray, uint8, shape (n, h, w, c)
    masks : np.ndarray, bool, shape (n, h, w)
        True where the image was changed.
    kinds : tuple of str, length n
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (n, h, w, c), got {images.dtype} {images.shape}")
    n, h, w = images.shape[:3]
    if min(h, w) < 8:
        raise ValueError(f"images must be at least 8 x 8 pixels for synthetic defects, got {h} x {w}")
    unknown = set(kinds) - set(DEFECT_KINDS)
    if not kinds or unknown:
        raise ValueError(f"kinds must be a non-empty subset of {DEFECT_KINDS}, got {kinds!r}")
    rng = np.random.default_rng(seed)
    out = np.empty_like(images)
    masks = np.zeros((n, h, w), bool)
    used = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "cutpaste":
            donor = images[rng.integers(n)] if n > 1 else images[i]
            out[i], masks[i] = _cutpaste(images[i], donor, rng)
        elif kind == "scar":
            out[i], masks[i] = _scar(images[i], rng)
        else:
            out[i], masks[i] = _spot(images[i], rng)
        used.append(kind)
    return out, masks, tuple(used)


# ------------------------------------------------------------------------------------------------ selection


@dataclass(frozen=True)
class Candidate:
    """One configuration the ``auto`` preset may pick.

    ``train.epochs == 0`` means the pretrained backbone's features (no DOC training). Candidates that differ only in
    their scorer share one fitted backbone (:meth:`doc_core.model.detector.DOCDetector.with_scorer`).
    """

    name: str
    backbone: "object"  # BackboneConfig (kept loose here so this module imports without TensorFlow)
    train: "object"  # TrainConfig
    scorer: "object"  # ScorerConfig

    def to_dict(self) -> dict:
        return {"name": self.name, "backbone": self.backbone.to_dict(), "train": self.train.to_dict(),
                "scorer": self.scorer.to_dict()}


@dataclass
class Selection:
    """What :func:`select_configuration` measured and chose.

    Attributes
    ----------
    rows : list of dict
        One per candidate, in candidate order: ``name``, ``val_auroc`` (held-out normal vs synthetic defects),
        ``val_auroc_by_kind`` (per defect kind), ``fit_s``, ``score_ms`` (per image), ``chosen`` (bool).
    chosen : Candidate
    n_fit, n_holdout : int
        Normal images used to fit the candidates, and held out (each also given a synthetic defect).
    n_calibration : int
        Normal images left out of selection altogether: the final detector's calibration slice.
    seed : int
    rule : str
        The selection rule in words.
    anomalies : str
        What the user said the anomalies are like (:data:`ANOMALY_KINDS`), which chose the candidates ("any" = every
        candidate).
    """

    rows: list[dict]
    chosen: Candidate
    n_fit: int
    n_holdout: int
    seed: int
    n_calibration: int = 0
    rule: str = (f"highest AUROC of held-out normal images against synthetic defects in copies of them; candidates "
                 f"within {TIE_MARGIN} of the best count as tied and the first listed (simplest) wins")
    extra: dict = field(default_factory=dict)
    anomalies: str = "any"

    def to_dict(self) -> dict:
        return {"rows": self.rows, "chosen": self.chosen.name, "n_fit": self.n_fit, "n_holdout": self.n_holdout,
                "n_calibration": self.n_calibration, "seed": self.seed, "rule": self.rule,
                "anomalies": self.anomalies}

    def table(self) -> str:
        """A plain-text table for the command line."""
        lines = [f"{'candidate':<34} {'val AUROC':>9} {'fit s':>7} {'ms/img':>7}"]
        for r in self.rows:
            mark = "  <- chosen" if r["chosen"] else ""
            auc = "failed" if r["val_auroc"] is None else f"{r['val_auroc']:.4f}"
            lines.append(f"{r['name']:<34} {auc:>9} {r['fit_s']:>7.1f} {r['score_ms']:>7.2f}{mark}")
        cal = f", {self.n_calibration} kept out for the threshold's calibration" if self.n_calibration else ""
        kind = "" if self.anomalies == "any" else f"; anomalies: {ANOMALY_KIND_WORDS[self.anomalies]}"
        lines.append(f"({self.n_fit} normal images fitted, {self.n_holdout} held out with synthetic defects{cal}; "
                     f"rule: {self.rule}{kind})")
        return "\n".join(lines)


def holdout_split(n: int, seed: int = 0, fraction: float = HOLDOUT_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``n`` normal images into (fit, held-out) index arrays (sorted, disjoint).

    The held-out part is ``fraction`` of the images, at least :data:`MIN_HOLDOUT` and at most :data:`MAX_HOLDOUT`,
    leaving at least :data:`MIN_FIT` to fit.
    """
    if n < MIN_FIT + MIN_HOLDOUT:
        raise ValueError(f"label-free selection needs at least {MIN_FIT + MIN_HOLDOUT} normal images, got {n}")
    m = int(np.clip(round(fraction * n), MIN_HOLDOUT, min(MAX_HOLDOUT, n - MIN_FIT)))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[m:]), np.sort(perm[:m])


def _auroc(normal: np.ndarray, anomalous: np.ndarray) -> float | None:
    s = np.concatenate([normal, anomalous])
    if not np.isfinite(s).all():
        return None
    return float(roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(anomalous))], s))


def select_configuration(normal: np.ndarray, candidates: list[Candidate], reference: np.ndarray | None = None,
                         reference_labels: np.ndarray | None = None, reference_names: tuple[str, ...] | None = None,
                         seed: int = 0, on_progress: Callable[[str], None] | None = None,
                         calibration_fraction: float = 0.0, calibration_min: int | None = None,
                         anomalies: str = "any") -> Selection:
    """Fit each candidate on part of the normal images and rank them on synthetic defects; no labels needed.

    Parameters
    ----------
    normal : np.ndarray, uint8, shape (n, h, w, c)
        The normal training images (the only images this function looks at, with the reference set).
    candidates : list of Candidate
        In order of preference for ties (simplest first).
    reference, reference_labels, reference_names
        The reference set for DOC-trained candidates (None / empty: no labelled reference set).
    seed : int
        Seeds the hold-out split and the synthetic defects.
    on_progress : callable, optional
        Called with a short message before each candidate.
    calibration_fraction, calibration_min
        The final detector's calibration setting (:class:`doc_core.model.detector.DOCDetector`) and ``seed`` its
        ``train.seed``: the calibration slice it will hold out is dropped here first, so selection never sees it.
        0 (default) = every normal image is used.
    anomalies : {"any", "defects", "objects"}
        What the user said the anomalies are like, recorded in the result (:attr:`Selection.anomalies`); pass the
        same kind that built ``candidates`` with :func:`auto_candidates`.

    Returns
    -------
    Selection
    """
    from ..model.calibration import MIN_CALIBRATION, calibration_split
    from ..model.detector import DOCDetector

    if not candidates:
        raise ValueError("no candidates to select from")
    cal = calibration_split(len(normal), calibration_fraction,
                            MIN_CALIBRATION if calibration_min is None else calibration_min, seed)
    normal = normal[cal.train_index]
    fit_idx, held_idx = holdout_split(len(normal), seed)
    held = normal[held_idx]
    defective, _, kinds = synthetic_defects(held, seed=seed)
    kinds = np.asarray(kinds)
    fitted: dict[tuple, DOCDetector] = {}
    rows = []
    for i, cand in enumerate(candidates):
        if on_progress:
            on_progress(f"candidate {i + 1} of {len(candidates)}: {cand.name}")
        t0 = time.perf_counter()
        key = (repr(cand.backbone), repr(cand.train))
        try:
            base = fitted.get(key)
            if base is None:
                det = DOCDetector(cand.backbone, cand.train, cand.scorer, calibration_fraction=0.0).fit(
                    normal[fit_idx], reference, reference_labels, reference_names)
                fitted[key] = det
            else:
                det = base.with_scorer(cand.scorer, normal=normal[fit_idx])
            fit_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            s_n = det.decision_function(held)
            s_a = det.decision_function(defective)
            score_ms = (time.perf_counter() - t1) * 1000 / (2 * len(held))
            auc = _auroc(s_n, s_a)
            by_kind = {k: _auroc(s_n, s_a[kinds == k]) for k in DEFECT_KINDS if np.any(kinds == k)}
        except Exception as exc:  # noqa: BLE001 - a failing candidate is reported and skipped, not fatal
            fit_s, score_ms, auc, by_kind = time.perf_counter() - t0, 0.0, None, {}
            rows.append({"name": cand.name, "val_auroc": None, "val_auroc_by_kind": {}, "fit_s": fit_s,
                         "score_ms": score_ms, "chosen": False, "error": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append({"name": cand.name, "val_auroc": auc, "val_auroc_by_kind": by_kind, "fit_s": fit_s,
                     "score_ms": score_ms, "chosen": False})
    scored = [(i, r["val_auroc"]) for i, r in enumerate(rows) if r["val_auroc"] is not None]
    if not scored:
        raise RuntimeError("every candidate failed: " + "; ".join(f"{r['name']}: {r.get('error')}" for r in rows))
    best = max(a for _, a in scored)
    pick = next(i for i, a in scored if a >= best - TIE_MARGIN)
    rows[pick]["chosen"] = True
    return Selection(rows=rows, chosen=candidates[pick], n_fit=len(fit_idx), n_holdout=len(held_idx), seed=seed,
                     n_calibration=len(cal.calibration_index), anomalies=check_anomaly_kind(anomalies))


def check_anomaly_kind(anomalies: str) -> str:
    """``anomalies`` if it is one of :data:`ANOMALY_KINDS`, else a ValueError naming them."""
    if anomalies not in ANOMALY_KINDS:
        raise ValueError(f"unknown anomaly kind {anomalies!r}; choose one of {', '.join(ANOMALY_KINDS)}")
    return anomalies


def auto_candidates(backbone, train, epochs: int | None = None, anomalies: str = "any") -> list[Candidate]:
    """The ``auto`` preset's candidates for a backbone, simplest first: pretrained features with global k-NN, with
    patch k-NN over the default pair of layers (:data:`doc_core.model.backbones.DEFAULT_PATCH_LAYERS`) and over the
    coarser of the two alone; DOC-trained features with global k-NN and with patch k-NN over the default layers.

    Parameters
    ----------
    backbone : BackboneConfig
    train : TrainConfig
        Settings of the DOC-trained candidates (``epochs`` overridden by ``epochs`` when given; at least 1).
    anomalies : {"any", "defects", "objects"}
        What the anomalies are like, if the user knows (:data:`ANOMALY_KINDS`; no labels): ``any`` keeps every
        candidate; ``defects`` only the patch scorers; ``objects`` only global k-NN. The synthetic defects of the
        selection signal are local, so they favour patch scoring even where the real anomalies are different
        objects (README, "Fashion-MNIST as an own-images folder"); ``objects`` is how a user says so.
    """
    check_anomaly_kind(anomalies)
    from ..model.backbones import DEFAULT_PATCH_LAYERS
    from ..model.detector import ScorerConfig

    doc_train = replace(train, epochs=max(1, epochs if epochs is not None else train.epochs))
    pre_train = replace(train, epochs=0)
    pair = DEFAULT_PATCH_LAYERS[backbone.name]
    every = [
        Candidate("pretrained, global k-NN", backbone, pre_train, ScorerConfig("knn")),
        Candidate("pretrained, patch k-NN", backbone, pre_train, ScorerConfig("patch")),
        Candidate("pretrained, patch k-NN (coarse layer)", backbone, pre_train,
                  ScorerConfig("patch", patch_layers=pair[-1:])),
        Candidate("DOC, global k-NN", backbone, doc_train, ScorerConfig("knn")),
        Candidate("DOC, patch k-NN", backbone, doc_train, ScorerConfig("patch")),
    ]
    if anomalies == "any":
        return every
    return [c for c in every if (c.scorer.name == "patch") == (anomalies == "defects")]
