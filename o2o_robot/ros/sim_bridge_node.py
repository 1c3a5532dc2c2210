"""SimBridgeNode (`o2o_sim`): a MuJoCo task behind the same topics as the robot.

It speaks exactly the topics the robot config names, so the actor cannot tell it from hardware:

  out  every joint_state source's topic   sensor_msgs/JointState (reach: joint1..3, position and
                                          velocity; effort empty)
       the float64_multi_array source's topic   reach: [ee xyz, target xyz] ([ee xyz] with
                                          `sim.target_in_obs` false); any other gymnasium
                                          task: its whole observation vector
       every `robot.cameras[].topic`      reach: the model camera of that name rendered
                                          headless (EGL), rgb8 Image (CompressedImage png for
                                          a compressed_image camera), with every observation
       `sim/target` (Float64MultiArray)   reach with `sim.target_in_obs` false: the true target
                                          xyz, for the scripted operator only
       `control.reward.topic` (Float64)   the reward of the step just taken, once per step
       `operator/success` (Bool True)     the step reached a terminal success (the bridge plays
                                          the operator's success button)
       done topic (Bool True)             the step reached a terminal state without success
                                          (`qos.done_topic`: "done" unless configured)
       `~/status` (String, JSON, 1 Hz)    task success, episode count, success rate, counters
  in   `robot.action.topic` (Float64MultiArray; wrong length or NaN: dropped and counted)
  srv  `reset` (std_srvs/Trigger)         new episode, seeded `sim.seed + episode index`;
                                          publishes its first observation before replying

Stepping: real-time mode steps every 1 / `sim.sim_rate_hz` with a zero-order hold on the last
action (zeros after a reset); lock-step mode (`sim.lockstep`) steps exactly once per action
message. Either way one simulated step is 1 / `sim_rate_hz` seconds of physics.

Order within a step (why): reward, then the terminal signal, then the observation. The actor
completes a transition on its first tick that sees the new observation, so everything about the
step must be there by then. In lock-step mode the actor's tick t publishes a_t; the bridge
answers with r_t, the terminal signal and o_{t+1} within a millisecond on one host, well before
tick t+1, which therefore pairs (o_t, a_t, r_t, o_{t+1}) with that step's terminal flag.

Parameters: `config` (read-only) and `only_sim_config` (read-only; true, as the launch files'
`use_sim:=auto` passes it: a robot config, one whose `control.reward.source` is not "sim",
makes `main` log why and exit 0 without starting, so a robot never gets a sim beside it).

Episodes: after a terminal step the env is frozen (actions are counted but not stepped; the
observation is still published) until `reset`. The env's own time limit is not forwarded: in the
ROS graph the actor's `control.max_episode_steps` is the time limit, and a truncation is not a
state the actor must be told about.
"""
from __future__ import annotations

import time

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.logging import get_logger
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray, String
from std_srvs.srv import Trigger

from o2o_robot.config import O2OConfig, load_config, resolve_config_path
from o2o_robot.ros import convert, qos
from o2o_robot.ros.camera import compressed_to_msg, image_to_msg
from o2o_robot.ros.spin import spin_node, start_failed, start_node
from o2o_robot.sim.envs import SIM_TARGET_TOPIC, make_env, observation_topics
from o2o_robot.sim.reach import ReachEnv

NODE_NAME = "o2o_sim"
DEFAULT_CONFIG = "sim_reach.yaml"
WARN_EVERY_S = 5.0


class NotASimConfig(Exception):
    """`only_sim_config` is set and the config is a robot's: nothing to simulate."""


class SimBridgeNode(Node):
    """Steps `make_env(cfg.sim)` on actions and publishes its state; see the module docstring."""

    def __init__(self, config: O2OConfig | None = None, **node_kwargs):
        super().__init__(node_kwargs.pop("node_name", NODE_NAME), **node_kwargs)
        self.declare_parameter("config", DEFAULT_CONFIG, ParameterDescriptor(
            description="config file: a path, or a file name in the package's config/ folder",
            read_only=True))
        self.declare_parameter("only_sim_config", False, ParameterDescriptor(
            description="true: a robot config (control.reward.source other than 'sim') makes "
                        "the node exit 0 without starting (use_sim:=auto of the launch files)",
            read_only=True))
        if config is None:
            config = load_config(resolve_config_path(self.get_parameter("config").value))
        source = config.control.reward.source
        if self.get_parameter("only_sim_config").value and source != "sim":
            raise NotASimConfig(f"{self.get_parameter('config').value}: control.reward.source is "
                                f"{source!r}, not 'sim': a robot config, so no sim starts "
                                f"(use_sim:=true starts it anyway)")
        self.cfg = cfg = config
        self.env = make_env(cfg.sim)
        self._reach = isinstance(self.env.unwrapped, ReachEnv)
        joint_topics, array_topic = observation_topics(cfg.robot, self.env, cfg.sim)
        self.act_dim = cfg.robot.act_dim
        self.lockstep = cfg.sim.lockstep
        self.counts = dict.fromkeys(["actions", "malformed_actions", "steps", "ignored_after_end",
                                     "episodes_finished", "successes", "terminal_failures"], 0)
        self.last_malformed = ""
        self._last_warn = -np.inf
        self.episode = 0
        self.episode_steps = 0
        self.episode_return = 0.0
        self.ended = False            # terminal step taken: frozen until `reset`
        self.episode_success = False
        self._last_success: bool | None = None
        self._action = np.zeros(self.act_dim)
        self._obs = None

        self._joint_pubs = [self.create_publisher(JointState, t, qos.STREAM) for t in joint_topics]
        self._array_pub = self.create_publisher(Float64MultiArray, array_topic, qos.STREAM)
        self._target_pub = None
        if self._reach and not cfg.sim.target_in_obs:
            self._target_pub = self.create_publisher(Float64MultiArray, SIM_TARGET_TOPIC,
                                                     qos.STREAM)
        self._cameras, self._camera_pubs = None, []
        if cfg.robot.cameras:
            from o2o_robot.sim.camera import SimCameras

            self._cameras = SimCameras(self.env.unwrapped.model, cfg.robot.cameras,
                                       cfg.sim.render_size, blank=cfg.sim.blank_cameras)
            self._camera_pubs = [
                (cam.name, cam.type, self.create_publisher(
                    Image if cam.type == "image" else CompressedImage, cam.topic, qos.STREAM))
                for cam in cfg.robot.cameras]
        self._reward_pub = self.create_publisher(Float64, cfg.control.reward.topic, qos.STREAM)
        self._success_pub = self.create_publisher(Bool, qos.SUCCESS_TOPIC, qos.STREAM)
        done = qos.done_topic(cfg.control.reward) or qos.DEFAULT_DONE_TOPIC
        self._done_pub = self.create_publisher(Bool, done, qos.STREAM)
        self._status_pub = self.create_publisher(String, qos.STATUS_TOPIC, qos.STATUS)
        self.create_subscription(Float64MultiArray, cfg.robot.action.topic, self._on_action,
                                 qos.STREAM)
        self.create_service(Trigger, qos.RESET_SERVICE, self._on_reset)
        if not self.lockstep:
            self.create_timer(1.0 / cfg.sim.sim_rate_hz, lambda: self._step(self._action))
        self.create_timer(1.0, self._publish_status)
        self._reset_env()
        self.get_logger().info(f"sim task {cfg.sim.task!r}, "
                               f"{'lock-step' if self.lockstep else f'{cfg.sim.sim_rate_hz:g} Hz'}, "
                               f"actions on '{cfg.robot.action.topic}'")

    # ------------------------------------------------------------------------ stepping
    def _on_action(self, msg: Float64MultiArray) -> None:
        try:
            action = convert.array_from_msg(msg, self.act_dim)
        except convert.MessageError as exc:
            self.counts["malformed_actions"] += 1
            self.last_malformed = str(exc)
            now = time.monotonic()
            if now - self._last_warn >= WARN_EVERY_S:
                self._last_warn = now
                self.get_logger().warning(f"dropped an action ({self.counts['malformed_actions']} "
                                       f"so far): {exc}")
            return
        self.counts["actions"] += 1
        self._action = action
        if self.lockstep:
            self._step(action)

    def _step(self, action: np.ndarray) -> None:
        """One env step, then reward -> terminal signal -> observation (see the docstring)."""
        if self.ended:
            self.counts["ignored_after_end"] += 1
            self._publish_observation()
            return
        self._obs, reward, terminated, _, info = self.env.step(action)
        self.counts["steps"] += 1
        self.episode_steps += 1
        self.episode_return += float(reward)
        self._reward_pub.publish(convert.float_to_msg(reward))
        if terminated:
            self.ended = True
            self.episode_success = bool(info.get("is_success", False))
            pub = self._success_pub if self.episode_success else self._done_pub
            pub.publish(convert.bool_to_msg(True))
        self._publish_observation()

    def _publish_observation(self) -> None:
        if self._reach:
            base = self.env.unwrapped
            self._publish_cameras(base)
            msg = convert.joint_state_to_msg(base.joint_names, base.joint_positions(),
                                             base.joint_velocities(),
                                             stamp=self.get_clock().now().to_msg())
            for pub in self._joint_pubs:
                pub.publish(msg)
            task = np.concatenate([base.ee_position(), base.target_position()])
            if self._target_pub is not None:
                self._target_pub.publish(convert.array_to_msg(task[3:]))
                task = task[:3]
        else:
            task = self._obs
        self._array_pub.publish(convert.array_to_msg(task))

    def _publish_cameras(self, base: ReachEnv) -> None:
        """Every camera first: the images are the largest messages of an observation, and the
        actor should not see the new state beside an old image."""
        if self._cameras is None:
            return
        stamp = self.get_clock().now().to_msg()
        for name, kind, pub in self._camera_pubs:
            pixels = self._cameras.render(base.data, name)
            pub.publish(image_to_msg(pixels, stamp=stamp, frame_id=name) if kind == "image"
                        else compressed_to_msg(pixels, stamp=stamp, frame_id=name))

    # ------------------------------------------------------------------------- episodes
    def _reset_env(self) -> int:
        seed = self.cfg.sim.seed + self.episode
        self._obs, _ = self.env.reset(seed=seed)
        self.episode_steps, self.episode_return = 0, 0.0
        self.ended = self.episode_success = False
        self._action = np.zeros(self.act_dim)   # no zero-order hold across episodes
        self._publish_observation()
        return seed

    def _on_reset(self, request, response):
        self.counts["episodes_finished"] += 1
        self.counts["successes"] += self.episode_success
        self.counts["terminal_failures"] += self.ended and not self.episode_success
        self._last_success = self.episode_success
        self.episode += 1
        seed = self._reset_env()
        response.success = True
        response.message = f"episode {self.episode} (seed {seed})"
        return response

    # --------------------------------------------------------------------------- status
    def status(self) -> dict:
        finished = self.counts["episodes_finished"]
        info = {"task": self.cfg.sim.task, "mode": "lockstep" if self.lockstep else "realtime",
                "episode": self.episode, "episode_steps": self.episode_steps,
                "episode_return": self.episode_return, "ended": self.ended,
                "success": self.episode_success, "last_episode_success": self._last_success,
                "success_rate": self.counts["successes"] / finished if finished else None,
                **self.counts, "last_malformed": self.last_malformed}
        if self._reach:
            info["distance_m"] = self.env.unwrapped.distance()
        if self._cameras is not None:
            info["frames_rendered"] = self._cameras.frames_rendered
        return info

    def _publish_status(self) -> None:
        self._status_pub.publish(convert.status_to_msg(self.status()))

    def destroy_node(self) -> None:
        if self._cameras is not None:
            self._cameras.close()
        super().destroy_node()


def main(args=None) -> int:
    """Console entry point: `sim_bridge --ros-args -p config:=config/sim_reach.yaml`."""
    # ConfigError (a ValueError), or a task the sim cannot run (RuntimeError)
    try:
        node = start_node(SimBridgeNode, NODE_NAME, (ValueError, RuntimeError), args)
    except NotASimConfig as exc:   # use_sim:=auto with a robot config: not an error
        get_logger(NODE_NAME).info(str(exc))
        rclpy.try_shutdown()
        return 0
    return start_failed() if node is None else spin_node(node)


if __name__ == "__main__":
    raise SystemExit(main())
