"""Background learner: store -> mirror -> agent updates at the configured UTD -> ONNX exports.

The actor side holds a `LearnerClient`: `submit(transition)` never blocks (a full queue drops
the row and counts it), `poll_policy()` returns the newest exported ONNX bytes, `stats()` the
learner's latest report and `progress()` its live counters. The worker runs either in a
separate process (`learner.mode: process`, the default) or in a thread of the actor's process
(`learner.mode: thread`).

Why a process by default: a torch learner in a thread of the actor's process shares the GIL
with the control tick (its update loop and ONNX exports are partly Python); in a separate
process with one torch thread the tick only competes for a CPU core. Measured by
`benchmarks/control_loop.py` on a 2-core machine, actor at 100 Hz, learner (2x256, E=10, UTD 10)
running flat out: process mode p99 period error 0.28 ms, max 1.1 ms, learner at 96% of its
standalone rate; thread mode p99 1.2 ms, max 9.7 ms (the target is p99 <= 1 ms, max <= 5 ms).
`thread` mode starts in well under a second instead of a few (no interpreter to spawn, nothing
pickled), so tests and notebooks may prefer it where tick timing does not matter.

The worker owns the store (the single writer): every submitted transition is appended durably
(episode boundaries at terminated/truncated rows, with the row's optional `episode_success`),
mirrored in memory, and online/intervention rows are counted as env steps. A row the store
refuses (NaN, wrong shape) is dropped and counted, never fatal. After `learner.warmup_steps` env
steps, it runs one `agent.update` on the algorithm's batch (`batches.batch_plan`; G critic steps
for RLPD) per env step received (agents with an offline phase, OEMA, pre-train first on the
store's demo-side rows: `batches.pretrain`), exports a new policy
every `learner.export_every_updates` updates (a failed export is counted; the actor keeps its
policy) and checkpoints every `learner.checkpoint_every_steps` env steps and on close. A crash
in the worker is reported through `stats()` (state "crashed", "error" holds the traceback; a
process that dies without a word: state "died" and its exit code); the client keeps accepting
(and, once the queue is full, dropping) rows, so the actor keeps running its last good policy.
"""
from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from o2o_robot.config import O2OConfig
from o2o_robot.data.schema import END_EPISODE_KEY, EPISODE_INDEX_KEY

REPORT_PERIOD_S = 1.0
STEP_SOURCES = (1, 2)            # schema codes of "online" and "intervention": env steps
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
        self.warmup_steps = cfg.learner.warmup_steps
        self.dropped = self.submitted = self.submitted_steps = 0
        self._latest_stats: dict = {"state": "starting"}
        self._policy: bytes | None = None
        self._mu = threading.Lock()      # poll_policy and stats may run on different threads
        self._closed = False
        ctx = mp.get_context("spawn")    # fork after rclpy/torch threads exist is unsafe
        self._progress = ctx.RawArray("q", 4)   # shared memory: readable without a message
        args = (cfg.model_dump(mode="json"), str(run_dir), agent_factory)
        if self.mode == "process":
            self._in, self._policies, self._stats = (ctx.Queue(cfg.learner.queue_size),
                                                     ctx.Queue(), ctx.Queue())
            self._stop = ctx.Event()
            worker = ctx.Process
        else:
            # torch imported here, before the worker thread imports it too: two threads importing
            # torch at once (the worker, and e.g. TensorBoard in the caller) can see it half-built.
            import torch  # noqa: F401

            self._in, self._policies, self._stats = (queue.Queue(cfg.learner.queue_size),
                                                     queue.Queue(), queue.Queue())
            self._stop = threading.Event()
            worker = threading.Thread
        self._worker = worker(target=run_worker, name="o2o-learner", daemon=True,
                              args=(*args, self._in, self._policies, self._stats, self._stop,
                                    self._progress))
        self._worker.start()

    # ------------------------------------------------------------------------- actor side
    def submit(self, transition: dict) -> bool:
        """Queue one transition without blocking; False (and counted) when the queue is full."""
        try:
            self._in.put_nowait(transition)
        except queue.Full:
            self.dropped += 1
            return False
        self.submitted += 1
        self.submitted_steps += is_env_step(transition)
        return True

    def end_episode(self, success: bool | None = None) -> bool:
        """The episode ended on a row the actor could not record (e.g. no reward for it): the
        worker closes the store episode, so the next episode's rows never merge into it."""
        return self.submit({END_EPISODE_KEY: True, "episode_success": success})

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
        return {**stats, "mode": self.mode, "alive": alive, "queue_dropped": self.dropped,
                "submitted": self.submitted, "pending_updates": self.pending_updates()}

    def close(self, timeout_s: float = 60.0) -> dict:
        """Ask the worker to ingest what is queued, checkpoint, close the store and stop; wait
        for it (reading its messages meanwhile: a process cannot exit while its queue's pipe is
        full). Returns the final stats. Idempotent."""
        if self._closed:
            return self.stats()
        self._closed = True
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


def is_env_step(row: dict) -> bool:
    """An online or intervention row (what counts as an env step); False for a bad source."""
    try:
        return int(row["source"]) in STEP_SOURCES
    except (KeyError, TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------- worker side
def run_worker(cfg_json: dict, run_dir: str, agent_factory, inbox, policies, stats, stop,
               progress) -> None:
    """Worker entry point (thread or process); reports a crash instead of raising."""
    if threading.current_thread() is threading.main_thread():   # its own process
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C hits the group; close() stops us
    worker = None
    try:
        worker = _Worker(O2OConfig.model_validate(cfg_json), Path(run_dir), agent_factory, inbox,
                         policies, stats, stop, progress)
        worker.run()
    except Exception:
        error = traceback.format_exc(limit=8)
        report = worker.report("crashed") if worker is not None else {"state": "crashed"}
        if worker is not None:
            worker.close_store()   # what was ingested stays; the store's lock is released
        stats.put({**report, "state": "crashed", "error": error})


class _Worker:
    def __init__(self, cfg: O2OConfig, run_dir: Path, agent_factory, inbox, policies, stats,
                 stop, progress):
        import torch

        from o2o_robot.data.store import TransitionStore
        from o2o_robot.spaces import ActionScaler

        torch.set_num_threads(cfg.learner.torch_threads)
        self.cfg, self.run_dir = cfg, run_dir
        self.inbox, self.policies, self.stats_out, self.stop = inbox, policies, stats, stop
        self.progress = progress
        robot = cfg.robot
        self.scaler = ActionScaler(robot.action.low, robot.action.high)
        self.store = TransitionStore.open_or_create(cfg.store.path, robot.obs_dim, robot.act_dim,
                                                    flush_every=cfg.store.flush_every)
        try:
            self._load(cfg, agent_factory)
        except BaseException:
            self.store.close()   # a thread-mode worker must not keep the lock of a dead learner
            raise

    def _load(self, cfg: O2OConfig, agent_factory) -> None:
        from o2o_robot.agents import build_agent, resolve_device
        from o2o_robot.agents.checkpoint import load_checkpoint
        from o2o_robot.learning.batches import batch_plan, pretrain
        from o2o_robot.data.replay import ReplayMirror

        robot = cfg.robot
        if self.store.open_episode_rows:   # cut by an earlier crash: never merge it with ours
            self.store.end_episode(success=None)
        self.open_rows, self.open_episode = 0, None
        self.mirror = ReplayMirror(robot.obs_dim, robot.act_dim,
                                   online_capacity=cfg.sampler.online_capacity)
        rows = self.store.read()
        if len(rows["obs"]):
            rows["action"] = self.scaler.to_unit(rows["action"])
            self.mirror.add_rows(rows)
        self.ckpt_path = self.run_dir / "checkpoints" / "latest.pt"
        self.policy_dir = self.run_dir / "policies"
        device = resolve_device(cfg.learner.device)
        self.counters = dict.fromkeys(["env_steps", "updates", "policy_version",
                                       "rejected_rows", "export_errors", "cut_episodes"], 0)
        self.seen_steps = 0   # env-step rows taken from the queue by this worker
        self.last_problem = ""
        if self.ckpt_path.exists():
            self.agent, _, extra = load_checkpoint(self.ckpt_path, device=device)
            self.counters.update({k: int(extra.get(k, 0)) for k in self.counters})
        else:
            factory = agent_factory or (lambda c, o, a, d: build_agent(c, o, a, device=d,
                                                                       seed=c.train.seed))
            self.agent = factory(cfg, robot.obs_dim, robot.act_dim, device)
        self.rng = np.random.default_rng(cfg.train.seed)
        self.update_time, self.metrics = 0.0, {}
        self.plan = batch_plan(cfg, self.mirror)
        total = int(getattr(cfg.algorithm, "pretrain_steps", 0))
        log = lambda step, metrics: self.stats_out.put(  # noqa: E731  (every 1000 steps)
            {"state": "pretraining", "pretrain_steps_done": step, "pretrain_steps": total,
             "metrics": {k: float(v) for k, v in metrics.items()}})
        if pretrain(self.agent, cfg, self.mirror, self.rng, progress=False, log=log):
            self._checkpoint()   # a restarted learner does not pre-train again
        self._publish_progress()

    # ---------------------------------------------------------------------------- loop
    def run(self) -> None:
        self._export()  # the untrained stochastic actor explores during warm-up
        last_report = time.monotonic()
        self.stats_out.put(self.report("running"))
        while not self.stop.is_set():
            got = self._ingest()
            owed = self.counters["env_steps"] - self.cfg.learner.warmup_steps \
                - self.counters["updates"]
            if owed > 0 and self._can_sample():
                self._update()
            elif not got:
                time.sleep(0.002)
            if time.monotonic() - last_report > REPORT_PERIOD_S:
                self.stats_out.put(self.report("running"))
                last_report = time.monotonic()
        while self._ingest():   # what the actor queued before close
            pass
        if self.open_rows:      # the run stops mid-episode: close it (truncated by the stop)
            self.store.end_episode(success=None)
            self.open_rows = 0
        self._checkpoint()
        self.close_store()
        self.stats_out.put(self.report("stopped"))

    def _ingest(self, limit: int = 1000) -> int:
        from o2o_robot.data.store import StoreValueError

        n = 0
        while n < limit:
            try:
                row = self.inbox.get_nowait()
            except queue.Empty:
                break
            n += 1
            self.seen_steps += is_env_step(row)
            success = row.pop("episode_success", None)
            episode = row.pop(EPISODE_INDEX_KEY, None)
            if episode is not None:
                if self.open_rows and episode != self.open_episode:   # its last row was lost
                    self.store.end_episode(success=None)
                    self.open_rows = 0
                    self.counters["cut_episodes"] += 1
                self.open_episode = episode
            if row.get(END_EPISODE_KEY):
                if self.open_rows:
                    self.store.end_episode(success=success)
                    self.open_rows = 0
                continue
            try:
                self.store.append(**row)
            except (StoreValueError, TypeError) as exc:   # a bad row is dropped, not fatal
                self.counters["rejected_rows"] += 1
                self.last_problem = f"rejected row: {exc}"
                continue
            self.mirror.add(**{**row, "action": self.scaler.to_unit(row["action"])})
            self.open_rows += 1
            if row["terminated"] or row["truncated"]:
                self.store.end_episode(success=success)
                self.open_rows = 0
            if is_env_step(row):
                self.counters["env_steps"] += 1
                if self.counters["env_steps"] % self.cfg.learner.checkpoint_every_steps == 0:
                    self._checkpoint()
        self._publish_progress()
        return n

    def _can_sample(self) -> bool:
        return self.plan.ready()

    def _update(self) -> None:
        lc = self.cfg.learner
        tick = time.perf_counter()
        batch = self.plan.draw(self.rng)
        self.metrics = self.agent.update(batch)
        self.plan.after_update(self.agent, batch)
        self.update_time += time.perf_counter() - tick
        self.counters["updates"] += 1
        self._publish_progress()
        if self.counters["updates"] % lc.export_every_updates == 0:
            self._export()

    def _export(self) -> None:
        from o2o_robot.policy.export import ExportError, export_policy, write_policy

        robot = self.cfg.robot
        version = self.counters["policy_version"] + 1
        probe = self.mirror.sample_uniform(64, self.rng)["obs"] if len(self.mirror) else None
        try:
            data = export_policy(self.agent.export_actor(), obs_dim=robot.obs_dim,
                                 act_dim=robot.act_dim, action_low=robot.action.low,
                                 action_high=robot.action.high,
                                 algorithm=self.cfg.algorithm.name, version=version,
                                 config_hash=self.cfg.config_hash(), probe_obs=probe,
                                 names=robot.action.names or None)
        except ExportError as exc:   # e.g. a diverged actor: the actor keeps the last good one
            self.counters["export_errors"] += 1
            self.last_problem = f"export of version {version} failed: {exc}"
            return
        write_policy(data, self.policy_dir / f"policy_{version:05d}.onnx")
        self.counters["policy_version"] = version
        self._publish_progress()
        self.policies.put(data)

    def _checkpoint(self) -> None:
        from o2o_robot.agents.checkpoint import save_checkpoint

        self.store.flush()   # rows the checkpoint counts must be durable before it is
        save_checkpoint(self.ckpt_path, self.agent, self.cfg, **self.counters)

    def close_store(self) -> None:
        self.store.close()   # idempotent

    def _publish_progress(self) -> None:
        c, p = self.counters, self.progress
        p[ENV_STEPS], p[UPDATES], p[VERSION] = c["env_steps"], c["updates"], c["policy_version"]
        p[SEEN_STEPS] = self.seen_steps

    def report(self, state: str) -> dict:
        lc = self.cfg.learner
        steps = max(self.counters["env_steps"] - lc.warmup_steps, 0)
        return {"state": state, **self.counters, "last_problem": self.last_problem,
                "achieved_utd": (self.counters["updates"] * lc.utd_ratio / steps) if steps else 0.0,
                "critic_updates_per_s": (self.counters["updates"] * lc.utd_ratio
                                         / self.update_time) if self.update_time else 0.0,
                "store_rows": len(self.store) + self.store.num_buffered,
                "mirror": self.mirror.sizes(),
                "metrics": {k: float(v) for k, v in self.metrics.items()}}
