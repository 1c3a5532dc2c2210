"""Pixel RLPD inside the one learning loop: a robot config with a camera gives LearnerCore a
pixel agent, which learns from the mirror's `pixels/<camera>` batches, and the policies the core
exports take the camera (contract v2) and pass the robot's validation. Real store, mirror,
ONNX Runtime; a tiny encoder and 16 x 16 frames."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from o2o_robot.config import load_config, resolve_config_path
from o2o_robot.data.schema import Transition
from o2o_robot.data.store import TransitionStore
from o2o_robot.learning.core import LearnerCore
from o2o_robot.policy.runtime import OnnxPolicy
from o2o_robot.policy.slot import PolicySlot
from o2o_robot.spaces import CameraSpec, camera_specs
from test_learning_core import recorded_stream

torch.set_num_threads(1)
CAMERA = {"name": "front", "topic": "camera/front/image_raw", "type": "image", "width": 16,
          "height": 16, "channels": 3, "frame_stack": 2}


@pytest.fixture
def cfg(tmp_path):
    run_dir = tmp_path / "run"
    return load_config(resolve_config_path("sim_reach.yaml"), overrides={
        "robot": {"cameras": [CAMERA]},
        "store": {"path": str(run_dir / "store.zarr"), "flush_every": 1000},
        "sampler": {"batch_size": 4, "offline_ratio": 0.0},
        "algorithm": {"name": "rlpd", "hidden_dims": [16, 16], "encoder_features": [4, 8],
                      "latent_dim": 6, "critic_ensemble_size": 2, "critic_subset_size": 1},
        "learner": {"utd_ratio": 1, "warmup_steps": 8, "export_every_updates": 10,
                    "checkpoint_every_steps": 1000, "device": "cpu", "torch_threads": 1},
        "train": {"run_dir": str(run_dir), "seed": 3}})


def with_frames(items: list, seed: int = 0) -> list:
    """Random frames, row k's next frame the frame of row k + 1 (another one at an episode end)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (len(items) * 2 + 2, 16, 16, 3), dtype=np.uint8)
    out, k = [], 0
    for item in items:
        if isinstance(item, Transition):
            nxt = len(items) + k if item.ends_episode else k + 1
            item = dataclasses.replace(item, frames={"front": frames[k]},
                                       next_frames={"front": frames[nxt]})
            k += 1
        out.append(item)
    return out


def test_a_camera_config_learns_from_pixel_batches_and_exports_policies_that_take_the_camera(cfg):
    robot = cfg.robot
    store = TransitionStore.open_or_create(cfg.store.path, robot.obs_dim, robot.act_dim,
                                           cameras={"front": (16, 16, 3)})
    try:
        core = LearnerCore.open(cfg, store, cfg.train.run_dir, resume=True)
        cams = (CameraSpec("front", 16, 16, 3, 2),)
        assert core.agent.cameras == cams == camera_specs(robot)
        conv = [p.detach().clone() for p in core.agent.nets.critic.encoder.trunks.parameters()]
        for item in with_frames(recorded_stream(robot.obs_dim, robot.act_dim)):
            core.ingest(item)
            while core.step():
                pass
        assert core.agent.updates > 10
        moved = core.agent.nets.critic.encoder.trunks.parameters()
        assert any(not torch.equal(a, b) for a, b in zip(conv, moved))   # trained on pixels
        policies = sorted((Path(cfg.train.run_dir) / "policies").glob("policy_*.onnx"))
        assert len(policies) >= 2                      # the warm-up policy, then the agent's
        for path in policies:
            assert OnnxPolicy(path, provider="cpu").cameras == {"front": (16, 16, 6)}
        slot = PolicySlot(robot.obs_dim, robot.act_dim, robot.action.low, robot.action.high,
                          provider="cpu", cameras=camera_specs(robot))
        assert slot.propose(policies[-1]).accepted
        rows = core.mirror.sample_uniform(1, np.random.default_rng(0))
        action, _ = slot.act({"state": rows["obs"][0], "front": rows["pixels/front"][0]})
        assert np.isfinite(action).all()
        blind = PolicySlot(robot.obs_dim, robot.act_dim, robot.action.low, robot.action.high,
                           provider="cpu")          # negative control: a robot without it
        assert blind.propose(policies[-1]).reason.startswith("cameras: policy takes front")
    finally:
        store.close()
