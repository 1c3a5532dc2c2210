"""`FleetClient`: a robot's learner when the learner is a fleet learner node (`learner:=remote`).

It is the actor node's `Learner` (submit / poll_policy / stats, none of them blocking): the
tick only appends to a bounded queue. Everything else runs on the client's own threads and its
own rclpy Context (so it can hand its last rows over after the actor's context went down):

* the spool thread: queued items -> `Spool` (durable, numbered; data/spool.py), the `Sender`'s
  next batches -> `transitions`, a heartbeat -> `robots` every `fleet.heartbeat_period_s`
  (robot id, serving policy version, spool counts), and the learner's liveness: no acks for
  `fleet.lease_s` means "learner lost": nothing is sent, the actor keeps its last good policy,
  the spool keeps growing; when acks come again it resends from what the learner holds;
* the executor thread: `acks` (latched: a restarted robot learns at once what the learner
  holds of it) and `policy` (latched: a robot that joins late gets the current one at once;
  `poll_policy` returns the newest, the actor validates it off the tick as always).

Topics and payloads: docs/fleet.md, data/wire.py. A learner that holds more rows of this robot
than its spool (another robot with the same `fleet.robot_id`, or a spool that was deleted) is a
conflict: the client stops sending and says so.
"""
from __future__ import annotations

import socket
import threading
import time
from collections import deque
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import String, UInt8MultiArray

from o2o_robot.config import O2OConfig
from o2o_robot.data.schema import EpisodeEnd, Transition
from o2o_robot.data.spool import Sender, Spool
from o2o_robot.data.wire import (WireError, decode_json, decode_policy, encode_batch,
                                 encode_json)
from o2o_robot.ros import qos

NODE_NAME = "o2o_fleet_client"
IDLE_SLEEP_S = 0.005
WAITING, CONNECTED, LOST, CONFLICT = "waiting for the learner", "connected", "learner lost", \
    "conflict"


def robot_id_for(cfg: O2OConfig, namespace: str) -> str:
    """`fleet.robot_id`, else the namespace without its leading '/', else the host name."""
    return cfg.fleet.robot_id or namespace.strip("/").replace("/", "_") or socket.gethostname()


def spool_path_for(cfg: O2OConfig, robot_id: str) -> Path:
    """`fleet.spool_path`, else <train.run_dir>/spool/<robot id>.zarr."""
    return Path(cfg.fleet.spool_path or Path(cfg.train.run_dir) / "spool" / f"{robot_id}.zarr")


class FleetClient:
    """The remote learner of one robot (module docstring)."""

    def __init__(self, cfg: O2OConfig, *, robot_id: str, namespace: str = "",
                 domain_id: int | None = None, serving_version=lambda: None, logger=None):
        fleet = cfg.fleet
        self.cfg, self.robot_id, self.serving_version = cfg, robot_id, serving_version
        self.spool = Spool(spool_path_for(cfg, robot_id), cfg.robot.obs_dim, cfg.robot.act_dim,
                           commit_rows=fleet.batch_rows, commit_period_s=fleet.commit_period_s,
                           spec={"robot_id": robot_id})
        self.sender = Sender(batch_rows=fleet.batch_rows, window_rows=fleet.window_rows,
                             resend_after_s=fleet.resend_after_s)
        self.state, self.dropped, self.submitted = WAITING, 0, 0
        self._queue: deque = deque()
        self._limit = cfg.learner.queue_size
        self._mu = threading.Lock()
        self._acks: tuple | None = None            # (learner, acked, received, policy_version)
        self._heard_at: float | None = None
        self._policy: bytes | None = None
        self.policy_header: dict = {}
        self.bad_messages = self.errors = self.bytes_sent = 0
        self.last_error = ""
        self._stop, self._closing = threading.Event(), threading.Event()
        self._domain_id, self._namespace = domain_id, namespace
        self._logger = logger
        self._connect()
        self._spool_thread = threading.Thread(target=self._run, name="fleet-spool", daemon=True)
        self._spool_thread.start()
        self.log.info(f"fleet robot '{robot_id}': spool {spool_path_for(cfg, robot_id)} "
                      f"({self.spool.recovered} rows kept), learner topics under "
                      f"{fleet.topic_prefix}")

    # ------------------------------------------------------------------ the actor's side
    def submit(self, item: Transition | EpisodeEnd) -> bool:
        """Queue an item for the spool; False (counted) when the queue is full. Never waits."""
        if len(self._queue) >= self._limit:
            self.dropped += 1
            return False
        self._queue.append(item)
        self.submitted += 1
        return True

    def poll_policy(self) -> bytes | None:
        """The newest policy the learner published since the last call, else None."""
        with self._mu:
            policy, self._policy = self._policy, None
        return policy

    def stats(self) -> dict:
        """The link's state (`state`: connected, learner lost, waiting, conflict) and counts."""
        with self._mu:
            acks, heard = self._acks, self._heard_at
        return {"state": self.state, "robot": self.robot_id,
                "learner": acks[0] if acks else None,
                "learner_policy_version": acks[3] if acks else None,
                "heard_s_ago": None if heard is None else round(time.monotonic() - heard, 2),
                "spooled": self.spool.rows, "sendable": self.spool.final_rows,
                "acked": self.sender.acked, "received": self.sender.received,
                "sent": self.sender.sent, **self.sender.counts, "queue_dropped": self.dropped,
                "submitted": self.submitted, "queued": len(self._queue),
                "bytes_sent": self.bytes_sent, "bad_messages": self.bad_messages,
                "errors": self.errors,
                "last_error": self.last_error}

    # --------------------------------------------------------------------- ROS callbacks
    def _on_acks(self, msg: String) -> None:
        try:
            doc = decode_json(msg.data, "acks")
            mine = doc.get("robots", {}).get(self.robot_id, {})   # not listed: holds none
            acks = (str(doc["learner"]), int(mine.get("acked", 0)), int(mine.get("received", 0)),
                    doc.get("policy_version"))
        except (WireError, KeyError, TypeError, ValueError) as exc:
            self._bad(f"acks: {exc}")
            return
        with self._mu:
            self._acks, self._heard_at = acks, time.monotonic()

    def _on_policy(self, msg: UInt8MultiArray) -> None:
        try:
            header, data = decode_policy(msg.data)
        except WireError as exc:
            self._bad(str(exc))
            return
        with self._mu:
            self._policy, self.policy_header = data, {**header, "received_at": time.time()}

    def _bad(self, why: str) -> None:
        self.bad_messages += 1
        self.log.warning(f"dropped a fleet message: {why}", throttle_duration_sec=5.0)

    # --------------------------------------------------------------------- ROS plumbing
    def _connect(self) -> None:
        """A context of our own (the actor's can go down first, see `close`), the node, its
        topics, and an executor thread."""
        fleet = self.cfg.fleet
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=self._domain_id,
                   signal_handler_options=SignalHandlerOptions.NO)   # the actor node's job
        self.node = rclpy.create_node(NODE_NAME, namespace=self._namespace, context=self.context)
        self.log = self._logger or self.node.get_logger()
        topic = lambda name: qos.fleet_topic(fleet.topic_prefix, name)  # noqa: E731
        self._transitions = self.node.create_publisher(
            UInt8MultiArray, topic(qos.FLEET_TRANSITIONS), qos.FLEET_STREAM)
        self._heartbeat = self.node.create_publisher(String, topic(qos.FLEET_ROBOTS), qos.STREAM)
        self.node.create_subscription(String, topic(qos.FLEET_ACKS), self._on_acks,
                                      qos.FLEET_LATCHED)
        self.node.create_subscription(UInt8MultiArray, topic(qos.FLEET_POLICY), self._on_policy,
                                      qos.FLEET_LATCHED)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._spin, name="fleet-executor", daemon=True)
        self._spinner.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except ExternalShutdownException:
            pass

    def _disconnect(self) -> None:
        self._executor.shutdown(timeout_sec=5.0)
        self._spinner.join(timeout=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def _publish(self, publisher, msg) -> bool:
        """Publish unless our context is down (a signal shuts every rclpy context of the
        process down); False then, and nothing is lost: the rows stay in the spool."""
        if not self.context.ok():
            return False
        try:
            publisher.publish(msg)
            return True
        except Exception as exc:   # noqa: BLE001 - the context went down meanwhile
            if self.context.ok():
                raise
            self.log.debug(f"not published, the context is down: {exc!r}")
            return False

    # ------------------------------------------------------------------- spool thread
    def _run(self) -> None:
        next_beat = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                worked = self._step(now)
                if now >= next_beat:
                    next_beat = now + self.cfg.fleet.heartbeat_period_s
                    self._publish_heartbeat()
            except Exception as exc:  # noqa: BLE001 - counted and reported; the robot goes on
                self.errors += 1
                self.last_error = repr(exc)
                self.log.error(f"fleet client: {exc!r}", throttle_duration_sec=5.0)
                worked = False
            if not worked:
                time.sleep(IDLE_SLEEP_S)

    def _step(self, now: float) -> bool:
        """Spool what the tick queued, follow the learner's acks, send what is due."""
        worked = False
        while self._queue:
            self.spool.put(self._queue.popleft(), now)
            worked = True
        if self._closing.is_set():     # the run ends: its open episode is cut, all rows final
            self.spool.end_open_episode(now)
        self.spool.tick(now)
        self._follow_learner(now)
        if self.state == CONNECTED:
            span = self.sender.next_range(self.spool.final_rows, now) \
                if self.context.ok() else None
            if span is not None:
                msg = UInt8MultiArray()
                msg.data = encode_batch(self.spool.batch(self.robot_id, *span))
                sent = self._publish(self._transitions, msg)
                self.bytes_sent += len(msg.data) if sent else 0
                worked = worked or sent
        return worked

    def _follow_learner(self, now: float) -> None:
        with self._mu:
            acks, heard = self._acks, self._heard_at
        if acks is None:
            return
        learner, acked, received, _ = acks
        if received > self.spool.rows:
            self._set_state(CONFLICT, f"learner {learner} holds {received} rows of robot "
                            f"'{self.robot_id}', its spool only {self.spool.rows}: another robot "
                            f"with this fleet.robot_id, or a deleted spool; sending nothing")
            return
        if now - heard > self.cfg.fleet.lease_s:
            if self.state != LOST:
                self.sender.on_lost()
            self._set_state(LOST, f"learner lost (no acks for {now - heard:.1f} s): policy "
                            f"v{self.serving_version()} keeps running, rows stay in the spool")
            return
        self.sender.on_acks(learner, acked, received, now)
        self._set_state(CONNECTED, f"learner {learner} connected: it holds {received} of "
                        f"{self.spool.rows} rows")

    def _set_state(self, state: str, message: str) -> None:
        if state == self.state:
            return
        self.state = state
        if state in (LOST, CONFLICT):     # one call site per severity (rclpy's logger wants it)
            self.log.warning(message)
        else:
            self.log.info(message)

    def _publish_heartbeat(self) -> None:
        self._publish(self._heartbeat, String(data=encode_json("robot", {
            "robot": self.robot_id, "serving_version": self.serving_version(),
            "state": self.state, "spooled": self.spool.rows, "acked": self.sender.acked})))

    # --------------------------------------------------------------------------- close
    def close(self, timeout_s: float | None = None) -> dict:
        """Spool what is queued and cut the open episode, hand the rows the learner does not
        hold yet to it (at most `fleet.handover_s`, or `timeout_s`; through a fresh context
        when a signal took ours down), then stop. What could not be handed over stays in the
        spool and goes at the next start. Idempotent."""
        if self._stop.is_set():
            return self.stats()
        budget = self.cfg.fleet.handover_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget
        self._closing.set()
        while time.monotonic() < deadline and self.context.ok() and not self._handed_over():
            time.sleep(0.02)
        self._stop.set()
        self._spool_thread.join(timeout=10.0)
        while self._queue:
            self.spool.put(self._queue.popleft(), time.monotonic())
        self.spool.end_open_episode(time.monotonic())
        if not self._handed_over() and self._acks is not None and budget > 0:
            self._disconnect()
            self._connect()                   # the learner's latched acks arrive at once
            deadline = time.monotonic() + budget
            while time.monotonic() < deadline and not self._handed_over():
                if not self._step(time.monotonic()):
                    time.sleep(0.01)
        stats = self.stats()
        left = self.spool.final_rows - self.sender.acked
        if left:
            self.log.warning(f"stopping: the learner does not hold {left} of {self.spool.rows} "
                             f"rows yet; they stay in the spool and go at the next start")
        else:
            self.log.info(f"stopping: the learner holds all {self.spool.rows} rows")
        self._disconnect()
        self.spool.close()
        return {**stats, "state": "stopped"}

    def _handed_over(self) -> bool:
        return not self._queue and not self.spool.assembler.open_rows and \
            self.sender.acked >= self.spool.final_rows
