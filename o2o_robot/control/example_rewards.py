"""Example reward functions for `control.reward.source: function` (numpy only).

Point the config at one with its dotted path::

    control:
      reward:
        source: function
        function: o2o_robot.control.example_rewards:reach_distance

A reward function takes `(obs, action, next_obs)` as float32 arrays (read-only) and returns a
finite float; it is imported and probed with zero inputs when the node starts (and by
`o2o-robot config validate`), so a typo fails there, not mid-episode. Write your own in any
importable module with the same signature (a package of yours, or a folder on PYTHONPATH).
A call that raises or returns NaN at run time drops that transition and is counted in
`~/status` (`core.reward.errors`, `last_error`).

Two observation layouts are used below:

* the sim reach task (`o2o_robot.sim.reach`, `config/sim_reach.yaml`): obs[6:9] end-effector
  xyz, obs[9:12] target xyz;
* the example robot (`config/examples/my_robot.yaml`): 6 joints x (position, velocity) = 12,
  then the `ee_pose` PoseStamped (xyz 12:15, quaternion xyzw 15:19), then the 3-element
  `target_position` array (19:22). Sources are concatenated in config order.
All positions in metres.
"""
from __future__ import annotations

import numpy as np

EE = slice(6, 9)
TARGET = slice(9, 12)
SUCCESS_RADIUS_M = 0.05   # as o2o_robot.sim.reach's success threshold

ARM_EE = slice(12, 15)
ARM_TARGET = slice(19, 22)
ARM_ACTION_COST = 0.01    # per (rad/s)^2: discourages jerky velocity commands


def _distance(obs: np.ndarray, ee: slice, target: slice) -> float:
    return float(np.linalg.norm(obs[ee] - obs[target]))


def reach_distance(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> float:
    """Dense: minus the end-effector-to-target distance (m) after the step."""
    return -_distance(next_obs, EE, TARGET)


def reach_success(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> float:
    """Sparse: 1.0 when the step ends within SUCCESS_RADIUS_M of the target, else 0.0."""
    return float(_distance(next_obs, EE, TARGET) < SUCCESS_RADIUS_M)


def arm_reach_distance(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> float:
    """The example robot's reward: minus the distance (m) from the end effector to the target
    after the step, minus ARM_ACTION_COST * |action|^2 (joint velocities, rad/s)."""
    effort = float(np.dot(action, action))
    return -_distance(next_obs, ARM_EE, ARM_TARGET) - ARM_ACTION_COST * effort
