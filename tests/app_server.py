"""Start `streamlit run app.py` on a free 127.0.0.1 port for the browser and load tests (a helper module, no tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(tmp: Path, runs_dir: Path, start_timeout_s: float = 60.0) -> Iterator[str]:
    """Run the dashboard with its runs in ``runs_dir`` and uploads under ``tmp``; yields its URL, stops it after."""
    port = free_port()
    env = {**os.environ, "DOC_RUNS_DIR": str(runs_dir), "DOC_UPLOADS_DIR": str(tmp / "uploads"),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    log_path = tmp / "streamlit.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
             "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                        if r.read().strip() == b"ok":
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("streamlit did not start:\n" + log_path.read_text()[-3000:])
                time.sleep(0.3)
            yield url
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)


SMALL_SPLIT_KW = dict(n_normal=200, n_reference=200)


def fashion_or_skip():
    """Fashion-MNIST from the machine (never downloaded), or skip the calling test with the reason."""
    import pytest

    from doc_core.data import DataError, load_fashion_mnist

    try:
        return load_fashion_mnist(download=False)
    except DataError as exc:
        pytest.skip(f"Fashion-MNIST is not installed (scripts/setup.sh installs it): {exc}")


def make_tiny_run(where: Path, fashion, name: str, epochs: int) -> Path:
    """Train a tiny run on a small Fashion-MNIST split into ``where``, as the Training page does; returns ``where``."""
    from doc_core.data import SplitConfig
    from doc_core.data.datasets import DatasetSpec, load_dataset
    from doc_core.model.backbones import BackboneConfig
    from doc_core.model.training import TrainConfig
    from doc_core.workflow.jobs import SUCCEEDED, TrainingJob

    spec = DatasetSpec.fashion_mnist(SplitConfig(**SMALL_SPLIT_KW))
    split, _ = load_dataset(spec, fashion)
    job = TrainingJob(split, BackboneConfig(name="tiny", input_size=32), TrainConfig(epochs=epochs, batch_size=32),
                      dataset={**spec.to_dict(), "description": spec.describe()}, name=name, runs_dir=where).start()
    assert job.join(120) and job.snapshot().status == SUCCEEDED, job.snapshot().error
    return where
