"""Ctrl-C at any moment of a node's life, as `ros2 launch` delivers it: twice, 50 ms apart
(the terminal's SIGINT and the one launch forwards, ROS2_NOTES.md). During start-up (imports,
the node being built, the actor's learner starting) and while it runs, every node process
stops with exit 0 and no traceback."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from ros_helpers import ROOT, domain_id, kill_group, namespace, start_node_main

NODES = {"actor_node": "o2o_robot.ros.actor_node",
         "learner_node": "o2o_robot.ros.learner_node",
         "sim_bridge": "o2o_robot.ros.sim_bridge_node",
         "teleop_node": "o2o_robot.ros.teleop_node",
         "scripted_teleop": "o2o_robot.ros.scripted_teleop_node"}
# Seconds after the process starts: in the imports, in the node's construction (and the
# actor's learner start) on a loaded 2-core machine, and once it runs.
DELAYS_S = (0.3, 1.0, 2.5, 6.0)


@pytest.mark.parametrize("name", NODES)
def test_two_sigints_at_any_moment_stop_a_node_cleanly(name, tmp_path):
    config = tmp_path / "robot.yaml"
    # teleop_node maps a Joy device: the packaged sim config's teleop device is the scripted one.
    config.write_text(f"base: {Path(ROOT) / 'config' / 'sim_reach.yaml'}\nteleop:\n  device: gamepad\n"
                      f"train:\n  run_dir: {tmp_path / 'run'}\n"
                      f"store:\n  path: {tmp_path / 'run' / 'store.zarr'}\n")
    for i, delay in enumerate(DELAYS_S):
        proc, lines = start_node_main(NODES[name], ["-p", f"config:={config}"],
                                      namespace(f"sig_{name}_{i}"), domain_id(3), tmp_path,
                                      entry=True)
        try:
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
