"""The sidebar and the Training page show a running job's progress from one snapshot: the same stage, the same
fraction and the same time left (doc_core.workflow.jobs computes it; the views only format it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from app_server import fashion_or_skip
from streamlit.testing.v1 import AppTest

from doc_core.data import OneClassSplit
from doc_core.model.training import StepRecord
from doc_core.workflow import runs
from doc_core.workflow.jobs import RUNNING, JobSnapshot, TrainingJob
from ui import state

ROOT = Path(__file__).resolve().parent.parent
TRAINING = "pages/2_training.py"


class _FrozenJob(TrainingJob):
    """A job that is never started and always reports the same snapshot."""

    fixed: JobSnapshot

    def snapshot(self, since: int = 0) -> JobSnapshot:
        return dataclasses.replace(self.fixed, records=self.fixed.records[since:])


def _job() -> _FrozenJob:
    tiny = np.zeros((2, 32, 32, 1), np.uint8)
    split = OneClassSplit(train_normal=tiny, reference=tiny, reference_labels=np.array([0, 1]),
                          reference_names=("a", "b"), test_images=tiny, test_labels=np.array([0, 1]),
                          test_classes=("a", "b"), name="frozen")
    job = _FrozenJob(split, name="frozen job")
    # 4 steps in 33 s of 100: elapsed / step x steps left would say 13 min 12 s; the job's estimate says 5 min 34 s
    records = tuple(StepRecord(epoch=1, step=i, steps_total=100, l_d=1.0, l_c=0.1, total=1.1, images_per_s=10.0,
                               elapsed_s=29.0 + i) for i in range(1, 5))
    job.fixed = JobSnapshot(job_id=job.job_id, name=job.name, status=RUNNING, phase="training",
                            message="Training · epoch 1 of 3 · step 4 of 100", records=records, n_records=4,
                            steps_total=100, fraction=0.04, eta_s=334.0, stop_requested=False, stopped_early=False,
                            error=None, run=None, started=0.0, finished=float("nan"), stage="Training")
    return job


def _progress_texts(where) -> list[str]:
    return [e.proto.text for e in where.get("progress")]


def test_sidebar_and_training_page_show_the_jobs_one_time_left(tmp_path, monkeypatch):
    fashion_or_skip()
    monkeypatch.setenv(runs.RUNS_DIR_ENV, str(tmp_path / "runs"))
    from ui import cached

    registry = cached.job_registry()
    job = registry.add(_job())
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
        at.session_state[state.JOB_ID] = job.job_id
        at.switch_page(TRAINING).run()
    finally:  # the registry is shared by the process: other tests must not see this job running
        with registry._lock:
            registry._jobs.pop(job.job_id, None)
    assert not at.exception, [e.value for e in at.exception]
    side, main = _progress_texts(at.sidebar), _progress_texts(at.main)
    assert len(side) == 1 and len(main) == 1, (side, main)
    assert side[0].split(" · ")[-1] == main[0].split(" · ")[-1] == "about 5 min 34 s left"
    assert "Training · epoch 1 of 3 · step 4 of 100" in side[0] and "13 min" not in side[0] + main[0]
