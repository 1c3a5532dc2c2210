"""TeleopNode (`o2o_teleop`): a Joy device -> the actor's teleop and operator inputs.

  in   `teleop.joy_topic` (sensor_msgs/Joy) from a gamepad driver (`joy_node`), a spacemouse
       driver (`spacenav`) or `keyboard_teleop`; read reliable (those drivers publish with the
       default QoS, reliable): a lost message could lose a button press. A best-effort
       publisher does not match (ROS2_NOTES.md); republish it reliable if yours is one
  out  `teleop/action` (Float64MultiArray, physical units) and `teleop/engaged` (Bool), on every
       Joy message and again at `teleop.rate_hz` while the device is fresh (drivers publish
       only on change); after `teleop.joy_timeout_ms` without a message both go silent, so an
       engaged actor holds instead of acting on an old command (and never falls back to the
       policy on its own)
       `operator/success`, `operator/failure` (Bool True) on those buttons' presses
       `safety.estop_topic` (Bool, latched) True on the e-stop press, False on its release (the
       actor keeps the e-stop latched until `~/clear_estop`)
       `~/status` (String, JSON, 1 Hz): device, counts, the last refused message's reason
  params  config (read-only), device ("" = `teleop.device`; gamepad | spacemouse | keyboard)

The mapping (axes, scales, deadzones, buttons) is `teleop.joy_profile(device)`, see
`o2o_robot.teleop.joy`. A Joy message the profile cannot read (too few axes or buttons, NaN) is
dropped, counted and warned about, naming the profile key.
"""
from __future__ import annotations

import time

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from sensor_msgs.msg import Joy
from std_msgs.msg import Bool, Float64MultiArray, String

from o2o_robot.config import JOY_PROFILES, O2OConfig, load_config, resolve_config_path
from o2o_robot.ros import convert, qos
from o2o_robot.ros.spin import spin_node, start_failed, start_node
from o2o_robot.teleop.joy import JoyError, JoyMapper, JoyOutput

NODE_NAME = "o2o_teleop"
DEFAULT_CONFIG = "sim_reach.yaml"
WARN_EVERY_S = 5.0


class TeleopNode(Node):
    """Maps Joy messages through a device profile; see the module docstring."""

    def __init__(self, config: O2OConfig | None = None, **node_kwargs):
        super().__init__(node_kwargs.pop("node_name", NODE_NAME), **node_kwargs)
        text = lambda d: ParameterDescriptor(description=d, read_only=True)  # noqa: E731
        self.declare_parameter("config", DEFAULT_CONFIG, text(
            "config file: a path, or a file name in the package's config/ folder"))
        self.declare_parameter("device", "", text(
            "Joy profile: gamepad, spacemouse or keyboard ('' = the config's teleop.device)"))
        if config is None:
            config = load_config(resolve_config_path(self.get_parameter("config").value))
        self.cfg, teleop = config, config.teleop
        self.device = self.get_parameter("device").value or teleop.device
        if self.device not in JOY_PROFILES:
            raise ValueError(f"device: teleop_node maps Joy messages with one of "
                             f"{', '.join(JOY_PROFILES)}, got {self.device!r} (the scripted "
                             f"expert is `scripted_teleop`)")
        action = config.robot.action
        self.mapper = JoyMapper(teleop.joy_profile(self.device), action.low, action.high)
        self.period_s = 1.0 / teleop.rate_hz
        self.timeout_s = teleop.joy_timeout_ms / 1000.0
        self.counts = dict.fromkeys(["joy", "refused", "published", "timeouts", "success",
                                     "failure", "estop", "estop_released"], 0)
        self.last_refused = ""
        self._last: JoyOutput | None = None
        self._last_joy = self._last_pub = self._warned = -float("inf")
        self._silent = False
        self._action_msg = Float64MultiArray()
        self._action_pub = self.create_publisher(Float64MultiArray, qos.TELEOP_ACTION_TOPIC,
                                                 qos.STREAM)
        self._engaged_pub = self.create_publisher(Bool, qos.TELEOP_ENGAGED_TOPIC, qos.STREAM)
        self._event_pubs = {
            "success": self.create_publisher(Bool, qos.SUCCESS_TOPIC, qos.STREAM),
            "failure": self.create_publisher(Bool, qos.FAILURE_TOPIC, qos.STREAM),
            "estop": self.create_publisher(Bool, config.safety.estop_topic, qos.LATCHED)}
        self._status_pub = self.create_publisher(String, qos.STATUS_TOPIC, qos.STATUS)
        self.create_subscription(Joy, teleop.joy_topic, self._on_joy, qos.STREAM)
        self.create_timer(self.period_s, self._on_timer)
        self.create_timer(1.0, lambda: self._status_pub.publish(convert.status_to_msg(self.status())))
        self.get_logger().info(
            f"teleop: {self.device} profile on '{teleop.joy_topic}' -> "
            f"'{qos.TELEOP_ACTION_TOPIC}' ({config.robot.act_dim} dims), "
            f"'{qos.TELEOP_ENGAGED_TOPIC}', operator labels, '{config.safety.estop_topic}'")

    def _on_joy(self, msg: Joy) -> None:
        now = time.monotonic()
        self.counts["joy"] += 1
        try:
            out = self.mapper.map(msg.axes, msg.buttons)
        except JoyError as exc:
            self.counts["refused"] += 1
            self.last_refused = str(exc)
            if now - self._warned >= WARN_EVERY_S:
                self._warned = now
                self.get_logger().warning(f"dropped a Joy message ({self.counts['refused']} so "
                                          f"far): {exc}")
            return
        for event in out.events:
            self.counts[event] += 1
            topic = "estop" if event.startswith("estop") else event
            self._event_pubs[topic].publish(convert.bool_to_msg(event != "estop_released"))
            if event == "estop":
                self.get_logger().error("E-STOP pressed")
        self._last, self._last_joy = out, now
        if self._silent:
            self.get_logger().info("Joy messages again: teleop resumes")
            self._silent = False
        self._publish(out, now)

    def _on_timer(self) -> None:
        now = time.monotonic()
        if self._last is None:
            return
        if now - self._last_joy > self.timeout_s:
            if not self._silent:
                self._silent = True
                self.counts["timeouts"] += 1
                self.get_logger().warning(
                    f"no Joy message on '{self.cfg.teleop.joy_topic}' for "
                    f"{self.cfg.teleop.joy_timeout_ms:g} ms: teleop silent (an engaged actor holds)")
            return
        if now - self._last_pub >= 0.9 * self.period_s:   # not just sent for a Joy message
            self._publish(self._last, now)

    def _publish(self, out: JoyOutput, now: float) -> None:
        # The action first: an actor that sees `engaged` should already have the command.
        self._action_pub.publish(convert.array_to_msg(out.action, self._action_msg))
        self._engaged_pub.publish(convert.bool_to_msg(out.engaged))
        self._last_pub = now
        self.counts["published"] += 1

    def status(self) -> dict:
        last = self._last
        return {"device": self.device, **self.counts, "last_refused": self.last_refused,
                "silent": self._silent, "engaged": bool(last and last.engaged),
                "action": None if last is None else last.action}


def main(args=None) -> int:
    """Console entry point: `teleop_node --ros-args -p config:=my_robot.yaml -p device:=gamepad`."""
    # ConfigError, or a profile that does not fit the robot (both ValueErrors)
    node = start_node(TeleopNode, NODE_NAME, (ValueError,), args)
    return start_failed() if node is None else spin_node(node)


if __name__ == "__main__":
    raise SystemExit(main())
