"""Command line: ``python -m doc_core {train,evaluate,score,explain,export,benchmark,label,bank}``."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

DESCRIPTION = """DOC Explorer: Deep One-Class Classification (Perera & Patel) for image anomaly detection.
Scores are higher for more anomalous images everywhere."""

# The same names as doc_core.model.backbones.BACKBONES and doc_core.scoring.knn.KNN_BACKENDS (a test checks), spelled
# out so that building the parser, --help and argument errors import neither TensorFlow nor scikit-learn.
BACKBONE_NAMES = ("mobilenet_v2", "vgg16", "tiny")
KNN_BACKEND_NAMES = ("exact", "faiss", "faiss-ivf")
SCORER_NAMES = ("knn", "lof", "patch")  # doc_core.model.detector.SCORER_NAMES
REFERENCE_NAMES = ("auto", "folder", "fashion-mnist", "none")  # doc_core.data.datasets.REFERENCE_CHOICES
IMAGE_SCORE_CHOICES = ("top25", "max", "top10", "top50", "mean")  # doc_core.scoring.patch.IMAGE_SCORES, default first
ANOMALY_KIND_CHOICES = ("any", "defects", "objects")  # doc_core.workflow.selection.ANOMALY_KINDS

# What TensorFlow's native libraries print while it is imported, before its logging is set up (so
# TF_CPP_MIN_LOG_LEVEL does not silence it; TensorFlow 2.21 prints it twice, once per library).
_TF_IMPORT_NOISE = re.compile(r"All log messages before absl::InitializeLog|oneDNN custom operations are on|"
                              r"Could not find cuda drivers|cpu_feature_guard|To enable the following instructions|"
                              r"Unable to register cu(DNN|FFT|BLAS) factory|TF-TRT Warning|"
                              r"computation placer already registered")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow once, dropping its start-up notices (oneDNN, CUDA) and keeping anything else it prints.

    The process's standard error (file descriptor 2, where the native libraries write) goes to a temporary file while
    TensorFlow loads; afterwards every line that is not a known notice is written back to standard error.
    """
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable file descriptor 2 (e.g. an embedding host)
        import tensorflow  # noqa: F401
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not _TF_IMPORT_NOISE.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (Fashion-MNIST by default; --folder for your own images)")
    g.add_argument("--protocol", choices=("tutorial", "one-vs-rest", "one-vs-rest-disjoint"), default="tutorial",
                   help="tutorial: normal Sneaker vs Ankle boot, 6,000 reference images of classes 0-6 and 8 "
                        "(the Keras write-up); one-vs-rest: normal = --normal-class, test = the whole test set, "
                        "reference = the other classes; one-vs-rest-disjoint: the other classes alternate between "
                        "reference and anomaly classes (the test set holds the normal and the anomaly classes)")
    g.add_argument("--normal-class", type=int, default=7, help="normal class for one-vs-rest (0-9; default 7)")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the reference draw (default 0)")
    g.add_argument("--n-normal", type=int, default=None, help="use a random subset of this many normal training images")
    g.add_argument("--n-reference", type=int, default=6000, help="number of reference images (default 6000)")
    g.add_argument("--data-dir", default=None,
                   help="folder with the four Fashion-MNIST .gz files (default: $DOC_DATA_DIR, then Debian's "
                        "/usr/share/datasets/fashion-mnist, the Keras cache, Keras' download)")
    g.add_argument("--folder", default=None,
                   help="use your own images: a folder with train/ and optionally reference/<class>/, "
                        "test/normal, test/anomaly (see README)")
    g.add_argument("--image-size", type=int, default=96, help="size images from --folder are stored at (default 96)")
    g.add_argument("--reference", choices=REFERENCE_NAMES, default="auto",
                   help="--folder: what keeps DOC's features descriptive. auto (default): the folder's reference/ "
                        "if it has one, else none; folder: its reference/<class>/ images; fashion-mnist: 6,000 "
                        "built-in Fashion-MNIST images; none: no labelled reference, features held close to the "
                        "pretrained network's")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", choices=BACKBONE_NAMES, default="mobilenet_v2",
                   help="feature network (default mobilenet_v2)")
    g.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width multiplier (default 1.0)")
    g.add_argument("--input-size", type=int, default=96, help="network input size in pixels (default 96)")
    g.add_argument("--weights", default="imagenet",
                   help="'imagenet' (found via $DOC_WEIGHTS, the Keras cache or ../shared/weights, else downloaded), "
                        "a weights file, or 'none' for random weights")
    g.add_argument("--feature-layer", default=None, help="layer whose pooled output is the feature (default per backbone)")
    g.add_argument("--trainable-from", default=None,
                   help="last frozen layer; later layers are fine-tuned ('all', 'none', or a layer name; default per "
                        "backbone)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=None, help="passes over the normal images (default from TrainConfig)")
    t.add_argument("--batch-size", type=int, default=None, help="images per target and per reference batch")
    t.add_argument("--lr", type=float, default=None, help="learning rate")
    t.add_argument("--lam", type=float, default=None, help="weight lambda of the compactness loss")
    t.add_argument("--optimizer", choices=("adam", "sgd"), default=None,
                   help="adam (AdamW when --weight-decay > 0) or sgd with momentum 0.9")
    t.add_argument("--weight-decay", type=float, default=None, help="decoupled weight decay (default 0)")
    t.add_argument("--seed", type=int, default=None, help="training seed")
    s = p.add_argument_group("scoring")
    s.add_argument("--scorer", choices=SCORER_NAMES, default="knn",
                   help="knn: k-NN distance of the pooled feature (default); lof; patch: k-NN over local features "
                        "(PatchCore-style memory bank), image score from its most anomalous patches (--image-score), with "
                        "defect maps")
    s.add_argument("--k", type=int, default=None, help="neighbours (default 5 for knn, 20 for lof, 1 for patch)")
    s.add_argument("--max-bank-size", type=int, default=None,
                   help="subsample the normal feature bank to this size (patch: patches kept by the greedy "
                        "coreset, default 10000)")
    s.add_argument("--patch-layers", default=None,
                   help="patch scorer: comma-separated layers whose maps are combined (default per backbone: "
                        "block_6_expand_relu,block_10_expand_relu for MobileNetV2)")
    s.add_argument("--neighbourhood", type=int, default=3,
                   help="patch scorer: odd window each patch feature is averaged over (default 3; 1 = none)")
    s.add_argument("--image-score", choices=IMAGE_SCORE_CHOICES, default=IMAGE_SCORE_CHOICES[0],
                   help="patch scorer: an image scores the mean of its top 25%% of patch scores (top25, default), "
                        "its most anomalous patch (max, PatchCore), the mean of its top 10%% or 50%% (top10, top50) "
                        "or the mean of all patches (mean)")
    _add_backend_arg(s, "exact")


def _add_backend_arg(p, default: str | None) -> None:
    p.add_argument("--knn-backend", choices=KNN_BACKEND_NAMES, default=default,
                   help="k-NN search: exact (numpy), faiss (exact flat index, faster on large banks) or faiss-ivf "
                        "(approximate, for very large banks); needs faiss-cpu. "
                        + ("Saved with the detector (default exact)" if default else
                           "Default: the one saved with the detector; the threshold is kept"))


def _with_backend(det, backend: str | None):
    """The detector searching with ``backend`` (its saved threshold kept), or itself when None."""
    from dataclasses import replace

    if backend is None or backend == det.scorer.backend:
        return det
    return det.with_scorer(replace(det.scorer, backend=backend), threshold=det.threshold_)


def _configs(args):
    from .model.backbones import BackboneConfig
    from .model.detector import ScorerConfig
    from .model.training import TrainConfig

    weights = None if str(args.weights).lower() == "none" else args.weights
    bb = BackboneConfig(args.backbone, args.alpha, args.input_size, weights, args.feature_layer, args.trainable_from)
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.lr, "lam": args.lam,
                 "optimizer": args.optimizer, "weight_decay": args.weight_decay, "seed": args.seed}
    tc = TrainConfig(**{k: v for k, v in overrides.items() if v is not None})
    layers = tuple(x.strip() for x in args.patch_layers.split(",") if x.strip()) if args.patch_layers else None
    return bb, tc, ScorerConfig(args.scorer, args.k, args.max_bank_size, args.knn_backend, layers, args.neighbourhood,
                                args.image_score)


def _load_split(args):
    return _load_split_and_spec(args)[0]


def _load_split_and_spec(args):
    """The split the data arguments describe, and its :class:`doc_core.data.datasets.DatasetSpec` (what a dashboard
    run records to rebuild it)."""
    from .data.datasets import DatasetSpec
    from .data.fashion_mnist import load_fashion_mnist
    from .data.splits import ONE_VS_REST_SPLITS, SplitConfig, load_folder_split, make_split

    if args.folder:
        from .data.datasets import with_reference

        split, skipped = load_folder_split(args.folder, image_size=args.image_size)
        for s in skipped:
            print(f"skipped {s.path}: {s.reason}", file=sys.stderr)
        reference = getattr(args, "reference", "auto")
        split = with_reference(split, reference)
        print(f"reference: {split.info['reference']} ({split.info['reference_reason']})", file=sys.stderr)
        return split, DatasetSpec.folder(Path(args.folder).resolve(), args.image_size, reference=reference)
    cfg = (SplitConfig.tutorial(args.split_seed) if args.protocol == "tutorial"
           else ONE_VS_REST_SPLITS[args.protocol](args.normal_class, seed=args.split_seed))
    cfg = SplitConfig.from_dict({**cfg.to_dict(), "n_normal": args.n_normal, "n_reference": args.n_reference})
    return make_split(cfg, load_fashion_mnist(args.data_dir)), DatasetSpec.fashion_mnist(cfg)


def _embed_bar(total: int, desc: str):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", leave=False, file=sys.stderr)
    state = {"done": 0}

    def progress(done: int) -> None:
        bar.update(done - state["done"])
        state["done"] = done
        if done >= total:
            bar.close()

    return progress


def _evaluation(det, split, scores: np.ndarray | None = None) -> dict:
    from .evaluation.metrics import average_precision, report_at_threshold, roc_auc

    if scores is None:
        scores = det.decision_function(split.test_images,
                                       progress=_embed_bar(len(split.test_images), "scoring test set"))
    out = {"n_test": int(len(scores)), "threshold": float(det.threshold_)}
    if split.has_test_labels:
        labelled = split.test_labels >= 0
        y, s = split.test_labels[labelled], scores[labelled]
        out.update(auc=roc_auc(y, s), average_precision=average_precision(y, s),
                   at_threshold=report_at_threshold(y, s, det.threshold_).to_dict())
    return out


def _calibration_fraction(text: str) -> float:
    """``--calibration``: a number in [0, 0.5]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 0.5:
        raise argparse.ArgumentTypeError(f"must be between 0 (off) and 0.5, got {value}")
    return value


def cmd_train(args) -> int:
    from tqdm import tqdm

    from .model.detector import DETECTOR_FOLDER, DOCDetector, estimate_save_bytes
    from .workflow.output_folders import check_target, check_writable

    preset = args.preset or ("auto" if args.folder else "manual")
    if args.anomalies != "any" and preset != "auto":
        raise ValueError("--anomalies chooses the auto preset's candidates; use it with --preset auto (the default "
                         "with --folder)")
    # --out is checked before any data is read or any step trained: foreign content, a parent that takes no file
    replaced = check_target(args.out, DETECTOR_FOLDER, args.force) if args.out else None
    for where in (args.out, args.runs):
        if where:
            check_writable(where)
    split, spec = _load_split_and_spec(args)
    bb, tc, sc = _configs(args)
    for where in (args.out, args.runs):
        if where:
            check_writable(where, estimate_save_bytes(bb, len(split.train_normal), tc, sc.max_bank_size))
    selection = None
    if preset == "auto":
        from .workflow.selection import auto_candidates, select_configuration

        print(f"preset auto: choosing a configuration on the {len(split.train_normal)} normal training images "
              "(synthetic defects in held-out ones; no test labels)", file=sys.stderr)
        selection = select_configuration(split.train_normal, auto_candidates(bb, tc, anomalies=args.anomalies),
                                         split.reference, split.reference_labels, split.reference_names,
                                         seed=tc.seed, on_progress=lambda m: print(m, file=sys.stderr, flush=True),
                                         calibration_fraction=args.calibration,  # never sees the slice
                                         anomalies=args.anomalies)
        print(selection.table(), file=sys.stderr)
        bb, tc, sc = selection.chosen.backbone, selection.chosen.train, selection.chosen.scorer
    det = DOCDetector(bb, tc, sc, calibration_fraction=args.calibration)
    print(f"training on {split.name}: {split.summary()}", file=sys.stderr)
    bar = None
    try:
        for rec in det.fit_steps(split.train_normal, split.reference, split.reference_labels, split.reference_names,
                                 on_prepare=lambda m: print(m, file=sys.stderr)):
            if bar is None:
                bar = tqdm(total=rec.steps_total, desc="training", unit="step", file=sys.stderr)
            bar.update(1)
            bar.set_postfix(epoch=rec.epoch, l_D=f"{rec.l_d:.3f}", l_C=f"{rec.l_c:.4f}", total=f"{rec.total:.3f}")
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was saved", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    result = {"fit_s": det.fit_seconds_, "preset": preset, "scorer": det.scorer.to_dict(),
              "epochs": det.train.epochs,
              "calibration": {"n": det.n_calibration, "of": len(split.train_normal),
                              "threshold_source": det.threshold_source_, "note": det.calibration_note_}}
    print(f"threshold {det.threshold_:.6g}: the {det.threshold_percentile:g}th percentile of "
          + (f"{det.n_calibration} of the {len(split.train_normal)} normal training images held out for calibration "
             "(used for neither training nor the bank)" if det.n_calibration
             else f"leave-one-out training scores ({det.calibration_note_})"), file=sys.stderr)
    if selection is not None:
        result["selection"] = selection.to_dict()
    scores = feats = None
    if args.runs and len(split.test_images):  # a dashboard run stores the test features too: one pass gives both
        progress = _embed_bar(len(split.test_images), "scoring test set")
        if det.is_patch:
            scores, feats = det.score_images(split.test_images, progress=progress)
        else:
            feats = det.embed(split.test_images, progress=progress)
            scores = det.score_features(feats)
    if len(split.test_images):
        result.update(_evaluation(det, split, scores))
    if args.out:
        path = det.save(args.out, metadata={"split": split.info, "split_name": split.name, "evaluation": result},
                        force=args.force)
        result["detector"] = str(path)
        _say_replaced(result, path, replaced)
    if args.runs:
        result.update(_save_dashboard_run(args, det, split, spec, scores, feats, selection))
    print(json.dumps(result, indent=1))
    return 0


def _save_dashboard_run(args, det, split, spec, scores, feats, selection) -> dict:
    """Save the trained detector as a dashboard run in ``args.runs``, then (unless ``--no-maps``) the Embedding
    explorer's default maps into it. The maps are a bonus: if they fail the run stays and the reason is printed."""
    import time

    from .workflow.runs import save_run

    if scores is None:  # no test images: nothing to show in the dashboard, but the run is still listed
        scores, feats = np.zeros(0, np.float32), None
    run = save_run(det, scores, split.test_labels, split.test_classes, feats,
                   dataset={**spec.to_dict(), "description": spec.describe(), "name": split.name,
                            "counts": split.summary()},
                   name=args.name, steps_total=len(det.history_), total_seconds=det.fit_seconds_,
                   test_paths=split.info.get("test_paths"), runs_dir=args.runs,
                   selection=None if selection is None else selection.to_dict())
    out = {"run_id": run.run_id, "run": str(run.path)}
    print(f"saved run {run.run_id} in {Path(args.runs).resolve()}", file=sys.stderr)
    if args.no_maps or not len(scores):
        return out
    from .explain.explorer_maps import (COMPUTE_ORDER, DEFAULT_WITH_TRAIN, MapInputs, compute_maps, maps_file_name,
                                        save_maps)
    from .explain import explorer_maps

    t0 = time.perf_counter()
    bar, last = _embed_bar(300, "explorer maps (3)"), [0]

    def progress(feature_set: str, fraction: float) -> None:
        done = int(100 * (COMPUTE_ORDER.index(feature_set) + fraction))
        if done > last[0]:
            bar(done)
            last[0] = done

    try:
        maps = compute_maps(MapInputs(split, det.backbone, test_features=feats, bank=det.bank_,
                                      train_index=getattr(det, "train_index_", None)),
                            explorer_maps.DEFAULT_MAX_POINTS, DEFAULT_WITH_TRAIN, progress)
        out["maps"] = str(save_maps(run.path, maps))
        out["maps_s"] = round(time.perf_counter() - t0, 1)
    except Exception as exc:  # noqa: BLE001 - the run is saved; the explorer computes the maps when it is opened
        bar(300)
        out["maps_error"] = f"{type(exc).__name__}: {exc}"
        print(f"warning: the explorer's maps ({maps_file_name(explorer_maps.DEFAULT_MAX_POINTS, DEFAULT_WITH_TRAIN)}) "
              f"were not saved: {exc}; the run is saved, and the explorer computes them when it is opened",
              file=sys.stderr)
    return out


def _say_replaced(result: dict, path: Path, replaced: str | None) -> None:
    """With --force: record in the JSON result, and say on stderr, what the new folder replaced."""
    if replaced is not None:
        result["replaced"] = f"{path}: {replaced}"
        print(f"--force: replaced {replaced} at {path}", file=sys.stderr)


def cmd_evaluate(args) -> int:
    from .model.detector import DOCDetector

    det = _with_backend(DOCDetector.load(args.detector), args.knn_backend)
    split = _load_split(args)
    if not len(split.test_images):
        print("error: the dataset has no test images", file=sys.stderr)
        return 2
    result = _evaluation(det, split)
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


def cmd_score(args) -> int:
    from .data.images import read_images
    from .model.detector import DOCDetector

    det = _with_backend(DOCDetector.load(args.detector), args.knn_backend)
    images, ok, skipped = read_images(args.images, size=det.backbone.input_size)
    scores = det.decision_function(images) if len(images) else np.zeros(0)
    out = {"threshold": float(det.threshold_),
           "results": [{"path": str(p), "score": float(s), "anomalous": bool(s > det.threshold_)}
                       for p, s in zip(ok, scores)],
           "skipped": [{"path": s.path, "reason": s.reason} for s in skipped]}
    text = json.dumps(out, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0 if ok or not args.images else 1


def _load_detector_or_run(path: str | Path):
    """A detector folder (``detector.json``) or a dashboard run folder (``run.json`` + ``detector/``).

    A run's detector uses the run's saved operating point (scorer and threshold) when one was saved.
    """
    from .model.detector import DetectorFormatError, DOCDetector
    from .workflow.runs import load_detector

    path = Path(path).resolve()
    if (path / "detector.json").is_file():
        return DOCDetector.load(path)
    if (path / "run.json").is_file():
        return load_detector(path.name, path.parent)
    raise DetectorFormatError(f"{path} is neither a detector folder (with detector.json, written by `train`) nor a "
                              "dashboard run folder (with run.json and detector/)")


def _overlay_name(path: Path, used: set[str], kind: str = "gradcam") -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem) or "image"
    name, i = f"{stem}_{kind}.png", 1
    while name in used:
        i += 1
        name = f"{stem}_{i}_{kind}.png"
    used.add(name)
    return name


EXPLAIN_FORMAT = "doc-explorer-explanation"


def cmd_explain(args) -> int:
    from PIL import Image

    from .data.images import read_images
    from .explain.gradcam import GradCAM, overlay
    from .workflow.output_folders import OutputKind, check_target, check_writable

    if not 0.0 <= args.opacity <= 1.0:
        raise ValueError(f"--opacity must be between 0 and 1, got {args.opacity}")
    # --out is written into (overlays and summary.json of an earlier explain may be overwritten), so it must be new,
    # empty or an earlier explain's folder; anything else is kept and refused without --force
    kind = OutputKind("explanation", "summary.json", EXPLAIN_FORMAT, frozenset({"summary.json"}),
                      frozenset({"summary.json", "*_gradcam.png", "*_defectmap.png"}))
    foreign = check_target(args.out, kind, args.force)
    check_writable(args.out)
    det = _load_detector_or_run(args.detector)
    method = args.method if args.method != "auto" else ("patch" if det.is_patch else "gradcam")
    if method == "patch" and not det.is_patch:
        raise ValueError("--method patch needs a detector trained with --scorer patch (defect maps come from its "
                         "patch memory bank); use --method gradcam for this one")
    images, ok, skipped = read_images(args.images, size=det.backbone.input_size)
    for s in skipped:
        print(f"skipped {s.path}: {s.reason}", file=sys.stderr)
    if method == "patch":
        from .explain.gradcam import map_to_unit

        raw = det.anomaly_maps(images)
        heatmaps = map_to_unit(raw, float(det.train_scores_.min()), float(det.threshold_))
        scores = knn_scores = det.decision_function(images) if len(images) else np.zeros(0, np.float32)
        layer, k = ",".join(det.backbone_.patch_layers(det.scorer.patch_layers)), int(det.scorer_.k)
    else:
        cam = GradCAM(det, args.layer)
        heatmaps, knn_scores = cam.explain(images, batch_size=args.batch_size)
        # the verdict uses the detector's own score (the same as the explained one for a k-NN scorer)
        scores = knn_scores if cam.matches_detector or not len(images) else det.decision_function(images)
        layer, k = cam.layer, cam.k
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    results = []
    for path, image, heat, score, knn in zip(ok, images, heatmaps, scores, knn_scores):
        name = _overlay_name(path, used, "defectmap" if method == "patch" else "gradcam")
        Image.fromarray(overlay(image, heat, args.opacity)).save(out_dir / name)
        results.append({"path": str(path), "overlay": name, "score": float(score),
                        "anomalous": bool(score > det.threshold_), "explained_knn_score": float(knn),
                        "heatmap_empty": bool(heat.max() == 0.0)})
    summary = {"format": EXPLAIN_FORMAT, "detector": str(args.detector), "method": method, "layer": layer, "k": k,
               "threshold": float(det.threshold_),
               "scorer": det.scorer.to_dict(), "opacity": args.opacity, "results": results,
               "skipped": [{"path": s.path, "reason": s.reason} for s in skipped]}
    text = json.dumps(summary, indent=1)
    (out_dir / "summary.json").write_text(text)
    print(text)
    print(f"wrote {len(results)} overlays and summary.json to {out_dir}"
          + (f" (--force: it also holds {foreign})" if foreign else ""), file=sys.stderr)
    return 0 if ok else 1


def _parse_shape(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        h, w, c = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise ValueError(f"--input-shape must look like 28x28x1 (height x width x channels), got {text!r}") from exc
    return h, w, c


def cmd_export(args) -> int:
    from .data.splits import load_folder_split
    from .edge.export import (BUNDLE_FOLDER, ExportConfig, check_patch_export, estimate_bundle_bytes, export_bundle,
                              normal_images_for)
    from .workflow.output_folders import check_target, check_writable

    out = args.out or f"{Path(args.detector).resolve().name}-{args.format}-{args.quantize}"
    replaced = check_target(out, BUNDLE_FOLDER, args.force)
    check_writable(out)
    det = _load_detector_or_run(args.detector)
    cfg = ExportConfig(format=args.format, quantize=args.quantize, input_shape=_parse_shape(args.input_shape),
                       max_bank_size=args.max_bank_size, calibration_size=args.calibration_images,
                       reembed_bank=False if args.keep_keras_bank else None)
    cfg.validate()
    if det.is_patch:  # refuse unsupported options before reading any training images
        check_patch_export(det, cfg)
    normal = None
    if args.folder:
        normal = load_folder_split(args.folder, image_size=args.image_size)[0].train_normal
    elif cfg.quantize != "none" and not args.keep_keras_bank:
        normal = normal_images_for(det, args.detector, args.data_dir)
    if normal is not None:
        print(f"using {len(normal)} normal training images for calibration and the bank", file=sys.stderr)
    check_writable(out, estimate_bundle_bytes(det, len(normal) if normal is not None else 0))
    doc = export_bundle(det, out, cfg, normal, source=str(args.detector), force=args.force)
    result = {"bundle": str(Path(out).resolve()), "quantize": doc["quantize"],
              "input": doc["input"], "bank_size": doc["bank_size"], "threshold": doc["threshold"],
              "threshold_source": doc["threshold_source"], "sizes_bytes": doc["sizes_bytes"],
              "run": f"cd {out} && python scorer.py IMAGE..."}
    _say_replaced(result, Path(out), replaced)
    print(json.dumps(result, indent=1))
    return 0


def _write_json(result: dict, path: str | None) -> None:
    """Write a benchmark result to ``path`` (if given) and say so on stderr."""
    if path:
        Path(path).write_text(json.dumps(result, indent=1))
        print(f"wrote {path}", file=sys.stderr)


def _benchmark_export(args) -> int:
    import tempfile

    from .data.fashion_mnist import load_fashion_mnist
    from .data.splits import SplitConfig, make_split
    from .edge.export import benchmark_export, format_export_table
    from .model.detector import DOCDetector

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    split = make_split(SplitConfig.tutorial(args.seeds[0]), load_fashion_mnist(args.data_dir))
    if args.detector:
        det = _load_detector_or_run(args.detector)
    else:
        bb, tc, sc = _configs(args)
        log(f"training the tutorial detector (seed {tc.seed}) ...")
        det = DOCDetector(bb, tc, sc).fit_split(split)
    with tempfile.TemporaryDirectory() as tmp:
        res = benchmark_export(det, split.train_normal, split.test_images, split.test_labels,
                               args.export_dir or tmp, max_bank_size=args.max_bank_size, log=log)
    res["detector"] = str(args.detector) if args.detector else "trained by this run"
    print(format_export_table(res))
    _write_json(res, args.json)
    return 0


def _benchmark_knn_scaling(args) -> int:
    from .evaluation.knn_scaling import format_scaling_table, knn_scaling

    res = knn_scaling(tuple(args.bank_sizes), n_queries=args.queries, dim=args.dim, k=args.k or 5,
                      nprobe=args.nprobe, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_scaling_table(res))
    _write_json(res, args.json)
    return 0


def _benchmark_folder(args) -> int:
    from .evaluation.folder_benchmark import (benchmark_folder, format_folder_table, load_labelled_folder,
                                              load_magnetic_tiles)

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if args.protocol == "magnetic-tile":
        split, masks = load_magnetic_tiles(args.folder, image_size=args.image_size, seed=args.split_seed)
    elif not args.folder:
        raise ValueError("--protocol folder needs --folder DIR (train/, test/normal, test/anomaly; optionally "
                         "reference/ and ground_truth/)")
    else:
        split, masks = load_labelled_folder(args.folder, image_size=args.image_size)
    bb, tc, _ = _configs(args)
    runs = []
    for seed in args.seeds:
        log(f"seed {seed}")
        runs.append(benchmark_folder(split, masks, bb, tc, fashion_reference=not args.no_fashion_reference,
                                     seed=seed, log=log, anomalies=args.anomalies))
        print(format_folder_table(runs[-1]))
    res = runs[0] if len(runs) == 1 else {"seeds": list(args.seeds), "runs": runs}
    res["protocol"] = args.protocol
    _write_json(res, args.json)
    return 0


def cmd_benchmark(args) -> int:
    from .data.fashion_mnist import load_fashion_mnist
    from .evaluation.benchmark import benchmark, format_table

    if args.protocol == "export":
        return _benchmark_export(args)
    if args.protocol == "knn-scaling":
        return _benchmark_knn_scaling(args)
    if args.protocol in ("folder", "magnetic-tile"):
        return _benchmark_folder(args)
    bb, tc, _ = _configs(args)
    classes = tuple(args.classes) if args.classes else tuple(range(10))
    res = benchmark(args.protocol, tuple(args.seeds), bb, tc, classes, load_fashion_mnist(args.data_dir),
                    log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_table(res))
    _write_json(res, args.json)
    if args.roc_html:
        from .evaluation.report import write_roc_html

        print(f"ROC curves: {write_roc_html(res, args.roc_html)}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m doc_core", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a detector and save it to a folder",
                       description="Fine-tune the backbone with DOC, score the test set (if any) and save.")
    _add_data_args(p)
    _add_model_args(p)
    p.add_argument("--out", default=None,
                   help="folder to save the detector in: created, or replaced atomically if it is empty or holds a "
                        "detector saved by this tool; anything else there is kept and the command refuses (checked, "
                        "with the free space, before training). --out, --runs or both")
    p.add_argument("--runs", default=None,
                   help="also save the run in this dashboard runs folder (a new run folder: detector, test scores "
                        "and features, and the Embedding explorer's default maps), so the dashboard lists it")
    p.add_argument("--name", default=None, help="--runs: the run's name in the dashboard")
    p.add_argument("--no-maps", action="store_true",
                   help="--runs: do not compute the explorer's maps now (the explorer computes them when opened)")
    p.add_argument("--force", action="store_true",
                   help="replace whatever is at --out, even a folder or file this tool did not write (the output "
                        "says what was replaced)")
    p.add_argument("--preset", choices=("auto", "manual"), default=None,
                   help="auto: choose between pretrained and DOC features, global and patch scoring, by synthetic "
                        "defects pasted into held-out normal training images (no labels; the evidence table is "
                        "printed and saved); manual: exactly the options given. Default: auto with --folder, manual "
                        "for Fashion-MNIST (whose defaults were measured)")
    p.add_argument("--anomalies", choices=ANOMALY_KIND_CHOICES, default="any",
                   help="auto: what your anomalies are like, if you know (no labels needed): any (default: every "
                        "candidate), defects (local scratches, spots, cracks: patch scoring only) or objects "
                        "(different objects or whole-image changes: global scoring only). The synthetic defects "
                        "auto compares on are local, so it favours patch scoring even where the anomalies are "
                        "different objects; say objects then")
    p.add_argument("--calibration", type=_calibration_fraction, default=0.1, metavar="FRACTION",
                   help="share of the normal training images held out (seeded) to set the threshold on images the "
                        "detector never saw: at least 30 images, used for neither training nor the memory bank; 0 "
                        "turns it off, and it turns itself off (the output says so) when fewer than twice as many "
                        "would be left to train on (default 0.1)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="AUC and metrics of a saved detector on a labelled test set")
    p.add_argument("--detector", required=True, help="a folder written by `train` (or a dashboard run's detector/)")
    _add_data_args(p)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    _add_backend_arg(p, None)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("score", help="score image files with a saved detector (JSON out)")
    p.add_argument("--detector", required=True, help="a folder written by `train`")
    p.add_argument("images", nargs="+", help="image files (png, jpg, ...); unreadable ones are listed as skipped")
    p.add_argument("--out", default=None, help="write the JSON here as well as to stdout")
    _add_backend_arg(p, None)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("explain", help="Grad-CAM heatmaps of the anomaly score over image files (PNG + JSON out)",
                       description="Writes one overlay PNG per readable image (<name>_gradcam.png: red = the region "
                                   "that raises the k-NN anomaly score most) and summary.json with each image's score "
                                   "and verdict at the detector's threshold. Unreadable images are skipped and named.")
    p.add_argument("--detector", required=True,
                   help="a folder written by `train`, or a dashboard run folder (runs/<run id>, whose saved "
                        "threshold is used)")
    p.add_argument("images", nargs="+", help="image files (png, jpg, ...); unreadable ones are skipped")
    p.add_argument("--out", required=True,
                   help="folder to write the overlay PNGs and summary.json to: created, or written into if it is "
                        "empty or holds an earlier explain's output; anything else there is kept and the command "
                        "refuses")
    p.add_argument("--force", action="store_true",
                   help="write into --out even if it holds files this tool did not write (same-named files are "
                        "overwritten)")
    p.add_argument("--layer", default=None,
                   help="convolutional layer to explain (default: the detector's feature layer, 6x6 for MobileNetV2 "
                        "at 96 px); must not come after it")
    p.add_argument("--opacity", type=float, default=0.5,
                   help="opacity of the heatmap over the image, 0 (image only) to 1 (heatmap only); default 0.5")
    p.add_argument("--batch-size", type=int, default=64, help="images per Grad-CAM batch (default 64)")
    p.add_argument("--method", choices=("auto", "gradcam", "patch"), default="auto",
                   help="gradcam: gradient of the k-NN score over a feature map (coarse); patch: the patch scorer's "
                        "defect map (<name>_defectmap.png; its colour scale runs from the least anomalous training "
                        "image's score to the threshold, the same for every image); auto (default): patch for a "
                        "patch detector, else gradcam")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("export", help="export a detector as an edge bundle (LiteRT model + bank + numpy scorer)",
                       description="Writes a self-contained folder: model.tflite (uint8 images in, features out; "
                                   "preprocessing inside), bank.npy, bundle.json (threshold, k, input shape, "
                                   "preprocessing, format version) and scorer.py, which needs only numpy and "
                                   "ai-edge-litert (onnxruntime for --format onnx): "
                                   "`cd BUNDLE && python scorer.py IMAGE...`.")
    p.add_argument("--detector", required=True,
                   help="a folder written by `train`, or a dashboard run folder (runs/<run id>, whose saved "
                        "threshold is carried over)")
    p.add_argument("--format", choices=("tflite", "onnx"), default="tflite",
                   help="tflite (LiteRT; every --quantize) or onnx (tf2onnx export, onnxruntime scoring, float32 "
                        "only); default tflite")
    p.add_argument("--quantize", choices=("none", "float16", "int8"), default="none",
                   help="none: float32; float16: half-size weights; int8: integer quantization calibrated on the "
                        "normal training images (default none)")
    p.add_argument("--out", default=None,
                   help="bundle folder (default ./<detector name>-<format>-<quantize>): created, or replaced "
                        "atomically if it is empty or holds an edge bundle exported by this tool; anything else "
                        "there is kept and the command refuses")
    p.add_argument("--force", action="store_true",
                   help="replace whatever is at --out, even a folder or file this tool did not write (the output "
                        "says what was replaced)")
    p.add_argument("--max-bank-size", type=int, default=None,
                   help="keep a random subset of at most this many normal features (smaller bundle, faster k-NN)")
    p.add_argument("--input-shape", default=None,
                   help="HxWxC of the uint8 images the model takes (default: the training images' shape, 28x28x1 "
                        "for Fashion-MNIST)")
    p.add_argument("--calibration-images", type=int, default=200,
                   help="normal training images used to calibrate int8 (default 200)")
    p.add_argument("--keep-keras-bank", action="store_true",
                   help="float16/int8: keep the detector's Keras bank instead of recomputing it with the quantized "
                        "model (then no training images are needed for float16)")
    p.add_argument("--data-dir", default=None,
                   help="folder with the Fashion-MNIST .gz files (the normal images are rebuilt from the detector's "
                        "recorded split)")
    p.add_argument("--folder", default=None, help="take the normal training images from this dataset folder's train/")
    p.add_argument("--image-size", type=int, default=96, help="size images from --folder are read at (default 96)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("benchmark", help="AUC, fit time and scoring speed of DOC and baselines on Fashion-MNIST",
                       description="Runs raw_knn, conv_ae, pretrained_knn, doc_knn and doc_lof "
                                   "with one fixed configuration; AUC is the mean over --seeds. Two more "
                                   "protocols: export (edge bundles: AUC against the Keras detector, bundle size, "
                                   "ms/image on one core per quantization) and knn-scaling (exact vs faiss k-NN "
                                   "scoring time against bank size, random vectors).")
    p.add_argument("--protocol", choices=("tutorial", "one-vs-rest", "one-vs-rest-disjoint", "export", "knn-scaling",
                                          "validation", "folder", "magnetic-tile"),
                   default="tutorial",
                   help="tutorial: Sneaker vs Ankle boot (the Keras write-up); one-vs-rest: each class in turn is "
                        "normal and the whole test set is scored (reference = the other classes); "
                        "one-vs-rest-disjoint: the same with reference and anomaly classes disjoint (the anomalies "
                        "are unseen in training); export: the tutorial detector (--detector, or one "
                        "trained with the first seed) exported with every quantization (and as ONNX when tf2onnx and "
                        "onnxruntime are installed) and scored by its bundle; knn-scaling: exact vs faiss search "
                        "time for --bank-sizes; folder: your own labelled folder (--folder; every method incl. "
                        "patch scoring and auto, pixel AUROC from ground_truth/ masks); magnetic-tile: the magnetic "
                        "tile defects from ../shared/datasets/magnetic-tile (or --folder), seeded 80/20 split of "
                        "MT_Free (default tutorial)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to average over (default 0 1 2)")
    p.add_argument("--classes", type=int, nargs="+", default=None, help="one-vs-rest: only these normal classes")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--roc-html", default=None,
                   help="tutorial / one-vs-rest: also write the ROC curves of every method (one chart; one per "
                        "normal class for one-vs-rest) to this self-contained HTML file")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST .gz files")
    e = p.add_argument_group("export protocol")
    e.add_argument("--detector", default=None, help="export: a saved detector or run folder (default: train one)")
    e.add_argument("--export-dir", default=None, help="export: keep the bundles in this folder (default: temporary)")
    s = p.add_argument_group("knn-scaling protocol")
    s.add_argument("--bank-sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000],
                   help="bank sizes (default 1000 10000 100000 1000000; 1M x 1280 float32 is 5.1 GB, and faiss "
                        "keeps its own copy)")
    s.add_argument("--queries", type=int, default=1000, help="query vectors (default 1000)")
    s.add_argument("--dim", type=int, default=1280, help="vector dimension (default 1280)")
    s.add_argument("--nprobe", type=int, default=None, help="IVF lists searched per query (default: KNNScorer's)")
    f = p.add_argument_group("folder and magnetic-tile protocols")
    f.add_argument("--folder", default=None, help="the labelled folder (folder) or the magnetic-tile root")
    f.add_argument("--image-size", type=int, default=96, help="images are stored at this size (default 96)")
    f.add_argument("--split-seed", type=int, default=0, help="magnetic-tile: seed of the 80/20 split (default 0)")
    f.add_argument("--no-fashion-reference", action="store_true",
                   help="skip the DOC run with the built-in Fashion-MNIST reference set")
    f.add_argument("--anomalies", choices=ANOMALY_KIND_CHOICES, default="any",
                   help="auto's candidates, as for train --anomalies (default any)")
    _add_model_args(p)
    p.set_defaults(func=cmd_benchmark)

    _add_label_parser(sub)
    _add_bank_parser(sub)
    return parser


def _label_store(args):
    from .workflow.labels import LabelStore

    return LabelStore(args.db, runs_dir=args.runs)


def _one_line(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[:width - 3] + "..."


def cmd_label_list(args) -> int:
    store = _label_store(args)
    records = store.labels(args.run)
    counts = store.counts(args.run)
    if args.json:
        print(json.dumps({"db": str(store.path), "run_id": args.run, "counts": counts,
                          "labels": [r.to_dict() for r in records]}, indent=1))
        return 0
    rows = [(["run_id"] if args.run is None else []) + ["image_key", "label", "updated_at", "source", "note"]]
    rows += [([r.run_id] if args.run is None else []) + [r.image_key, r.label, r.updated_at[:19].replace("T", " "),
                                                         _one_line(r.source, 30), _one_line(r.note, 40)]
             for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(f"{len(records)} labels{'' if args.run is None else ' in run ' + args.run}: "
          + ", ".join(f"{n} {label}" for label, n in counts.items()) + f" ({store.path})", file=sys.stderr)
    return 0


def cmd_label_set(args) -> int:
    rec = _label_store(args).set(args.run, args.key, args.label, note=args.note, source=args.source, who=args.who)
    print(json.dumps(rec.to_dict(), indent=1))
    return 0


def cmd_label_delete(args) -> int:
    print(json.dumps({"deleted": _label_store(args).delete(args.run, args.key)}))
    return 0


def cmd_label_export(args) -> int:
    store = _label_store(args)
    if args.out == "-":
        store.export_csv(sys.stdout, args.run)
        return 0
    try:
        n = store.export_csv(args.out, args.run, overwrite=args.force)
    except FileExistsError:
        print(f"error: {args.out} exists; it is kept (--force replaces it)", file=sys.stderr)
        return 1
    print(json.dumps({"out": str(Path(args.out).resolve()), "labels": n, "run_id": args.run, "db": str(store.path)},
                     indent=1))
    return 0


def cmd_label_import(args) -> int:
    store = _label_store(args)
    n = store.import_csv(args.csv)
    print(json.dumps({"imported": n, "db": str(store.path)}, indent=1))
    return 0


def _add_label_parser(sub) -> None:
    from .workflow.labels import LABELS

    p = sub.add_parser("label", help="analysts' labels (normal / anomaly / unsure per run and image): list, set, "
                                     "export to CSV, import",
                       description="Labels live in an SQLite file: <runs folder>/labels.sqlite by default "
                                   "($DOC_LABELS_DB, or --db, to use another). An image is named by its key, the "
                                   "SHA-256 content hash of its pixels (doc_core.workflow.labels.image_key), so the "
                                   "same image is recognised in every run. No TensorFlow is loaded.")
    p.set_defaults(light=True)
    label_sub = p.add_subparsers(dest="label_command", required=True, metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--runs", default=None,
                       help="runs folder whose labels.sqlite is used (default $DOC_RUNS_DIR or ./runs)")
        q.add_argument("--db", default=None,
                       help="the labels database file (default: $DOC_LABELS_DB, else <runs folder>/labels.sqlite)")
        q.set_defaults(light=True)

    q = label_sub.add_parser("list", help="print the labels of a run (or of every run) as a table or JSON")
    q.add_argument("--run", default=None, help="run id (default: every run)")
    q.add_argument("--json", action="store_true", help="print JSON (counts and every label) instead of a table")
    common(q)
    q.set_defaults(func=cmd_label_list)

    q = label_sub.add_parser("set", help="set (or replace) the label of one image in one run")
    q.add_argument("--run", required=True, help="run id")
    q.add_argument("--key", required=True, help="the image's key (64 hex digits, as `label list` shows)")
    q.add_argument("--label", required=True, choices=LABELS)
    q.add_argument("--note", default=None, help="optional note (at most 1,000 characters)")
    q.add_argument("--source", default=None, help="optional: where the image is, e.g. test:17 or a file path")
    q.add_argument("--who", default=None, help="optional: who set it")
    common(q)
    q.set_defaults(func=cmd_label_set)

    q = label_sub.add_parser("delete", help="remove the label of one image in one run")
    q.add_argument("--run", required=True, help="run id")
    q.add_argument("--key", required=True, help="the image's key")
    common(q)
    q.set_defaults(func=cmd_label_delete)

    q = label_sub.add_parser("export", help="write labels to a CSV file",
                             description="Columns: run_id, image_key, label, note, source, updated_at, who. Notes "
                                         "that a spreadsheet would take for a formula get a leading ' (removed "
                                         "again by import).")
    q.add_argument("--out", required=True, help="the CSV file ('-' for standard output); an existing file is kept "
                                                "and the command refuses, unless --force")
    q.add_argument("--run", default=None, help="only this run (default: every run)")
    q.add_argument("--force", action="store_true", help="replace an existing --out file")
    common(q)
    q.set_defaults(func=cmd_label_export)

    q = label_sub.add_parser("import", help="read labels from a CSV file (as export writes it)",
                             description="Every row is checked first; a bad row stops the import with its line "
                                         "number and nothing is written. Labels of the same run and image are "
                                         "replaced. Required columns: run_id, image_key, label; optional: note, "
                                         "source, updated_at, who.")
    q.add_argument("csv", help="the CSV file")
    common(q)
    q.set_defaults(func=cmd_label_import)


def _print_change(change, as_json: bool) -> None:
    if as_json:
        print(json.dumps(change.to_dict(), indent=1))
    else:
        print(change.describe())


def cmd_bank_add(args) -> int:
    from .workflow.bank_growth import add_labelled_normals, labelled_normals, run_test_images
    from .workflow.labels import LabelStore

    test = run_test_images(args.run, args.runs, data_dir=args.data_dir)
    store = LabelStore(args.db, runs_dir=args.runs)
    todo = labelled_normals(args.run, test, store=store, runs_dir=args.runs)
    print(f"{todo.n_labelled} images of run {args.run} are labelled normal: {len(todo)} to add, {todo.n_in_bank} "
          f"already in the bank, {todo.n_not_found} not among its {len(test):,} test images ({store.path})",
          file=sys.stderr)
    if not len(todo):
        print("error: nothing to add; label test images normal first (`label set`, or the dashboard)",
              file=sys.stderr)
        return 2
    _print_change(add_labelled_normals(args.run, test, store=store, runs_dir=args.runs), args.json)
    return 0


def cmd_bank_undo(args) -> int:
    from .workflow.bank_growth import undo_bank_change

    _print_change(undo_bank_change(args.run, args.runs), args.json)
    return 0


def cmd_bank_history(args) -> int:
    from .workflow.bank_growth import bank_history

    changes = bank_history(args.run, args.runs)
    if args.json:
        print(json.dumps({"run_id": args.run, "version": len(changes), "changes": [c.to_dict() for c in changes]},
                         indent=1))
        return 0
    if not changes:
        print(f"run {args.run}: the normal bank is as trained (version 0)")
    for c in changes:
        print(f"version {c.version}: added {c.n_added} images on {c.created[:19].replace('T', ' ')} UTC, bank "
              f"{c.bank_before:,} -> {c.bank_after:,}, default threshold {c.default_threshold_before:.6g} -> "
              f"{c.default_threshold_after:.6g}, flagged {c.flagged_before:,} -> {c.flagged_after:,}")
    return 0


def _add_bank_parser(sub) -> None:
    p = sub.add_parser("bank", help="confirmed normals join a run's normal bank: add the images labelled normal, "
                                    "undo, history",
                       description="Adds a run's test images labelled normal (see `label`) to its normal memory "
                                   "bank and re-scores the run without retraining; the previous version is kept, so "
                                   "`bank undo` restores it exactly. A run's own runs folder holds its history "
                                   "(<run>/bank_history/).")
    bank_sub = p.add_subparsers(dest="bank_command", required=True, metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--run", required=True, help="run id")
        q.add_argument("--runs", default=None, help="runs folder (default $DOC_RUNS_DIR or ./runs)")
        q.add_argument("--json", action="store_true", help="print JSON instead of text")

    q = bank_sub.add_parser("add", help="add the run's test images labelled normal to its normal bank")
    common(q)
    q.add_argument("--db", default=None,
                   help="the labels database file (default: $DOC_LABELS_DB, else <runs folder>/labels.sqlite)")
    q.add_argument("--data-dir", default=None,
                   help="folder with the Fashion-MNIST .gz files, for Fashion-MNIST runs (default: the usual places)")
    q.set_defaults(func=cmd_bank_add)

    q = bank_sub.add_parser("undo", help="undo the last bank change of a run (the same scores as before it)")
    common(q)
    q.set_defaults(func=cmd_bank_undo)

    q = bank_sub.add_parser("history", help="list the bank changes in force")
    common(q)
    q.set_defaults(func=cmd_bank_history)


def _main_light(args) -> int:
    """Run a command that needs no TensorFlow (``label``), with the same exit statuses as :func:`main`."""
    from .workflow.labels import LabelStoreError

    try:
        return int(args.func(args) or 0)
    except LabelStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if exc.os_error else 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {_os_error_text(exc)}", file=sys.stderr)
        return 1


def _os_error_text(exc: OSError) -> str:
    """One line for an OSError: its message and the file(s) it names, without the ``[Errno n]`` prefix."""
    if not exc.strerror:
        return str(exc) or type(exc).__name__
    text = exc.strerror
    if exc.filename is not None:
        text += f": {exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    return text


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 1 an operating-system error (read-only or full disk, no permission, a
    folder --out may not replace), 2 invalid input (data, detector, options), 130 interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)  # --help and argument errors exit here, before TensorFlow is imported
    if args.command == "train" and args.out is None and args.runs is None:
        parser.error("train: say where to save: --out (a detector folder), --runs (a dashboard runs folder), or both")
    if getattr(args, "light", False):
        return _main_light(args)
    import_tensorflow_quietly()
    from .data.images import DataError
    from .model.backbones import WeightsNotFoundError
    from .model.detector import DetectorFormatError
    from .model.training import TrainingDivergedError

    try:
        return int(args.func(args) or 0)
    except (DataError, WeightsNotFoundError, DetectorFormatError, TrainingDivergedError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {_os_error_text(exc)}", file=sys.stderr)
        return 1
