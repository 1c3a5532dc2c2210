"""`o2o-robot finetune --config config/sim_reach_pixels.yaml` end to end through ROS 2: the sim
bridge renders the camera, the actor stacks its frames and acts with camera policies, the
learner (its own process) learns pixel RLPD from the stored frames and exports ONNX policies
with the encoder inside, the actor hot-swaps them, and the evaluations run each policy on the
observation dict (state + frame stacks). The config is the shipped one with the learner made
CI-sized (a tiny encoder, a short warm-up) and lock-step, through the real command line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from o2o_robot.data.store import TransitionStore
from o2o_robot.policy.runtime import OnnxPolicy
from o2o_robot.ros.finetune import LOCKSTEP_MAX_LAG
from o2o_robot.runlog import read_metrics
from ros_helpers import domain_id, kill_group

ROOT = Path(__file__).resolve().parent.parent
STEPS = 150
# What a vector finetune run leaves in its run dir (tests/test_finetune.py checks the same).
RUN_DIR_ENTRIES = {"store.zarr", "policies", "checkpoints", "metrics.jsonl", "tensorboard",
                   "learning_curve.png"}


def small_pixels_config(tmp: Path) -> Path:
    """config/sim_reach_pixels.yaml with a learner small enough for a 2-core CI machine."""
    path = tmp / "pixels_ci.yaml"
    path.write_text(f"""base: {ROOT / "config" / "sim_reach_pixels.yaml"}
algorithm: {{hidden_dims: [32, 32], encoder_features: [4, 8], latent_dim: 8,
            critic_ensemble_size: 2, critic_subset_size: 1}}
sampler: {{batch_size: 16}}
learner: {{utd_ratio: 1, warmup_steps: 40, export_every_updates: 20, torch_threads: 1,
          checkpoint_every_steps: 100}}
train: {{demo_episodes: 2, eval_every: 75, eval_episodes: 2}}
""")
    return path


def test_finetune_on_the_pixel_config_learns_hot_swaps_camera_policies_and_evaluates(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain_id(1)), "PYTHONUNBUFFERED": "1",
           "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "o2o_robot.cli", "finetune", "--config",
         str(small_pixels_config(tmp_path)), "--lockstep", "--steps", str(STEPS), "--run-dir",
         str(run)], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out = proc.communicate(timeout=600)[0]
    finally:
        kill_group(proc)
    assert proc.returncode == 0, out[-4000:]
    summary = json.loads(out[out.rindex("\n{") + 1:])
    assert (summary["ended"], summary["env_steps"], summary["learner_state"]) == \
        ("steps", STEPS, "stopped"), summary
    # UTD 1 after the warm-up; the actor may end a few steps ahead of the learner
    assert STEPS - 40 - LOCKSTEP_MAX_LAG <= summary["updates"] <= STEPS - 40
    assert RUN_DIR_ENTRIES <= {p.name for p in run.iterdir()}
    assert (run / "checkpoints" / "latest.pt").exists()
    # Camera policies (contract v2) were exported and hot-swapped in while acting.
    policies = sorted((run / "policies").glob("policy_*.onnx"))
    # (the learner may export one more at its close than the actor swapped in before the end)
    assert len(policies) >= summary["policy_version"] >= 3
    for path in policies:
        assert OnnxPolicy(path, provider="cpu").cameras == {"front": (48, 48, 9)}
    with TransitionStore.open(run / "store.zarr") as store:
        counts = store.counts()
        rows = store.read(["source", "policy_version"])
        frames = store.read_frames("front", len(rows["source"]) - 5)   # the last online rows
    assert counts["demo"]["episodes"] == 2 and counts["online"]["transitions"] == STEPS
    versions = rows["policy_version"][rows["source"] == 1]
    assert np.all(np.diff(versions) >= 0) and versions[-1] >= 3   # the actor swapped them in
    assert frames.shape == (5, 48, 48, 3) and frames.std() > 10   # the stored rows saw the scene
    # Every evaluation ran a camera policy on the dict observation: one due at 75 env steps
    # (started when the supervisor sees the step count pass it), and the final policy's.
    evals = read_metrics(run, "eval")
    assert len(evals) == 2 and 75 <= evals[0]["step"] < STEPS and evals[1]["step"] == STEPS
    assert all("success_rate" in e and e["policy_version"] >= 1 for e in evals), evals
