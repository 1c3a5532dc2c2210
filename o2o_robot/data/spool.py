"""A robot's side of the fleet protocol (docs/fleet.md), without ROS: the spool and the sender.

`Spool`: the durable, numbered record of what the robot produced, a `TransitionStore` (the same
crash-safe format as the learner's) in which row i is the robot's sequence number i. Items
(Transition / EpisodeEnd) go through an `EpisodeAssembler` (split on gaps), so its episodes are
whole; rows are committed at every episode end and at least every `commit_rows` rows or
`commit_period_s`. Only committed rows are ever sent: a robot that crashes renumbers nothing
the learner has seen. A row is also held back while it is the last row of an open episode,
because an `EpisodeEnd` may still close the episode on it: every row sent is final.

`Sender`: what to send next, go-back-N over the learner's acknowledgements. The learner reports
per robot `acked` (rows committed to its store) and `received` (rows it holds, committed or
buffered in an unfinished episode). The robot sends rows from `received` on, at most
`window_rows` ahead of it, in batches of at most `batch_rows`. When `received` does not move
for `resend_after_s` (doubling while it stays stuck) while rows are in flight, it goes back and
sends again from `received`; a learner that restarted (another id) or came back after being
lost starts from what it says it holds. The learner drops rows it already holds, so a resend
never duplicates.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from o2o_robot.data.schema import FIELDS, EpisodeAssembler, EpisodeEnd, Transition
from o2o_robot.data.store import TransitionStore
from o2o_robot.data.wire import END_CONTINUES, RowBatch

MAX_BACKOFF = 8        # resend_after_s x this at most


class Spool:
    """The robot's numbered record (module docstring). One thread at a time."""

    def __init__(self, path: str | Path, obs_dim: int, act_dim: int, *, commit_rows: int = 100,
                 commit_period_s: float = 1.0, spec: dict | None = None):
        self.commit_rows, self.commit_period_s = commit_rows, commit_period_s
        self.store = TransitionStore.open_or_create(path, obs_dim, act_dim, spec=spec,
                                                    flush_every=1 << 30)   # we decide commits
        if self.store.open_episode_rows:   # cut by a crash: the rest of it is gone
            self.store.end_episode(success=None)
            self.store.flush()
        ends = self.store.episodes()
        self._ends = {e["end"]: e["success"] for e in ends}      # end row -> success
        self.assembler = EpisodeAssembler(on_gap="split")
        self._last_commit = -np.inf
        self._final = self._settled()
        self.recovered = len(self.store)

    @property
    def rows(self) -> int:
        """Rows committed."""
        return len(self.store)

    @property
    def final_rows(self) -> int:
        """Rows [0, final_rows) may be sent: committed, and not the last row of an open episode."""
        return self._final

    def put(self, item: Transition | EpisodeEnd, now: float) -> None:
        """Record one item (rows get the next sequence numbers); commits when due."""
        ended = False
        for segment in self.assembler.push(item):
            ended |= self._write(segment)
        if ended or self.store.num_buffered >= self.commit_rows:
            self.commit(now)

    def _write(self, segment) -> bool:
        """Append a segment's rows (numbered) and its end; True when it ended an episode."""
        store = self.store
        for t in segment.rows:
            store.append(**{**t.row(), "robot": 0, "seq": len(store) + store.num_buffered})
        end = len(store) + store.num_buffered
        if not segment.end or end == 0 or end in self._ends:   # nothing open to close
            return False
        store.end_episode(success=segment.success)
        self._ends[end] = segment.success
        return True

    def tick(self, now: float) -> None:
        """Commit buffered rows older than `commit_period_s` (call it now and then)."""
        if self.store.num_buffered and now - self._last_commit >= self.commit_period_s:
            self.commit(now)

    def commit(self, now: float) -> None:
        self.store.flush()
        self._last_commit = now
        self._final = self._settled()

    def _settled(self) -> int:
        n = len(self.store)
        return n if n == 0 or n in self._ends else n - 1

    def batch(self, robot: str, first: int, stop: int) -> RowBatch:
        """Rows [first, stop) (< final_rows) as a batch for the wire."""
        rows = self.store.read(list(FIELDS), first, stop)
        end = np.full(stop - first, END_CONTINUES, np.int8)
        for row in range(first, stop):
            if row + 1 in self._ends:
                success = self._ends[row + 1]
                end[row - first] = -1 if success is None else int(success)
        return RowBatch(robot, first, rows, end)

    def end_open_episode(self, now: float) -> None:
        """The stream stops: close its open episode as cut and commit (every row is final)."""
        for segment in self.assembler.close():
            self._write(segment)
        self.commit(now)

    def close(self) -> None:
        """`end_open_episode`, then release the store."""
        self.end_open_episode(0.0)
        self.store.close()


class Sender:
    """Robot-side go-back-N state (module docstring); plain numbers, the caller's clock."""

    def __init__(self, *, batch_rows: int, window_rows: int, resend_after_s: float):
        self.batch_rows, self.window_rows, self.resend_after_s = batch_rows, window_rows, resend_after_s
        self.learner: str | None = None     # the learner's id while it is there
        self.acked = self.received = self.sent = 0
        self._progress_at = 0.0
        self._backoff = 1
        self.counts = dict.fromkeys(["batches", "rows_sent", "resends", "learner_changes"], 0)

    def on_acks(self, learner: str, acked: int, received: int, now: float) -> None:
        """The learner `learner` holds `received` rows of ours, `acked` of them committed."""
        if learner != self.learner:          # a new or restarted learner, or one that is back
            self.learner, self.sent = learner, received
            self.counts["learner_changes"] += 1
            self._progress_at, self._backoff = now, 1
        if received > self.received or received < self.received:
            self._progress_at, self._backoff = now, 1
        self.acked, self.received = acked, received
        self.sent = max(self.sent, received)

    def on_lost(self) -> None:
        """The learner went silent: send nothing until it (or another) reports again."""
        self.learner = None

    def next_range(self, final_rows: int, now: float) -> tuple[int, int] | None:
        """The next rows [a, b) to send, or None (nothing new, window full, no learner)."""
        if self.learner is None:
            return None
        if self.sent > self.received and now - self._progress_at >= \
                self.resend_after_s * self._backoff:
            self.sent = self.received                        # go back: resend what is in flight
            self.counts["resends"] += 1
            self._progress_at, self._backoff = now, min(2 * self._backoff, MAX_BACKOFF)
        limit = min(final_rows, self.received + self.window_rows)
        if self.sent >= limit:
            return None
        first, self.sent = self.sent, min(self.sent + self.batch_rows, limit)
        self.counts["batches"] += 1
        self.counts["rows_sent"] += self.sent - first
        return first, self.sent
