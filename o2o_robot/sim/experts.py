"""Scripted experts that produce demonstrations for the sim tasks.

The reach expert is a resolved-rate controller with damped least squares (Wampler 1986;
Nakamura & Hanafusa 1986):

    qdot = J^T (J J^T + lambda^2 I)^-1 K (target - ee)

with J the end-effector position Jacobian (`mj_jacSite`), scaled down as a whole when a joint
would exceed its bound (the direction is kept), plus Gaussian noise of std `noise * bound` per
joint, then clipped to the bounds. It reads only the observation: joint positions go into a
private MjData for the Jacobian, so the same expert can drive the robot through ROS topics.
"""
from __future__ import annotations

from typing import Protocol

import gymnasium
import mujoco
import numpy as np

from o2o_robot.sim.reach import ReachEnv


class Expert(Protocol):
    """Maps an observation to an action in physical units."""

    def act(self, obs: np.ndarray) -> np.ndarray: ...


class ScriptedReachExpert:
    """Damped-least-squares reach controller with Gaussian exploration noise.

    Args:
        env: a ReachEnv, possibly wrapped; only its model and action bounds are used.
        noise: action noise std as a fraction of each joint's bound (0 = deterministic).
        seed: seed of the noise generator.
        gain: K, the Cartesian error gain (1/s).
        damping: lambda (m), the damping of the least-squares solve near singularities.
    """

    def __init__(self, env: gymnasium.Env, noise: float, seed: int | None = None, *,
                 gain: float = 5.0, damping: float = 0.05) -> None:
        base = env.unwrapped
        if not isinstance(base, ReachEnv):
            raise TypeError(f"ScriptedReachExpert needs a ReachEnv, got {type(base).__name__}")
        if noise < 0:
            raise ValueError(f"noise: must be >= 0, got {noise}")
        self.noise = float(noise)
        self.gain = float(gain)
        self.damping_sq = float(damping) ** 2
        self._base = base
        self._model = base.model
        self._data = mujoco.MjData(base.model)
        self._site = base.ee_site_id
        self._low = base.action_space.low.astype(np.float64)
        self._high = base.action_space.high.astype(np.float64)
        self._bound = np.minimum(-self._low, self._high)
        self._jacp = np.zeros((3, base.model.nv))
        self._rng = np.random.default_rng(seed)

    def nominal(self, obs: np.ndarray) -> np.ndarray:
        """The noiseless command for `obs` (rad/s), within the bounds."""
        obs = np.asarray(obs, dtype=np.float64)
        self._data.qpos[:] = obs[0:6:2]
        mujoco.mj_kinematics(self._model, self._data)
        mujoco.mj_comPos(self._model, self._data)  # mj_jacSite needs the com-based frames
        mujoco.mj_jacSite(self._model, self._data, self._jacp, None, self._site)
        jac = self._jacp
        # Without the target in the observation (the pixel task) the expert, standing in for a
        # human who sees the target, reads the true one from the env.
        target = obs[9:12] if obs.size >= 12 else self._base.target_position()
        error = target - obs[6:9]
        qdot = jac.T @ np.linalg.solve(jac @ jac.T + self.damping_sq * np.eye(3), self.gain * error)
        overshoot = np.max(np.abs(qdot) / self._bound)
        return qdot / overshoot if overshoot > 1.0 else qdot

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Noisy command for `obs` (rad/s, float32), clipped to the bounds."""
        qdot = self.nominal(obs)
        if self.noise > 0:
            qdot = qdot + self._rng.normal(0.0, self.noise * self._bound)
        return np.clip(qdot, self._low, self._high).astype(np.float32)


def has_expert(env: gymnasium.Env) -> bool:
    """Whether `expert_for(env, ...)` has a scripted expert to return (reach only)."""
    return isinstance(env.unwrapped, ReachEnv)


def expert_for(env: gymnasium.Env, noise: float, seed: int | None = None) -> Expert:
    """The scripted expert of `env`'s task; ValueError for tasks that have none."""
    base = env.unwrapped
    if has_expert(env):
        return ScriptedReachExpert(env, noise, seed)
    task = base.spec.id if base.spec is not None else type(base).__name__
    raise ValueError(f"no scripted expert for task {task!r}; scripted experts exist for: reach. "
                     f"Record demonstrations with teleop or import a dataset instead.")


def rollout_success_rate(env: gymnasium.Env, expert: Expert, episodes: int,
                         seed: int) -> float:
    """Fraction of `episodes` (seeded from `seed`) that end with info['is_success']."""
    from o2o_robot.sim.rollout import run_episodes

    return run_episodes(env, expert.act, episodes, seed=seed)["success_rate"]