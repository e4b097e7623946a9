"""Confirmed normals join the bank (issue 12, point 3): how many false alarms go away when an analyst marks the
20 highest-scoring test sneakers of the tutorial run as normal?

    nice -n 10 .venv/bin/python bench/bank_growth.py --runs /tmp/bank-runs --json bench/results-bank-growth.json

1. A default tutorial run (Fashion-MNIST, Sneaker normal, Ankle boot anomalous, MobileNetV2 and every library
   default, trained by :class:`doc_core.workflow.jobs.TrainingJob` as the dashboard does) is trained into ``--runs``,
   or reused when that folder already holds one whose configuration is the defaults (``--run`` picks one).
2. The N highest-scoring test sneakers (test label 0; N = 20, issue 12's measurement, then 100 and 500 for context)
   are labelled *normal* in a label store of their own (a temporary SQLite file, so a user's labels are never
   touched) and added with :func:`doc_core.workflow.bank_growth.add_labelled_normals`, exactly what the dashboard's
   button does.
3. Reported before and after: the false-positive rate on the *other* 1000 - N test sneakers at the run's default
   threshold (the new default after the change; also at the old threshold, to separate the bank's effect from the
   threshold's), the test AUC on the remaining test images (the N added ones left out), the flagged counts, and how
   many of the marked images are still flagged: at their leave-one-out score (what the run stores) and scored again
   with their own copy in the bank.
4. Each change is undone (the last one kept with ``--keep``) and the scores are checked to be the same bytes as
   before.
5. For comparison, the first N is repeated in memory (nothing saved) with k-NN at another k (``--other-k``, default
   1: the paper's nearest-neighbour distance), from the run's stored test features.

Nothing is tuned; the numbers come from one run (seed 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from doc_core import BackboneConfig, ScorerConfig, TrainConfig  # noqa: E402
from doc_core.data import SplitConfig, load_fashion_mnist  # noqa: E402
from doc_core.data.datasets import DatasetSpec, load_dataset  # noqa: E402
from doc_core.evaluation.benchmark import machine_info  # noqa: E402
from doc_core.evaluation.metrics import roc_auc  # noqa: E402
from doc_core.model.detector import DOCDetector  # noqa: E402
from doc_core.workflow import bank_growth, runs  # noqa: E402
from doc_core.workflow.labels import LabelStore, image_key  # noqa: E402


def default_config() -> dict:
    return DOCDetector(BackboneConfig(), TrainConfig(), ScorerConfig()).config_dict()


def find_or_train(runs_dir: Path, spec: DatasetSpec, split, run_id: str | None) -> tuple[str, bool]:
    """A default tutorial run in ``runs_dir`` (trained now if there is none); returns (run id, trained now)."""
    if run_id is not None:
        return run_id, False
    want = default_config()
    for r in runs.list_runs(runs_dir):
        if r.config == want and r.dataset.get("kind") == "fashion-mnist" and \
                DatasetSpec.from_dict(r.dataset) == spec and not bank_growth.bank_history(r.run_id, runs_dir):
            print(f"reusing run {r.run_id} ({r.name})", flush=True)
            return r.run_id, False
    from doc_core.workflow.jobs import SUCCEEDED, TrainingJob

    print("training a default tutorial run (MobileNetV2, library defaults) ...", flush=True)
    t0 = time.time()
    job = TrainingJob(split, BackboneConfig(), TrainConfig(), ScorerConfig(),
                      dataset={**spec.to_dict(), "description": spec.describe()}, name="bank growth benchmark",
                      runs_dir=runs_dir).start()
    while not job.join(30):
        snap = job.snapshot()
        print(f"  {snap.stage}: {snap.message} ({time.time() - t0:.0f} s)", flush=True)
    snap = job.snapshot()
    if snap.status != SUCCEEDED:
        raise SystemExit(f"training failed: {snap.error}")
    print(f"trained in {time.time() - t0:.0f} s: run {snap.run.run_id}", flush=True)
    return snap.run.run_id, True


def fpr(scores: np.ndarray, threshold: float) -> float:
    return float(np.mean(scores > threshold))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=None, help="runs folder to reuse a default tutorial run from, or to train it "
                                                 "into (default: a temporary folder)")
    ap.add_argument("--run", default=None, help="this run id in --runs (default: the first default tutorial run)")
    ap.add_argument("--n-mark", type=int, nargs="+", default=[20, 100, 500],
                    help="highest-scoring test sneakers marked normal, one bank change each, undone in turn "
                         "(default 20 100 500)")
    ap.add_argument("--other-k", type=int, nargs="*", default=[1],
                    help="also measure the first --n-mark in memory with these k-NN k (default 1; the run's own k is "
                         "5)")
    ap.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST .gz files")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the bank change (default: undo it at the end)")
    args = ap.parse_args()

    t_start = time.time()
    fashion = load_fashion_mnist(args.data_dir, download=False)
    spec = DatasetSpec.fashion_mnist(SplitConfig.tutorial())
    split, _ = load_dataset(spec, fashion)
    tmp = tempfile.TemporaryDirectory(prefix="bank-growth-")
    runs_dir = Path(args.runs) if args.runs else Path(tmp.name) / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    run_id, trained = find_or_train(runs_dir, spec, split, args.run)
    summary = runs.get_run(run_id, runs_dir)
    stored = runs.load_scores(run_id, runs_dir)
    test = split.test_images
    assert len(test) == summary.n_test and np.array_equal(stored.labels, split.test_labels)
    y, s0 = stored.labels, stored.scores
    normals = np.flatnonzero(y == 0)
    order = normals[np.argsort(-s0[normals], kind="stable")]
    thr0 = float(summary.operating_threshold)
    scores_bytes = (summary.path / "scores.npz").read_bytes()
    feats = runs.load_features(run_id, runs_dir)
    rows = {}
    for n_mark in args.n_mark:
        marked = order[:n_mark]
        others = np.setdiff1d(normals, marked)
        rest = np.setdiff1d(np.arange(len(y)), marked)
        store = LabelStore(Path(tmp.name) / f"labels-{n_mark}.sqlite")
        store.set_many(run_id, [(image_key(test[i]), "normal", "bench: highest-scoring test sneaker")
                                for i in marked])
        t0 = time.time()
        change = bank_growth.add_labelled_normals(run_id, test, store=store, runs_dir=runs_dir)
        add_s = time.time() - t0
        print(change.describe(), flush=True)
        s1 = runs.load_scores(run_id, runs_dir).scores
        thr1 = float(runs.get_run(run_id, runs_dir).operating_threshold)
        det = runs.load_detector(run_id, runs_dir)
        own_copy = det.score_features(feats[marked])  # the same images scored again, their own copy in the bank
        rows[str(n_mark)] = {
            "n_marked": int(len(marked)), "n_other_normals": int(len(others)), "n_rest": int(len(rest)),
            "marked_scores_before": [round(float(v), 5) for v in s0[marked]],
            "marked_scores_after_leave_one_out": [round(float(v), 5) for v in s1[marked]],
            "marked_scores_with_own_copy": [round(float(v), 5) for v in own_copy],
            "threshold_source": change.threshold_source,
            "before": {"threshold": thr0, "fpr_other_normals": fpr(s0[others], thr0),
                       "false_alarms_other_normals": int(np.sum(s0[others] > thr0)),
                       "auc_rest": roc_auc(y[rest], s0[rest]), "auc_all": roc_auc(y, s0),
                       "tpr_anomalies": fpr(s0[y == 1], thr0), "flagged": change.flagged_before,
                       "marked_flagged": int(np.sum(s0[marked] > thr0)), "bank_images": change.bank_before},
            "after": {"threshold": thr1, "fpr_other_normals": fpr(s1[others], thr1),
                      "false_alarms_other_normals": int(np.sum(s1[others] > thr1)),
                      "fpr_other_normals_at_old_threshold": fpr(s1[others], thr0),
                      "auc_rest": roc_auc(y[rest], s1[rest]), "auc_all": roc_auc(y, s1),
                      "tpr_anomalies": fpr(s1[y == 1], thr1), "flagged": change.flagged_after,
                      "marked_flagged": int(np.sum(s1[marked] > thr1)),
                      "marked_flagged_with_own_copy": int(np.sum(own_copy > thr1)), "bank_images": change.bank_after},
            "change": change.to_dict() | {"added_keys": len(change.added_keys),
                                          "added_test_indices": len(change.added_test_indices)},
            "add_seconds": add_s, "detector_threshold_source": getattr(det, "threshold_source_", None)}
        b, a = rows[str(n_mark)]["before"], rows[str(n_mark)]["after"]
        print(f"{n_mark} marked: FPR on the other {len(others)} test sneakers {b['fpr_other_normals']:.4f} "
              f"({b['false_alarms_other_normals']}) at {b['threshold']:.4f} -> {a['fpr_other_normals']:.4f} "
              f"({a['false_alarms_other_normals']}) at {a['threshold']:.4f} "
              f"({a['fpr_other_normals_at_old_threshold']:.4f} at the old threshold); AUC on the other {len(rest)} "
              f"test images {b['auc_rest']:.4f} -> {a['auc_rest']:.4f}; anomalies flagged {b['tpr_anomalies']:.4f} "
              f"-> {a['tpr_anomalies']:.4f}; marked still flagged {b['marked_flagged']} -> {a['marked_flagged']} "
              f"(leave-one-out), {a['marked_flagged_with_own_copy']} scored with their own copy", flush=True)
        if not args.keep or n_mark != args.n_mark[-1]:
            undo = bank_growth.undo_bank_change(run_id, runs_dir)
            rows[str(n_mark)]["undo"] = {"version": undo.version, "scores_identical":
                                         (summary.path / "scores.npz").read_bytes() == scores_bytes}
    other_k = {}
    base = runs.load_detector(run_id, runs_dir, use_saved_threshold=False)
    for k in args.other_k:  # the same change in memory with another k (the run itself is not touched)
        det_k = base.with_scorer(ScorerConfig("knn", k=k))
        sk0 = det_k.score_features(feats)
        n_mark = args.n_mark[0]
        marked = order[:n_mark]
        others = np.setdiff1d(normals, marked)
        rest = np.setdiff1d(np.arange(len(y)), marked)
        grown = det_k.with_added_normals(test[marked], features=feats[marked])
        sk1 = grown.score_features(feats)
        sk1[marked] = grown.train_scores_[-n_mark:]
        t0k, t1k = float(det_k.threshold_), float(grown.threshold_)
        other_k[str(k)] = {
            "n_marked": int(n_mark), "threshold_before": t0k, "threshold_after": t1k,
            "fpr_other_normals_before": fpr(sk0[others], t0k), "fpr_other_normals_after": fpr(sk1[others], t1k),
            "auc_rest_before": roc_auc(y[rest], sk0[rest]), "auc_rest_after": roc_auc(y[rest], sk1[rest]),
            "tpr_anomalies_before": fpr(sk0[y == 1], t0k), "tpr_anomalies_after": fpr(sk1[y == 1], t1k),
            "marked_flagged_before": int(np.sum(sk0[marked] > t0k)),
            "marked_flagged_after": int(np.sum(sk1[marked] > t1k))}
        print(f"k={k}, {n_mark} marked (in memory): FPR other normals {other_k[str(k)]['fpr_other_normals_before']:.4f}"
              f" -> {other_k[str(k)]['fpr_other_normals_after']:.4f}, AUC rest "
              f"{other_k[str(k)]['auc_rest_before']:.4f} -> {other_k[str(k)]['auc_rest_after']:.4f}", flush=True)
    result = {
        "protocol": "bank-growth",
        "what": ("the N highest-scoring test sneakers of a default tutorial run marked normal and added to the normal "
                 "bank (no retraining), then undone; FPR on the other test sneakers at the run's default threshold, "
                 "AUC on the other test images; N = 20 is issue 12's measurement"),
        "run": {"run_id": run_id, "trained_now": trained, "config": summary.config, "dataset": spec.describe(),
                "n_test": int(len(y)), "n_test_normal": int(len(normals)), "train_seconds": summary.train_seconds,
                "n_calibration": int(stored.n_calibration)},
        "by_n_marked": rows,
        "other_k_in_memory": other_k,
    }
    result["total_s"] = time.time() - t_start
    result["machine"] = machine_info()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
