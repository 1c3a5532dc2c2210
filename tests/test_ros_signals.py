"""Ctrl-C at any moment of a node's life, as `ros2 launch` delivers it: twice, 50 ms apart
(the terminal's SIGINT and the one launch forwards, ROS2_NOTES.md). During start-up (imports,
the node being built, the actor's learner starting) and while it runs, every node process
stops with exit 0 and no traceback."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from ros_helpers import ROOT, domain_id, kill_group, namespace, start_node_main, wait_for

NODES = {"actor_node": "o2o_robot.ros.actor_node",
         "learner_node": "o2o_robot.ros.learner_node",
         "sim_bridge": "o2o_robot.ros.sim_bridge_node",
         "teleop_node": "o2o_robot.ros.teleop_node",
         "scripted_teleop": "o2o_robot.ros.scripted_teleop_node"}
# Seconds after the entry point's guard is in place (`guarded`): in the imports, in the node's
# construction (and the actor's learner start) on a loaded 2-core machine, and once it runs.
# Before the guard, the interpreter itself is starting (the ROS wheels' .pth hook even
# re-executes it): no code of ours can run there, and a signal kills it as it would any program.
DELAYS_S = (0.0, 0.5, 1.5, 5.0)


def guarded(pid: int) -> bool:
    """Whether process `pid` catches SIGTERM, which the entry point's guard is the first to do
    (Python itself leaves SIGTERM at its default): /proc/PID/status, SigCgt bit mask."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except FileNotFoundError:
        return False
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:"))
                 .split()[1], 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


@pytest.mark.parametrize("name", NODES)
def test_two_sigints_at_any_moment_stop_a_node_cleanly(name, tmp_path):
    config = tmp_path / "robot.yaml"
    # teleop_node maps a Joy device: the packaged sim config's teleop device is the scripted one.
    # offline_ratio 0: the actor's learner starts on an empty store (with the default 0.5 the
    # actor refuses a store without demonstrations at start).
    config.write_text(f"base: {Path(ROOT) / 'config' / 'sim_reach.yaml'}\nteleop:\n  device: gamepad\n"
                      f"sampler:\n  offline_ratio: 0\n"
                      f"train:\n  run_dir: {tmp_path / 'run'}\n"
                      f"store:\n  path: {tmp_path / 'run' / 'store.zarr'}\n")
    for i, delay in enumerate(DELAYS_S):
        proc, lines = start_node_main(NODES[name], ["-p", f"config:={config}"],
                                      namespace(f"sig_{name}_{i}"), domain_id(3), tmp_path,
                                      entry=True)
        try:
            wait_for(lambda: guarded(proc.pid) or proc.poll() is not None, 60.0,
                     "the entry point's signal guard")
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=60)
        finally:
            kill_group(proc)
        time.sleep(0.1)   # the reader thread has the last lines
        text = "".join(lines)
        assert code == 0 and "Traceback" not in text, f"{name}, SIGINT after {delay} s:\n{text}"
