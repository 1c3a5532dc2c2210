"""ReachEnv: the 3-joint MuJoCo arm of `sim/reach_arm` moves its end effector to a random target.

Observation (float32, 12 values), the same vector the ROS node assembles from its topics
(`RobotSpec` default: JointState of joint1..3 with fields [position, velocity], then the
Float64MultiArray `task_obs`)::

    [0]  joint1 position (rad)    [1]  joint1 velocity (rad/s)
    [2]  joint2 position          [3]  joint2 velocity
    [4]  joint3 position          [5]  joint3 velocity
    [6:9]  end-effector xyz (m, world frame; site "ee")
    [9:12] target xyz (m, world frame; mocap body "target")

With `target_in_obs=False` (the pixel task, config/sim_reach_pixels.yaml) the observation
stops at [6:9]: 9 values, the target's position is left to a camera (`o2o_robot.sim.camera`,
model camera "front").

Action: joint velocity commands (rad/s) for joint1..3 in [-2, 2], clipped. They drive MuJoCo
velocity servos (force-limited, gravity-compensated arm; see sim/reach_arm/robot.xml), so a zero
action holds the pose. One env step is 1 / control_rate_hz seconds of physics (20 Hz: 10 substeps
of 5 ms).

Reward: "sparse" = 1.0 on success else 0.0; "dense" = -distance (m). Success: the end effector
within `success_threshold` (0.05 m) of the target; with `terminate_on_success` that step is
terminal. There is no time limit here: `o2o_robot.sim.envs.make_env` adds one (truncation).

Targets are drawn uniformly in a spherical shell around the shoulder (radius 0.15-0.48 m,
elevation -0.3..1.2 rad, any yaw), at least 5 cm above the floor, 10 cm from the yaw axis and
10 cm from the initial end effector; initial joints are a bent home pose plus U(-0.1, 0.1) rad.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import gymnasium
import mujoco
import numpy as np

JOINT_NAMES: tuple[str, ...] = ("joint1", "joint2", "joint3")
OBS_NAMES: tuple[str, ...] = tuple(
    f"{joint}.{field}" for joint in JOINT_NAMES for field in ("position", "velocity")
) + ("ee.x", "ee.y", "ee.z", "target.x", "target.y", "target.z")
PIXEL_OBS_NAMES = OBS_NAMES[:9]     # target_in_obs=False: no target position
HOME_QPOS = np.array([0.0, 0.4, 1.2])
INIT_NOISE_RAD = 0.1
SHOULDER = np.array([0.0, 0.0, 0.2])
TARGET_RADIUS_M = (0.15, 0.48)
TARGET_ELEVATION_RAD = (-0.3, 1.2)
MIN_TARGET_HEIGHT_M = 0.05
MIN_AXIS_DISTANCE_M = 0.10
MIN_START_DISTANCE_M = 0.10


def reach_arm_scene_path() -> Path:
    """Path of sim/reach_arm/scene.xml: the source tree, else an installed share/o2o_robot."""
    prefixes = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    candidates = [Path(__file__).resolve().parents[2] / "sim"]
    prefixes.append(Path(sys.prefix))
    candidates += [prefix / "share" / "o2o_robot" / "sim" for prefix in prefixes]
    for folder in candidates:
        scene = folder / "reach_arm" / "scene.xml"
        if scene.is_file():
            return scene
    searched = ", ".join(str(c / "reach_arm" / "scene.xml") for c in candidates)
    raise FileNotFoundError(f"reach_arm scene.xml not found; searched: {searched}")


class ReachEnv(gymnasium.Env):
    """Reach a random target with the 3-joint arm; see the module docstring for the spaces.

    Args:
        reward: "sparse" or "dense".
        control_rate_hz: env steps per simulated second; the period is rounded to whole physics
            steps of the model's timestep (`dt` gives the period used).
        terminate_on_success: end the episode (terminated=True) on the success step.
        success_threshold: success distance (m).
        target_yaw_range: targets are drawn within +- this base yaw (rad); pi = all around.
        model_path: scene MJCF; None = sim/reach_arm/scene.xml.
        target_in_obs: False leaves the target's xyz out of the observation (9 values).
    """

    metadata = {"render_modes": []}

    def __init__(self, reward: str = "sparse", *, control_rate_hz: float = 20.0,
                 terminate_on_success: bool = True, success_threshold: float = 0.05,
                 target_yaw_range: float = math.pi,
                 model_path: str | Path | None = None, target_in_obs: bool = True) -> None:
        if reward not in ("dense", "sparse"):
            raise ValueError(f"reward: expected 'dense' or 'sparse', got {reward!r}")
        if control_rate_hz <= 0:
            raise ValueError(f"control_rate_hz: must be > 0, got {control_rate_hz}")
        self.reward_type = reward
        self.terminate_on_success = bool(terminate_on_success)
        self.success_threshold = float(success_threshold)
        self.target_yaw_range = float(target_yaw_range)
        self.obs_names = OBS_NAMES if target_in_obs else PIXEL_OBS_NAMES
        self.model_path = Path(model_path) if model_path else reach_arm_scene_path()
        self.model = mujoco.MjModel.from_xml_path(str(self.model_path))
        self.data = mujoco.MjData(self.model)
        self._check_model()
        self.substeps = max(1, round(1.0 / (control_rate_hz * self.model.opt.timestep)))
        self.ee_site_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, "ee")
        self._low = self.model.actuator_ctrlrange[:, 0].copy()
        self._high = self.model.actuator_ctrlrange[:, 1].copy()
        self.action_space = gymnasium.spaces.Box(self._low.astype(np.float32),
                                                 self._high.astype(np.float32), dtype=np.float32)
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (len(self.obs_names),),
                                                      dtype=np.float32)

    def _check_model(self) -> None:
        """The obs layout assumes qpos = qvel = ctrl = joint1..3 in order and one mocap target."""
        m = self.model
        names = tuple(mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, i) for i in range(m.njnt))
        actuated = tuple(mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, int(j))
                         for j in m.actuator_trnid[:, 0])
        if (names != JOINT_NAMES or actuated != JOINT_NAMES or m.nq != 3 or m.nv != 3
                or m.nmocap != 1):
            raise ValueError(f"{self.model_path}: expected hinge joints {JOINT_NAMES} actuated in "
                             f"that order and one mocap target; got joints {names}, "
                             f"actuators on {actuated}, nmocap {m.nmocap}")

    # ------------------------------------------------------------------ accessors (sim bridge)
    @property
    def joint_names(self) -> tuple[str, ...]:
        """Joint names in observation and action order."""
        return JOINT_NAMES

    @property
    def dt(self) -> float:
        """Seconds of simulated time per env step."""
        return self.substeps * float(self.model.opt.timestep)

    def joint_positions(self) -> np.ndarray:
        """Joint angles (rad), a copy."""
        return self.data.qpos.copy()

    def joint_velocities(self) -> np.ndarray:
        """Joint velocities (rad/s), a copy."""
        return self.data.qvel.copy()

    def ee_position(self) -> np.ndarray:
        """End-effector position (m, world frame), a copy."""
        return self.data.site_xpos[self.ee_site_id].copy()

    def target_position(self) -> np.ndarray:
        """Target position (m, world frame), a copy."""
        return self.data.mocap_pos[0].copy()

    def distance(self) -> float:
        """End-effector to target distance (m)."""
        diff = self.data.site_xpos[self.ee_site_id] - self.data.mocap_pos[0]
        return math.sqrt(float(diff @ diff))

    def observation(self) -> np.ndarray:
        """The current observation (float32, a new array of 12 values, or 9 without the
        target)."""
        obs = np.empty(len(self.obs_names), dtype=np.float32)
        obs[0:6:2] = self.data.qpos
        obs[1:6:2] = self.data.qvel
        obs[6:9] = self.data.site_xpos[self.ee_site_id]
        if obs.size == 12:
            obs[9:12] = self.data.mocap_pos[0]
        return obs

    def set_state(self, qpos: Any, qvel: Any, target: Any) -> np.ndarray:
        """Set joint positions, velocities and the target; return the new observation."""
        values = {"qpos": qpos, "qvel": qvel, "target": target}
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
        for key, arr in arrays.items():
            if arr.shape != (3,) or not np.all(np.isfinite(arr)):
                raise ValueError(f"set_state: {key} must be 3 finite values, got {values[key]!r}")
        self.data.qpos[:] = arrays["qpos"]
        self.data.qvel[:] = arrays["qvel"]
        self.data.mocap_pos[0] = arrays["target"]
        mujoco.mj_forward(self.model, self.data)
        return self.observation()

    # ---------------------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """New episode: home pose plus small noise, a fresh target. Seeded by `seed`."""
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = HOME_QPOS + self.np_random.uniform(-INIT_NOISE_RAD, INIT_NOISE_RAD, 3)
        mujoco.mj_kinematics(self.model, self.data)
        self.data.mocap_pos[0] = self._sample_target(self.ee_position())
        mujoco.mj_forward(self.model, self.data)
        return self.observation(), {"is_success": False, "distance": self.distance()}

    def _sample_target(self, ee_start: np.ndarray) -> np.ndarray:
        """Rejection-sample a reachable target (see the module docstring for the region)."""
        rng = self.np_random
        for _ in range(1000):
            radius = rng.uniform(*TARGET_RADIUS_M)
            elevation = rng.uniform(*TARGET_ELEVATION_RAD)
            yaw = rng.uniform(-self.target_yaw_range, self.target_yaw_range)
            horizontal = radius * math.cos(elevation)
            target = SHOULDER + np.array([horizontal * math.cos(yaw), horizontal * math.sin(yaw),
                                          radius * math.sin(elevation)])
            if (target[2] >= MIN_TARGET_HEIGHT_M and horizontal >= MIN_AXIS_DISTANCE_M
                    and np.linalg.norm(target - ee_start) >= MIN_START_DISTANCE_M):
                return target
        raise RuntimeError("could not sample a target; check the workspace constants")

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply joint velocity commands (rad/s, clipped to the bounds) for one control period."""
        act = np.asarray(action, dtype=np.float64)
        if act.shape != (3,):
            raise ValueError(f"action: expected shape (3,), got {act.shape}")
        if not np.isfinite(act).all():
            raise ValueError(f"action: must be finite, got {act}")
        np.clip(act, self._low, self._high, out=self.data.ctrl)
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        # mj_step leaves positions of the pre-integration state; bring ee in line with qpos.
        mujoco.mj_kinematics(self.model, self.data)
        distance = self.distance()
        success = distance < self.success_threshold
        if self.reward_type == "sparse":
            reward = 1.0 if success else 0.0
        else:
            reward = -distance
        terminated = success and self.terminate_on_success
        return self.observation(), reward, terminated, False, {"is_success": success,
                                                               "distance": distance}
