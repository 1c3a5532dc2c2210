"""Build the sim task named in `SimConfig` and describe its spaces.

`sim.task` is "reach" (the 3-joint arm of `o2o_robot.sim.reach`) or a gymnasium id of an env
with flat Box observation and action spaces, typically a MuJoCo one such as "Hopper-v5". Either
way the env ends an episode after `max_episode_steps` (the config's
`control.max_episode_steps`, the one time limit of the stack) with truncated=True (never
terminated); without it, reach has no time limit and a gymnasium env keeps its registered one.
`sim.reward` (dense|sparse), `sim.sim_rate_hz` (the control period) and the target settings
apply to "reach" only (config.py refuses them with another task); gymnasium envs keep their own
reward and frame skip, and `sim.success_function` adds `info["is_success"]` to one that has
none. A `module:EnvId` task imports the module first: its envs are registered on import
(`o2o_robot.sim.example_tasks`).
"""
from __future__ import annotations

import math
from typing import Any

import gymnasium
import numpy as np
from gymnasium.wrappers import TimeLimit

from o2o_robot.config import SimConfig
from o2o_robot.control.rewards import import_callable
from o2o_robot.sim.reach import OBS_NAMES, ReachEnv

REACH_TASK = "reach"


def make_env(sim_cfg: SimConfig, *, seed: int | None = None,
             max_episode_steps: int | None = None) -> gymnasium.Env:
    """The env of `sim_cfg.task` with the time limit `max_episode_steps` (pass
    `cfg.control.max_episode_steps`), its RNGs seeded (None = `sim_cfg.seed`).

    Seeding here makes a plain `env.reset()` reproducible; `env.reset(seed=...)` still reseeds.
    Raises ValueError naming the task when it is unknown or not a Box/Box env.
    """
    seed = sim_cfg.seed if seed is None else seed
    if sim_cfg.task == REACH_TASK:
        reach = ReachEnv(sim_cfg.reward, control_rate_hz=sim_cfg.sim_rate_hz,
                         success_threshold=sim_cfg.success_radius_m,
                         target_yaw_range=math.radians(sim_cfg.target_yaw_range_deg))
        env: gymnasium.Env = reach if max_episode_steps is None else \
            TimeLimit(reach, max_episode_steps=max_episode_steps)
    else:
        env = _make_gymnasium(sim_cfg.task, max_episode_steps)
        if sim_cfg.success_function is not None:
            env = SuccessInfo(env, import_callable(
                sim_cfg.success_function, f"sim.success_function {sim_cfg.success_function!r}"))
    env.unwrapped.np_random, _ = gymnasium.utils.seeding.np_random(seed)
    env.action_space.seed(seed)
    env.observation_space.seed(seed)
    return env


class SuccessInfo(gymnasium.Wrapper):
    """`info["is_success"] = success(obs, info)` after every step (`sim.success_function`)."""

    def __init__(self, env: gymnasium.Env, success):
        super().__init__(env)
        self.success = success

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info,
                                                    "is_success": bool(self.success(obs, info))}


def _make_gymnasium(task: str, max_episode_steps: int | None) -> gymnasium.Env:
    hint = f"use {REACH_TASK!r} or a gymnasium MuJoCo id such as 'Hopper-v5'"
    try:
        env = gymnasium.make(task, max_episode_steps=max_episode_steps)
    except gymnasium.error.Error as exc:
        if isinstance(exc, gymnasium.error.DependencyNotInstalled):
            raise RuntimeError(f"sim.task: {task!r} needs a missing dependency ({exc}); "
                               f"install gymnasium[mujoco]") from None
        raise ValueError(f"sim.task: unknown task {task!r} ({exc}); {hint}") from None
    except ModuleNotFoundError as exc:
        raise RuntimeError(f"sim.task: {task!r} cannot be imported: missing module "
                           f"{exc.name!r}; install gymnasium[mujoco]") from None
    for name, space in (("observation", env.observation_space), ("action", env.action_space)):
        if not isinstance(space, gymnasium.spaces.Box) or len(space.shape) != 1:
            env.close()
            raise ValueError(f"sim.task: {task!r} has a {type(space).__name__} {name} space of "
                             f"shape {space.shape}; only flat Box spaces are supported; {hint}")
    return env


def task_name(env: gymnasium.Env) -> str:
    """'reach' for ReachEnv, else the gymnasium id (or the class name when unregistered)."""
    base = env.unwrapped
    if isinstance(base, ReachEnv):
        return REACH_TASK
    return base.spec.id if base.spec is not None else type(base).__name__


def env_spec(env: gymnasium.Env) -> dict[str, Any]:
    """JSON-ready description of `env`'s spaces, to check a store or a robot config against.

    Keys: task, obs_dim, act_dim, action_low, action_high (lists, physical units), obs_names and
    action_names (empty when unknown), dt (seconds per env step, or None).
    """
    obs_space, act_space = env.observation_space, env.action_space
    base = env.unwrapped
    reach = isinstance(base, ReachEnv)
    dt = getattr(base, "dt", None)
    return {
        "task": task_name(env),
        "obs_dim": int(np.prod(obs_space.shape)),
        "act_dim": int(np.prod(act_space.shape)),
        "action_low": [float(v) for v in np.ravel(act_space.low)],
        "action_high": [float(v) for v in np.ravel(act_space.high)],
        "obs_names": list(OBS_NAMES) if reach else [],
        "action_names": list(base.joint_names) if reach else [],
        "dt": float(dt) if dt is not None else None,
    }
