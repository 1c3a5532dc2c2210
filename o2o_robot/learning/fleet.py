"""The learner's side of the fleet protocol (docs/fleet.md), without ROS: `FleetIngest` and
`RobotTable`.

`FleetIngest` feeds a `LearnerCore` from batches of many robots and makes the ingest
idempotent by (robot, seq). Per robot it holds `received` (the next sequence number it
expects) and `acked` (rows committed to the store: what the robot may forget). A batch's rows
below `received` are duplicates and dropped; a batch that starts beyond it is a gap (a lost
batch) and dropped whole, to be resent. The store takes one episode at a time, so a robot's
rows wait in memory until their episode ends and then go into the core together (robots'
episodes never interleave in the store); rows carry `robot` (the store's code for the robot's
name) and `seq`. `commit()` flushes the store, and only then do the robots' `acked` advance.
After a restart `received` = `acked` = what the store holds per robot (read from its `robot`
and `seq` columns); the rows of an unfinished episode come again.

`RobotTable`: which robots are live (heard within a lease), and each one's policy lag (the
learner's policy version minus the version the robot serves).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from o2o_robot.data.schema import FIELDS, EpisodeEnd, Transition
from o2o_robot.data.wire import END_CONTINUES, RowBatch


@dataclass
class RobotLog:
    """One robot's counts in the learner."""

    code: int
    received: int = 0     # rows [0, received) are held (stored, or waiting for their episode end)
    acked: int = 0        # rows [0, acked) are committed in the store
    stored: int = 0       # rows [0, stored) were handed to the store
    pending: list = field(default_factory=list)    # rows of the robot's unfinished episode
    counts: dict = field(default_factory=lambda: dict.fromkeys(
        ["batches", "new_rows", "duplicates", "gaps", "refused", "episodes"], 0))
    problem: str = ""


class FleetIngest:
    """Batches of many robots into one `LearnerCore` (module docstring). One thread."""

    def __init__(self, core):
        self.core = core
        store = core.store
        self.robots: dict[str, RobotLog] = {}
        self._episode = 0           # episode index handed to the core's assembler
        origin = store.read(["robot", "seq"])
        for code, name in store.robots.items():
            seq = origin["seq"][origin["robot"] == code]
            log = RobotLog(code, received=len(seq), acked=len(seq), stored=len(seq))
            if len(seq) and not np.array_equal(seq, np.arange(len(seq))):
                log.problem = f"store holds seq {seq.min()}..{seq.max()} in {len(seq)} rows: " \
                              f"not 0..n-1 in order; continuing after {seq.max()}"
                log.received = log.acked = log.stored = int(seq.max()) + 1
            self.robots[name] = log

    def offer(self, batch: RowBatch) -> str:
        """Take what is new in `batch`; returns "ok", "duplicate", "gap" or "refused: why"."""
        log = self._log(batch.robot)
        log.counts["batches"] += 1
        problem = self._refusal(batch)
        if problem:
            log.counts["refused"] += 1
            log.problem = problem
            return f"refused: {problem}"
        first, n = batch.first_seq, len(batch)
        if first > log.received:
            log.counts["gaps"] += 1
            return "gap"
        skip = log.received - first
        log.counts["duplicates"] += min(skip, n)
        if skip >= n:
            return "duplicate"
        rows = batch.rows
        for i in range(skip, n):
            log.pending.append(({f: rows[f][i] for f in FIELDS}, first + i, int(batch.end[i])))
            log.received += 1
            if batch.end[i] != END_CONTINUES:
                self._ingest_episode(log)
        log.counts["new_rows"] += n - skip
        return "ok"

    def _refusal(self, batch: RowBatch) -> str:
        store = self.core.store
        obs_dim, act_dim = batch.rows["obs"].shape[1], batch.rows["action"].shape[1]
        if (obs_dim, act_dim) != (store.obs_dim, store.act_dim):
            return (f"obs_dim {obs_dim}, act_dim {act_dim}; the learner's store has "
                    f"{store.obs_dim}, {store.act_dim}")
        if batch.frames:
            return (f"camera frames ({', '.join(batch.frames)}): the learner's store has no "
                    f"camera columns")
        return ""

    def _ingest_episode(self, log: RobotLog) -> None:
        """The robot's pending rows form a whole episode (or its tail): into the core."""
        episode, self._episode = self._episode, self._episode + 1
        for step, (row, seq, end) in enumerate(log.pending):
            last = end != END_CONTINUES
            success = None if not last or end == -1 else bool(end)
            self.core.ingest(Transition(**row, episode=episode, step=step, success=success,
                                        robot=log.code, seq=seq))
            if last and not (row["terminated"] or row["truncated"]):
                self.core.ingest(EpisodeEnd(episode, success))   # ended by the robot's operator
        log.stored = log.pending[-1][1] + 1
        log.pending = []
        log.counts["episodes"] += 1

    def _log(self, robot: str) -> RobotLog:
        if robot not in self.robots:
            self.robots[robot] = RobotLog(self.core.store.robot_code(robot))
        return self.robots[robot]

    def commit(self) -> None:
        """Commit the store; the rows handed to it are now acknowledged."""
        self.core.store.flush()
        for log in self.robots.values():
            log.acked = log.stored

    def acks(self) -> dict[str, dict[str, int]]:
        """{robot: {"acked", "received"}}: what the acknowledgement message says."""
        return {name: {"acked": log.acked, "received": log.received}
                for name, log in self.robots.items()}


@dataclass
class RobotSeen:
    heard_at: float
    status: dict


class RobotTable:
    """Robots heard from (their heartbeats), live while heard within `lease_s`."""

    def __init__(self, lease_s: float):
        self.lease_s = lease_s
        self._seen: dict[str, RobotSeen] = {}
        self.events: list[tuple[str, str]] = []     # (robot, "joined" | "left"), for the log

    def heard(self, robot: str, status: dict, now: float) -> None:
        if robot not in self._seen or not self._live(self._seen[robot], now):
            self.events.append((robot, "joined"))
        self._seen[robot] = RobotSeen(now, status)

    def _live(self, seen: RobotSeen, now: float) -> bool:
        return now - seen.heard_at <= self.lease_s

    def check(self, now: float) -> None:
        """Record robots whose lease ran out since the last check."""
        for robot, seen in self._seen.items():
            if not self._live(seen, now) and not seen.status.get("_left"):
                seen.status["_left"] = True
                self.events.append((robot, "left"))

    def live(self, now: float) -> list[str]:
        return sorted(r for r, s in self._seen.items() if self._live(s, now))

    def report(self, now: float, learner_version: int) -> dict[str, dict]:
        """Per robot: live, seconds since heard, serving version and policy lag."""
        out = {}
        for robot, seen in sorted(self._seen.items()):
            serving = seen.status.get("serving_version")
            out[robot] = {"live": self._live(seen, now),
                          "heard_s_ago": round(now - seen.heard_at, 2),
                          "serving_version": serving,
                          "policy_lag": None if serving is None else learner_version - serving}
        return out
