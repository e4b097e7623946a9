"""DOC training under tf.distribute: a MirroredStrategy over two logical CPU devices gives one device's losses.

Logical devices must be configured before TensorFlow initialises, so each check runs in a fresh subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
from doc_core import Backbone, BackboneConfig, DOCTrainer, TrainConfig
from doc_core.model.distribute import resolve_strategy

rng = np.random.default_rng(0)
normal = np.clip(110 + 12 * np.kron(rng.normal(size=(24, 8, 8)), np.ones((4, 4))), 0, 255).astype(np.uint8)[..., None]
yy, xx = np.mgrid[:32, :32]
pats = [(yy // 4) % 2, (xx // 4) % 2, ((xx + yy) // 4) % 2]
ref = np.concatenate([np.clip(60 + 130 * p[None] + rng.normal(0, 8, (10, 32, 32)), 0, 255) for p in pats])
ref = ref.astype(np.uint8)[..., None]
ref_y = np.repeat(np.arange(3), 10)
CASES = json.loads(sys.argv[1])
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

def run(trainable_from, batch_size, strategy, in_scope=False):
    def build():
        bb = Backbone(BackboneConfig("tiny", input_size=32, weights=None, trainable_from=trainable_from))
        cfg = TrainConfig(epochs=2, batch_size=batch_size, learning_rate=1e-2)
        return bb, DOCTrainer(bb, 3, cfg, strategy="auto" if in_scope else strategy)
    if in_scope:
        with strategy.scope():
            bb, tr = build()
            recs = list(tr.steps(normal, ref, ref_y))
    else:
        bb, tr = build()
        recs = list(tr.steps(normal, ref, ref_y))
    weights = [np.asarray(w).ravel().tolist() for w in bb.tail.get_weights()]
    return {"losses": [[r.l_d, r.l_c, r.total] for r in recs], "weights": weights,
            "replicas": 0 if tr.strategy_ is None else tr.strategy_.num_replicas_in_sync}

out = {"auto_no_scope": resolve_strategy("auto") is None, "cases": {}}
for name, (trainable_from, batch_size, mode) in CASES.items():
    out["cases"][name] = {"single": run(trainable_from, batch_size, None),
                          "multi": run(trainable_from, batch_size, mirrored, in_scope=(mode == "scope"))}
print("RESULT" + json.dumps(out))
"""


CASES = {
    "cached trunk, even split 4 + 4": ("conv1_relu", 8, "explicit"),
    "every layer from images, uneven split 2 + 3": ("all", 5, "explicit"),
    "'auto' inside strategy.scope() (mirrored variables)": ("conv1_relu", 6, "scope"),
}


@pytest.fixture(scope="module")
def results() -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(CASES)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                            "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def test_auto_stays_on_one_device_without_scope_or_gpus(results):
    assert results["auto_no_scope"]


@pytest.mark.parametrize("case", list(CASES))
def test_two_logical_cpus_give_one_device_losses(results, case):
    single, multi = results["cases"][case]["single"], results["cases"][case]["multi"]
    assert single["replicas"] == 0 and multi["replicas"] == 2
    assert len(single["losses"]) == len(multi["losses"]) > 2
    np.testing.assert_allclose(multi["losses"], single["losses"], rtol=1e-4, atol=1e-6)
    for a, b in zip(multi["weights"], single["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_replica_shares_of_the_losses_add_up_to_the_batch_losses():
    """The per-replica shares distribute.py takes from doc_core.model.losses: compactness with the batch's mean and
    size, descriptiveness weighted by the slice's share of the reference batch; slices of 0 and 1 rows included."""
    import tensorflow as tf

    from doc_core.model import distribute
    from doc_core.model.losses import compactness_loss, descriptiveness_loss

    assert distribute.compactness_loss is compactness_loss and distribute.descriptiveness_loss is descriptiveness_loss
    rng = np.random.default_rng(0)
    x = tf.Variable(rng.normal(size=(7, 5)).astype(np.float32))
    logits = tf.Variable(rng.normal(size=(7, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, 3, 7))
    with tf.GradientTape(persistent=True) as tape:
        whole_c, whole_d = compactness_loss(x), descriptiveness_loss(y, logits)
        mean = tf.reduce_mean(x, axis=0)
        parts = [slice(0, 0), slice(0, 1), slice(1, 4), slice(4, 7)]
        share_c = tf.add_n([compactness_loss(x[p], batch_mean=mean, batch_size=7) for p in parts])
        share_d = tf.add_n([tf.math.multiply_no_nan(descriptiveness_loss(y[p], logits[p]), (p.stop - p.start) / 7)
                            for p in parts])
    np.testing.assert_allclose(share_c.numpy(), whole_c.numpy(), rtol=1e-5)
    np.testing.assert_allclose(share_d.numpy(), whole_d.numpy(), rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(share_c, x).numpy(), tape.gradient(whole_c, x).numpy(), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(tape.gradient(share_d, logits).numpy(), tape.gradient(whole_d, logits).numpy(),
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="both"):
        compactness_loss(x, batch_mean=mean)
