"""A worked example of a task of your own for `o2o-robot train` (README "train on a gymnasium
task"): a sparse-reward Reacher.

Gymnasium's MuJoCo Reacher-v5 pays a dense reward (minus the fingertip's distance to the
target, minus the control effort) and reports no success. Real-robot tasks are usually sparse:
1 when the task is done, else 0. Importing this module registers `SparseReacher-v0`, Reacher
with that reward and `info["is_success"]`, so a config can name it as

    sim:
      task: o2o_robot.sim.example_tasks:SparseReacher-v0

(gymnasium imports the module before it makes the env; a module of yours works the same way
from anywhere on PYTHONPATH). `reacher_success` is also a `sim.success_function`: it adds the
success signal to the plain, dense Reacher-v5 without changing its reward.
"""
from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv

SUCCESS_RADIUS_M = 0.02          # fingertip within 2 cm of the target
EPISODE_STEPS = 50               # Reacher-v5's own time limit


def reacher_success(obs: np.ndarray, info: dict) -> bool:
    """Reacher-v5's observation ends with the fingertip-minus-target vector (x, y)."""
    return bool(np.linalg.norm(obs[8:10]) < SUCCESS_RADIUS_M)


class SparseReward(gymnasium.Wrapper):
    """Reward 1.0 on a step that ends at the target, else 0.0; `info["is_success"]` says which."""

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        success = reacher_success(obs, info)
        return obs, float(success), terminated, truncated, {**info, "is_success": success}


def make_sparse_reacher(**kwargs) -> gymnasium.Env:
    """The entry point gymnasium calls (it adds the time limit around it)."""
    return SparseReward(ReacherEnv(**kwargs))


if "SparseReacher-v0" not in gymnasium.registry:
    gymnasium.register(id="SparseReacher-v0", entry_point=make_sparse_reacher,
                       max_episode_steps=EPISODE_STEPS)
