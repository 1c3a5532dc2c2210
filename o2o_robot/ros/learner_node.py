"""LearnerNode (`o2o_learner`): one `LearnerCore` fed by any number of robots over ROS 2.

    ros2 run o2o_robot learner_node --ros-args -p config:=my_robot.yaml
    ros2 launch o2o_robot learner.launch.py config:=my_robot.yaml

Graph (docs/fleet.md; topics under `fleet.topic_prefix`, payloads data/wire.py):

  in   transitions (UInt8MultiArray)  batches of rows from every robot's spool
       robots (String, JSON)          robot heartbeats: id, serving policy version, spool counts
  out  policy (UInt8MultiArray)       every exported policy, latched (a late robot gets it)
       acks (String, JSON)            per robot: rows held and rows committed; this learner's id
                                      and policy version; every `fleet.ack_period_s`, latched,
                                      from the executor thread (they are the liveness signal)
       ~/status (String, JSON, 1 Hz)  learner counters, torch threads, and per robot: live,
                                      policy lag (learner version - serving version), rows
  params  config (read-only)

The loop (`FleetLearner.run`, the main thread; the node's callbacks only queue): batches go
through `FleetIngest` (idempotent by robot and sequence, whole episodes into the store), one
owed update per pass, every export published, the store committed and the robots acknowledged
every `fleet.ack_period_s`, a checkpoint every `learner.checkpoint_every_steps` env steps and at
the end. It starts by resuming the run dir's checkpoint, including the rows it acknowledged
after it (`LearnerCore.open(adopt_tail=True)`), and checkpoints at once, so a learner killed at
any point restarts with every acknowledged row. Robots that leave are reported, learning goes
on with the others. CUDA is used when present (`learner.device: auto`); on CPU the thread count
follows the free cores (`learner.torch_threads: auto`, learning/threads.py).
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from pathlib import Path

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import String, UInt8MultiArray

from o2o_robot.config import O2OConfig, load_config, resolve_config_path
from o2o_robot.data.wire import WireError, decode_batch, decode_json, encode_json, encode_policy
from o2o_robot.ros import convert, qos
from o2o_robot.ros.graph import spin_executor

NODE_NAME = "o2o_learner"
DEFAULT_CONFIG = "sim_reach.yaml"
INBOX_BATCHES = 2000          # decoded batches waiting for the loop; beyond: dropped, resent
STATUS_PERIOD_S = 1.0
LOG_PERIOD_S = 5.0


class LearnerNode(Node):
    """The learner's ROS 2 interface (module docstring); the loop lives in `FleetLearner`."""

    def __init__(self, config: O2OConfig | None = None, **node_kwargs):
        super().__init__(node_kwargs.pop("node_name", NODE_NAME), **node_kwargs)
        self.declare_parameter("config", DEFAULT_CONFIG, ParameterDescriptor(
            description="config file: a path, or a file name in the package's config/ folder",
            read_only=True))
        if config is None:
            config = load_config(resolve_config_path(self.get_parameter("config").value))
        self.cfg = config
        topic = lambda name: qos.fleet_topic(config.fleet.topic_prefix, name)  # noqa: E731
        self.batches: deque = deque(maxlen=INBOX_BATCHES)
        self.heartbeats: deque = deque(maxlen=INBOX_BATCHES)
        self.counts = dict.fromkeys(["batches_in", "bad_messages", "inbox_dropped"], 0)
        self.last_bad = ""
        self.create_subscription(UInt8MultiArray, topic(qos.FLEET_TRANSITIONS), self._on_batch,
                                 qos.FLEET_STREAM)
        self.create_subscription(String, topic(qos.FLEET_ROBOTS), self._on_robot, qos.STREAM)
        self.policy_pub = self.create_publisher(UInt8MultiArray, topic(qos.FLEET_POLICY),
                                                qos.FLEET_LATCHED)
        self.acks_pub = self.create_publisher(String, topic(qos.FLEET_ACKS), qos.FLEET_LATCHED)
        self.status_pub = self.create_publisher(String, qos.STATUS_TOPIC, qos.STATUS)
        # The acks double as the learner's heartbeat, so they go out from this (the executor's)
        # thread: a loop pass that takes long (an export under load) must not look like a
        # learner that is gone. The loop only replaces the document after each commit.
        self.acks: dict | None = None
        self.create_timer(config.fleet.ack_period_s, self._publish_acks)

    def _publish_acks(self) -> None:
        if self.acks is not None:
            self.acks_pub.publish(String(data=encode_json("acks", self.acks)))

    def _on_batch(self, msg: UInt8MultiArray) -> None:
        try:
            batch = decode_batch(msg.data)
        except WireError as exc:
            self._bad(str(exc))
            return
        self.counts["inbox_dropped"] += len(self.batches) == self.batches.maxlen
        self.counts["batches_in"] += 1
        self.batches.append(batch)

    def _on_robot(self, msg: String) -> None:
        try:
            doc = decode_json(msg.data, "robot")
            self.heartbeats.append((str(doc["robot"]), doc, time.monotonic()))
        except (WireError, KeyError) as exc:
            self._bad(f"robot heartbeat: {exc}")

    def _bad(self, why: str) -> None:
        self.counts["bad_messages"] += 1
        self.last_bad = why
        self.get_logger().warning(f"dropped a fleet message: {why}", throttle_duration_sec=5.0)


class FleetLearner:
    """The learner node's loop around `LearnerCore` (module docstring)."""

    def __init__(self, node: LearnerNode, run_dir: str | Path | None = None):
        from o2o_robot.data.store import TransitionStore
        from o2o_robot.learning.core import LearnerCore
        from o2o_robot.learning.fleet import FleetIngest, RobotTable
        from o2o_robot.learning.threads import ThreadTuner

        cfg = self.cfg = node.cfg
        self.node, self.id = node, uuid.uuid4().hex[:8]
        self.threads = ThreadTuner(cfg.learner.torch_threads)   # a learner on its own box
        self.store = TransitionStore.open_or_create(cfg.store.path, cfg.robot.obs_dim,
                                                    cfg.robot.act_dim,
                                                    flush_every=cfg.store.flush_every)
        try:
            self.core = LearnerCore.open(cfg, self.store, run_dir or cfg.train.run_dir,
                                         resume=True, adopt_tail=True)
            self.ingest = FleetIngest(self.core)
        except BaseException:
            self.store.close()
            raise
        self.table = RobotTable(cfg.fleet.lease_s)
        self.results = dict.fromkeys(["ok", "duplicate", "gap", "refused"], 0)
        self._last_checkpoint = self.core.state.env_steps

    def _newer_than(self, version) -> None:
        """Versions stay increasing across a restart that resumed an older checkpoint: besides
        the run dir's newest policy file (`LearnerCore.open`), the next export is numbered after
        any version a robot serves, so robots keep the learner's numbering (their slots would
        renumber a policy older than the one they serve)."""
        if isinstance(version, int) and version > self.core.state.policy_version:
            self.core.state.policy_version = version

    def run(self, stop: threading.Event) -> dict:
        """Learn until `stop`; then commit, checkpoint and close the store. Returns the report."""
        core, fleet, log = self.core, self.cfg.fleet, self.node.get_logger()
        try:
            self._acknowledge()                # robots see us (and what we hold) from now on
            core.pretrain(log=lambda step, m: log.info(f"pre-training: {step} steps"))
            core.export()                      # the warm-up policy, or the resumed agent's
            self._publish_policy()
            core.checkpoint()                  # from now on a restart adopts what we acknowledge
            log.info(f"learner {self.id}: policy v{core.state.policy_version}, "
                     f"{len(self.store)} rows, robots known: {sorted(self.ingest.robots) or 'none'}")
            next_ack = next_status = next_log = 0.0
            while not stop.is_set():
                now = time.monotonic()
                self.threads.maybe_adjust(now)
                got = self._take_batches() + self._take_heartbeats()
                stepped = core.step()
                self._publish_policy()         # an export of this step, or of warm-up's end
                if not stepped and not got:
                    time.sleep(0.002)
                if now >= next_ack:
                    next_ack = now + fleet.ack_period_s
                    self._acknowledge()
                if now >= next_status:
                    next_status = now + STATUS_PERIOD_S
                    self._report(now, log, log_line=now >= next_log)
                    next_log = next_log if now < next_log else now + LOG_PERIOD_S
        finally:
            self.ingest.commit()
            core.checkpoint()
            self.store.close()
        return self.report("stopped", time.monotonic())

    def _take_batches(self) -> int:
        n = 0
        while self.node.batches:
            result = self.ingest.offer(self.node.batches.popleft())
            self.results[result.split(":")[0]] += 1
            n += 1
        steps = self.core.state.env_steps
        if steps - self._last_checkpoint >= self.cfg.learner.checkpoint_every_steps:
            self.ingest.commit()
            self.core.checkpoint()
            self._last_checkpoint = steps
        return n

    def _take_heartbeats(self) -> int:
        n = 0
        while self.node.heartbeats:
            robot, doc, at = self.node.heartbeats.popleft()
            self.table.heard(robot, doc, at)
            self._newer_than(doc.get("serving_version"))
            n += 1
        return n

    def _publish_policy(self) -> None:
        data = self.core.pop_export()
        if data is not None:
            msg = UInt8MultiArray()
            msg.data = encode_policy(data, self.core.state.policy_version, self.id, time.time())
            self.node.policy_pub.publish(msg)

    def _acknowledge(self) -> None:
        """Commit the store; the next acks the node publishes say so."""
        self.ingest.commit()
        self.node.acks = {"learner": self.id, "policy_version": self.core.state.policy_version,
                          "robots": self.ingest.acks()}

    def report(self, state: str, now: float) -> dict:
        """The learner's state (`~/status`): core counters, threads, and per robot."""
        version = self.core.state.policy_version
        robots = self.table.report(now, version)
        for name, log in self.ingest.robots.items():
            robots.setdefault(name, {"live": False})
            robots[name].update({"rows": log.acked, "received": log.received, **log.counts,
                                 "problem": log.problem})
        return {**self.core.report(state), "owed_updates": self.core.owed,
                **self.threads.report(), "learner": self.id,
                "robots": robots, "live_robots": self.table.live(now), "batches": self.results,
                **self.node.counts, "last_bad_message": self.node.last_bad}

    def _report(self, now: float, log, log_line: bool) -> None:
        self.table.check(now)
        for robot, event in self.table.events:
            log.info(f"robot '{robot}' {event}")
        self.table.events.clear()
        status = self.report("running", now)
        self.node.status_pub.publish(convert.status_to_msg(status))
        if log_line and self.core.owed > 0 and not self.core.ready():
            log.warning(f"{self.core.owed} updates owed but the batch plan cannot draw: "
                        f"sampler.offline_ratio {self.cfg.sampler.offline_ratio} needs demo-side "
                        f"rows in {self.cfg.store.path} (o2o-robot data import / demos)")
        if log_line:
            lags = ", ".join(f"{r} (lag {v.get('policy_lag')}, {v.get('rows', 0)} rows)"
                             for r, v in status["robots"].items() if v.get("live"))
            log.info(f"v{status['policy_version']} updates {status['updates']} env steps "
                     f"{status['env_steps']} utd {status['achieved_utd']:.1f}/"
                     f"{self.cfg.learner.utd_ratio} threads {status['torch_threads']}; live "
                     f"{len(status['live_robots'])}: {lags or 'none'}")


def main(args=None) -> int:
    """Console entry point (`learner_node`, through `ros/entry.py`): exit 0 after SIGINT/SIGTERM
    (also one during start-up), 1 when it cannot start (a bad config, a store that does not fit
    or is locked)."""
    from o2o_robot.data.store import StoreError
    from o2o_robot.ros.entry import INTERRUPTED
    from o2o_robot.ros.spin import guard_start_up, ignore_signals, start_failed

    guard_start_up()                           # a signal sets INTERRUPTED: the loop's stop
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = learner = None
    try:
        node = LearnerNode()
        if node.cfg.learner.torch_threads == "auto":
            from o2o_robot.learning.threads import prefer_passive_omp

            prefer_passive_omp()               # before torch loads (learning/threads.py)
        learner = FleetLearner(node)
    except (ValueError, StoreError, OSError) as exc:    # ConfigError is a ValueError
        rclpy.logging.get_logger(NODE_NAME).fatal(str(exc))
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        return start_failed()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=spin_executor, args=(executor,), daemon=True)
    spinner.start()
    try:
        final = learner.run(INTERRUPTED)
        node.get_logger().info(f"stopped: v{final['policy_version']}, {final['updates']} "
                               f"updates, {final['store_rows']} rows")
    finally:
        ignore_signals()                       # a second Ctrl-C must not cut the shutdown
        executor.remove_node(node)
        executor.shutdown(timeout_sec=5.0)
        spinner.join(timeout=5.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
