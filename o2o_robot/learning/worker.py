"""The learner worker beside one actor node: `learning.core.LearnerCore` fed through a queue.

The actor side holds a `LearnerClient`: `submit(Transition | EpisodeEnd)` never blocks (a full
queue drops the item and counts it), `poll_policy()` returns the newest exported ONNX bytes,
`stats()` the learner's latest report and `progress()` its live counters. The worker runs either
in a separate process (`learner.mode: process`, the default) or in a thread of the actor's
process (`learner.mode: thread`).

Why a process by default: a torch learner in a thread of the actor's process shares the GIL
with the control tick (its update loop and ONNX exports are partly Python); in a separate
process with one torch thread the tick only competes for a CPU core. Measured by
`benchmarks/control_loop.py` on a 2-core machine, actor at 100 Hz, learner (2x256, E=10, UTD 10)
running flat out: process mode p99 period error 0.28 ms, max 1.1 ms, learner at 96% of its
standalone rate; thread mode p99 1.2 ms, max 9.7 ms (the target is p99 <= 1 ms, max <= 5 ms).
`thread` mode starts in well under a second instead of a few (no interpreter to spawn, nothing
pickled), so tests and notebooks may prefer it where tick timing does not matter.

The worker owns the store (the single writer). Its loop: take what is queued (up to
`INGEST_BATCH` items) into the core, then run one owed update, export and publish a new policy
when the core made one, checkpoint every `learner.checkpoint_every_steps` env steps and on
close. Before the loop: offline pre-training for agents with a phase (OEMA), reported as
"pretraining"; then the first policy (the warm-up policy, see `learner.warmup_actions`). A crash
in the worker is reported through `stats()` (state "crashed", "error" holds the traceback; a
process that dies without a word: state "died" and its exit code); the client keeps accepting
(and, once the queue is full, dropping) items, so the actor keeps running its last good policy.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path


from o2o_robot.config import O2OConfig, camera_shapes
from o2o_robot.data.schema import EpisodeEnd, Transition
from o2o_robot.learning.threads import ThreadTuner, prefer_passive_omp

REPORT_PERIOD_S = 1.0
WATCH_PERIOD_S = 0.2             # how often the client checks that its worker is alive
INGEST_BATCH = 1000              # items taken from the queue between two updates
ENV_STEPS, UPDATES, VERSION, SEEN_STEPS = range(4)   # slots of the shared counters

AgentFactory = Callable[[O2OConfig, int, int, str], object]


class LearnerClient:
    """Actor-side handle of a learner worker (thread or process); every call is non-blocking.

    `agent_factory(cfg, obs_dim, act_dim, device)` replaces `build_agent` (fault injection in
    tests; in process mode it must be a module-level function, it is pickled)."""

    def __init__(self, cfg: O2OConfig, run_dir: str | Path, *, mode: str | None = None,
                 agent_factory: AgentFactory | None = None):
        self.mode = mode or cfg.learner.mode
        if self.mode not in ("thread", "process"):
            raise ValueError(f"learner.mode: expected 'thread' or 'process', got {self.mode!r}")
        lc = cfg.learner
        self.warmup_steps, self.queue_size = lc.warmup_steps, lc.queue_size
        self.max_restarts, self.restart_backoff_s = lc.max_restarts, lc.restart_backoff_s
        self.dropped = self.submitted = self.submitted_steps = 0
        self.restarts, self.lost_in_restarts, self.gave_up = 0, 0, False
        self.failures: list[str] = []    # one line per worker that crashed or died
        self._restart_at: float | None = None
        self._latest_stats: dict = {"state": "starting"}
        self._policy: bytes | None = None
        self._mu = threading.Lock()      # poll_policy and stats may run on different threads
        self._closed = False
        self._args = (cfg.model_dump(mode="json"), str(run_dir), agent_factory)
        if self.mode == "thread":
            # torch imported here, before the worker thread imports it too: two threads importing
            # torch at once (the worker, and e.g. TensorBoard in the caller) can see it half-built.
            import torch  # noqa: F401
        self._start()
        self._watcher = threading.Thread(target=self._watch, name="o2o-learner-watch",
                                         daemon=True)
        self._watcher.start()

    def _start(self) -> None:
        """Start a worker with fresh queues; it resumes from the run dir's checkpoint."""
        ctx = mp.get_context("spawn")    # fork after rclpy/torch threads exist is unsafe
        progress = ctx.RawArray("q", 4)  # shared memory: readable without a message
        if self.mode == "process":
            inbox, policies, stats = ctx.Queue(self.queue_size), ctx.Queue(), ctx.Queue()
            stop, worker = ctx.Event(), ctx.Process
        else:
            inbox, policies, stats = queue.Queue(self.queue_size), queue.Queue(), queue.Queue()
            stop, worker = threading.Event(), threading.Thread
        started = worker(target=run_worker, name="o2o-learner", daemon=True,
                         args=(*self._args, inbox, policies, stats, stop, progress))
        started.start()
        with self._mu:
            if self._closed:             # close() came first: this one stops at once
                stop.set()
                return
            self._progress, self._policies, self._stats, self._stop = progress, policies, stats, stop
            self._worker, self.submitted_steps = started, 0
            self._latest_stats = {"state": "starting"}
            self._in = inbox             # last: submit() now feeds the new worker

    def _watch(self) -> None:
        """Restart a worker that crashed or died, after `learner.restart_backoff_s` (doubling
        each time), at most `learner.max_restarts` times; the new one resumes from the last
        checkpoint. Items queued to the dead one are lost (counted)."""
        while not self._closed:
            time.sleep(WATCH_PERIOD_S)
            if self._closed or self.gave_up or self._worker.is_alive():
                continue
            stats = self.stats()
            if stats["state"] == "stopped":
                continue
            if self._restart_at is None:
                error = (stats.get("error") or "").strip().splitlines()
                self.failures.append(f"{stats['state']}: {error[-1] if error else '?'}")
                if self.restarts >= self.max_restarts:
                    self.gave_up = True
                    continue
                self._restart_at = time.monotonic() + self.restart_backoff_s * 2 ** self.restarts
            if time.monotonic() < self._restart_at:
                continue
            old = (self._in, self._policies, self._stats)
            self.lost_in_restarts += _queued(self._in)
            self.restarts += 1
            self._restart_at = None
            self._start()
            if self.mode == "process":
                for q in old:
                    q.cancel_join_thread()
                    q.close()

    # ------------------------------------------------------------------------- actor side
    def submit(self, item: Transition | EpisodeEnd) -> bool:
        """Queue a transition (or an episode end) without blocking; False (and counted) when the
        queue is full."""
        try:
            self._in.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            return False
        self.submitted += 1
        self.submitted_steps += isinstance(item, Transition) and item.is_env_step
        return True

    def poll_policy(self) -> bytes | None:
        """The newest exported policy since the last call, else None (older ones are skipped)."""
        with self._mu:
            self._drain_policies()
            policy, self._policy = self._policy, None
        return policy

    def _drain_policies(self) -> None:
        while True:
            try:
                self._policy = self._policies.get_nowait()
            except (queue.Empty, OSError, ValueError):   # OSError/ValueError: queue closed
                return

    def progress(self) -> dict[str, int]:
        """The worker's live counters (shared memory, no message): env_steps ingested, updates
        done, policy_version exported."""
        p = self._progress
        return {"env_steps": p[ENV_STEPS], "updates": p[UPDATES], "policy_version": p[VERSION]}

    def pending_updates(self) -> int:
        """Updates the learner owes for the env steps submitted so far (its lag, in env steps)."""
        p = self._progress
        queued = self.submitted_steps - p[SEEN_STEPS]   # not yet taken from the queue
        return max(p[ENV_STEPS] + queued - self.warmup_steps, 0) - p[UPDATES]

    def stats(self) -> dict:
        """The worker's latest report plus the client's own counters."""
        with self._mu:
            while True:
                try:
                    self._latest_stats = self._stats.get_nowait()
                except (queue.Empty, OSError, ValueError):
                    break
            stats = dict(self._latest_stats)
        alive = self._worker.is_alive()
        if not alive and stats.get("state") not in ("crashed", "stopped"):
            stats["state"] = "died"   # killed, or a crash that could not even be reported
            code = getattr(self._worker, "exitcode", None)
            stats.setdefault("error", f"learner worker exited (code {code}) without a report")
        if self._restart_at is not None:
            stats["state"] = "restarting"
            stats["restart_in_s"] = round(max(self._restart_at - time.monotonic(), 0.0), 1)
        return {**stats, "mode": self.mode, "alive": alive, "queue_dropped": self.dropped,
                "submitted": self.submitted, "pending_updates": self.pending_updates(),
                "restarts": self.restarts, "gave_up": self.gave_up,
                "failures": list(self.failures), "lost_in_restarts": self.lost_in_restarts}

    def close(self, timeout_s: float = 60.0) -> dict:
        """Ask the worker to ingest what is queued, checkpoint, close the store and stop; wait
        for it (reading its messages meanwhile: a process cannot exit while its queue's pipe is
        full). Returns the final stats. Idempotent."""
        if self._closed:
            return self.stats()
        with self._mu:               # no restart from here on
            self._closed = True
            self._restart_at = None
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        while self._worker.is_alive() and time.monotonic() < deadline:
            with self._mu:
                self._drain_policies()   # kept: poll_policy() still returns the newest
            self._worker.join(0.05)
        with self._mu:
            self._drain_policies()
        final = self.stats()
        if self.mode == "process":
            if self._worker.is_alive():
                self._worker.terminate()
                self._worker.join(5.0)
            for q in (self._in, self._policies, self._stats):
                q.cancel_join_thread()   # rows nobody will read must not block our exit
                q.close()
        return final


def _queued(q) -> int:
    """Items still in queue `q` (best effort: 0 where the platform cannot tell)."""
    try:
        return q.qsize()
    except (NotImplementedError, OSError, ValueError):
        return 0


# ------------------------------------------------------------------------------- worker side
def run_worker(cfg_json: dict, run_dir: str, agent_factory, inbox, policies, stats, stop,
               progress) -> None:
    """Worker entry point (thread or process); reports a crash instead of raising."""
    if threading.current_thread() is threading.main_thread():   # its own process
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C hits the group; close() stops us
        if cfg_json["learner"]["torch_threads"] == "auto":
            prefer_passive_omp()                       # before torch loads (learning/threads.py)
    worker = None
    try:
        worker = _Worker(O2OConfig.model_validate(cfg_json), Path(run_dir), agent_factory, inbox,
                         policies, stats, stop, progress)
        worker.run()
    except Exception as exc:
        error = crash_line(exc) or traceback.format_exc(limit=8)
        report = worker.report("crashed") if worker is not None else {"state": "crashed"}
        if worker is not None:
            lost = worker.close_store_after_crash()
            error += f"; {lost}" if lost else ""
        stats.put({**report, "state": "crashed", "error": error})


def crash_line(exc: Exception) -> str | None:
    """One line for a crash whose cause is outside the code: a store error (a damaged store, a
    full disk: the message names the file and the free space) or an OS error (a checkpoint or
    a policy file the disk refused); None for a bug (its traceback is the report)."""
    from o2o_robot.data.store import StoreError
    from o2o_robot.fsutil import os_error_line

    if isinstance(exc, StoreError):
        return f"learner stopped: {exc}"
    if isinstance(exc, OSError):
        return f"learner stopped: {os_error_line(exc)}"
    return None


class _Worker:
    def __init__(self, cfg: O2OConfig, run_dir: Path, agent_factory, inbox, policies, stats,
                 stop, progress):
        from o2o_robot.data.store import TransitionStore
        from o2o_robot.learning.core import LearnerCore

        # Beside an actor node: one core is left to its tick (learning/threads.py).
        self.threads = ThreadTuner(cfg.learner.torch_threads, reserve=1)
        self.cfg, self.run_dir = cfg, run_dir
        in_process = threading.current_thread() is threading.main_thread()
        self.parent_pid = os.getppid() if in_process else None
        self.inbox, self.policies, self.stats_out, self.stop = inbox, policies, stats, stop
        self.progress = progress
        robot = cfg.robot
        self.store = TransitionStore.open_or_create(cfg.store.path, robot.obs_dim, robot.act_dim,
                                                    flush_every=cfg.store.flush_every,
                                                    cameras=camera_shapes(cfg) or None)
        try:
            self.core = LearnerCore.open(cfg, self.store, run_dir, resume=True,
                                         agent_factory=agent_factory)
            self.seen_steps = 0   # env-step rows taken from the queue by this worker
            total = int(self.core.agent.pretrain_steps)
            self.core.pretrain(log=lambda step, metrics: stats.put(
                {"state": "pretraining", "pretrain_steps_done": step, "pretrain_steps": total,
                 "metrics": {k: float(v) for k, v in metrics.items()}}))
        except BaseException:
            self.store.close()   # a thread-mode worker must not keep the lock of a dead learner
            raise
        self._last_checkpoint = self.core.state.env_steps
        self._publish_progress()

    # ---------------------------------------------------------------------------- loop
    def run(self) -> None:
        core = self.core
        core.export()       # the warm-up policy, or the agent's actor after warm-up
        self._publish_policy()
        last_report = time.monotonic()
        self.stats_out.put(self.report("running"))
        while not self.stop.is_set() and not self._orphaned():
            self.threads.maybe_adjust()
            got = self._ingest()
            if core.step():
                self._publish_policy()
                self._publish_progress()
            elif not got:
                time.sleep(0.002)
            if time.monotonic() - last_report > REPORT_PERIOD_S:
                self.stats_out.put(self.report("running"))
                last_report = time.monotonic()
        while self._ingest():   # what the actor queued before close
            pass
        core.close_episode()    # the run stops mid-episode: close it (truncated by the stop)
        core.checkpoint()
        self.close_store()
        self.stats_out.put(self.report("stopped"))

    def _orphaned(self) -> bool:
        """The process that started this worker process is gone (killed): finish as on a stop
        (the queued rows, a checkpoint, the store closed) instead of running on without anyone
        to feed it, holding the store's lock."""
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def _ingest(self, limit: int = INGEST_BATCH) -> int:
        n = 0
        while n < limit:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                break
            n += 1
            self.seen_steps += isinstance(item, Transition) and item.is_env_step
            self.core.ingest(item)
            steps = self.core.state.env_steps
            if steps - self._last_checkpoint >= self.cfg.learner.checkpoint_every_steps:
                self.core.checkpoint()
                self._last_checkpoint = steps
        self._publish_progress()
        return n

    def _publish_policy(self) -> None:
        data = self.core.pop_export()
        if data is not None:
            self._publish_progress()
            self.policies.put(data)

    def close_store(self) -> None:
        self.store.close()   # idempotent

    def close_store_after_crash(self) -> str:
        """Commit what was ingested and release the store's lock. When the commit fails again
        (the disk is still full) `close` has released the lock anyway: the committed rows stay,
        the buffered ones are lost as in a crash. Returns what was lost, in words ("" if none)."""
        from o2o_robot.data.store import StoreError

        buffered = self.store.num_buffered
        try:
            self.store.close()
        except StoreError:
            return f"{buffered} buffered rows not committed"
        return ""

    def _publish_progress(self) -> None:
        s, p = self.core.state, self.progress
        p[ENV_STEPS], p[UPDATES], p[VERSION] = s.env_steps, s.updates, s.policy_version
        p[SEEN_STEPS] = self.seen_steps

    def report(self, state: str) -> dict:
        return {**self.core.report(state), **self.threads.report()}
