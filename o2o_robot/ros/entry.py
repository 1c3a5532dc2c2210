"""Console entry points of the nodes (`ros2 run o2o_robot actor_node`, what the launch files
start). Each one installs the start-up signal guard before importing its node's module: a
Ctrl-C during the imports (rclpy, numpy, onnxruntime: about a second) then stops the process
quietly with exit 0 instead of a KeyboardInterrupt traceback. Nothing heavy is imported here.
"""
from __future__ import annotations

import importlib
import signal
import sys
import threading


# Set by a SIGINT/SIGTERM from the start of the process to `spin_node` (`ros/spin.py` reads it).
INTERRUPTED = threading.Event()


def guard_signals() -> None:
    """SIGINT/SIGTERM set `INTERRUPTED` instead of raising KeyboardInterrupt (main thread)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: INTERRUPTED.set())


def ignore_signals() -> None:
    """SIGINT and SIGTERM are ignored from now on (a process on its way out): Python's own
    finalisation puts back the default action of a handler it installed, so a second Ctrl-C
    (`ros2 launch` sends two) would otherwise kill a process that is stopping cleanly."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


def _run(module: str) -> int:
    guard_signals()
    try:
        main = importlib.import_module(module).main
        return 0 if INTERRUPTED.is_set() else main()
    finally:
        ignore_signals()


def actor_node() -> int:
    return _run("o2o_robot.ros.actor_node")


def learner_node() -> int:
    return _run("o2o_robot.ros.learner_node")


def sim_bridge() -> int:
    return _run("o2o_robot.ros.sim_bridge_node")


def teleop_node() -> int:
    return _run("o2o_robot.ros.teleop_node")


def keyboard_teleop() -> int:
    return _run("o2o_robot.ros.keyboard_teleop")


def scripted_teleop() -> int:
    return _run("o2o_robot.ros.scripted_teleop_node")


if __name__ == "__main__":
    # `python -m o2o_robot.ros.entry MODULE`: run through the package's copy of this module, the
    # one the nodes import, so that there is one INTERRUPTED (a signal caught by this __main__
    # copy's guard after the node's import was lost, and the node ran on: 1 start in 3).
    from o2o_robot.ros import entry

    sys.exit(entry._run(sys.argv.pop(1)))
