"""ActorNode (`o2o_actor`): the ControlCore on a ROS 2 timer, with policy hot-swap and a learner.

Graph (names relative to the node's namespace; observation/action/reward/e-stop topics from the
config, DESIGN.md "ROS 2 interface"):

  in   every `robot.observations[].topic`  JointState | Float64MultiArray | PoseStamped
       every `robot.cameras[].topic`         Image (rgb8, bgr8, mono8) | CompressedImage (jpeg,
                                             png); frames assembled by control/frames.py; a
                                             stale or bad image holds like any bad input
       `control.reward.topic` (Float64)      when `control.reward.source` is "sim" or "topic"
       `teleop/action` (Float64MultiArray), `teleop/engaged` (Bool)
       `safety.estop_topic` (Bool)           True latches a hold; read with a transient-local
                                             reader (latched publishers) AND a best-effort one
                                             (so a volatile or best-effort e-stop still matches)
       `operator/success`, `operator/failure` (Bool, True = label the current episode; topics,
                                             not services, so a Joy mapper or a bare DDS peer
                                             can press them)
       done topic (Bool, True = terminal state; `qos.done_topic`: the sim bridge's signal)
  out  `robot.action.topic` (Float64MultiArray, data = action, no layout), every tick
       `~/status` (String, JSON, 1 Hz, latched)
       `~/episode` (String, JSON) one event per episode start ({"event": "start", "episode": i})
                                             and end (the episode's summary, "event": "end")
  srv  `~/clear_estop`, `~/rollback_policy` (Trigger); client of `reset` (Trigger)
  params  config (read-only), mode (read-only), policy_path (names the file serving, "" for a
          learner's policy), learning_enabled, deterministic

Start: a config, start policy or (from `main`) learner store that cannot work stops the node
with one FATAL line (exit 1). An observation topic that has delivered nothing 3 s after start
is named in a warning (`control.status.MissingObservations`): the robot holds until it does.

Modes: "finetune" (the policy acts, an engaged operator intervenes: rows are online /
intervention, handed to the learner) and "collect" (demonstrations: no policy, only the engaged
operator acts, rows are demo, handed to a `DemoRecorder` that writes whole episodes to the store).

Threads: every callback that touches the ControlCore is in one mutually exclusive group, so the
core sees one caller at a time. `main` spins a single-threaded executor (rclpy's multi-threaded
one starved the tick, see `ros/spin.py`). Policies are validated off that thread, so no swap
delays a tick: a `policy_path` set through the parameter services on a worker thread that the
set request awaits (`ros/params.py`; the request is answered when validation is over), learner
policies on the `PolicyProposer`'s thread. Times are `time.monotonic()`: message ages must not
jump with the wall clock.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Protocol

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray, String
from std_srvs.srv import Trigger

from o2o_robot.config import O2OConfig, load_config, resolve_config_path
from o2o_robot.control import ControlCore
from o2o_robot.control.frame_stack import policy_input
from o2o_robot.control.reset import FAILED, START_WITHOUT_RESET, ResetSequencer
from o2o_robot.control.status import MissingObservations, actor_status, learner_stats
from o2o_robot.control.timing import TickTiming
from o2o_robot.data.schema import EpisodeEnd, Transition
from o2o_robot.policy.runtime import LATENCY_BUDGET_SHARE, PolicyRejected
from o2o_robot.policy.slot import Candidate, PolicyProposer, PolicySlot, SwapResult
from o2o_robot.ros import convert, qos
from o2o_robot.ros.camera import MSG_TYPES, camera_handler
from o2o_robot.ros.params import OffTickParameterService
from o2o_robot.spaces import camera_specs
from o2o_robot.ros.spin import spin_node, start_failed, start_node, stopped_by_signal

NODE_NAME = "o2o_actor"
MODES = ("finetune", "collect")
LEARNERS = ("local", "remote")
EPISODE_TOPIC = "~/episode"
DEFAULT_CONFIG = "sim_reach.yaml"
POLL_PERIOD_S = 0.25          # learner.poll_policy() cadence
WARN_EVERY_S = 5.0            # throttle for per-message warnings


class Learner(Protocol):
    """What the node needs from a learner (e.g. the LearnerThread); all calls non-blocking."""

    def submit(self, item: Transition | EpisodeEnd) -> bool: ...  # False = dropped (queue full)
    def poll_policy(self) -> bytes | None: ...             # a new ONNX policy, or None
    def stats(self) -> dict: ...                           # achieved UTD, store sizes, ...


class ActorNode(Node):
    """Runs the control loop; see the module docstring for the interface."""

    def __init__(self, config: O2OConfig | None = None, *, learner: Learner | None = None,
                 latency_budget_share: float | None = LATENCY_BUDGET_SHARE,
                 check_learner_store: bool = False, **node_kwargs):
        """`config` None loads the `config` parameter's file (raises ConfigError); a non-empty
        `policy_path` parameter is loaded before the first tick (raises PolicyRejected).
        `latency_budget_share`: the p99 single-call latency a policy may have, as a share of
        the control period (None: not checked, e.g. on a loaded test machine).
        `check_learner_store` (`main`, whose learner is the configured one): in mode finetune
        with learning enabled, the store must fit the robot and hold the demonstrations the
        learner needs, since nothing generates them beside a robot (raises ConfigError,
        `learning.preflight.check_robot_learner`)."""
        # rclpy's own parameter services would validate a `policy_path` set on the executor
        # thread, the one that ticks: ours validate it on a worker thread (ros/params.py).
        node_kwargs["start_parameter_services"] = False
        super().__init__(node_kwargs.pop("node_name", NODE_NAME), **node_kwargs)
        self._checked: tuple[str, Candidate] | None = None   # the policy_path set in progress
        OffTickParameterService(self, self._prepare_parameters)
        text = lambda d, **kw: ParameterDescriptor(description=d, **kw)  # noqa: E731
        self.declare_parameter("config", DEFAULT_CONFIG, text(
            "config file: a path, or a file name in the package's config/ folder", read_only=True))
        self.declare_parameter("policy_path", "", text(
            "ONNX policy file; set at runtime to validate and hot-swap it (a rejected file refuses "
            "the set, the running policy stays). Names the file serving now, also after "
            "~/rollback_policy; empty while a learner's policy (or none) serves"))
        self.declare_parameter("learning_enabled", True, text(
            "hand transitions to the learner and take the policies it exports"))
        self.declare_parameter("deterministic", False, text(
            "act with zero exploration noise (evaluation)"))
        self.declare_parameter("mode", "finetune", text(
            "finetune: the policy acts, the operator may intervene; collect: record "
            "demonstrations (teleop only, no policy)", read_only=True))
        self.declare_parameter("learner", "local", text(
            "local: a learner worker beside this node; remote: a fleet learner node, reached over "
            "the fleet topics (docs/fleet.md)", read_only=True))
        self.mode = self.get_parameter("mode").value
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        if self.get_parameter("learner").value not in LEARNERS:
            raise ValueError(f"learner: expected one of {', '.join(LEARNERS)}, got "
                             f"{self.get_parameter('learner').value!r}")
        if config is None:
            config = load_config(resolve_config_path(self.get_parameter("config").value))
        self.cfg = cfg = config
        robot, control = cfg.robot, cfg.control
        period = 1.0 / control.control_rate_hz
        budget = None if latency_budget_share is None else latency_budget_share * period
        self.slot = PolicySlot(robot.obs_dim, robot.act_dim, robot.action.low, robot.action.high,
                               latency_budget_s=budget, cameras=camera_specs(robot))
        self.swaps = {"accepted": 0, "rejected": 0, "last_rejection": "",
                      "non_finite_rollbacks": 0, "last_non_finite_rollback": ""}
        start_policy = self.get_parameter("policy_path").value
        if start_policy and self.mode == "collect":
            raise ValueError("policy_path: must be empty in mode 'collect' (demonstrations come "
                             "from the operator only)")
        if start_policy:   # refused: one FATAL line at start (main), not an error line first
            result = self.slot.propose(start_policy)
            if not result.accepted:
                raise PolicyRejected(f"policy_path {start_policy}: {result.reason}")
            self._record_swap(result, "policy_path")
        self._learning = bool(self.get_parameter("learning_enabled").value)
        if check_learner_store and self._learning and self.mode == "finetune":
            from o2o_robot.learning.preflight import check_robot_learner

            check_robot_learner(cfg, str(resolve_config_path(self.get_parameter("config").value)))
        self.core = ControlCore(robot, control, cfg.safety, None,
                                teleop_timeout_ms=control.teleop_timeout_ms,
                                teleop_source="demo" if self.mode == "collect" else "intervention",
                                intervention_window=control.intervention_window,
                                terminate_on_success=control.terminate_on_success,
                                failure_is_terminal=control.failure_is_terminal)
        self.learner: Learner | None = None
        self._deterministic = bool(self.get_parameter("deterministic").value)
        self.learner_counts = dict.fromkeys(["submitted", "dropped", "errors", "polled"], 0)
        self.malformed: dict[str, int] = {}
        self.malformed_reasons: dict[str, str] = {}
        self._warned: dict[str, float] = {}
        self._timing = TickTiming(period)
        self._epoch_offset_s = time.time() - time.monotonic()
        self._proposer: PolicyProposer | None = None
        self._syncing_path = False     # policy_path set by the node itself (see _sync_policy_path)
        self._missing = MissingObservations(time.monotonic(), self.resolve_topic_name)
        self._control = MutuallyExclusiveCallbackGroup()
        self._make_interfaces(period)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        if learner is not None:
            self.attach_learner(learner)
        self.get_logger().info(
            f"{robot.name}: obs {robot.obs_dim}, action {robot.act_dim} on "
            f"'{robot.action.topic}' at {control.control_rate_hz:g} Hz; policy version "
            f"{self.slot.version}")

    # --------------------------------------------------------------------------- wiring
    def _make_interfaces(self, period: float) -> None:
        cfg, group = self.cfg, self._control
        sub = lambda typ, topic, fn, profile=qos.STREAM: self.create_subscription(  # noqa: E731
            typ, topic, self._guarded(topic, fn), profile, callback_group=group)
        handlers = {"joint_state": (JointState, self._on_joint_state),
                    "float64_multi_array": (Float64MultiArray, self._on_array),
                    "pose_stamped": (PoseStamped, self._on_pose)}
        seen = set()
        for src in cfg.robot.observations:
            if src.topic.lstrip("/") not in seen:    # a topic may feed several sources
                seen.add(src.topic.lstrip("/"))
                typ, fn = handlers[src.type]
                sub(typ, src.topic, lambda msg, t=src.topic, fn=fn: fn(t, msg))
        for cam in cfg.robot.cameras:
            sub(MSG_TYPES[cam.type], cam.topic, camera_handler(cam, self.core.cameras))
        reward = cfg.control.reward
        if reward.source in ("sim", "topic"):
            sub(Float64, reward.topic, self._on_reward)
        sub(Float64MultiArray, qos.TELEOP_ACTION_TOPIC, self._on_teleop_action)
        sub(Bool, qos.TELEOP_ENGAGED_TOPIC,
            lambda m: self.core.set_teleop(convert.bool_from_msg(m)))
        for profile in (qos.LATCHED, qos.ANY_WRITER):
            sub(Bool, cfg.safety.estop_topic, self._on_estop, profile)
        sub(Bool, qos.SUCCESS_TOPIC, lambda m: m.data and self.core.mark_success())
        sub(Bool, qos.FAILURE_TOPIC, lambda m: m.data and self.core.mark_failure())
        if (done := qos.done_topic(reward)) is not None:
            sub(Bool, done, lambda m: m.data and self.core.mark_done(success=False))
        self._action_msg = Float64MultiArray()
        self._action_pub = self.create_publisher(Float64MultiArray, cfg.robot.action.topic, qos.STREAM)
        self._status_pub = self.create_publisher(String, qos.STATUS_TOPIC, qos.STATUS)
        self._episode_pub = self.create_publisher(String, EPISODE_TOPIC, qos.STREAM)
        reset = self.create_client(Trigger, qos.RESET_SERVICE, callback_group=group)
        self._resets = ResetSequencer(
            service_ready=reset.service_is_ready,
            call=lambda: reset.call_async(Trigger.Request()),
            cancel=reset.remove_pending_request,
            oldest_obs_age_ms=lambda now: max([*self.core.observations.ages_ms(now).values(),
                                               *self.core.cameras.ages_ms(now).values()]))
        self.create_service(Trigger, qos.CLEAR_ESTOP_SERVICE, self._on_clear_estop,
                            callback_group=group)
        self.create_service(Trigger, qos.ROLLBACK_SERVICE, self._on_rollback)
        self.create_timer(period, self._on_tick, callback_group=group)
        self.create_timer(1.0, self._publish_status, callback_group=group)

    def attach_learner(self, learner: Learner) -> None:
        """Hand transitions to `learner` and poll it for policies (validated off the tick)."""
        self.learner = learner
        self._proposer = PolicyProposer(self.slot, lambda r: self._record_swap(r, "learner"))
        self.create_timer(POLL_PERIOD_S, self._poll_learner,
                          callback_group=MutuallyExclusiveCallbackGroup())

    def _guarded(self, topic: str, handler: Callable) -> Callable:
        """A callback that never raises: a bad message is dropped, counted and warned about."""
        def callback(msg) -> None:
            try:
                handler(msg)
            except Exception as exc:  # a MessageError, or a bug: counted either way, node lives
                reason = str(exc) if isinstance(exc, convert.MessageError) else repr(exc)
                self.malformed[topic] = self.malformed.get(topic, 0) + 1
                self.malformed_reasons[topic] = reason
                now = time.monotonic()
                if now - self._warned.get(topic, -np.inf) >= WARN_EVERY_S:   # throttled per topic
                    self._warned[topic] = now
                    self.get_logger().warning(f"dropped a message on '{topic}' "
                                           f"({self.malformed[topic]} so far): {reason}")
        return callback

    # ----------------------------------------------------------------------------- inputs
    def _rejected(self, topic: str) -> None:
        key = topic.lstrip("/")
        raise convert.MessageError(self.core.observations.drop_reasons.get(key, "rejected"))

    def _on_joint_state(self, topic: str, msg: JointState) -> None:
        names, pos, vel, eff = convert.joint_state_from_msg(msg)
        if not self.core.observations.update_joint_state(topic, names, pos, vel, eff,
                                                         time.monotonic()):
            self._rejected(topic)

    def _on_array(self, topic: str, msg: Float64MultiArray) -> None:
        if not self.core.observations.update_array(topic, convert.array_from_msg(msg),
                                                   time.monotonic()):
            self._rejected(topic)

    def _on_pose(self, topic: str, msg: PoseStamped) -> None:
        xyz, quat = convert.pose_from_msg(msg)
        if not self.core.observations.update_pose(topic, xyz, quat, time.monotonic()):
            self._rejected(topic)

    def _on_reward(self, msg: Float64) -> None:
        if not self.core.update_reward(convert.float_from_msg(msg), time.monotonic()):
            raise convert.MessageError(self.core.reward_source.stats().get("last_error", "rejected"))

    def _on_teleop_action(self, msg: Float64MultiArray) -> None:
        action = convert.array_from_msg(msg, self.core.act_dim)
        self.core.set_teleop(None, action, time.monotonic())

    def _on_estop(self, msg: Bool) -> None:
        was = self.core.safety.estopped
        self.core.estop(convert.bool_from_msg(msg))
        if self.core.safety.estopped and not was:
            self.get_logger().error("E-STOP latched: holding until ~/clear_estop")

    def _on_clear_estop(self, request, response):
        response.success = self.core.clear_estop()
        response.message = ("cleared" if response.success
                            else "refused: the e-stop signal is still engaged")
        self.get_logger().warning(f"clear_estop: {response.message}")
        return response

    def _on_rollback(self, request, response):
        result = self.slot.rollback()
        response.success, response.message = result.accepted, result.reason or f"version {result.version}"
        self.get_logger().warning(f"rollback_policy: {response.message}")
        self._sync_policy_path()
        return response

    def _sync_policy_path(self) -> None:
        """Make the `policy_path` parameter name the file that is serving ("" for a policy the
        learner sent as bytes), without validating it again: `ros2 param get` after a rollback
        or a learner swap must not name a file that no longer runs. Right after
        ~/rollback_policy, and with each status (1 Hz) for the swaps made elsewhere."""
        current = self.slot.current
        source = current[0].source if current is not None else ""
        path = "" if source.startswith("<") else source    # "<N bytes>": not from a file
        if current is None or self.get_parameter("policy_path").value == path:
            return
        self._syncing_path = True
        try:
            self.set_parameters([Parameter("policy_path", value=path)])
        finally:
            self._syncing_path = False

    # -------------------------------------------------------------------- parameters
    def _prepare_parameters(self, params) -> None:
        """On a worker thread, before a set request reaches `_on_set_parameters`: load and
        validate a new `policy_path` (the slow part), so the control tick never waits for it."""
        for param in params:
            if param.name == "policy_path" and isinstance(param.value, str) and param.value \
                    and self.mode != "collect":
                self._checked = (param.value, self.slot.check(param.value))

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Accept or refuse a set (types are checked by rclpy); a new `policy_path` is swapped in
        here, validated beforehand by `_prepare_parameters` when the set came through the
        parameter services (`ros2 param set`), else validated now on the caller's thread."""
        for param in params:
            if param.name != "policy_path" or self._syncing_path:
                continue
            if self.mode == "collect":
                return SetParametersResult(successful=False, reason=(
                    "policy_path: no policy runs in mode 'collect'"))
            if not param.value:
                return SetParametersResult(successful=False, reason=(
                    "policy_path: empty; call ~/rollback_policy to return to the previous policy"))
            checked, self._checked = self._checked, None
            candidate = (checked[1] if checked is not None and checked[0] == param.value
                         else self.slot.check(param.value))
            result = self.slot.install(candidate)
            self._record_swap(result, "policy_path")
            if not result.accepted:
                return SetParametersResult(successful=False,
                                           reason=f"policy rejected: {result.reason}")
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, params) -> None:
        for param in params:
            if param.name == "learning_enabled":
                self._learning = bool(param.value)
            elif param.name == "deterministic":
                self._deterministic = bool(param.value)

    def _record_swap(self, result: SwapResult, via: str) -> None:
        if result.accepted:
            self.swaps["accepted"] += 1
            self.get_logger().info(f"policy {result.source} now serving as version "
                                   f"{result.version} (via {via}, {result.seconds * 1e3:.0f} ms)")
        else:
            self.swaps["rejected"] += 1
            self.swaps["last_rejection"] = f"{result.source}: {result.reason}"
            self.get_logger().error(f"policy {result.source} rejected (via {via}): "
                                    f"{result.reason}; version {result.version} keeps running")

    # --------------------------------------------------------------------------- tick
    def _act(self, obs: np.ndarray | dict):
        # A policy graph without camera inputs gets the state vector.
        current = self.slot.current
        cameras = current[0].camera_inputs if current is not None else ()
        return self.slot.act(policy_input(obs, cameras), deterministic=self._deterministic)

    def _on_tick(self) -> None:
        now = time.monotonic()
        self._timing.record(now)
        if self.core.policy_act is None and self.slot.current is not None:
            self.core.policy_act = self._act   # first policy: installed on this thread, between ticks
        result = self.core.tick(now)
        self._action_pub.publish(convert.array_to_msg(result.action, self._action_msg))
        limit = self.cfg.safety.rollback_after_non_finite
        if limit and self.core.non_finite_streak >= limit:
            self._roll_back_non_finite()
        if self._learning and self.learner is not None:
            item = self._learner_item(result)
            if item is not None:
                self._submit(item)
        if result.episode_done:
            summary = self.core.episode.history[-1]
            self._publish_episode({"event": "end", "episode": summary.index, **asdict(summary)})
        if result.needs_reset:
            self._advance_reset(now)
        else:
            self._resets.clear()

    def _roll_back_non_finite(self) -> None:
        """The serving policy acted with NaN/inf (each tick held) `safety.rollback_after_
        non_finite` ticks in a row: put the previous policy back, and say so."""
        bad, ticks = self.slot.version, self.core.non_finite_streak
        self.core.non_finite_streak = 0
        result = self.slot.rollback()
        why = f"policy version {bad} acted with NaN/inf on {ticks} consecutive ticks (held)"
        if result.accepted:
            self.swaps["non_finite_rollbacks"] += 1
            self.swaps["last_non_finite_rollback"] = f"{why}: rolled back to version {result.version}"
            self.get_logger().error(self.swaps["last_non_finite_rollback"])
        else:
            self.swaps["last_non_finite_rollback"] = f"{why}; no previous policy: holding"
            self.get_logger().error(self.swaps["last_non_finite_rollback"],
                                    throttle_duration_sec=WARN_EVERY_S)

    def _learner_item(self, result) -> Transition | EpisodeEnd | None:
        """What this tick hands the learner: the completed row as a `Transition` (episode index,
        step, and on an episode's last row its outcome), or an `EpisodeEnd` when the episode
        ended on a row that could not be recorded."""
        episode = self.core.episode
        summary = episode.history[-1] if result.episode_done else None
        if result.transition is None:
            return EpisodeEnd(summary.index, summary.success) if summary is not None else None
        row = result.transition
        # Rows carry wall-clock seconds since the epoch (the store schema); ticks run on the
        # monotonic clock.
        return Transition(**{**row, "timestamp": row["timestamp"] + self._epoch_offset_s},
                          episode=summary.index if summary is not None else episode.index,
                          step=result.step,
                          success=summary.success if summary is not None else None)

    def _submit(self, item: Transition | EpisodeEnd) -> None:
        try:
            accepted = self.learner.submit(item)
        except Exception as exc:  # a learner bug must not stop the robot: counted, reported
            self.learner_counts["errors"] += 1
            self.get_logger().error(f"learner.submit failed: {exc!r}", throttle_duration_sec=WARN_EVERY_S)
            return
        self.learner_counts["submitted" if accepted else "dropped"] += 1

    def _advance_reset(self, now: float) -> None:
        """One non-blocking step of the `reset` call of an ended episode (`ResetSequencer`:
        the next episode starts once the call succeeded AND every source has delivered an
        observation received after that, or without a reset when there is no `reset` service)."""
        step = self._resets.step(now)
        if step.event == FAILED:
            self.get_logger().warning(f"reset failed: {step.reason}; retrying")
        elif step.event == START_WITHOUT_RESET:
            # Reset-free operation (no reset routine on this robot): the next episode starts
            # from wherever the robot is.
            self.get_logger().warning("no 'reset' service: the next episode starts from the current "
                                      "state", throttle_duration_sec=60.0)
        if step.starts_episode:
            self.core.episode_reset_done()
            self._publish_episode({"event": "start", "episode": self.core.episode.index})

    # ----------------------------------------------------------------------- learner, status
    def _poll_learner(self) -> None:
        if not self._learning or self.learner is None:
            return
        try:
            data = self.learner.poll_policy()
        except Exception as exc:  # counted, reported; the current policy keeps running
            self.learner_counts["errors"] += 1
            self.get_logger().error(f"learner.poll_policy failed: {exc!r}",
                                    throttle_duration_sec=WARN_EVERY_S)
            return
        if data is not None:
            self.learner_counts["polled"] += 1
            self._proposer.offer(data)

    def status(self) -> dict:
        """Everything `~/status` publishes, as plain values (`control/status.py`)."""
        now = time.monotonic()
        current = self.slot.current
        return actor_status(
            timing=self._timing.summary(now), core=self.core.stats(now),
            policy_version=self.slot.version,
            policy_source=current[0].source if current else None,
            deterministic=self._deterministic, swaps=self.swaps,
            superseded=self._proposer.superseded if self._proposer else 0,
            malformed=self.malformed, malformed_reasons=self.malformed_reasons,
            learning_enabled=self._learning, mode=self.mode, learner_counts=self.learner_counts,
            learner=learner_stats(self.learner), reset_counts=self._resets.counts)

    def _publish_status(self) -> None:
        self._status_pub.publish(convert.status_to_msg(self.status()))
        self._sync_policy_path()   # a learner's policy, a NaN rollback: policy_path follows
        said = self._missing.check(self.core.observations, self.cfg.robot.observations,
                                   time.monotonic(), self.core.cameras, self.cfg.robot.cameras)
        if said is not None:   # one call site per severity: rclpy refuses to mix them
            if said[0] == "warning":
                self.get_logger().warning(said[1])
            else:
                self.get_logger().info(said[1])

    def _publish_episode(self, event: dict) -> None:
        self._episode_pub.publish(convert.status_to_msg(event))

    def destroy_node(self) -> None:
        if self._proposer is not None:
            self._proposer.stop()
        super().destroy_node()


def main(args=None, *, learner_factory: Callable[[O2OConfig], Learner] | None = None) -> int:
    """Console entry point: `actor_node --ros-args -p config:=my_robot.yaml`.

    `learner_factory(cfg)` builds the learner for the loaded config; by default, when the
    `learning_enabled` parameter is true, the one the `learner` parameter names, or in mode
    "collect" a `DemoRecorder` on `store.path` that logs a line per episode
    (`_default_learner`). Returns the process exit status."""
    # ConfigError, RewardFunctionError (ValueErrors), a bad start policy (PolicyRejected)
    node = start_node(lambda: ActorNode(check_learner_store=learner_factory is None), NODE_NAME,
                      (ValueError, PolicyRejected), args)
    if node is None:
        return start_failed()
    from o2o_robot.data.store import StoreError

    learner = None
    try:
        learner = (learner_factory or _default_learner(node))(node.cfg)
        if learner is not None:
            node.attach_learner(learner)
    except Exception as exc:
        # A SIGINT/SIGTERM meanwhile shut rclpy down under us: a stop, not a failure.
        stopped = stopped_by_signal()
        if not stopped and not isinstance(exc, (StoreError, OSError)):
            raise
        if not stopped:   # the recorder's store: locked, other dims, ...
            get_logger(NODE_NAME).fatal(f"{node.cfg.store.path}: {exc}")
        if learner is not None:
            learner.close()
        node.destroy_node()
        rclpy.try_shutdown()
        return start_failed()
    # Once the node is down, the learner flushes the store, checkpoints and stops its worker.
    return spin_node(node, on_shutdown=None if learner is None else learner.close)


def _default_learner(node: ActorNode) -> Callable[[O2OConfig], Learner | None]:
    """What `main` hands rows to without a `learner_factory`: nothing when learning is off; in
    mode "collect" a `DemoRecorder` on `store.path` that logs a line per episode; else (`ros2
    run` / launch) the `learner` parameter's: a `LearnerClient` writing to `train.run_dir`
    (local), or a `FleetClient` that spools and sends to a fleet learner node (remote)."""
    if not node._learning:
        return lambda cfg: None
    if node.mode == "collect":
        from o2o_robot.teleop.recorder import DemoRecorder, episode_line

        log = node.get_logger()
        return lambda cfg: DemoRecorder.for_config(
            cfg, on_episode=lambda info: log.info(episode_line(info)))
    if node.get_parameter("learner").value == "remote":   # a fleet learner node
        from o2o_robot.ros.fleet_client import FleetClient, robot_id_for

        return lambda cfg: FleetClient(
            cfg, robot_id=robot_id_for(cfg, node.get_namespace()),
            namespace=node.get_namespace(), serving_version=lambda: node.slot.version,
            logger=node.get_logger())
    from o2o_robot.learning.worker import LearnerClient

    return lambda cfg: LearnerClient(cfg, cfg.train.run_dir)


if __name__ == "__main__":
    raise SystemExit(main())
