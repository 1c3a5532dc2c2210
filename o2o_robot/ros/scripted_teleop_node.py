"""ScriptedTeleopNode (`o2o_scripted_teleop`): the sim task's scripted expert as the operator.

It reads the observation topics as the actor does (ObservationAssembler on the config's
`robot.observations`, plus the sim's true target on `sim/target` when the reach task keeps it
out of the observation: `sim.envs.operator_robot`), and for every complete new observation (each source updated since the
last one) publishes the expert's action on `teleop/action` and whether it drives on
`teleop/engaged`; the action is published engaged or not, so it is fresh the moment the
operator takes over. Both are republished at `teleop.rate_hz` between observations: a message
sent before the actor's subscription matched is not lost for good, and an actor that waits
(lock-step pacing) never finds the operator's command older than `control.teleop_timeout_ms`.

  mode "demo" (default): always engaged; with the actor in mode "collect" every row is a demo.
      Success labels come from the sim bridge (it presses `operator/success` on a terminal
      success); an episode without one ends at the time limit, labelled a failure.
  mode "intervene": a scripted HIL operator during fine-tuning: engaged in episodes 0, k, 2k, ...
      (`teleop.intervene_every`) for their first `teleop.intervene_steps` steps (or all);
      episodes are followed on the actor's `episode_topic` (its `~/episode` events).

  params  config (read-only), mode, episode_topic (default "o2o_actor/episode")
"""
from __future__ import annotations

import json
import time

from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray, String

from o2o_robot.config import O2OConfig, load_config, resolve_config_path
from o2o_robot.control.observation import ObservationAssembler
from o2o_robot.ros import convert, qos
from o2o_robot.ros.spin import spin_node, start_failed, start_node
from o2o_robot.sim.envs import operator_robot
from o2o_robot.teleop.scripted import InterventionSchedule, ScriptedOperator, scripted_expert

NODE_NAME = "o2o_scripted_teleop"
DEFAULT_CONFIG = "sim_reach.yaml"
MODES = ("demo", "intervene")


class ScriptedTeleopNode(Node):
    """The scripted operator on ROS topics; see the module docstring."""

    def __init__(self, config: O2OConfig | None = None, **node_kwargs):
        super().__init__(node_kwargs.pop("node_name", NODE_NAME), **node_kwargs)
        text = lambda d: ParameterDescriptor(description=d, read_only=True)  # noqa: E731
        self.declare_parameter("config", DEFAULT_CONFIG, text(
            "config file: a path, or a file name in the package's config/ folder"))
        self.declare_parameter("mode", "demo", text(
            "demo: always engaged; intervene: the config's teleop.intervene_every/_steps"))
        self.declare_parameter("episode_topic", "o2o_actor/episode", text(
            "the actor's episode events (std_msgs/String JSON)"))
        if config is None:
            config = load_config(resolve_config_path(self.get_parameter("config").value))
        self.cfg = config
        self.mode = self.get_parameter("mode").value
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        schedule = (InterventionSchedule.always() if self.mode == "demo"
                    else InterventionSchedule.from_config(config))
        self.operator = ScriptedOperator(scripted_expert(config), schedule)
        robot = operator_robot(config.robot, config.sim)   # + the true target (pixel task)
        self.observations = ObservationAssembler(robot)
        self._acted_on = dict(self.observations.received)
        self.counts = dict.fromkeys(["published", "bad_events", "malformed"], 0)
        self._action_msg = Float64MultiArray()
        self._action_pub = self.create_publisher(Float64MultiArray, qos.TELEOP_ACTION_TOPIC,
                                                 qos.STREAM)
        self._engaged_pub = self.create_publisher(Bool, qos.TELEOP_ENGAGED_TOPIC, qos.STREAM)
        self._status_pub = self.create_publisher(String, qos.STATUS_TOPIC, qos.STATUS)
        handlers = {"joint_state": (JointState, self._on_joint_state),
                    "float64_multi_array": (Float64MultiArray, self._on_array),
                    "pose_stamped": (PoseStamped, self._on_pose)}
        for topic in self.observations.topics:
            src = next(s for s in robot.observations if s.topic.lstrip("/") == topic)
            typ, fn = handlers[src.type]
            self.create_subscription(typ, src.topic, lambda m, t=src.topic, fn=fn: fn(t, m),
                                     qos.STREAM)
        self.create_subscription(String, self.get_parameter("episode_topic").value,
                                 self._on_episode, qos.STREAM)
        self._last: tuple | None = None          # (action, engaged) last published
        self.create_timer(1.0 / config.teleop.rate_hz, self._republish)
        self.create_timer(1.0, lambda: self._status_pub.publish(convert.status_to_msg(self.status())))
        self.get_logger().info(f"scripted teleop ({self.mode}): the {config.sim.task!r} expert "
                               f"on '{qos.TELEOP_ACTION_TOPIC}'")

    # ------------------------------------------------------------------------ inputs
    def _on_joint_state(self, topic: str, msg: JointState) -> None:
        try:
            names, pos, vel, eff = convert.joint_state_from_msg(msg)
        except convert.MessageError:
            self.counts["malformed"] += 1
            return
        self._after(self.observations.update_joint_state(topic, names, pos, vel, eff,
                                                         time.monotonic()))

    def _on_array(self, topic: str, msg: Float64MultiArray) -> None:
        try:
            values = convert.array_from_msg(msg)
        except convert.MessageError:
            self.counts["malformed"] += 1
            return
        self._after(self.observations.update_array(topic, values, time.monotonic()))

    def _on_pose(self, topic: str, msg: PoseStamped) -> None:
        try:
            xyz, quat = convert.pose_from_msg(msg)
        except convert.MessageError:
            self.counts["malformed"] += 1
            return
        self._after(self.observations.update_pose(topic, xyz, quat, time.monotonic()))

    def _on_episode(self, msg: String) -> None:
        try:
            self.operator.on_episode(json.loads(msg.data))
        except (ValueError, TypeError, KeyError, AttributeError):   # not JSON, or not an object
            self.counts["bad_events"] += 1
            return
        # Tell the actor now, not at the next observation: it may start the next episode first.
        if self._last is not None:
            self._publish(self._last[0], self.operator.engaged)

    # ------------------------------------------------------------------------- acting
    def _after(self, accepted: bool) -> None:
        """Act once every source has delivered since the last action (a whole new observation)."""
        if not accepted:
            self.counts["malformed"] += 1
            return
        received = self.observations.received
        if any(received[t] <= self._acted_on[t] for t in received):
            return
        self._acted_on = dict(received)
        self._publish(*self.operator.act(self.observations.assemble()))

    def _republish(self) -> None:
        if self._last is not None:
            self._publish(*self._last)

    def _publish(self, action, engaged: bool) -> None:
        self._last = (action, engaged)
        self._action_pub.publish(convert.array_to_msg(action, self._action_msg))
        self._engaged_pub.publish(convert.bool_to_msg(engaged))
        self.counts["published"] += 1

    def status(self) -> dict:
        op = self.operator
        return {"mode": self.mode, "episode": op.episode, "step": op.step, **op.counts,
                **self.counts}


def main(args=None) -> int:
    """Console entry point: `scripted_teleop --ros-args -p config:=sim_reach.yaml`."""
    # ConfigError (a ValueError), or a task without a scripted expert (RuntimeError)
    node = start_node(ScriptedTeleopNode, NODE_NAME, (ValueError, RuntimeError), args)
    return start_failed() if node is None else spin_node(node)


if __name__ == "__main__":
    raise SystemExit(main())
