"""rosbag2 bags (MCAP or sqlite3, read by `rosbags`, no ROS install) -> store episodes.

The bag is replayed, in recording order, into a ControlCore built exactly as the actor node
builds it from the same config: every message goes to the same input the node's subscription
would call (`observations.update_*`, `set_teleop`, `update_reward`, `mark_success`, ...), and
the core ticks at `control.control_rate_hz` on the bag's clock. So observations are assembled
by the live ObservationAssembler, actions pass the same SafetyFilter, rewards come from the
configured `control.reward` source, and episodes end as they would live (the done topic, the
operator buttons, `control.max_episode_steps`): a bag and a live session of the same messages
give the same rows. Message times are the recorder's receive times (the node also stamps
observations on receipt).

Topics (relative names resolve under `namespace`):
  every `robot.observations[].topic`                        required
  the action topic (`teleop/action`, or the commands `action`) Float64MultiArray, required
  `teleop/engaged` (Bool)                                   optional; absent = always engaged
  `operator/success`, `operator/failure`, done topic (Bool)   optional episode ends
  `control.reward.topic` (Float64)                          required when the reward source
                                                            is "sim" or "topic"
  every `robot.cameras[].topic` (Image / CompressedImage)   required; decoded, cropped and
                                                            resized by the actor's FrameAssembler,
                                                            its rows carry the frames

Differences from a live session, because a bag has no reset service and no operator at the
keyboard: after an episode ends, the next starts as soon as every observation source has
delivered a message again (as after an instantaneous reset); and a silence of the action topic
longer than `gap_s` ends the current episode at its last row, marked truncated (the operator
stopped; not a terminal state). The end of the bag ends an open episode the same way.

Episodes are cut from the tick stream by the shared `EpisodeAssembler` (data/schema.py, on_gap
"split", whole): each completed tick is a `Transition` carrying the core's episode index and
`TickResult.step`, and an episode whose last row was dropped is closed by an `EpisodeEnd` with
its label. A row lost mid-episode (a stale observation or a missing reward dropped it, as live)
splits the episode there: a store episode is an unbroken run of steps, so the part before the
gap is closed (success unknown, its last row as recorded) and the rest starts a new one.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from o2o_robot.config import O2OConfig, RewardConfig
from o2o_robot.control.core import ControlCore
from o2o_robot.control.episode import EpisodeTracker
from o2o_robot.control.rewards import RewardFunctionError
from o2o_robot.data.importers.common import (ROW_FIELDS, ImportInputError, SourceEpisode,
                                              SourceFileError, source_spec)
from o2o_robot.data.schema import EpisodeAssembler, EpisodeEnd, Segment, Transition

# The actor node's fixed names (o2o_robot/ros/qos.py, which needs rclpy; a test keeps them equal).
TELEOP_ACTION_TOPIC = "teleop/action"
TELEOP_ENGAGED_TOPIC = "teleop/engaged"
SUCCESS_TOPIC = "operator/success"
FAILURE_TOPIC = "operator/failure"
DEFAULT_DONE_TOPIC = "done"

MSGTYPES = {"joint_state": "sensor_msgs/msg/JointState",
            "float64_multi_array": "std_msgs/msg/Float64MultiArray",
            "pose_stamped": "geometry_msgs/msg/PoseStamped",
            "bool": "std_msgs/msg/Bool", "float64": "std_msgs/msg/Float64",
            "image": "sensor_msgs/msg/Image", "compressed_image": "sensor_msgs/msg/CompressedImage"}
_TYPESTORE = get_typestore(Stores.ROS2_JAZZY)


def done_topic(reward: RewardConfig) -> str | None:
    """The terminal-signal topic the actor node subscribes to (same rule as `ros.qos.done_topic`)."""
    if reward.done_topic:
        return reward.done_topic
    return DEFAULT_DONE_TOPIC if reward.source == "sim" else None


def _joint_state(msg) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The checks of `ros.convert.joint_state_from_msg`: each field empty or one value per name."""
    names = [str(n) for n in msg.name]
    fields = [np.asarray(getattr(msg, f), np.float64) for f in ("position", "velocity", "effort")]
    if any(a.size not in (0, len(names)) for a in fields) or len(set(names)) != len(names):
        raise ValueError("field sizes do not match the joint names, or duplicate names")
    return names, *fields


class RosbagSource:
    """A rosbag2 directory replayed through the live control logic (see the module docstring)."""

    format = "rosbag"

    def __init__(self, path, cfg: O2OConfig, *, action_topic: str = TELEOP_ACTION_TOPIC,
                 gap_s: float = 2.0, namespace: str = ""):
        self.path, self.cfg = Path(path), cfg
        control, robot = cfg.control, cfg.robot
        self.period_ns = int(round(1e9 / control.control_rate_hz))
        floor_s = control.teleop_timeout_ms / 1e3 + 2 * self.period_ns / 1e9
        if not gap_s > floor_s:   # shorter gaps would cut while the last action still counts
            raise ImportInputError(f"--gap-s: must exceed control.teleop_timeout_ms plus two "
                                   f"control periods ({floor_s:g} s), got {gap_s:g}")
        self.gap_ns, self.namespace = int(gap_s * 1e9), namespace.strip("/")
        self.roles = self._roles(action_topic)
        try:   # builds the core now, so a bad reward function is reported before any work
            _Replay(cfg, self.period_ns, set(), True)
        except RewardFunctionError as e:
            raise ImportInputError(str(e)) from None
        with closing(self._open()) as reader:
            self._check_topics(reader)
        from o2o_robot import config

        # robot.cameras and config.camera_shapes come with the cameras' config (issue 15, its
        # sensors part): a config module without them configures no camera.
        shapes = getattr(config, "camera_shapes", None)
        self.cameras = shapes(cfg) if shapes is not None else {}
        self.spec = source_spec(robot.obs_dim, robot.act_dim, task=robot.name,
                                low=robot.action.low, high=robot.action.high,
                                action_names=robot.action.names, dt=1.0 / control.control_rate_hz)
        rows_cfg = {k: getattr(cfg, k).model_dump(mode="json") for k in ("robot", "control", "safety")}
        self.options = {"config": json.dumps(rows_cfg, sort_keys=True), "action_topic": action_topic,
                        "gap_s": gap_s, "namespace": self.namespace}
        self._stats: dict = {}

    # ------------------------------------------------------------------------- the bag
    def _full(self, topic: str) -> str:
        if topic.startswith("/"):
            return topic
        return f"/{self.namespace}/{topic}" if self.namespace else f"/{topic}"

    def _roles(self, action_topic: str) -> dict[str, tuple[str, str, str, bool]]:
        """bag topic -> (role, expected msgtype, config topic, required)."""
        cfg, roles = self.cfg, {}
        for src in cfg.robot.observations:
            roles[self._full(src.topic)] = ("obs:" + src.type, MSGTYPES[src.type], src.topic, True)
        for cam in getattr(cfg.robot, "cameras", None) or ():
            roles[self._full(cam.topic)] = ("camera:" + cam.name, MSGTYPES[cam.type], cam.topic, True)
        roles[self._full(action_topic)] = ("action", MSGTYPES["float64_multi_array"], action_topic, True)
        for role, topic in (("engaged", TELEOP_ENGAGED_TOPIC), ("success", SUCCESS_TOPIC),
                            ("failure", FAILURE_TOPIC), ("done", done_topic(cfg.control.reward))):
            if topic:
                roles[self._full(topic)] = (role, MSGTYPES["bool"], topic, False)
        reward = cfg.control.reward
        if reward.source in ("sim", "topic"):
            roles[self._full(reward.topic)] = ("reward", MSGTYPES["float64"], reward.topic, True)
        return roles

    def _open(self) -> Reader:
        if not self.path.exists():
            raise ImportInputError(f"{self.path}: no such bag")
        try:
            reader = Reader(self.path)
            reader.open()
        except Exception as e:  # noqa: BLE001 - rosbags' errors for unreadable bags vary
            raise SourceFileError(f"{self.path}: cannot read as a rosbag2 directory (MCAP or "
                                  f"sqlite3) ({type(e).__name__}: {e}); a bag cut short by a "
                                  f"crash may need `ros2 bag reindex`") from None
        return reader

    def _check_topics(self, reader: Reader) -> None:
        have = {c.topic: c.msgtype for c in reader.connections}
        for topic, (role, msgtype, cfg_topic, required) in self.roles.items():
            if topic not in have:
                if required:
                    why = ("the reward (control.reward.source "
                           f"'{self.cfg.control.reward.source}')" if role == "reward" else role)
                    raise ImportInputError(f"{self.path}: topic '{topic}' ({why}) is not in the "
                                           f"bag; it has: {', '.join(sorted(have)) or 'nothing'}")
            elif have[topic] != msgtype:
                raise ImportInputError(f"{self.path}: topic '{topic}' is {have[topic]}, "
                                       f"expected {msgtype}")

    def _gap_ends(self, reader: Reader) -> set[int]:
        """Times of action messages that follow a silence longer than gap_s."""
        action = next(t for t, r in self.roles.items() if r[0] == "action")
        conns = [c for c in reader.connections if c.topic == action]
        times = np.fromiter((t for _, t, _ in reader.messages(connections=conns)), np.int64)
        times.sort()
        return set(times[1:][np.diff(times) > self.gap_ns].tolist())

    def episodes(self) -> Iterator[SourceEpisode]:
        with closing(self._open()) as reader:
            conns = [c for c in reader.connections if c.topic in self.roles]
            engaged = any(self.roles[c.topic][0] == "engaged" for c in conns)
            replay = _Replay(self.cfg, self.period_ns, self._gap_ends(reader), engaged)
            self._stats = replay.counts
            for conn, t, raw in reader.messages(connections=conns):
                role, _, topic, _ = self.roles[conn.topic]
                try:
                    msg = _TYPESTORE.deserialize_cdr(raw, conn.msgtype)
                except Exception as e:  # noqa: BLE001 - counted and reported like a bad message
                    replay.drop(self.roles[conn.topic][2], f"undecodable: {type(e).__name__}")
                    continue
                yield from replay.message(role, topic, msg, t)
            yield from replay.finish()
            self._stats = {**replay.counts, "split_episodes": replay.episodes.counts["splits"],
                           "core": replay.core_stats()}

    def stats(self) -> dict:
        return self._stats


class _Replay:
    """One pass over the bag: the core, the tick clock, and the episodes its rows make.

    The newest row is held back one tick (`held`), so that a cut (a gap, the bag's end) can
    mark it truncated before it reaches the assembler; every other row goes straight in."""

    def __init__(self, cfg: O2OConfig, period_ns: int, gap_ends: set[int], has_engaged: bool):
        control = cfg.control
        self._tracker_args = (control.max_episode_steps, control.terminate_on_success,
                              control.failure_is_terminal)
        # As ActorNode builds it; teleop_source only labels rows, and run_import relabels them.
        self.core = ControlCore(cfg.robot, control, cfg.safety, None,
                                teleop_timeout_ms=control.teleop_timeout_ms,
                                intervention_window=control.intervention_window,
                                terminate_on_success=control.terminate_on_success,
                                failure_is_terminal=control.failure_is_terminal,
                                teleop_source="demo")
        if not has_engaged:
            self.core.set_teleop(True)
        self.period_ns, self.gap_ends = period_ns, gap_ends
        self.next_tick: int | None = None
        self.last_t: int | None = None
        self.reset_at: float | None = None
        self.episodes = EpisodeAssembler(on_gap="split", whole=True)
        self.held: Transition | None = None
        self.counts = {"messages": 0, "dropped": {}, "drop_reasons": {}, "cut_episodes": 0}

    def drop(self, topic: str, reason: str) -> None:
        self.counts["dropped"][topic] = self.counts["dropped"].get(topic, 0) + 1
        self.counts["drop_reasons"][topic] = reason

    def message(self, role: str, topic: str, msg, t: int) -> Iterator[SourceEpisode]:
        if self.next_tick is None:
            self.next_tick = t + self.period_ns
        while self.next_tick <= t:        # ticks due before this message arrived
            yield from self._tick(self.next_tick)
            self.next_tick += self.period_ns
        if role == "action" and t in self.gap_ends:
            yield from self._cut()
        self.counts["messages"] += 1
        self.last_t = t
        try:
            if not self._apply(role, topic, msg, t / 1e9):
                self.drop(topic, self._reason(role, topic))
        except (ValueError, TypeError) as e:
            self.drop(topic, str(e))

    def _apply(self, role: str, topic: str, msg, now: float) -> bool:
        core, obs = self.core, self.core.observations
        if role == "obs:joint_state":
            return obs.update_joint_state(topic, *_joint_state(msg), stamp_s=now)
        if role == "obs:float64_multi_array":
            return obs.update_array(topic, np.asarray(msg.data, np.float64), stamp_s=now)
        if role == "obs:pose_stamped":
            p, q = msg.pose.position, msg.pose.orientation
            return obs.update_pose(topic, (p.x, p.y, p.z), (q.x, q.y, q.z, q.w), stamp_s=now)
        if role.startswith("camera:"):   # as the actor node's camera callbacks (ros/camera.py)
            name = role[len("camera:"):]
            if hasattr(msg, "format"):   # CompressedImage
                return core.cameras.update_compressed(name, msg.format, msg.data, stamp_s=now)
            return core.cameras.update_image(name, msg.encoding, msg.height, msg.width, msg.step,
                                             msg.data, stamp_s=now)
        if role == "action":
            return core.set_teleop(None, np.asarray(msg.data, np.float64), now)
        if role == "reward":
            return core.update_reward(float(msg.data), now)
        if role == "engaged":
            return core.set_teleop(bool(msg.data))
        if msg.data:   # the label buttons and the done signal: True presses
            {"success": core.mark_success, "failure": core.mark_failure,
             "done": lambda: core.mark_done(success=False)}[role]()
        return True

    def _reason(self, role: str, topic: str) -> str:
        if role.startswith("obs:"):
            return self.core.observations.drop_reasons.get(topic.lstrip("/"), "rejected")
        if role.startswith("camera:"):
            return self.core.cameras.drop_reasons.get(role[len("camera:"):], "rejected")
        return "rejected (length, NaN/inf or a reward the reward source ignores)"

    def _tick(self, t_ns: int) -> Iterator[SourceEpisode]:
        now = t_ns / 1e9
        result = self.core.tick(now)
        index = self.core.episode.index
        if result.transition is not None:
            success = self.core.episode.history[-1].success if result.episode_done else None
            yield from self._add(Transition(**result.transition, episode=index,
                                            step=result.step, success=success))
        elif result.episode_done:   # its last row was dropped: close it with its label
            yield from self._push(EpisodeEnd(index, self.core.episode.history[-1].success))
        if result.episode_done:
            self.reset_at = now
        elif self.reset_at is not None and self.core.episode.needs_reset:
            # The live node's rule after a successful reset call: wait until every source has
            # delivered an observation received after it.
            if max(self.core.observations.ages_ms(now).values()) < (now - self.reset_at) * 1e3:
                self.core.episode_reset_done()
                self.reset_at = None

    def _add(self, row: Transition) -> Iterator[SourceEpisode]:
        """A new row: the held one goes to the assembler; the new one is held, unless it ends
        its episode (then no cut can touch it)."""
        self.held, previous = (None if row.ends_episode else row), self.held
        if previous is not None:
            yield from self._push(previous)
        if row.ends_episode:
            yield from self._push(row)

    def _push(self, item: Transition | EpisodeEnd) -> Iterator[SourceEpisode]:
        if isinstance(item, EpisodeEnd) and self.held is not None:
            held, self.held = self.held, None
            yield from self._push(held)
        for segment in self.episodes.push(item):
            yield _source_episode(segment)

    def _cut(self) -> Iterator[SourceEpisode]:
        """End the current episode here (a gap or the end of the bag): last row truncated."""
        if self.held is not None:
            last, self.held = self.held, None
            self.counts["cut_episodes"] += 1
            yield from self._push(replace(last, truncated=np.bool_(True)))
        for segment in self.episodes.close():   # nothing open once the held row is in
            yield _source_episode(segment)
        if not self.core.episode.needs_reset:   # the tracker's episode ends with ours
            steps, on_success, failure_terminal = self._tracker_args
            index = self.core.episode.index
            self.core.episode = EpisodeTracker(steps, terminate_on_success=on_success,
                                               failure_is_terminal=failure_terminal)
            self.core.episode.index = index + 1   # rows after the cut belong to a new episode

    def finish(self) -> Iterator[SourceEpisode]:
        if self.last_t is None:
            return
        while self.next_tick <= self.last_t + 2 * self.period_ns:   # complete the last action
            yield from self._tick(self.next_tick)
            self.next_tick += self.period_ns
        yield from self._cut()

    def core_stats(self) -> dict:
        s = self.core.stats()
        keep = ("ticks", "transitions", "hold", "hold_reasons", "dropped_stale", "dropped_reward",
                "teleop_rejected", "reward_ignored")
        return {**{k: s[k] for k in keep}, "observations": {k: s["observations"][k]
                                                           for k in ("received", "dropped")}}


_EPISODE_FIELDS = ROW_FIELDS + ("timestamp", "policy_version")


def _source_episode(segment: Segment) -> SourceEpisode:
    """One assembled store episode as the importers' SourceEpisode (run_import writes it), with
    the rows' camera frames when they have them."""
    rows = {f: np.stack([getattr(r, f) for r in segment.rows]) for f in _EPISODE_FIELDS}
    frames = next_frames = None
    if segment.rows[0].frames:   # stored once: a row's next frame is the next row's frame
        last = segment.rows[-1]
        frames = {c: np.stack([r.frames[c] for r in segment.rows]) for c in last.frames}
        next_frames = {c: np.concatenate([f[1:], [(last.next_frames or last.frames)[c]]])
                       for c, f in frames.items()}
    return SourceEpisode(rows, segment.success, frames, next_frames)
