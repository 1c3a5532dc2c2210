"""`o2o-robot train` on a camera robot (ROS-free): the rows reach the store with their frames
(that each is its own row's: tests/test_sim_camera_obs.py), the agent learns pixel RLPD and exports camera policies, and a resumed
run continues exactly like an uninterrupted one (frame stacks included)."""
from pathlib import Path

import numpy as np
import torch

from o2o_robot.agents.checkpoint import load_checkpoint
from o2o_robot.config import load_config
from o2o_robot.data.store import TransitionStore
from o2o_robot.learning.harness import train
from o2o_robot.policy.runtime import OnnxPolicy
from o2o_robot.runlog import read_metrics

ROOT = Path(__file__).resolve().parent.parent
CAMERA = {"name": "front", "topic": "camera/front/image_raw", "type": "image", "width": 16,
          "height": 16, "channels": 3, "frame_stack": 2}


def tiny_pixels(run_dir: Path, total: int):
    """sim_reach_pixels at 16 x 16 with a tiny learner: seconds of real training."""
    return load_config(ROOT / "config" / "sim_reach_pixels.yaml", overrides={
        "robot": {"cameras": [CAMERA]},
        "store": {"path": str(run_dir / "store.zarr"), "flush_every": 64},
        "algorithm": {"name": "rlpd", "hidden_dims": [16, 16], "critic_ensemble_size": 2,
                      "critic_subset_size": 1, "encoder_features": [4, 8], "latent_dim": 6},
        "learner": {"utd_ratio": 1, "warmup_steps": 30, "checkpoint_every_steps": 50,
                    "export_every_updates": 20, "torch_threads": 1},
        "sampler": {"batch_size": 16},
        "train": {"total_env_steps": total, "eval_every": 50, "eval_episodes": 1,
                  "demo_episodes": 2, "run_dir": str(run_dir)}})


def test_train_stores_each_rows_frame_learns_and_exports_camera_policies(tmp_path):
    cfg = tiny_pixels(tmp_path, 100)
    summary = train(cfg, progress=False)
    assert summary["updates"] == summary["env_steps"] - 30
    with TransitionStore.open(cfg.store.path) as store:
        rows = store.read(["obs", "source"])
        frames = store.read_frames("front")
        start = int(np.flatnonzero(rows["source"] == 1)[0])        # first online row
    online = frames[start:]
    assert frames.shape == (len(rows["obs"]), 16, 16, 3) and online.std() > 10
    assert len({f.tobytes() for f in online}) > len(online) // 2      # the arm moves in them
    policies = sorted((tmp_path / "policies").glob("policy_*.onnx"))
    assert len(policies) >= 2
    assert OnnxPolicy(policies[-1], provider="cpu").cameras == {"front": (16, 16, 6)}
    assert [r["step"] for r in read_metrics(tmp_path, "eval")] == [50, 100]


def _params(path: Path) -> dict[str, torch.Tensor]:
    agent, _, extra = load_checkpoint(path)
    return {k: v.clone() for k, v in agent.nets.state_dict().items()}, extra


def test_a_resumed_camera_run_continues_exactly(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(tiny_pixels(whole, 150), progress=False)
    assert train(tiny_pixels(split, 60), progress=False)["env_steps"] < 150
    train(tiny_pixels(split, 150), resume=True, progress=False)
    a, extra_a = _params(whole / "checkpoints" / "latest.pt")
    b, extra_b = _params(split / "checkpoints" / "latest.pt")
    assert (extra_a["env_steps"], extra_a["updates"]) == (extra_b["env_steps"], extra_b["updates"])
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with TransitionStore.open(whole / "store.zarr") as sa, \
            TransitionStore.open(split / "store.zarr") as sb:
        np.testing.assert_array_equal(sa.read_frames("front"), sb.read_frames("front"))
        np.testing.assert_array_equal(sa.read(["obs"])["obs"], sb.read(["obs"])["obs"])
