"""Typed configuration of the whole stack (pydantic v2, `extra="forbid"`), loaded from YAML.

Every section has defaults, so an empty file is a valid config. Errors name the file, the key path
and what was expected, e.g. ``config/sim_reach.yaml: learner.utd_ratio: must be >= 1, got 0``.
Beyond the types and ranges: no number may be NaN or infinite, a key may not appear twice in
one mapping (plain YAML keeps the last silently), and the sections must fit together (a rate
limit per action dimension, one role per topic: `topic_conflict`). What only the start of a
node can tell (a reward function that imports, a sim task that exists, the store) is checked
by `o2o_robot.learning.preflight`, which `o2o-robot config validate` runs too.

A file may start from others with ``base: other.yaml`` or ``base: [a.yaml, b.yaml]`` (relative
to the file); later files override earlier ones key by key, and the file itself overrides all. This module imports neither torch nor rclpy.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

PACKAGE_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


class Model(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on
    assignment, and no number may be NaN or infinite (an inf action bound or rate limit
    validated before and crashed the learner or the safety filter at start)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# The actor node's topics that are not configurable (ros/qos.py names them from here), with
# the message type each carries: a configured topic may not take one of these names.
TELEOP_ACTION_TOPIC = "teleop/action"     # std_msgs/Float64MultiArray, physical units
TELEOP_ENGAGED_TOPIC = "teleop/engaged"   # std_msgs/Bool, True = teleop overrides the policy
SUCCESS_TOPIC = "operator/success"        # std_msgs/Bool, True = this episode succeeded
FAILURE_TOPIC = "operator/failure"        # std_msgs/Bool, True = give up on this episode
DEFAULT_DONE_TOPIC = "done"               # std_msgs/Bool, the sim bridge's terminal signal
FIXED_TOPICS = {TELEOP_ACTION_TOPIC: "Float64MultiArray", TELEOP_ENGAGED_TOPIC: "Bool",
                SUCCESS_TOPIC: "Bool", FAILURE_TOPIC: "Bool"}
OBSERVATION_MSG = {"joint_state": "JointState", "float64_multi_array": "Float64MultiArray",
                   "pose_stamped": "PoseStamped"}


# --------------------------------------------------------------------------------------- robot
class ObservationSource(Model):
    """One input of the observation vector, in the order listed in `robot.observations`."""

    topic: str = Field(description="ROS topic (relative names resolve in the node's namespace)")
    type: Literal["joint_state", "float64_multi_array", "pose_stamped"]
    joint_names: list[str] = Field(default_factory=list, description="joint_state: joints, in order")
    fields: list[Literal["position", "velocity", "effort"]] = Field(
        default_factory=lambda: ["position"], description="joint_state: fields per joint, in order")
    size: int | None = Field(default=None, ge=1, description="float64_multi_array: element count")

    @model_validator(mode="after")
    def _check_shape(self) -> "ObservationSource":
        if self.type == "joint_state" and not self.joint_names:
            raise ValueError("joint_state source needs joint_names")
        if self.type == "float64_multi_array" and self.size is None:
            raise ValueError("float64_multi_array source needs size")
        return self

    @property
    def dim(self) -> int:
        """Number of observation entries this source contributes."""
        if self.type == "joint_state":
            return len(self.joint_names) * len(self.fields)
        if self.type == "pose_stamped":
            return 7  # position xyz + orientation quaternion xyzw
        return int(self.size or 0)


class ActionSpace(Model):
    """The commanded vector: std_msgs/Float64MultiArray on `topic`, physical units."""

    topic: str = "action"
    names: list[str] = Field(default_factory=list, description="optional joint/axis names")
    low: list[float] = Field(description="lower physical bound per dimension")
    high: list[float] = Field(description="upper physical bound per dimension")

    @model_validator(mode="after")
    def _check_bounds(self) -> "ActionSpace":
        if len(self.low) != len(self.high) or not self.low:
            raise ValueError(f"low and high must be non-empty and of equal length, "
                             f"got {len(self.low)} and {len(self.high)}")
        if any(lo >= hi for lo, hi in zip(self.low, self.high)):
            raise ValueError("every low must be < high")
        if self.names and len(self.names) != len(self.low):
            raise ValueError(f"names has {len(self.names)} entries, bounds have {len(self.low)}")
        return self

    @property
    def dim(self) -> int:
        return len(self.low)


CAMERA_MSG = {"image": "Image", "compressed_image": "CompressedImage"}


class CameraSource(Model):
    """One camera of the observation: its newest `frame_stack` frames, each uint8 H x W x C.

    An incoming image is cropped (`crop`, in input pixels), then resized to `height` x `width`
    (nearest pixel; the area mean when shrinking by a whole factor) and converted to
    `channels`. Image encodings: rgb8, bgr8, mono8; CompressedImage: jpeg, png."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", description=(
        "identifier of the camera (e.g. 'front'): the key of its frames in observations, "
        "batches, the store and the policy's inputs; not 'state'"))
    topic: str = Field(description="ROS topic (relative names resolve in the node's namespace)")
    type: Literal["image", "compressed_image"] = Field(description=(
        "image: sensor_msgs/Image (rgb8, bgr8, mono8); compressed_image: "
        "sensor_msgs/CompressedImage (jpeg, png)"))
    width: int = Field(ge=1, le=1024, description="output width in pixels (after crop and resize)")
    height: int = Field(ge=1, le=1024, description="output height in pixels")
    channels: Literal[1, 3] = Field(3, description="3: rgb; 1: mono (luma of a colour image)")
    crop: list[int] | None = Field(None, min_length=4, max_length=4, description=(
        "[x, y, w, h] in input pixels, applied before the resize; None: the whole image. An "
        "image smaller than x + w by y + h is refused (wrong size)"))
    frame_stack: int = Field(3, ge=1, le=16, description=(
        "frames per observation, oldest first, concatenated on the channel axis"))

    @model_validator(mode="after")
    def _check(self) -> "CameraSource":
        if self.name == "state":
            raise ValueError("name: 'state' is the state vector's key; choose another name")
        if self.crop is not None:
            x, y, w, h = self.crop
            if x < 0 or y < 0 or w < 1 or h < 1:
                raise ValueError(f"crop: expected [x >= 0, y >= 0, w >= 1, h >= 1], got {self.crop}")
        return self

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of one frame."""
        return (self.height, self.width, self.channels)


class RobotSpec(Model):
    """What the policy sees and commands."""

    name: str = "reach_arm"
    observations: list[ObservationSource] = Field(default_factory=lambda: [
        ObservationSource(topic="joint_states", type="joint_state",
                          joint_names=["joint1", "joint2", "joint3"], fields=["position", "velocity"]),
        ObservationSource(topic="task_obs", type="float64_multi_array", size=6),
    ], min_length=1)
    action: ActionSpace = Field(default_factory=lambda: ActionSpace(
        names=["joint1", "joint2", "joint3"], low=[-2.0] * 3, high=[2.0] * 3))
    cameras: list[CameraSource] = Field(default_factory=list, description=(
        "camera sources; each adds one uint8 frame stack to the observation (empty: the "
        "observation is the state vector alone)"))

    @model_validator(mode="after")
    def _unique_cameras(self) -> "RobotSpec":
        seen: dict[str, int] = {}
        for i, cam in enumerate(self.cameras):
            if cam.name in seen:
                raise ValueError(f"cameras: entries {seen[cam.name]} and {i} are both named "
                                 f"{cam.name!r}; give each camera a name of its own")
            seen[cam.name] = i
        return self

    @property
    def obs_dim(self) -> int:
        return sum(src.dim for src in self.observations)

    @property
    def act_dim(self) -> int:
        return self.action.dim


# ------------------------------------------------------------------------------ data and sampling
class StoreConfig(Model):
    path: str = Field("offline_data/store.zarr", description="Zarr store directory")
    flush_every: int = Field(1000, ge=1, description="rows; bounds what a crash can lose")


class SamplerConfig(Model):
    batch_size: int = Field(256, ge=2, description="minibatch N")
    offline_ratio: float = Field(0.5, ge=0.0, le=1.0,
                                 description="share of demo+intervention+offline rows per minibatch")
    online_capacity: int | None = Field(None, ge=1, description="online FIFO size; None = unbounded")

    @model_validator(mode="after")
    def _exact_split(self) -> "SamplerConfig":
        share = self.batch_size * self.offline_ratio
        if abs(share - round(share)) > 1e-9:
            raise ValueError(f"batch_size * offline_ratio must be a whole number of rows, "
                             f"got {self.batch_size} * {self.offline_ratio} = {share}")
        return self


# ----------------------------------------------------------------------------------- algorithms
class RLPDConfig(Model):
    """RLPD hyperparameters (ALGORITHMS.md section 1.6); defaults are the locomotion setting."""

    name: Literal["rlpd"] = "rlpd"
    hidden_dims: list[int] = Field(default_factory=lambda: [256, 256], min_length=1)
    critic_ensemble_size: int = Field(10, ge=1, description="E")
    critic_subset_size: int = Field(2, ge=1, description="Z, target min over a random subset")
    critic_layer_norm: bool = True
    actor_lr: float = Field(3e-4, gt=0)
    critic_lr: float = Field(3e-4, gt=0)
    temp_lr: float = Field(3e-4, gt=0)
    discount: float = Field(0.99, gt=0, le=1)
    tau: float = Field(0.005, gt=0, le=1, description="target EMA rate rho")
    init_temperature: float = Field(1.0, gt=0)
    target_entropy: float | None = Field(None, description="None = -|A|/2")
    backup_entropy: bool = True
    reward_shift: float = Field(0.0, description="added to every sampled reward (AntMaze: -1)")
    latent_dim: int = Field(50, ge=1, description="cameras: size of each camera's and the state's "
                            "Dense -> LayerNorm -> tanh projection")
    encoder_features: list[int] = Field(
        default_factory=lambda: [32, 64, 128, 256], min_length=1,
        description="cameras: widths of the conv encoder trained from scratch (3x3, stride 2, "
                    "VALID, ReLU per layer), one encoder per camera")
    pretrained_encoder: Path | None = Field(
        None, description="cameras: a frozen pretrained per-frame encoder used instead of the "
                          "conv encoder: a torch.export program file (torch.export.save, batch "
                          "dimension dynamic) mapping float [N, C, H, W] in [0, 1] to [N, F]; "
                          "never downloaded, checked at start")

    @model_validator(mode="after")
    def _subset(self) -> "RLPDConfig":
        if self.critic_subset_size > self.critic_ensemble_size:
            raise ValueError(f"critic_subset_size ({self.critic_subset_size}) must be <= "
                             f"critic_ensemble_size ({self.critic_ensemble_size})")
        return self


class OBACConfig(Model):
    """OBAC hyperparameters (ALGORITHMS.md section 2.4); defaults are the official code's.

    o2o_robot feeds OBAC the RLPD-style demo/online mix (`sampler.offline_ratio`), so its
    in-sample "offline optimal" value is learned on demonstrations plus online data: an
    adaptation of ours, not part of the paper (which uses one online buffer)."""

    name: Literal["obac"] = "obac"
    hidden_dims: list[int] = Field(default_factory=lambda: [512, 512], min_length=2, max_length=2,
                                   description="Linear-LayerNorm-tanh, then Linear-ELU trunk")
    actor_lr: float = Field(3e-4, gt=0)
    critic_lr: float = Field(3e-4, gt=0)
    value_lr: float = Field(3e-4, gt=0)
    temp_lr: float = Field(3e-4, gt=0)
    discount: float = Field(0.99, gt=0, le=1)
    tau: float = Field(0.005, gt=0, le=1, description="Polyak rate of both Q targets")
    expectile: float = Field(0.9, gt=0, lt=1, description="tau of the V_mu expectile loss")
    bc_weight: float = Field(0.001, ge=0, description="lambda of the behaviour term")
    init_temperature: float = Field(0.2, gt=0, description="alpha until the first alpha step")
    target_entropy: float | None = Field(None, description="None = -|A|")
    reward_shift: float = Field(0.0, description="added to every sampled reward")


class OEMAConfig(Model):
    """OEMA hyperparameters (ALGORITHMS.md section 3.4); defaults are the official code's."""

    name: Literal["oema"] = "oema"
    hidden_dims: list[int] = Field(default_factory=lambda: [256, 256], min_length=1)
    actor_lr: float = Field(3e-4, gt=0)
    critic_lr: float = Field(3e-4, gt=0)
    density_lr: float = Field(3e-4, gt=0, description="balanced-replay density-ratio net w_psi")
    perturb_lr: float = Field(3e-4, gt=0, description="optimistic perturbation net xi_omega")
    discount: float = Field(0.99, gt=0, le=1)
    tau: float = Field(0.005, gt=0, le=1)
    policy_noise: float = Field(0.2, ge=0, description="TD3 target smoothing std")
    noise_clip: float = Field(0.5, ge=0)
    policy_freq: int = Field(2, ge=1, description="actor (meta) update every n-th iteration")
    bc_alpha: float = Field(2.5, gt=0, description="TD3+BC alpha (offline pre-training)")
    pretrain_steps: int = Field(1_000_000, ge=0, description="TD3+BC gradient steps before fine-tuning")
    priority_temperature: float = Field(5.0, gt=0, description="T in w^(1/T)")
    priority_min: float = Field(0.001, gt=0)
    priority_max: float = Field(1000.0, gt=0)
    perturb_scale: float = Field(1.0, ge=0, description="Phi: xi bound as a share of a_max")
    explore_noise: float = Field(0.1, ge=0, description="epsilon std of the behaviour policy")
    optimism: float = Field(4.0, description="beta_UB in Q_UB = mean + beta_UB * std")
    meta_beta: float = Field(0.01, ge=0, description="beta, weight of the meta (test) loss")
    meta_lr: float = Field(3e-4, gt=0, description="eta, inner SGD step of the hot-plug")
    meta_anneal: bool = Field(False, description="beta_k = max(0, beta0 - k*beta0/meta_anneal_steps)")
    meta_anneal_steps: int = Field(140_000, ge=1)
    meta_form: Literal["first_order", "second_order"] = Field(
        "first_order", description="official code's loss-ratio first-order form, or MAML")
    recent_window: int = Field(50_000, ge=1, description="B_r: states from the latest online rows")
    reward_shift: float = Field(0.0, description="added to every sampled reward")

    @model_validator(mode="after")
    def _priority_range(self) -> "OEMAConfig":
        if self.priority_min >= self.priority_max:
            raise ValueError(f"priority_min ({self.priority_min}) must be < priority_max "
                             f"({self.priority_max})")
        return self


AlgorithmConfig = Annotated[Union[RLPDConfig, OBACConfig, OEMAConfig], Field(discriminator="name")]


class LearnerConfig(Model):
    utd_ratio: int = Field(20, ge=1, description="critic updates per environment step (G)")
    warmup_steps: int = Field(5000, ge=0, description="env steps before the first update")
    warmup_actions: Literal["uniform", "policy"] = Field("uniform", description=(
        "how the robot acts during warm-up, in o2o-robot train and on the robot alike. uniform: "
        "actions drawn uniformly over the action bounds (RLPD's warm-up, the exploration its "
        "published results used; a policy graph that maps the runtime's noise to uniform "
        "actions, so the robot runs it like any policy); policy: the agent's own exported actor "
        "(OEMA: its pre-trained deterministic actor, ALGORITHMS.md 3.6 pitfall 5; RLPD/OBAC: "
        "the untrained stochastic actor)"))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mode: Literal["thread", "process"] = "process"
    torch_threads: int | Literal["auto"] = Field("auto", description=(
        "torch CPU threads of the learner. auto: the cores free for it, followed while it runs "
        "(less what other processes use; one core left to the actor node beside the learner "
        "worker; o2o_robot/learning/threads.py), with OMP_WAIT_POLICY=PASSIVE unless set, so "
        "a busy core never collapses it; a number: exactly that many"))
    compile: bool = False
    bf16: bool = Field(False, description="opt-in bf16 autocast (not yet shown to learn as fp32)")
    export_every_updates: int = Field(1000, ge=1, description="env-step updates between exports")
    checkpoint_every_steps: int = Field(1000, ge=1, description=(
        "env steps between learner checkpoints (and on a clean stop): after a kill -9 a "
        "resumed learner loses at most this many env steps of updates; the rows stay in the "
        "store"))
    max_restarts: int = Field(3, ge=0, description=(
        "times the learner worker is restarted from its last checkpoint after it crashed or "
        "died; the actor keeps acting on its last good policy meanwhile"))
    restart_backoff_s: float = Field(2.0, ge=0, description=(
        "wait before the first restart; doubled for each further one"))
    queue_size: int = Field(10000, ge=1, description="transition queue; full => dropped, counted")

    @field_validator("torch_threads", mode="plain")
    @classmethod
    def _threads(cls, value: Any) -> int | str:
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise ValueError(f"expected a whole number >= 1 or 'auto', got {value!r}")


# ------------------------------------------------------------------------------- control, safety
class RewardConfig(Model):
    source: Literal["sim", "topic", "function", "success_button"] = Field("sim", description=(
        "sim: the MuJoCo sim bridge publishes it on `topic` (and marks a sim config: the launch "
        "files' use_sim:=auto starts the sim for it); topic: a node of yours publishes it there; "
        "function: `function` computes it; success_button: 1 on the operator's success"))
    topic: str = "reward"
    function: str | None = Field(None, description="dotted path module:function(obs, action, next_obs)")
    done_topic: str | None = Field(None, description="optional std_msgs/Bool terminal signal")

    @model_validator(mode="after")
    def _function_given(self) -> "RewardConfig":
        if self.source == "function" and not self.function:
            raise ValueError("reward.source 'function' needs reward.function")
        return self


class ControlConfig(Model):
    control_rate_hz: float = Field(20.0, gt=0, le=2000)
    obs_timeout_ms: float = Field(200.0, gt=0)
    max_episode_steps: int = Field(50, ge=1, description="time limit => truncated, not terminated")
    teleop_timeout_ms: float = Field(250.0, gt=0, description="max age of a teleop action while engaged")
    intervention_window: int = Field(100, ge=1, description="acting ticks in the intervention-rate window")
    terminate_on_success: bool = Field(True, description="success ends the episode as terminated")
    failure_is_terminal: bool = Field(False, description="operator failure => terminated, else truncated")
    reward: RewardConfig = Field(default_factory=RewardConfig)


class SafetyConfig(Model):
    """Every action passes the SafetyFilter: NaN guard, clip, rate limit, e-stop latch, stale hold."""

    max_delta_per_tick: float | list[float] | None = Field(
        None, description="rate limit per tick, physical units (scalar or per dimension)")
    hold: Literal["zero", "last"] = Field("zero", description="action while held")
    estop_topic: str = "estop"
    rollback_after_non_finite: int = Field(10, ge=0, description=(
        "consecutive ticks on which the serving policy's action is NaN/inf (each one held) "
        "before the actor rolls back to the previous policy and says so; a policy can pass "
        "validation and still fail on the robot's real observations. 0: never roll back"))

    @model_validator(mode="after")
    def _positive_rate(self) -> "SafetyConfig":
        limits = self.max_delta_per_tick
        values = limits if isinstance(limits, list) else [] if limits is None else [limits]
        if any(v <= 0 for v in values):
            raise ValueError(f"max_delta_per_tick must be > 0, got {limits}")
        return self


# ----------------------------------------------------------------------------------- sim, teleop
REACH_ONLY_SIM_KEYS = ("reward", "sim_rate_hz", "success_radius_m", "target_yaw_range_deg",
                       "target_in_obs", "blank_cameras")


class SimConfig(Model):
    """The simulated task. Its time limit is `control.max_episode_steps`, as on the robot.

    The keys of `REACH_ONLY_SIM_KEYS` configure the 'reach' arm and are refused with another
    task (a gymnasium env keeps its own reward and timing: to change them, register a wrapped
    env in a module of yours and name it `module:EnvId`, README "train on a gymnasium task").
    When a config changes the task of its base, the base's reach keys are dropped."""

    task: str = Field("reach", description=(
        "'reach', a gymnasium id with flat Box spaces such as 'Hopper-v5', or 'module:EnvId': "
        "a module on PYTHONPATH that registers EnvId with gymnasium when imported (e.g. a "
        "wrapped env with a sparse reward, o2o_robot.sim.example_tasks)"))
    reward: Literal["dense", "sparse"] = Field("sparse", description="reach: the reward")
    sim_rate_hz: float = Field(20.0, gt=0, description="reach: env steps per second in "
                               "real-time mode")
    success_radius_m: float = Field(0.05, gt=0, description="reach: success distance to the target")
    target_yaw_range_deg: float = Field(180.0, gt=0, le=180,
                                        description="reach: targets within +- this base yaw")
    success_function: str | None = Field(None, description=(
        "'package.module:function(obs, info) -> bool' for a gymnasium task whose env reports no "
        "info['is_success']: called after every step, its result becomes info['is_success'] "
        "(the success rate of evaluations and episodes, solved_at)"))
    target_in_obs: bool = Field(True, description=(
        "reach: the task_obs topic carries [ee xyz, target xyz] (size 6); false: [ee xyz] only "
        "(size 3), so only a camera shows where the target is (config/sim_reach_pixels.yaml)"))
    render_size: list[int] | None = Field(None, min_length=2, max_length=2, description=(
        "[width, height] at which the sim renders every robot.cameras entry (the MuJoCo camera "
        "of the same name); None: each camera's own width x height, so the actor only converts"))
    blank_cameras: bool = Field(False, description=(
        "reach: every robot.cameras image is all zeros (demos, the bridge's topics, "
        "evaluations), so neither the learner nor the actor sees anything; the negative "
        "control of the pixel learning check (tests/test_learning_pixels.py)"))
    lockstep: bool = Field(False, description="step once per received action")
    seed: int = 0

    @model_validator(mode="after")
    def _task_keys(self) -> "SimConfig":
        if self.task != "reach":
            given = [k for k in REACH_ONLY_SIM_KEYS if k in self.model_fields_set]
            if given:
                raise ValueError(
                    f"{given[0]}: configures the 'reach' task only, not {self.task!r} (a "
                    f"gymnasium env keeps its own reward and timing; to change them register a "
                    f"wrapped env and name it as sim.task 'module:EnvId', see the README)")
        if self.render_size is not None and min(self.render_size) < 1:
            raise ValueError(f"render_size: expected [width >= 1, height >= 1], got "
                             f"{self.render_size}")
        if self.task == "reach" and self.success_function is not None:
            raise ValueError("success_function: for gymnasium tasks; 'reach' reports its own "
                             "success (sim.success_radius_m)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_episode_steps" in data:
            raise ValueError("max_episode_steps: moved to control.max_episode_steps (one time "
                             "limit for the sim, the robot and o2o-robot train)")
        return data


class JoyAxis(Model):
    """One action dimension driven by one sensor_msgs/Joy axis (values in [-1, 1])."""

    axis: int = Field(ge=0, description="index in Joy.axes")
    scale: float = Field(1.0, gt=0, le=1, description="share of the way from rest to the action "
                         "bound reached at full deflection")
    deadzone: float = Field(0.05, ge=0, lt=1, description="|value| below this reads as 0; the "
                            "rest of the travel is rescaled to 0..1")
    invert: bool = Field(False, description="flip the sign")


class JoyProfile(Model):
    """How Joy messages drive teleop. Every field overrides the device's shipped profile
    (`JOY_PROFILES`) one by one; `axes` is replaced as a whole."""

    axes: list[JoyAxis | None] = Field(default_factory=list, description=(
        "one entry per action dimension, in order (null: that dimension rests); a robot with "
        "fewer dimensions uses the first entries"))
    deadman_button: int | None = Field(None, ge=0, description="held: teleop engaged (the "
                                       "operator's action replaces the policy's)")
    engage_on_motion: bool = Field(False, description="engaged while any mapped axis is outside "
                                   "its deadzone (spacemouse style; with or without a deadman)")
    success_button: int | None = Field(None, ge=0, description="press: this episode succeeded")
    failure_button: int | None = Field(None, ge=0, description="press: give up on this episode "
                                       "(it ends, the robot resets)")
    estop_button: int | None = Field(None, ge=0, description="press: e-stop (latched by the "
                                     "actor until ~/clear_estop)")

    def problems(self) -> list[str]:
        """What makes this profile unusable, as 'key: why' lines (empty when usable)."""
        out = []
        if not self.axes or all(a is None for a in self.axes):
            out.append("axes: no axis mapped")
        if self.deadman_button is None and not self.engage_on_motion:
            out.append("deadman_button: none, and engage_on_motion is false: nothing engages")
        seen: dict[int, str] = {}
        for key in ("deadman_button", "success_button", "failure_button", "estop_button"):
            index = getattr(self, key)
            if index in seen:
                out.append(f"{key}: button {index} is also {seen[index]}")
            elif index is not None:
                seen[index] = key
        return out


# Shipped profiles, selected by `teleop.device`. Joy axes of ROS drivers read +1 at left / up.
JOY_PROFILES: dict[str, dict] = {
    # Xbox-style pad through the `joy` driver (joy_node): left stick up/down and left/right,
    # right stick up/down and left/right, d-pad up/down and left/right. Hold LB to drive;
    # A = success, B = failure (reset), X = e-stop.
    "gamepad": {"axes": [{"axis": a} for a in (1, 0, 4, 3, 7, 6)], "deadman_button": 4,
                "success_button": 0, "failure_button": 1, "estop_button": 2},
    # 3Dconnexion SpaceMouse through `spacenav` (its joy topic: x y z roll pitch yaw, then two
    # buttons). Moving the cap engages; left button = success, right = failure (reset).
    "spacemouse": {"axes": [{"axis": a, "deadzone": 0.1} for a in range(6)],
                   "engage_on_motion": True, "success_button": 0, "failure_button": 1},
    # The terminal keyboard (`keyboard_teleop`, o2o_robot.teleop.keyboard publishes this layout):
    # button 0 is the space-bar toggle, keys give exact deflections (no deadzone).
    "keyboard": {"axes": [{"axis": a, "deadzone": 0.0} for a in range(6)], "deadman_button": 0,
                 "success_button": 1, "failure_button": 2, "estop_button": 3},
}


class TeleopConfig(Model):
    """Teleoperation: a Joy device (gamepad, spacemouse), the terminal keyboard, or the sim
    task's scripted expert; for demonstrations and for interventions during fine-tuning."""

    device: Literal["gamepad", "spacemouse", "keyboard", "scripted"] = "scripted"
    expert_noise: float = Field(0.1, ge=0, description="scripted expert: Gaussian action noise")
    joy: JoyProfile | None = Field(None, description="overrides of the device's shipped profile")
    joy_topic: str = Field("joy", description="sensor_msgs/Joy input of teleop_node")
    rate_hz: float = Field(20.0, gt=0, le=1000, description="teleop/action publish rate (also "
                           "the keyboard's Joy rate)")
    joy_timeout_ms: float = Field(500.0, gt=0, description="no Joy message for this long: teleop "
                                  "goes silent (an engaged actor then holds)")
    record_failures: bool = Field(True, description="demo collection: keep episodes that end "
                                  "without success (labelled as failures)")
    intervene_every: int = Field(0, ge=0, description="scripted operator in `o2o-robot finetune`: "
                                 "take over episodes 0, k, 2k, ... (0 = never)")
    intervene_steps: int | None = Field(None, ge=1, description="... for their first N steps "
                                        "(null = the whole episode)")

    def joy_profile(self, device: str | None = None) -> JoyProfile:
        """The shipped profile of `device` (default: `self.device`) with `joy`'s overrides."""
        data = dict(JOY_PROFILES.get(device or self.device, {}))
        if self.joy is not None:
            data.update(self.joy.model_dump(include=self.joy.model_fields_set))
        return JoyProfile.model_validate(data)

    @model_validator(mode="after")
    def _usable(self) -> "TeleopConfig":
        if self.device in JOY_PROFILES:
            problems = self.joy_profile().problems()
            if problems:
                raise ValueError("; ".join(f"joy.{p}" for p in problems))
        if self.intervene_every and self.device != "scripted":
            raise ValueError(f"intervene_every: only the scripted operator intervenes on a "
                             f"schedule (device is {self.device!r})")
        return self


class FleetConfig(Model):
    """Several robots and one learner node over ROS 2 (docs/fleet.md): each robot's actor node
    with `learner:=remote` spools what it produces and sends it to the learner node."""

    topic_prefix: str = Field("/o2o_fleet", description=(
        "absolute namespace of the fleet's topics (transitions, policy, acks, robots), the same "
        "on the learner node and every robot"))
    robot_id: str = Field("", description=(
        "this robot's name in the fleet (its rows' robot); empty: the actor node's namespace "
        "without the leading '/', or the host name when the node is at the root. It must stay "
        "the same across restarts: it names the robot's spool on the learner"))
    spool_path: str = Field("", description=(
        "the robot's spool, a store holding everything it produced, numbered; empty: "
        "<train.run_dir>/spool/<robot id>.zarr"))
    batch_rows: int = Field(100, ge=1, description="rows per transitions message at most")
    window_rows: int = Field(5000, ge=1, description=(
        "rows a robot sends beyond those the learner holds before it waits for its acks"))
    commit_period_s: float = Field(1.0, gt=0, description=(
        "robot: spooled rows are committed (and only then sent) at every episode end and at "
        "least this often"))
    resend_after_s: float = Field(2.0, gt=0, description=(
        "robot: rows in flight that the learner has not taken for this long are sent again "
        "(doubling while it stays stuck)"))
    heartbeat_period_s: float = Field(0.5, gt=0, description=(
        "period of the learner's acks and the robots' heartbeats"))
    lease_s: float = Field(3.0, gt=0, description=(
        "a side not heard from for this long is gone: the robot says 'learner lost' (and keeps "
        "its last good policy), the learner counts the robot as not live"))
    ack_period_s: float = Field(0.25, gt=0, description=(
        "learner: commits its store and acknowledges the robots' rows at most this often"))
    handover_s: float = Field(5.0, ge=0, description=(
        "robot, at shutdown: keeps sending the rows the learner does not hold yet for at most "
        "this long (what is left stays in the spool and goes at the next start)"))

    @model_validator(mode="after")
    def _absolute_prefix(self) -> "FleetConfig":
        if not self.topic_prefix.startswith("/") or self.topic_prefix.rstrip("/") == "":
            raise ValueError(f"topic_prefix: must be an absolute namespace such as '/o2o_fleet', "
                             f"got {self.topic_prefix!r}")
        if self.lease_s <= self.heartbeat_period_s:
            raise ValueError(f"lease_s ({self.lease_s}) must exceed heartbeat_period_s "
                             f"({self.heartbeat_period_s})")
        return self


class TrainConfig(Model):
    """The ROS-free training harness (`o2o-robot train`)."""

    total_env_steps: int = Field(20000, ge=1)
    eval_every: int = Field(2000, ge=1)
    eval_episodes: int = Field(10, ge=1)
    demo_episodes: int = Field(10, ge=0, description="scripted demos generated when the store has none")
    eval_seeds: Literal["fresh", "fixed"] = Field("fresh", description=(
        "fresh: every evaluation draws new episodes (reset seeds derived from train.seed and "
        "the eval's env step: reproducible, exact on resume), so a score is not tuned to one "
        "set of 10 episodes and two training seeds are not scored on the same ones; fixed: "
        "every evaluation of every run replays the same episodes (seeds 1e9 + i), for "
        "comparing checkpoints or codebases episode by episode"))
    final_eval_episodes: int = Field(0, ge=0, description=(
        "after the budget, evaluate the final policy on this many episodes, the same ones for "
        "every run (seeds 1e9 + i): logged as kind final_eval and given as the summary's "
        "final_eval, a finer score than the periodic evals' few episodes. 0: none (the "
        "summary's final_eval is the last periodic eval)"))
    success_threshold: float = Field(0.8, ge=0, le=1, description="eval success rate that counts as solved")
    success_return: float | None = Field(None, description=(
        "eval mean return that counts as solved (solved_at), instead of success_threshold: for "
        "tasks whose env reports no info['is_success'] (most gymnasium MuJoCo tasks), e.g. "
        "InvertedPendulum-v5: 950. None: solved by success rate"))
    seed: int = 0
    run_dir: str = "runs/latest"


class O2OConfig(Model):
    """The whole stack."""

    robot: RobotSpec = Field(default_factory=RobotSpec)
    store: StoreConfig = Field(default_factory=StoreConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    algorithm: AlgorithmConfig = Field(default_factory=RLPDConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    sim: SimConfig = Field(default_factory=SimConfig)
    teleop: TeleopConfig = Field(default_factory=TeleopConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)

    @model_validator(mode="after")
    def _fits_together(self) -> "O2OConfig":
        limits, dim = self.safety.max_delta_per_tick, self.robot.act_dim
        if isinstance(limits, list) and len(limits) not in (1, dim):
            raise ValueError(f"safety.max_delta_per_tick: {len(limits)} values, but robot.action "
                             f"has {dim} dimensions (give one value, or one per dimension)")
        problem = topic_conflict(self)
        if problem:
            raise ValueError(problem)
        return self

    def demo_rows_reason(self) -> str | None:
        """Why the learner needs demo-side rows (demo, intervention or offline) in the store
        before it can update, or None when it learns from online rows alone."""
        if self.algorithm.name == "oema":
            return ("algorithm oema pre-trains on them and replays them beside the online rows, "
                    "whatever sampler.offline_ratio says")
        if self.sampler.offline_ratio > 0:
            return (f"sampler.offline_ratio is {self.sampler.offline_ratio:g}: that share of "
                    f"every minibatch is drawn from them")
        return None

    def config_hash(self) -> str:
        """Short stable hash of the resolved config (recorded in exported policies)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def with_run_dir(self, run_dir: str | Path | None) -> "O2OConfig":
        """A copy whose `train.run_dir` is `run_dir` (None: self unchanged): what `--run-dir`
        means for `train`, `pretrain` and `finetune` alike. A store configured inside the old
        run dir moves with it, so a run dir holds everything its run wrote; a store outside it
        (a robot's demonstrations) stays where it is."""
        if not run_dir:
            return self
        cfg = self.model_copy(deep=True)
        old, store = Path(cfg.train.run_dir), Path(cfg.store.path)
        if store.is_relative_to(old):
            cfg.store.path = str(Path(run_dir) / store.relative_to(old))
        cfg.train.run_dir = str(run_dir)
        return cfg


def config_topics(cfg: O2OConfig) -> list[tuple[str, str, str]]:
    """(key path, topic, message type) of every topic the actor node and teleop_node use; the
    fixed names first, so that a conflict is reported at the configured key."""
    reward = cfg.control.reward
    out = [("the actor's fixed topic", name, typ) for name, typ in FIXED_TOPICS.items()]
    if reward.source == "sim" and not reward.done_topic:
        out.append(("the sim's terminal topic", DEFAULT_DONE_TOPIC, "Bool"))
    out += [(f"robot.observations.{i}.topic", src.topic, OBSERVATION_MSG[src.type])
            for i, src in enumerate(cfg.robot.observations)]
    out += [(f"robot.cameras.{i}.topic", cam.topic, CAMERA_MSG[cam.type])
            for i, cam in enumerate(cfg.robot.cameras)]
    out.append(("robot.action.topic", cfg.robot.action.topic, "Float64MultiArray"))
    if reward.source in ("sim", "topic"):
        out.append(("control.reward.topic", reward.topic, "Float64"))
    if reward.done_topic:
        out.append(("control.reward.done_topic", reward.done_topic, "Bool"))
    out.append(("safety.estop_topic", cfg.safety.estop_topic, "Bool"))
    out.append(("teleop.joy_topic", cfg.teleop.joy_topic, "Joy"))
    return out


def topic_conflict(cfg: O2OConfig) -> str | None:
    """'key.path: ...' when one topic name has two roles: several observation sources may
    read one topic of one type, nothing else may share a name (two message types on one topic
    fail at node start; one type in two roles feeds e.g. the actions back as observations).
    Names are compared without a leading '/', as they resolve in the default namespace."""
    seen: dict[str, tuple[str, str]] = {}
    for key, topic, typ in config_topics(cfg):
        name = topic.strip().lstrip("/")
        if not name:
            return f"{key}: empty topic name"
        if name in seen:
            other_key, other_typ = seen[name]
            both_obs = key.startswith("robot.observations") and \
                other_key.startswith("robot.observations")
            if both_obs and other_typ == typ:
                continue
            kinds = f"{other_typ} there, {typ} here" if other_typ != typ else f"both {typ}"
            return (f"{key}: topic {topic!r} is also {other_key} ({kinds}); give each role a "
                    f"topic of its own")
        seen[name] = (key, typ)
    return None


def camera_shapes(cfg: O2OConfig) -> dict[str, tuple[int, int, int]]:
    """Camera name -> (height, width, channels) of one frame, in config order (empty without
    cameras)."""
    return {cam.name: cam.shape for cam in cfg.robot.cameras}


def frame_stacks(cfg: O2OConfig) -> dict[str, int]:
    """Camera name -> frames per observation (`frame_stack`), in config order."""
    return {cam.name: cam.frame_stack for cam in cfg.robot.cameras}


# -------------------------------------------------------------------------------------- loading
class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key path."""


def _key_path(loc: tuple) -> str:
    """A pydantic error location as a key path, without validator and union-member entries
    ('function-after[...]', 'float', 'list[float]' of `float | list[float]`)."""
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and (
        p.startswith("function-after") or "[" in p or p in ("float", "int", "str", "bool"))))


def _relevant(errors: list[dict]) -> list[dict]:
    """A value that fits no member of a union fails each: for a key with a real complaint
    (a range, NaN), drop the 'not of this member's type' ones."""
    real = {_key_path(e["loc"]) for e in errors if not e["type"].endswith(("_type", "_parsing"))}
    return [e for e in errors if not (e["type"].endswith(("_type", "_parsing")) and any(
        r.startswith(_key_path(e["loc"])) for r in real))]


def _lower_first(text: str) -> str:
    """pydantic capitalises its messages; ours continue a 'key.path: ' prefix. Only the first
    letter: names and ids in the message keep their case."""
    return text[:1].lower() + text[1:]


def _describe(err: dict[str, Any]) -> str:
    """One pydantic error as 'key.path: what was expected, got X'."""
    path = _key_path(err["loc"])
    kind, ctx, given = err["type"], err.get("ctx", {}), err.get("input")
    expected = {
        "greater_than_equal": lambda: f"must be >= {ctx.get('ge')}",
        "greater_than": lambda: f"must be > {ctx.get('gt')}",
        "less_than_equal": lambda: f"must be <= {ctx.get('le')}",
        "less_than": lambda: f"must be < {ctx.get('lt')}",
        "extra_forbidden": lambda: "unknown key",
        "missing": lambda: "required key is missing",
        "literal_error": lambda: f"must be one of {ctx.get('expected')}",
        "union_tag_invalid": lambda: f"must be one of {ctx.get('expected_tags')}",
        "finite_number": lambda: "must be a finite number",
        "too_short": lambda: f"must have at least {ctx.get('min_length')} "
                             f"entr{'y' if ctx.get('min_length') == 1 else 'ies'}",
    }.get(kind, lambda: _lower_first(err["msg"].removeprefix("Value error, ")))()
    if kind in ("missing",):
        return f"{path}: {expected}"
    if kind != "value_error":
        return f"{path or '<top>'}: {expected}, got {given!r}"
    head, sep, rest = expected.partition(": ")
    if sep and path and head.isidentifier():
        return f"{path}.{head}: {rest}"     # a section's validator naming one of its keys
    return f"{path}: {expected}" if path else expected   # a whole-config check names its keys


def _merge(base: dict, over: dict) -> dict:
    """Deep merge of mappings; a section that switches `name` (the algorithm) replaces the base's;
    a `sim` section that switches `task` drops the base's reach-only keys."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if key == "sim" and isinstance(old, dict) and isinstance(value, dict) \
                and value.get("task", old.get("task")) != old.get("task"):
            old = {k: v for k, v in old.items() if k not in REACH_ONLY_SIM_KEYS}
        same_kind = isinstance(old, dict) and isinstance(value, dict) and (
            "name" not in value or old.get("name", value["name"]) == value["name"])
        out[key] = _merge(old, value) if same_kind else value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key repeated in one mapping is an error: the safe
    loader keeps the last one silently (a second `learner:` block wiped the first one's keys)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":   # `<<:` merges may overlap
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    again = key in first
                except TypeError:     # an unhashable key: the base class reports it
                    continue
                if again:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice in one mapping (lines "
                        f"{first[key]} and {line}); YAML would keep only the last: merge them",
                        key_node.start_mark)
                first[key] = line
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise ConfigError(f"{path}: base: cycle through {' -> '.join(map(str, seen))}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a YAML text file (byte {exc.object[exc.start]:#04x} at "
                          f"offset {exc.start} is not UTF-8)") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: <top>: expected a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    bases = [base] if isinstance(base, str) else base
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: base: expected a file name or a list of them, got {base!r}")
    merged: dict = {}
    for name in bases:  # later bases override earlier ones; the file itself overrides all
        merged = _merge(merged, _read_yaml((path.parent / name).resolve(), seen + (path,)))
    return _merge(merged, data)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> O2OConfig:
    """Load and validate a YAML config (None = all defaults); raise ConfigError on any problem."""
    data: dict = {}
    label = "<defaults>"
    if path is not None:
        label = str(path)
        data = _read_yaml(Path(path).resolve())
    if overrides:
        data = _merge(data, overrides)
    try:
        return O2OConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{label}: {_describe(err)}" for err in _relevant(exc.errors())]
        raise ConfigError("\n".join(lines)) from None


def shipped_config_dirs() -> list[Path]:
    """Where the packaged config/ files are: the source tree, then an installed share/ folder
    (a colcon install space on AMENT_PREFIX_PATH, or this Python's prefix)."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    return [PACKAGE_CONFIG_DIR] + [Path(p) / "share" / "o2o_robot" / "config"
                                   for p in prefixes + [sys.prefix]]


def resolve_config_path(name: str | Path) -> Path:
    """A config path as given, else one shipped with the package (see `shipped_config_dirs`)."""
    path = Path(name)
    if path.exists() or path.is_absolute():
        return path
    for folder in shipped_config_dirs():
        for candidate in (folder / path, folder / f"{path}.yaml"):
            if candidate.exists():
                return candidate
    return path
