"""Example reward functions for `control.reward.source: function` (numpy only).

Point the config at one with its dotted path::

    control:
      reward:
        source: function
        function: o2o_robot.control.example_rewards:reach_distance

A reward function takes `(obs, action, next_obs)` as float32 arrays (read-only) and returns a
finite float; it is imported and probed with zero inputs when the node starts. Write your own in
any importable module with the same signature. The layouts below are the reach task's
(`o2o_robot.sim.reach`): obs[6:9] end-effector xyz, obs[9:12] target xyz, in metres.
"""
from __future__ import annotations

import numpy as np

EE = slice(6, 9)
TARGET = slice(9, 12)
SUCCESS_RADIUS_M = 0.05   # as o2o_robot.sim.reach's success threshold


def reach_distance(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> float:
    """Dense: minus the end-effector-to-target distance (m) after the step."""
    return -float(np.linalg.norm(next_obs[EE] - next_obs[TARGET]))


def reach_success(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> float:
    """Sparse: 1.0 when the step ends within SUCCESS_RADIUS_M of the target, else 0.0."""
    return float(np.linalg.norm(next_obs[EE] - next_obs[TARGET]) < SUCCESS_RADIUS_M)
