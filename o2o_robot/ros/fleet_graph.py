"""The processes of a sim fleet and the supervisor's view of them (`o2o-robot fleet`, the fleet
tests, benchmarks/fleet.py).

`Fleet`: one learner node and, per robot i, a sim bridge and an actor node with
`learner:=remote` in namespace /robot<i>, each a `python -m` process as `ros2 run` starts it,
with its resolved config in <run_dir>/configs/ (robot i: its own sim seeds, so the robots see
different episodes, and its own run dir <run_dir>/robots/robot<i>/ for its spool) and its log
in <run_dir>/logs/. Each runs in a session of its own: a terminal's Ctrl-C reaches only the
supervisor, which stops them in the order a run needs. `Monitor`: a node of the supervisor's
own that keeps the actors' `~/status` and `~/episode` events and the learner's `~/status`.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import rclpy
import yaml
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import String

from o2o_robot.config import ConfigError, O2OConfig
from o2o_robot.ros import qos
from o2o_robot.ros.graph import spin_executor

STOP_TIMEOUT_S = 60.0
SEED_STRIDE = 1000            # robot i's sim seeds start at sim.seed + SEED_STRIDE * (i + 1)
MODULES = {"learner": "o2o_robot.ros.learner_node", "sim": "o2o_robot.ros.sim_bridge_node",
           "actor": "o2o_robot.ros.actor_node"}


def robot_name(i: int) -> str:
    return f"robot{i}"


class Fleet:
    """The processes of a sim fleet (module docstring): start, signal, restart, stop."""

    def __init__(self, cfg: O2OConfig, robots: int, run_dir: str | Path, *,
                 domain_id: int | None = None):
        if robots < 1:
            raise ConfigError(f"--robots: must be >= 1, got {robots}")
        self.run_dir = Path(run_dir)
        self.cfg = cfg.with_run_dir(self.run_dir)
        self.names = [robot_name(i) for i in range(robots)]
        self.env = {**os.environ, "RCUTILS_LOGGING_BUFFERED_STREAM": "0", "PYTHONUNBUFFERED": "1"}
        if domain_id is not None:
            self.env["ROS_DOMAIN_ID"] = str(domain_id)
        self.procs: dict[str, subprocess.Popen] = {}
        self.configs = {"learner": self._write("learner", self.cfg)}
        for i, name in enumerate(self.names):
            self.configs[name] = self._write(name, self.robot_config(i))

    def robot_config(self, i: int) -> O2OConfig:
        """Robot i's config: its name, its sim seeds, its own run dir (its spool)."""
        cfg = self.cfg.model_copy(deep=True)
        cfg.fleet.robot_id = robot_name(i)
        cfg.train.run_dir = str(self.run_dir / "robots" / robot_name(i))
        cfg.sim.seed = self.cfg.sim.seed + SEED_STRIDE * (i + 1)
        return cfg

    def _write(self, name: str, cfg: O2OConfig) -> Path:
        path = self.run_dir / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return path

    def start(self, name: str) -> subprocess.Popen:
        """Start "learner", "sim:<robot>" or "actor:<robot>" (its log appends to logs/)."""
        kind, _, robot = name.partition(":")
        args = ["--ros-args", "-p", f"config:={self.configs[robot or 'learner']}"]
        if robot:
            args += ["-r", f"__ns:=/{robot}"]
        if kind == "actor":
            args += ["-p", "learner:=remote"]
        log = self.run_dir / "logs" / f"{name.replace(':', '_')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as out:
            # A session of its own: a terminal's Ctrl-C reaches the supervisor only, which
            # stops the processes in the order the run needs.
            # Through ros/entry.py, as `ros2 run` starts the console scripts.
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "o2o_robot.ros.entry",
                                                 MODULES[kind], *args],
                                                stdout=out, stderr=subprocess.STDOUT,
                                                env=self.env, start_new_session=True)
        return self.procs[name]

    def start_all(self) -> None:
        self.start("learner")
        for name in self.names:
            self.start(f"sim:{name}")
            self.start(f"actor:{name}")

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def signal(self, name: str, signum: int) -> None:
        if self.alive(name):
            os.killpg(self.procs[name].pid, signum)

    def stop(self, names: list[str], timeout_s: float = STOP_TIMEOUT_S) -> dict[str, int | None]:
        """SIGINT to each, wait for all (SIGKILL past `timeout_s`); their exit codes."""
        for name in names:
            self.signal(name, signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        codes = {}
        for name in names:
            proc = self.procs.get(name)
            if proc is None:
                continue
            try:
                codes[name] = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.signal(name, signal.SIGKILL)
                codes[name] = proc.wait()
        return codes

    def kill_all(self) -> None:
        """SIGKILL whatever still runs (a test's or a crash's last resort)."""
        for name in list(self.procs):
            self.signal(name, signal.SIGKILL)
            self.procs[name].wait()


class Monitor:
    """The supervisor's view of the graph: statuses and episode events, from a node of its own."""

    def __init__(self, names: list[str], domain_id: int | None = None):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("o2o_fleet_monitor", context=self.context)
        self.status: dict[str, dict] = {}
        self.learner: dict = {}
        self.episodes: queue.SimpleQueue = queue.SimpleQueue()
        for name in names:
            self.node.create_subscription(String, f"/{name}/o2o_actor/status",
                                          lambda m, n=name: self.status.__setitem__(
                                              n, json.loads(m.data)), qos.LATCHED)
            self.node.create_subscription(String, f"/{name}/o2o_actor/episode",
                                          lambda m, n=name: self.episodes.put(
                                              (n, json.loads(m.data))), qos.STREAM)
        self.node.create_subscription(String, "/o2o_learner/status",
                                      lambda m: setattr(self, "learner", json.loads(m.data)),
                                      qos.LATCHED)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=spin_executor, args=(self._executor,), daemon=True)
        self._thread.start()

    def serving(self, name: str) -> int | None:
        return (self.status.get(name) or {}).get("policy", {}).get("version")

    def link(self, name: str) -> str | None:
        stats = ((self.status.get(name) or {}).get("learner") or {}).get("stats") or {}
        return stats.get("state")

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
