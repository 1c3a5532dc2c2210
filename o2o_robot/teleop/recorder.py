"""DemoRecorder: the actor's rows in collect mode -> the store as demo episodes, off the tick.

It stands where the learner stands in fine-tuning (the actor node's `Learner` interface:
`submit` never blocks, a full queue drops the row and counts it; `poll_policy` never has a
policy), and a writer thread owns the store (its single writer).

Why a thread and not the learner's worker process: collection has no learning to isolate. The
writer does a store commit per episode (a few ms of mostly I/O, during the reset that follows
the episode), needs no torch, and starts at once; the learner's process would import torch,
build an agent and export a policy that collect mode must not run.

Episodes are written whole, assembled by the shared `EpisodeAssembler` (data/schema.py) in its
"discard" mode: `Transition`s are kept in memory until the row that ends the episode
(terminated or truncated, carrying the operator's `success` label) or an `EpisodeEnd`
arrives; then the episode is appended as one validated block, closed with its label and
committed (durable when `on_episode` reports it). So the store never holds half a
demonstration: an episode still open when the recorder closes is discarded (counted), an
episode without success is dropped when `keep_failures` is False, and episodes beyond
`max_episodes` are dropped. A row lost on the way (a full queue) makes its episode incomplete:
the assembler sees the gap in the rows' `step` (or a new `episode` index while one is open) and
discards that episode, counted as `torn_discarded`.

With cameras (`cameras` {name: (H, W, C)}, the config's `robot.cameras`) the store keeps each
row's `frames` and the episode's last `next_frames`; within an episode a row's next frame must
be the next row's frame (each frame is stored once), else the store refuses the episode
(counted in `rejected_episodes`, the reason in `last_problem`).
"""
from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from o2o_robot.config import O2OConfig, camera_shapes
from o2o_robot.data.schema import (FIELDS, SOURCE_CODE, EpisodeAssembler, EpisodeEnd,
                                   Transition)


class DemoRecorder:
    """Rows in (any thread), demo episodes out (its writer thread). See the module docstring.

    `on_episode(info)` is called from the writer thread after each finished episode with
    {episode, steps, return, success, terminated, stored, why, stored_episodes}."""

    def __init__(self, store_path: str | Path, obs_dim: int, act_dim: int, *,
                 flush_every: int = 1000, spec: dict | None = None, keep_failures: bool = True,
                 max_episodes: int | None = None, queue_size: int = 10000,
                 on_episode: Callable[[dict], None] | None = None,
                 cameras: dict[str, tuple[int, int, int]] | None = None):
        from o2o_robot.data.store import TransitionStore

        if max_episodes is not None and max_episodes < 1:
            raise ValueError(f"max_episodes: must be >= 1 or None, got {max_episodes}")
        # Opened here, not in the thread: a bad or locked store fails the caller at once.
        self.store = TransitionStore.open_or_create(store_path, obs_dim, act_dim,
                                                    flush_every=flush_every, spec=spec,
                                                    cameras=cameras or None)
        if self.store.open_episode_rows:   # cut by an earlier crash: never merge it with ours
            self.store.end_episode(success=None)
        self.path = str(store_path)
        self.keep_failures, self.max_episodes = keep_failures, max_episodes
        self.on_episode = on_episode
        self.counts = dict.fromkeys(
            ["rows", "episodes", "stored_episodes", "stored_rows", "successes", "dropped_failures",
             "dropped_over_limit", "discarded_partial", "rejected_episodes", "queue_dropped",
             "torn_discarded"], 0)
        self.state, self.error, self.last_problem = "running", "", ""
        self._episodes = EpisodeAssembler(on_gap="discard", whole=True)
        self._inbox: queue.Queue = queue.Queue(queue_size)
        self._stop = threading.Event()
        self._mu = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="demo-recorder", daemon=True)
        self._thread.start()

    @classmethod
    def for_config(cls, cfg: O2OConfig, **kwargs) -> "DemoRecorder":
        """A recorder on `cfg.store` for `cfg.robot`, keeping failures per `teleop.record_failures`."""
        kwargs.setdefault("keep_failures", cfg.teleop.record_failures)
        kwargs.setdefault("cameras", camera_shapes(cfg))
        return cls(cfg.store.path, cfg.robot.obs_dim, cfg.robot.act_dim,
                   flush_every=cfg.store.flush_every, **kwargs)

    # --------------------------------------------------------------------- actor side
    def submit(self, item: Transition | EpisodeEnd) -> bool:
        """Queue a row (or an episode end) without blocking; False (counted) when the queue is
        full: the assembler then sees the gap and discards that episode."""
        try:
            self._inbox.put_nowait(item)
        except queue.Full:
            with self._mu:
                self.counts["queue_dropped"] += 1
            return False
        return True

    def poll_policy(self) -> None:
        """Collect mode runs no policy."""
        return None

    def stats(self) -> dict:
        with self._mu:
            return {"state": self.state, "store": self.path, **self.counts,
                    "open_episode_rows": self._episodes.open_rows,
                    "last_problem": self.last_problem,
                    **({"error": self.error} if self.error else {})}

    def close(self, timeout_s: float = 60.0) -> dict:
        """Write what is queued, discard an unfinished episode, commit and close the store."""
        self._stop.set()
        self._thread.join(timeout_s)
        return self.stats()

    # -------------------------------------------------------------------- writer side
    def _run(self) -> None:
        try:
            while not (self._stop.is_set() and self._inbox.empty()):
                try:
                    item = self._inbox.get(timeout=0.05)
                except queue.Empty:
                    continue
                self._take(item)
            with self._mu:
                self.counts["discarded_partial"] += bool(self._episodes.open_rows)
                self._episodes = EpisodeAssembler(on_gap="discard", whole=True)
                self.state = "stopped"
        except Exception:   # reported through stats(); the actor keeps running meanwhile
            with self._mu:
                self.state, self.error = "crashed", traceback.format_exc(limit=6)
            self.store.abort()   # drops what a failed write buffered; releases the lock
        finally:
            self.store.close()   # commits what was written (a no-op after abort)

    def _take(self, item: Transition | EpisodeEnd) -> None:
        with self._mu:
            segments = self._episodes.push(item)
            self.counts["rows"] += isinstance(item, Transition)
            torn, self._episodes.discarded = self._episodes.discarded, []
        for episode, steps in torn:
            self._report(episode, steps, 0.0, False, False, False, "a row was lost on the way "
                         "(full queue)", "torn_discarded")
        for segment in segments:
            last = segment.rows[-1]
            self._finish(list(segment.rows), segment.success, last.episode, bool(last.terminated))

    def _finish(self, rows: list[Transition], success: bool | None, index: int,
                terminated: bool) -> None:
        ret = float(sum(float(r.reward) for r in rows))
        stored, why = False, ""
        if not success and not self.keep_failures:
            why, key = "no success (teleop.record_failures is false)", "dropped_failures"
        elif self.max_episodes is not None and self.counts["stored_episodes"] >= self.max_episodes:
            why, key = f"{self.max_episodes} episodes already recorded", "dropped_over_limit"
        else:
            why, key = self._write(rows, success), "rejected_episodes"
            stored = not why
        with self._mu:
            if stored:
                self.counts["stored_episodes"] += 1
                self.counts["stored_rows"] += len(rows)
                self.counts["successes"] += bool(success)
        self._report(index, len(rows), ret, bool(success), terminated, stored, why,
                     None if stored else key)

    def _report(self, index: int, steps: int, ret: float, success: bool, terminated: bool,
                stored: bool, why: str, count_as: str | None) -> None:
        with self._mu:
            self.counts["episodes"] += 1
            if count_as is not None:
                self.counts[count_as] += 1
        if self.on_episode is not None:
            self.on_episode({"episode": index, "steps": steps, "return": ret, "success": success,
                             "terminated": terminated, "stored": stored, "why": why,
                             "stored_episodes": self.counts["stored_episodes"]})

    def _write(self, rows: list[Transition], success: bool | None) -> str:
        """Append one episode as demo rows and commit it; '' on success, else why not."""
        from o2o_robot.data.store import StoreValueError

        try:
            block = {f: np.stack([np.asarray(getattr(r, f)) for r in rows]) for f in FIELDS}
            frames = _frame_blocks(rows, self.store.cameras)
        except (KeyError, ValueError, TypeError) as exc:
            problem = f"malformed row ({type(exc).__name__}: {exc})"
        else:
            try:
                if np.any(block["source"] != SOURCE_CODE["demo"]):   # a policy acted: no demo
                    raise StoreValueError("source: rows not from the operator (collect mode "
                                          "records demos only)")
                # Buffered whole and committed after its end: a crash mid-write leaves the
                # episode complete or absent, never half of it.
                self.store.append_episode(block, success=None if success is None
                                          else bool(success), **frames)
            except StoreValueError as exc:
                problem = f"refused: {exc}"
            else:
                self.store.flush()
                return ""
        with self._mu:
            self.last_problem = problem
        return problem


def _frame_blocks(rows: list[Transition], cameras: dict) -> dict:
    """append_episode's `frames` / `next_frames` ({camera: [n, H, W, C]}) of `rows`; {} for
    a store without cameras. KeyError/TypeError for a row without a configured camera."""
    if not cameras:
        return {}
    return {key: {name: np.stack([getattr(r, key)[name] for r in rows]) for name in cameras}
            for key in ("frames", "next_frames")}


def episode_line(info: dict) -> str:
    """One `on_episode` report as the per-episode summary line the operator reads."""
    label = "success" if info["success"] else "failure"
    fate = (f"recorded ({info['stored_episodes']} so far)" if info["stored"]
            else f"NOT recorded: {info['why']}")
    return (f"demo episode {info['episode']}: {info['steps']} steps, {label}, return "
            f"{info['return']:.2f}, {fate}")
