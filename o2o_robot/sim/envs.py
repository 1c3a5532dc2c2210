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

from o2o_robot.config import RobotSpec, SimConfig
from o2o_robot.control.rewards import import_callable
from o2o_robot.sim.reach import ReachEnv

REACH_TASK = "reach"
REACH_TASK_OBS = 6   # the sim bridge's task_obs of reach: ee xyz + target xyz
REACH_PIXEL_TASK_OBS = 3   # ... with sim.target_in_obs false: ee xyz only
# Where the sim bridge publishes the true target (Float64MultiArray xyz) when it is not in the
# observation: for the scripted operator only (it stands in for a person who sees the target).
SIM_TARGET_TOPIC = "sim/target"


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
                         target_yaw_range=math.radians(sim_cfg.target_yaw_range_deg),
                         target_in_obs=sim_cfg.target_in_obs)
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
        "obs_names": list(base.obs_names) if reach else [],
        "action_names": list(base.joint_names) if reach else [],
        "dt": float(dt) if dt is not None else None,
    }


def observation_topics(robot: RobotSpec, env,
                       sim_cfg: SimConfig | None = None) -> tuple[list[str], str]:
    """(JointState topics, the Float64MultiArray topic) the sim bridge publishes for `robot` on
    `env` (o2o_robot.ros.sim_bridge_node; here so that start-up checks need no rclpy). With
    `robot.cameras` the sim must render each (reach only; `sim_cfg.render_size`).

    Raises ValueError naming the mismatch when the config asks for what the sim cannot give."""
    base = env.unwrapped
    if robot.cameras:
        if not isinstance(base, ReachEnv):
            raise ValueError(f"robot.cameras: the sim renders cameras for the 'reach' task only, "
                             f"not {task_name(env)!r}")
        from o2o_robot.sim.camera import check_cameras

        check_cameras(base.model, robot.cameras, sim_cfg.render_size if sim_cfg else None)
    joints = [s for s in robot.observations if s.type == "joint_state"]
    arrays = [s for s in robot.observations if s.type == "float64_multi_array"]
    other = [s.topic for s in robot.observations if s.type == "pose_stamped"]
    act_dim = int(np.prod(env.action_space.shape))
    if robot.act_dim != act_dim:
        raise ValueError(f"robot.action: {robot.act_dim} dimensions, the sim task takes {act_dim}")
    if isinstance(base, ReachEnv):
        size = REACH_TASK_OBS if len(base.obs_names) == 12 else REACH_PIXEL_TASK_OBS
        want = f"joint_state sources of {list(base.joint_names)} (position/velocity) and one " \
               f"float64_multi_array of size {size}"
        if size == REACH_PIXEL_TASK_OBS:
            want += " (sim.target_in_obs is false: ee xyz only)"
        for src in joints:
            if not set(src.joint_names) <= set(base.joint_names) or "effort" in src.fields:
                raise ValueError(f"robot.observations: {src.topic!r} asks for joints "
                                 f"{src.joint_names} / fields {src.fields}; reach gives {want}")
        if other or len(arrays) != 1 or arrays[0].size != size:
            raise ValueError(f"robot.observations: the reach sim publishes {want}")
        return [s.topic for s in joints], arrays[0].topic
    obs_dim = int(np.prod(env.observation_space.shape))
    if joints or other or len(arrays) != 1 or arrays[0].size != obs_dim:
        raise ValueError(f"robot.observations: task {env.spec.id if env.spec else '?'} publishes "
                         f"one float64_multi_array of size {obs_dim} and nothing else")
    return [], arrays[0].topic


def operator_robot(robot: RobotSpec, sim_cfg: SimConfig) -> RobotSpec:
    """The observation sources the scripted operator reads: the robot's, plus the true target
    on SIM_TARGET_TOPIC when the reach task leaves it out of the observation, so the expert
    sees its usual 12-value layout [joints, ee xyz, target xyz]."""
    if sim_cfg.task != REACH_TASK or sim_cfg.target_in_obs:
        return robot
    from o2o_robot.config import ObservationSource

    extra = ObservationSource(topic=SIM_TARGET_TOPIC, type="float64_multi_array", size=3)
    return robot.model_copy(update={"observations": [*robot.observations, extra],
                                    "cameras": []})
