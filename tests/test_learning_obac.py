"""CI-sized learning check for OBAC on the sparse-reward reach task (fixed seed, fixed budget).

OBAC, fed the 50/50 demo/online batches of config/ci_reach_obac.yaml (20 scripted demos, 4,000
env steps, UTD 4, width 128), must reach the task's success threshold within the budget, from
an untrained policy that does not: the evaluation at the end of the warm-up (step 500) runs
before the first update, so it measures the untrained actor in the same run (the control).
The run must also log the gate-on fraction and q_pi - q_mu. Seeds and curves: the issue notes.
"""
import math
from pathlib import Path

import pytest

from o2o_robot.config import load_config
from o2o_robot.runlog import read_metrics
from o2o_robot.learning.harness import train

pytestmark = pytest.mark.learning_check   # scripts/test.sh runs these beside the rest
ROOT = Path(__file__).resolve().parent.parent


def test_obac_with_demos_solves_sparse_reach(tmp_path):
    cfg = load_config(ROOT / "config" / "ci_reach_obac.yaml", overrides={
        "store": {"path": str(tmp_path / "store.zarr")}, "train": {"run_dir": str(tmp_path)}})
    assert cfg.algorithm.name == "obac" and cfg.learner.warmup_steps == cfg.train.eval_every
    threshold = cfg.train.success_threshold
    summary = train(cfg, progress=False)
    evals = read_metrics(tmp_path, "eval")
    curve = [r["success_rate"] for r in evals]
    print(summary, curve)
    assert evals[0]["step"] == cfg.learner.warmup_steps
    assert curve[0] < threshold / 2, f"the untrained actor already succeeds: {curve}"
    assert summary["solved_at"] is not None and max(curve) >= threshold, \
        f"OBAC never reached {threshold}: {curve}"
    train_rows = read_metrics(tmp_path, "train")
    assert train_rows and all(0.0 <= r["gate_on"] <= 1.0 and math.isfinite(r["q_pi_minus_q_mu"])
                              for r in train_rows)
