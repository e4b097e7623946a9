"""Cached access to data, runs, models and scores, so reruns and page switches recompute nothing.

- ``st.cache_resource`` holds objects shared read-only by every session: the Fashion-MNIST arrays, loaded splits
  (large image arrays, marked read-only, shared rather than copied on every rerun), detectors loaded from run folders,
  and the process-wide training-job registry.
- ``st.cache_data`` holds everything derived: counts, sample images, run scores, curves, comparison tables, figures.

Runs are keyed by (runs folder, run id, creation time): a run's arrays never change after it is saved, so a key can
never go stale; only ``run.json`` (the saved threshold, the name) changes, and that is read fresh every time.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import streamlit as st

from doc_core import runs
from doc_core.data import FashionMNIST, OneClassSplit, SkippedFile, load_fashion_mnist
from doc_core.datasets import DatasetSpec, extract_zip, load_dataset, role_counts, role_samples
from doc_core.detector import DOCDetector, ScorerConfig
from doc_core.jobs import JobRegistry
from doc_core import metrics

from . import charts


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
    split, skipped = load_dataset(spec, fashion_mnist() if spec.kind == "fashion-mnist" else None)
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


@st.cache_data(show_spinner="Unpacking the zip…", max_entries=8)
def unpack_zip(data: bytes) -> str:
    """Extract an uploaded zip (safely, once per content) and return its dataset folder."""
    return str(extract_zip(data))


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
    return runs.load_detector(run_id, where, use_saved_threshold=False)


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


@st.cache_data(show_spinner=False, max_entries=32)
def curves(labels: np.ndarray, scores: np.ndarray) -> dict:
    """ROC and PR curves, AUC and average precision of labelled scores (unlabelled ones are left out)."""
    mask = labels >= 0
    y, s = labels[mask], scores[mask]
    roc, pr = metrics.roc_curve(y, s), metrics.pr_curve(y, s)
    return {"fpr": roc["fpr"], "tpr": roc["tpr"], "precision": pr["precision"], "recall": pr["recall"],
            "auc": metrics.roc_auc(y, s), "ap": metrics.average_precision(y, s), "base_rate": float(np.mean(y))}

