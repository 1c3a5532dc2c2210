"""KeyboardTeleopNode (`o2o_keyboard`): the terminal as a Joy device, for people without one.

It reads keys from its terminal (cbreak mode: no Enter needed, no echo; Ctrl-C still stops it)
and publishes sensor_msgs/Joy on `teleop.joy_topic` at `teleop.rate_hz` in the layout of
`o2o_robot.teleop.keyboard` (the "keyboard" profile). `teleop_node` with `device:=keyboard`
maps it to the actor's inputs, as for a gamepad:

    ros2 run o2o_robot keyboard_teleop --ros-args -p config:=my_robot.yaml      # terminal 1
    ros2 run o2o_robot teleop_node --ros-args -p config:=my_robot.yaml -p device:=keyboard

It needs an interactive terminal: with stdin not a TTY (a launch file, a pipe) it exits 1 at
once saying so. params: config (read-only), key_hold_ms (how long a key press deflects its
axis; longer than the terminal's key-repeat delay).
"""
from __future__ import annotations

import os
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from sensor_msgs.msg import Joy

from o2o_robot.config import O2OConfig, load_config, resolve_config_path
from o2o_robot.ros import qos
from o2o_robot.ros.spin import spin_node, start_failed, start_node
from o2o_robot.teleop.keyboard import HELP, KeyboardJoy, split_keys

NODE_NAME = "o2o_keyboard"
DEFAULT_CONFIG = "sim_reach.yaml"
NOT_A_TTY = ("keyboard_teleop needs an interactive terminal, but stdin is not a TTY: run it in "
             "a terminal of its own (`ros2 run o2o_robot keyboard_teleop`), not from a launch "
             "file or a pipe")


class KeyboardTeleopNode(Node):
    """Publishes the key state as Joy; `feed(text)` is called with what the terminal typed."""

    def __init__(self, config: O2OConfig | None = None, **node_kwargs):
        super().__init__(node_kwargs.pop("node_name", NODE_NAME), **node_kwargs)
        self.declare_parameter("config", DEFAULT_CONFIG, ParameterDescriptor(
            description="config file: a path, or a file name in the package's config/ folder",
            read_only=True))
        self.declare_parameter("key_hold_ms", 600.0, ParameterDescriptor(
            description="a key press deflects its axis this long (ms)", read_only=True))
        if config is None:
            config = load_config(resolve_config_path(self.get_parameter("config").value))
        self.cfg = config
        self.keys = KeyboardJoy(hold_s=self.get_parameter("key_hold_ms").value / 1000.0)
        self._mu = threading.Lock()    # the terminal thread presses, the timer reads
        self._pub = self.create_publisher(Joy, config.teleop.joy_topic, qos.STREAM)
        self.create_timer(1.0 / config.teleop.rate_hz, self._publish)
        self.get_logger().info(f"keyboard teleop: Joy on '{config.teleop.joy_topic}'")

    def feed(self, text: str) -> list[str]:
        """Apply typed text; returns the lines to show the operator."""
        now = time.monotonic()
        with self._mu:
            notes = [self.keys.press(key, now) for key in split_keys(text)]
        return [n for n in notes if n]

    def release(self, why: str) -> None:
        """The keyboard is gone: stop driving (an engaged flag must not outlive its operator)."""
        with self._mu:
            self.keys.engaged = False
        self.get_logger().warning(f"keyboard input ended ({why}): teleop released")

    def _publish(self) -> None:
        with self._mu:
            axes, buttons = self.keys.joy(time.monotonic())
        msg = Joy(axes=axes, buttons=buttons)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._pub.publish(msg)


class TerminalReader:
    """Context manager: stdin in cbreak mode, a thread handing typed text to `on_text` (which
    returns lines to print). The terminal is restored on exit, whatever happened."""

    def __init__(self, on_text: Callable[[str], list[str]], stream=None,
                 on_end: Callable[[str], None] | None = None):
        self.stream = stream or sys.stdin
        if not self.stream.isatty():
            raise OSError(NOT_A_TTY)
        self.on_text, self.on_end = on_text, on_end
        self._fd = self.stream.fileno()
        self._saved = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keyboard", daemon=True)

    def __enter__(self) -> "TerminalReader":
        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)
        print(HELP, flush=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(1.0)
        try:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
        except termios.error:   # the terminal is gone: there is nothing left to restore
            pass

    def _run(self) -> None:
        why = "stopped"
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([self._fd], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(self._fd, 64)
                if not data:
                    why = "the terminal went away"
                    return
                for line in self.on_text(data.decode(errors="ignore")):
                    print(f"[keyboard] {line}", flush=True)
        except Exception as exc:   # noqa: BLE001 (reported through on_end, then the thread ends)
            why = f"{type(exc).__name__}: {exc}"
        finally:
            if self.on_end is not None:
                self.on_end(why)


def main(args=None) -> int:
    """Console entry point: `keyboard_teleop --ros-args -p config:=my_robot.yaml`."""
    if not sys.stdin.isatty():
        print(NOT_A_TTY, file=sys.stderr, flush=True)
        return 1
    node = start_node(KeyboardTeleopNode, NODE_NAME, (ValueError,), args)   # ConfigError
    if node is None:
        return start_failed()
    with TerminalReader(node.feed, on_end=node.release):
        return spin_node(node)


if __name__ == "__main__":
    raise SystemExit(main())
