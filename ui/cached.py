"""Cached access to data, runs, models and scores, so reruns and page switches recompute nothing.

- ``st.cache_resource`` holds objects shared read-only by every session: the Fashion-MNIST arrays, loaded splits
  (large image arrays, marked read-only, shared rather than copied on every rerun), detectors loaded from run folders,
  the process-wide training-job registry, and the Embedding explorer's map jobs (one per run and settings, computing
  in a background thread or holding maps read from the run folder).
- ``st.cache_data`` holds everything derived: counts, sample images, run scores, curves, comparison tables, figures.

Runs are keyed by (runs folder, run id, creation time): a run's arrays never change after it is saved, so a key can
never go stale; only ``run.json`` (the saved threshold, the name) changes, and that is read fresh every time.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import streamlit as st

from doc_core.data import FashionMNIST, OneClassSplit, SkippedFile, load_fashion_mnist
from doc_core.data.datasets import DatasetSpec, UploadArea, load_dataset, role_counts, role_samples, uploads_dir
from doc_core.evaluation import metrics
from doc_core.model.detector import DOCDetector, ScorerConfig
from doc_core.workflow import runs
from doc_core.workflow.jobs import JobRegistry

from . import charts, state


def runs_dir() -> Path:
    """The runs folder, resolved now (so tests can point DOC_RUNS_DIR elsewhere)."""
    return runs.default_runs_dir().resolve()


# ---------------------------------------------------------------------------------------------- shared resources


@st.cache_resource(show_spinner=False)
def job_registry() -> JobRegistry:
    """The one table of training jobs of this server process."""
    return JobRegistry()


@st.cache_resource(show_spinner="Reading Fashion-MNIST…")
def fashion_mnist() -> FashionMNIST:
    data = load_fashion_mnist(download=False)  # the app never goes to the network
    for a in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        a.setflags(write=False)
    return data


def _folder_signature(root: str | None) -> tuple:
    """Modification times of a dataset folder's top-level folders: changes when files are added or removed there."""
    if not root:
        return ()
    base = Path(root)
    return tuple((d, os.stat(base / d).st_mtime_ns if (base / d).is_dir() else 0)
                 for d in ("train", "reference", "test"))


@st.cache_resource(show_spinner="Loading the dataset…", max_entries=6)
def _split(spec: DatasetSpec, signature: tuple) -> tuple[OneClassSplit, list[SkippedFile]]:
    uses_fashion = spec.kind == "fashion-mnist" or spec.reference == "fashion-mnist"  # the data or the reference set
    split, skipped = load_dataset(spec, fashion_mnist() if uses_fashion else None)
    for a in (split.train_normal, split.reference, split.reference_labels, split.test_images, split.test_labels):
        a.setflags(write=False)
    return split, skipped


def _signature(spec: DatasetSpec) -> tuple:
    return _folder_signature(spec.root) if spec.kind == "folder" else ()


def split(spec: DatasetSpec) -> tuple[OneClassSplit, list[SkippedFile]]:
    """The split a dataset spec describes, loaded once. Raises DataError with a message for people."""
    return _split(spec, _signature(spec))


@st.cache_data(show_spinner=False, max_entries=32)
def _counts(spec: DatasetSpec, signature: tuple) -> list[dict]:
    return role_counts(_split(spec, signature)[0])


def counts(spec: DatasetSpec) -> list[dict]:
    """Image counts per role and class (rows of role, class, count)."""
    return _counts(spec, _signature(spec))


@st.cache_data(show_spinner=False, max_entries=16)
def _samples(spec: DatasetSpec, signature: tuple, per_role: int, display_px: int) -> dict:
    out = {}
    for role, (imgs, names) in role_samples(_split(spec, signature)[0], per_role).items():
        shown = []
        for im in imgs:
            f = max(1, display_px // max(im.shape[:2]))
            im = np.repeat(np.repeat(im, f, axis=0), f, axis=1)
            shown.append(im[..., 0] if im.shape[-1] == 1 else im)
        out[role] = (shown, list(names))
    return out


def samples(spec: DatasetSpec, per_role: int = 12, display_px: int = 84) -> dict[str, tuple[list, list[str]]]:
    """Sample images per role, enlarged (nearest neighbour, so small images stay crisp) for display."""
    return _samples(spec, _signature(spec), per_role, display_px)


def _release_upload_area(area: UploadArea) -> None:
    area.cleanup()


@st.cache_resource(show_spinner=False, scope="session", max_entries=1, validate=lambda area: area.alive,
                   on_release=_release_upload_area)
def _upload_area(base: str) -> UploadArea:
    return UploadArea(base)


def upload_area() -> UploadArea:
    """This session's private upload folder (:class:`doc_core.data.datasets.UploadArea`).

    Held in a session-scoped resource cache, which Streamlit clears when the browser session disconnects (a closed
    tab, a reload): its ``on_release`` deletes the folder at once. Garbage collection of the area and
    :func:`doc_core.data.datasets.clean_stale_uploads` are the fall-backs. A tab that reconnects after a network drop
    gets a new, empty folder. Raises DataError when the uploads folder cannot be created.
    """
    return _upload_area(str(uploads_dir()))  # a new one if this one was cleaned up (validate)


# ---------------------------------------------------------------------------------------------- runs


def list_runs() -> list[runs.RunSummary]:
    """All runs, newest first (read fresh: a few small JSON files)."""
    return runs.list_runs(runs_dir())


def active_run(chosen: str | None) -> runs.RunSummary | None:
    """The chosen run if it still exists, else the newest run, else None."""
    if chosen:
        try:
            return runs.get_run(chosen, runs_dir())
        except runs.RunError:
            pass
    all_runs = list_runs()
    return all_runs[0] if all_runs else None


def _key(run: runs.RunSummary) -> tuple[str, str, str]:
    return run.run_id, run.created, str(run.path.parent)


def scores_of(run: runs.RunSummary) -> runs.RunScores:
    """The run's stored test and training scores."""
    return run_scores(*_key(run))


def history_of(run: runs.RunSummary) -> list:
    """The run's training curves (StepRecords)."""
    return run_history(*_key(run))


def detector_of(run: runs.RunSummary) -> DOCDetector:
    """The run's detector as trained (loaded once per server process)."""
    return detector(*_key(run))


def scores_for_scorer(run: runs.RunSummary, scorer: ScorerConfig) -> tuple[np.ndarray, np.ndarray]:
    """Test and training scores of the run under ``scorer``: stored ones for its own scorer, else recomputed from
    the stored test features and the memory bank (no retraining, no re-embedding)."""
    if scorer == run.scorer:
        s = scores_of(run)
        return s.scores, s.train_scores
    return scores_with(*_key(run), scorer.name, scorer.k)


@st.cache_data(show_spinner=False, max_entries=16)
def run_scores(run_id: str, created: str, where: str) -> runs.RunScores:
    return runs.load_scores(run_id, where)


@st.cache_data(show_spinner=False, max_entries=16)
def run_history(run_id: str, created: str, where: str) -> list:
    return runs.load_history(run_id, where)


@st.cache_data(show_spinner=False, max_entries=16)
def _history_figure(run_id: str, created: str, where: str):
    return charts.loss_curves(run_history(run_id, created, where))


def history_figure_of(run: runs.RunSummary):
    """The loss-curve figure of a finished run (built once)."""
    return _history_figure(*_key(run))


@st.cache_resource(show_spinner="Loading the detector…", max_entries=4)
def detector(run_id: str, created: str, where: str) -> DOCDetector:
    # the background load warm_detector started, waited for, or loaded here when none was
    return _preloader().take(_preload_key(run_id, created, where),
                             lambda: runs.load_detector(run_id, where, use_saved_threshold=False))


def warm_detector(run: runs.RunSummary) -> None:
    """Start loading the run's detector in a background thread (once per run and detector files, shared by every
    session), so that a view which needs its network soon (the detail view's heatmap) finds it loaded or loading."""
    run_id, created, where = _key(run)
    _preloader().start(_preload_key(run_id, created, where),
                       lambda: runs.load_detector(run_id, where, use_saved_threshold=False))  # worker: no st.* calls


@st.cache_resource(show_spinner=False)
def _preloader():
    from doc_core.workflow.detector_preload import DetectorPreloader

    return DetectorPreloader(keep=2)


def _preload_key(run_id: str, created: str, where: str) -> tuple:
    return run_id, created, where, _bank_signature(Path(where) / run_id / "detector")


@st.cache_data(show_spinner="Scoring with the other scorer…", max_entries=32)
def scores_with(run_id: str, created: str, where: str, name: str, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Test and training scores of a run under another scorer, from its stored test features (no re-embedding).

    Raises RunError when the run has no stored features, ValueError for an impossible k.
    """
    feats = runs.load_features(run_id, where)
    if feats is None:
        raise runs.RunError("this run did not store its test features, so other scorers cannot be tried on it")
    det = detector(run_id, created, where).with_scorer(ScorerConfig(name=name, k=k))
    return det.score_features(feats), np.asarray(det.train_scores_, np.float32)


def calibration_scores_for(run: runs.RunSummary, scorer: ScorerConfig) -> np.ndarray | None:
    """Scores of the run's held-out calibration images under ``scorer`` (stored ones for its own scorer); None when
    the run has no calibration slice (its label-free thresholds rest on leave-one-out training scores)."""
    if scorer == run.scorer:
        return scores_of(run).calibration_scores
    if run.n_calibration == 0:
        return None
    return calibration_with(*_key(run), scorer.name, scorer.k)


@st.cache_data(show_spinner="Scoring the calibration images…", max_entries=32)
def calibration_with(run_id: str, created: str, where: str, name: str, k: int | None) -> np.ndarray | None:
    """The calibration images' scores under another scorer, from their stored pooled features."""
    return detector(run_id, created, where).with_scorer(ScorerConfig(name=name, k=k)).calibration_scores_


@st.cache_data(show_spinner=False, max_entries=32)
def curves(labels: np.ndarray, scores: np.ndarray) -> dict:
    """ROC and PR curves, AUC and average precision of labelled scores (unlabelled ones are left out)."""
    mask = labels >= 0
    y, s = labels[mask], scores[mask]
    roc, pr = metrics.roc_curve(y, s), metrics.pr_curve(y, s)
    return {"fpr": roc["fpr"], "tpr": roc["tpr"], "precision": pr["precision"], "recall": pr["recall"],
            "auc": metrics.roc_auc(y, s), "ap": metrics.average_precision(y, s), "base_rate": float(np.mean(y))}



# ---------------------------------------------------------------------------------------------- explorer, gallery, uploads


def run_split(run: runs.RunSummary) -> OneClassSplit:
    """The run's dataset, loaded as it was for training (test images in the order of the stored scores, normal
    training images in the order given to fit). Raises DataError (a ValueError) when it cannot be rebuilt."""
    from doc_core.data import DataError

    try:
        spec = DatasetSpec.from_dict(run.dataset)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"the run does not say which dataset it was trained on ({exc})") from exc
    data, _ = split(spec)
    if len(data.test_images) != run.n_test:
        raise DataError(f"the run's dataset has changed since training: {len(data.test_images):,} test images now, "
                        f"{run.n_test:,} when the run was scored")
    return data


def operating_point(run: runs.RunSummary) -> tuple[ScorerConfig, np.ndarray, np.ndarray, float]:
    """The scorer, test scores, training scores and threshold the run is operated at: its saved threshold (with the
    scorer it was saved for) if there is one, else its own scorer and the detector's default threshold."""
    if run.threshold:
        try:
            scorer = ScorerConfig.from_dict(run.threshold["scorer"])
            s, t = scores_for_scorer(run, scorer)
            return scorer, s, t, float(run.threshold["value"])
        except (runs.RunError, ValueError, KeyError, TypeError):
            pass
    s, t = scores_for_scorer(run, run.scorer)
    return run.scorer, s, t, float(run.default_threshold)


@st.cache_data(show_spinner=False, max_entries=8)
def _test_features(run_id: str, created: str, where: str) -> np.ndarray | None:
    return runs.load_features(run_id, where)


def test_features_of(run: runs.RunSummary) -> np.ndarray:
    """The run's DOC features of its test images (stored with the run; embedded again if it has none)."""
    feats = _test_features(*_key(run))
    if feats is None:
        feats = _embedded_test_features(*_key(run))
    return feats


@st.cache_data(show_spinner="Embedding the test images…", max_entries=4)
def _embedded_test_features(run_id: str, created: str, where: str) -> np.ndarray:
    run = runs.get_run(run_id, where)
    return detector(run_id, created, where).embed(run_split(run).test_images)


def explorer_rows(run: runs.RunSummary, max_points: int, with_train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Test and normal-training indices the explorer embeds (at most ``max_points`` together; a quarter of them
    training images when asked for): :func:`doc_core.explain.explorer_maps.explorer_rows`."""
    return _explorer_rows(*_key(run), int(max_points), bool(with_train))


@st.cache_data(show_spinner=False, max_entries=16)
def _explorer_rows(run_id: str, created: str, where: str, max_points: int, with_train: bool):
    from doc_core.explain.explorer_maps import explorer_rows as rows

    stored = run_scores(run_id, created, where)  # one training score per row of the memory bank
    return rows(stored.labels, _trained_rows(run_id, where, len(stored.train_scores)), max_points, with_train)


def _trained_rows(run_id: str, where: str, n_bank: int) -> int:
    """How many of the memory bank's ``n_bank`` rows are normal training images: the first ones; the rest are images
    analysts added later (:func:`doc_core.workflow.bank_growth.bank_row_images`), which the maps show as test images."""
    from doc_core.workflow.bank_growth import bank_row_images

    try:
        return int(np.sum(bank_row_images(run_id, n_bank, where) == -1))
    except runs.RunError:  # an unreadable bank history: every row counts (as before bank changes existed)
        return n_bank


def explorer_maps(run: runs.RunSummary, max_points: int, with_train: bool):
    """The explorer's three maps of the run and settings, as a :class:`doc_core.explain.explorer_maps.MapJob`: read
    from the run folder when they were saved there (by the training job, or an earlier visit), else computed in a
    background thread and saved. One job per run and settings, shared by every session of this server; poll its
    ``snapshot()``. A saved file that cannot be used is left aside with a note (``job.note``) and computed again."""
    return _map_job(*_key(run), int(max_points), bool(with_train))


@st.cache_resource(show_spinner=False, max_entries=16)
def _map_job(run_id: str, created: str, where: str, max_points: int, with_train: bool):
    from doc_core.explain.explorer_maps import MapInputs, MapJob, load_maps
    from doc_core.model.backbones import BackboneConfig
    from doc_core.workflow.artifacts import ArtifactError

    run = runs.get_run(run_id, where)
    test_idx, train_idx = _explorer_rows(run_id, created, where, max_points, with_train)
    note = None
    try:
        saved = load_maps(run.path, max_points, with_train, test_idx, train_idx)
    except ArtifactError as exc:
        saved, note = None, f"The saved maps could not be used ({exc}); they are computed again."
    if saved is not None:
        return MapJob.from_saved(saved, run.path)
    data = run_split(run)  # loaded here, in the script thread; the worker only reads it
    n_bank = _trained_rows(run_id, where, len(run_scores(run_id, created, where).train_scores))

    def inputs() -> MapInputs:  # runs in the worker thread: no Streamlit calls
        return MapInputs(data, BackboneConfig.from_dict(run.backbone), test_features=runs.load_features(run_id, where),
                         n_bank=n_bank,
                         detector=lambda: runs.load_detector(run_id, where, use_saved_threshold=False))

    return MapJob(run.path, inputs, max_points, with_train, note=note).start()


@st.cache_resource(show_spinner="Preparing Grad-CAM…", max_entries=2)
def _gradcam(run_id: str, created: str, where: str):
    from doc_core.explain import GradCAM

    return GradCAM(detector(run_id, created, where))


@st.cache_data(show_spinner="Computing Grad-CAM heatmaps…", max_entries=64)
def _heatmaps(run_id: str, created: str, where: str, images: np.ndarray) -> np.ndarray:
    return _gradcam(run_id, created, where).explain(images, batch_size=32)[0]


def heatmaps(run: runs.RunSummary, images: np.ndarray) -> np.ndarray:
    """Grad-CAM heatmaps (n, h, w) in [0, 1] of images, in one batched pass (cached per run and images)."""
    return _heatmaps(*_key(run), np.ascontiguousarray(images))


@st.cache_data(show_spinner="Computing patch defect maps…", max_entries=64)
def _patch_maps(run_id: str, created: str, where: str, images: np.ndarray) -> np.ndarray:
    return detector(run_id, created, where).anomaly_maps(images)


def patch_map_scale(run: runs.RunSummary) -> tuple[float, float]:
    """The fixed (low, high) score range a patch run's defect maps are drawn on: the lowest training score, and
    the threshold (the saved one when it belongs to the run's own scorer, else the detector's default)."""
    low = float(np.min(scores_of(run).train_scores)) if len(scores_of(run).train_scores) else 0.0
    high = float(run.default_threshold)
    if run.threshold and ScorerConfig.from_dict(run.threshold["scorer"]) == run.scorer:
        high = float(run.threshold["value"])
    return low, max(high, low + 1e-6 * (abs(low) + 1.0))  # a threshold at the lowest score still gives a scale


def patch_maps(run: runs.RunSummary, images: np.ndarray) -> np.ndarray:
    """Defect maps of a patch run's images, float32 (n, h, w) in [0, 1] on the run's fixed scale
    (:func:`patch_map_scale`, :func:`doc_core.explain.gradcam.map_to_unit`): not stretched per image, so a normal image
    stays cool. The maps in score units are cached per run and images."""
    from doc_core.explain import map_to_unit

    return map_to_unit(_patch_maps(*_key(run), np.ascontiguousarray(images)), *patch_map_scale(run))


def nearest_normals(run: runs.RunSummary, features: np.ndarray, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices (rows of the run's memory bank) of the nearest normal images: from the bank saved in the
    run's detector folder (:func:`saved_bank`, no network built), or from the detector when it cannot be read."""
    from doc_core.explain.embedding import nearest_in_bank, nearest_normal

    saved = saved_bank(run)
    return nearest_normal(detector_of(run), features, n) if saved is None else nearest_in_bank(saved.bank, features, n)


def saved_bank(run: runs.RunSummary):
    """The run's memory bank and its training-image index as saved in its detector folder
    (:func:`doc_core.model.detector.read_bank`: arrays only, a fraction of a second where loading the detector builds
    its network), or None when they cannot be read (the callers then use :func:`detector_of`). Keyed by the files'
    size and time, so a bank change (which rewrites them) is read anew."""
    return _saved_bank(*_key(run), _bank_signature(run.path / "detector"))


def bank_train_index(run_id: str, created: str, where: str) -> np.ndarray | None:
    """``train_index_`` of the run's detector (None without a calibration slice), read without the network when
    possible (:func:`saved_bank`)."""
    run = runs.get_run(run_id, where)
    saved = saved_bank(run)
    return getattr(detector_of(run), "train_index_", None) if saved is None else saved.train_index


def bank_features(run: runs.RunSummary) -> np.ndarray:
    """The run's memory bank, float32 (n_bank, k): read from its detector folder without the network when possible."""
    saved = saved_bank(run)
    return np.asarray(detector_of(run).bank_ if saved is None else saved.bank)


def bank_size(run: runs.RunSummary) -> int:
    """How many rows the run's memory bank has (normal training images, then images added to it later)."""
    saved = saved_bank(run)
    return len(detector_of(run).bank_) if saved is None else len(saved.bank)


def _bank_signature(folder) -> tuple:
    out = []
    for name in ("detector.json", "bank.npz", "calibration.npz"):
        try:
            st_ = (folder / name).stat()
            out.append((name, st_.st_mtime_ns, st_.st_size))
        except OSError:
            out.append((name, None, None))
    return tuple(out)


@st.cache_resource(show_spinner=False, max_entries=4)
def _saved_bank(run_id: str, created: str, where: str, signature: tuple):
    from doc_core.model.detector import DetectorFormatError, read_bank

    try:
        return read_bank(runs.get_run(run_id, where).path / "detector")
    except (DetectorFormatError, runs.RunError, OSError):
        return None


@st.cache_resource(show_spinner=False, max_entries=4)
def _detector_with(run_id: str, created: str, where: str, scorer_json: str):
    import json

    det = detector(run_id, created, where)
    cfg = ScorerConfig.from_dict(json.loads(scorer_json))
    return det if cfg == det.scorer else det.with_scorer(cfg)


@st.cache_data(show_spinner="Scoring the uploaded images…", max_entries=16)
def _score_images(run_id: str, created: str, where: str, scorer_json: str, images: np.ndarray) -> dict:
    det = _detector_with(run_id, created, where, scorer_json)
    scores, feats = det.score_images(images)  # the patch scorer scores images, the others their pooled features
    dist, idx = _nearest_normals(run_id, created, where, feats)
    return {"scores": scores, "nn_dist": dist, "nn_idx": idx}


def _nearest_normals(run_id: str, created: str, where: str, feats: np.ndarray):
    from doc_core.explain.embedding import nearest_normal

    return nearest_normal(detector(run_id, created, where), feats, 5)


def decoded_upload(file, shape: tuple[int, ...]) -> np.ndarray:
    """An uploaded image decoded by :func:`doc_core.explain.gallery.decode_upload` into ``shape`` (h, w, c) uint8, once
    per file content, name and shape: moving a slider decodes nothing again.

    ``file`` is a Streamlit ``UploadedFile`` (``name``, ``size``, ``file_id``, ``getvalue()``). Its SHA-256 is
    computed once per upload (remembered in the session by file id, name and size); the decoded image, or the reason
    it could not be decoded, is cached by that hash. Raises DataError (a ValueError) for a file that is no readable
    image, naming it.
    """
    from doc_core.data import DataError

    digests = st.session_state.setdefault(state.UP_DIGESTS, {})
    key = (getattr(file, "file_id", None), file.name, int(file.size))
    digest = digests.get(key) if key[0] else None
    if digest is None:
        digest = hashlib.sha256(file.getvalue()).hexdigest()
        if key[0]:
            digests[key] = digest
    ok, value = _decoded_upload(digest, file.name, tuple(int(n) for n in shape), file)
    if not ok:
        raise DataError(value)
    return value


@st.cache_data(show_spinner="Decoding the uploaded images…", max_entries=256)
def _decoded_upload(digest: str, name: str, shape: tuple[int, ...], _file) -> tuple[bool, np.ndarray | str]:
    from doc_core.data import DataError
    from doc_core.explain import gallery

    try:
        return True, gallery.decode_upload(_file.getvalue(), name, shape)
    except (DataError, ValueError) as exc:  # remembered too: a broken file is not decoded again on every rerun
        return False, str(exc)


def score_images(run: runs.RunSummary, scorer: ScorerConfig, images: np.ndarray) -> dict:
    """Scores (under ``scorer``) and the 5 nearest normal training images (``nn_dist``, ``nn_idx``) of new images;
    their heatmaps come from :func:`heatmaps` and :func:`patch_maps`."""
    import json

    return _score_images(*_key(run), json.dumps(scorer.to_dict(), sort_keys=True), np.ascontiguousarray(images))


@st.cache_data(show_spinner=False, max_entries=24)
def _embedding_figure(run_id: str, created: str, where: str, feature_set: str, max_points: int, with_train: bool,
                      color_by: str, threshold: float, _coords, _roles, _scores, _info) -> str:
    from .linked_maps import figure_json

    return figure_json(charts.embedding_map(_coords, _roles, _scores, _info, color_by, threshold))


def embedding_figure(run: runs.RunSummary, feature_set: str, max_points: int, with_train: bool, color_by: str,
                     threshold: float, coords: np.ndarray, roles: np.ndarray, scores: np.ndarray,
                     info: np.ndarray) -> str:
    """The explorer's map figure as the linked maps draw it (:func:`ui.linked_maps.figure_json`), ``color_by``
    "role" or "score" (built once per run, settings and threshold; ``coords``, the finished map of
    :func:`explorer_maps`, and the arrays follow from those)."""
    return _embedding_figure(*_key(run), feature_set, max_points, with_train, color_by, float(threshold), coords,
                             roles, scores, info)


def explorer_thumbnails(run: runs.RunSummary, max_points: int, with_train: bool) -> dict:
    """The thumbnails of the explorer's rows (:func:`explorer_rows`, test rows first) as one sprite sheet, in the
    form :func:`ui.linked_maps.linked_maps` takes."""
    return _explorer_thumbnails(*_key(run), int(max_points), bool(with_train))


@st.cache_data(show_spinner=False, max_entries=8)
def _explorer_thumbnails(run_id: str, created: str, where: str, max_points: int, with_train: bool) -> dict:
    from doc_core.explain.gallery import thumbnail_atlas

    from .linked_maps import atlas_arg

    data = run_split(runs.get_run(run_id, where))
    test_idx, train_idx = _explorer_rows(run_id, created, where, max_points, with_train)
    if len(train_idx):  # bank row r is train_normal[train_index_[r]]: the calibration slice is not in the bank
        index = bank_train_index(run_id, created, where)
        train_idx = train_idx if index is None else np.asarray(index)[np.asarray(train_idx)]
    images = [data.test_images[i] for i in test_idx] + [data.train_normal[i] for i in train_idx]
    return atlas_arg(thumbnail_atlas(images))


# ---------------------------------------------------------------------------------------------- method comparison


def method_comparison(run: runs.RunSummary) -> list:
    """The run's DOC scorers and the baselines on its own split (:func:`doc_core.evaluation.benchmark.compare_methods`),
    computed once per run: a minute or so with MobileNetV2."""
    return _method_comparison(*_key(run))


@st.cache_data(show_spinner=False, max_entries=8)
def _method_comparison(run_id: str, created: str, where: str) -> list:
    from doc_core.evaluation.benchmark import compare_methods

    run = runs.get_run(run_id, where)
    stored = run_scores(run_id, created, where)
    return compare_methods(run_split(run), detector(run_id, created, where), test_scores=stored.scores,
                           test_features=_test_features(run_id, created, where))
