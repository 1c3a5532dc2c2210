"""`o2o-robot finetune`: the sim bridge, the actor node and its learner in one command.

One process hosts the ROS 2 graph (`o2o_sim` and `o2o_actor`, the same nodes and topics as on a
robot); the learner is a `LearnerClient` (its own process by default, `learner.mode`). Before
the graph starts, the store gets scripted-expert demos when it has no demo-side rows and the
sampler wants some (`sampler.offline_ratio > 0`). The supervisor (the calling thread) prints a
progress line about once a second and logs to the run directory:

  metrics.jsonl + tensorboard/   "episode" records (return, length, success, policy version,
                                 success rate over the last `RECENT_EPISODES` episodes: the
                                 policy as it runs, exploration included), "status" records
                                 (tick timing, UTD, queue), "train" records (the learner's last
                                 update metrics), and every `train.eval_every` env steps an
                                 "eval" record: the actor's current policy run deterministically
                                 on `train.eval_episodes` fixed-seed episodes of the same sim
                                 task, through the same SafetyFilter, in a separate process (so
                                 the tick never waits on it); `learning_curve.png` plots them and
                                 the first one at `train.success_threshold` is `solved_at`, as in
                                 the ROS-free `o2o-robot train`
  store.zarr, checkpoints/, policies/   written by the learner (see o2o_robot/learning/worker.py)

Interventions: with `teleop.intervene_every: k` (device "scripted") a scripted operator
(`ScriptedTeleopNode` in mode "intervene") takes over episodes 0, k, 2k, ... (their first
`teleop.intervene_steps` steps, or all): its rows are stored as source "intervention" and
sampled on the demo side. A person intervenes the same way through `teleop_node` (Joy) on the
same ROS domain. The actor's intervention rate (its `~/status`, over the last
`control.intervention_window` acting ticks) is in the progress line and the "status" records.

Modes. Real time (`sim.lockstep: false`, the default): the sim steps at `sim.sim_rate_hz` and the
actor ticks at `control.control_rate_hz`, as on hardware; the learner gets the UTD it can
(reported as achieved UTD). Lock-step (`sim.lockstep: true`, for tests and quick experiments):
the sim steps once per action and the actor ticks only when the sim has answered its last
action (observation and reward in) and the learner has done the updates it owes (within
`LOCKSTEP_MAX_LAG` env steps); its timer merely polls at `LOCKSTEP_TICK_HZ`. So the run goes as
fast as the learner allows, at exactly the configured UTD, whatever the machine's load. Since the
sim's state cannot change between actions there, the observation timeout is relaxed to
`LOCKSTEP_OBS_TIMEOUT_MS` and the policy latency budget is not enforced.

Ending: exactly `train.total_env_steps` env steps (the actor stops acting there), `max_wall_s`,
SIGINT/SIGTERM (clean: the learner checkpoints and closes the store, the final policy is
evaluated), or a learner that failed more often than `learner.max_restarts`; `o2o-robot
finetune` then exits 1. A learner that crashes or dies is restarted from its last checkpoint
after a back-off (`LearnerClient`); each failure is printed and logged ("learner_failure"), and
the actor keeps acting on its last good policy meanwhile.

Resume: `run_finetune(resume=True)` (`o2o-robot finetune --resume`) continues the run in
`train.run_dir` from its last checkpoint (`learner.checkpoint_every_steps`, and at every clean
stop; a learner whose parent was killed also checkpoints before it exits): env steps, episodes,
policy versions (no policy file is ever written twice), the step budget and the records go on
from there, after a "resume" record in metrics.jsonl. Without `--resume`, a run dir that holds
a run is refused. A `kill -9` of the whole process group loses at most
`learner.checkpoint_every_steps` env steps of learning (their rows stay in the store, not
learned from) and the rows not yet committed (`store.flush_every`).

Executors: single-threaded ones only (one per node in real time, each spun in its own thread;
one for both in lock-step). rclpy's MultiThreadedExecutor busy-waits while a ready entity's
callback group is busy (ros2/rclpy#1223) and then starves the callbacks it should run:
measured on a 2-core machine, the actor on a MultiThreadedExecutor(2) fell from 100 Hz to as
little as 4-18 Hz, and the lock-step graph to ~10 env steps/s; on a single-threaded executor it
holds 100 Hz with a p99 period error of 0.3 ms, learner running (benchmarks/control_loop.py).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import rclpy
from rclpy.parameter import Parameter

from o2o_robot.config import (ConfigError, O2OConfig, camera_shapes, load_config,
                              resolve_config_path)
from o2o_robot.control.rewards import TopicReward
from o2o_robot.learning.core import POLICIES, POLICY_NAME, checkpoint_summary
from o2o_robot.learning.preflight import startup_checks
from o2o_robot.learning.worker import LearnerClient
from o2o_robot.ros import convert
from o2o_robot.ros.actor_node import LATENCY_BUDGET_SHARE, ActorNode
from o2o_robot.ros.graph import Graph, catch_signals, ignore_sigint, restore_signals, supervise
from o2o_robot.ros.sim_bridge_node import SimBridgeNode
from o2o_robot.runlog import RunLogger, plot_curve, read_metrics

DEFAULT_CONFIG = "sim_reach.yaml"
LOCKSTEP_TICK_HZ = 200.0
LOCKSTEP_OBS_TIMEOUT_MS = 10_000.0
LOCKSTEP_MAX_LAG = 4                # env steps the actor may run ahead of the learner (a few:
                                    # the sim steps while the learner updates)
LOCKSTEP_WAIT_S = 1.0               # no answer from the sim by then: tick anyway (counted)
RECENT_EPISODES = 20
PROGRESS_PERIOD_S = 1.0


def session_config(cfg: O2OConfig) -> O2OConfig:
    """`cfg` as the session runs it: in lock-step, the tick polls fast and nothing goes stale."""
    if not cfg.sim.lockstep:
        return cfg
    cfg = cfg.model_copy(deep=True)
    cfg.control.control_rate_hz = max(cfg.control.control_rate_hz, LOCKSTEP_TICK_HZ)
    cfg.control.obs_timeout_ms = max(cfg.control.obs_timeout_ms, LOCKSTEP_OBS_TIMEOUT_MS)
    return cfg


def ensure_demos(cfg: O2OConfig, progress: bool = True) -> dict | None:
    """`sim.demos.ensure_demos` on `cfg.store.path`; the store is closed again before returning
    (the learner is its single writer)."""
    from o2o_robot.data.store import TransitionStore
    from o2o_robot.sim import demos
    from o2o_robot.sim.envs import env_spec, make_env

    if cfg.demo_rows_reason() is None:
        return None
    env = make_env(cfg.sim)
    try:
        spec = env_spec(env)
    finally:
        env.close()
    with TransitionStore.open_or_create(cfg.store.path, cfg.robot.obs_dim, cfg.robot.act_dim,
                                        flush_every=cfg.store.flush_every, spec=spec,
                                        cameras=camera_shapes(cfg) or None) as store:
        return demos.ensure_demos(store, cfg, label="finetune", progress=progress)


class FinetuneActor(ActorNode):
    """The ActorNode plus what a session needs: finished episodes handed to the supervisor, the
    latest status kept, and the lock-step gate (see the module docstring)."""

    def __init__(self, cfg: O2OConfig, *, learner,
                 latency_budget_share: float | None = LATENCY_BUDGET_SHARE, start_step: int = 0,
                 **node_kwargs):
        """`start_step`: env steps done before this session (a resumed run's checkpoint)."""
        lockstep = cfg.sim.lockstep
        super().__init__(cfg, learner=learner, **node_kwargs,
                         latency_budget_share=None if lockstep else latency_budget_share)
        self.lockstep = lockstep
        self.pace_learner = lockstep and hasattr(learner, "pending_updates")
        self.finished: queue.SimpleQueue = queue.SimpleQueue()   # (EpisodeSummary, env step)
        self.last_status: dict | None = None
        self.start_step = self.env_steps = start_step
        self.gate_counts = dict.fromkeys(["waited", "forced"], 0)
        self._acted_at: float | None = None      # monotonic time of the last ungated tick
        self._acted = False                      # ... and whether it sent a policy/teleop action
        self._rewards_at_act = 0
        self._waiting_since: float | None = None

    def _on_tick(self) -> None:
        if self.env_steps >= self.cfg.train.total_env_steps:
            return              # the budget is done: no more actions while the session ends
        if self.lockstep and not self._may_step(time.monotonic()):
            return
        core = self.core
        episodes, acting = core.episode.counts["episodes"], core.counts["online"] + \
            core.counts["intervention"]
        super()._on_tick()
        self._acted_at, self._waiting_since = time.monotonic(), None
        self._acted = core.counts["online"] + core.counts["intervention"] > acting
        self._rewards_at_act = self._rewards_received()
        self.env_steps = self.start_step + core.counts["transitions"]
        if core.episode.counts["episodes"] > episodes:
            self.finished.put((core.episode.history[-1], self.env_steps))

    def _rewards_received(self) -> int:
        source = self.core.reward_source
        return source.counts["received"] if isinstance(source, TopicReward) else 0

    def _may_step(self, now: float) -> bool:
        """Lock-step: the sim answered the last action and the learner caught up (and, with
        a learner, its first policy is in: holding on without one would only step the sim)."""
        if self.learner is not None and self.slot.current is None or \
                self.pace_learner and self.learner.pending_updates() > LOCKSTEP_MAX_LAG:
            self.gate_counts["waited"] += 1
            return False
        if self._acted_at is None or not self.core.observations.ready:
            return True
        since_ms = (now - self._acted_at) * 1e3
        answered = max(self.core.observations.ages_ms(now).values()) < since_ms
        if self._acted and isinstance(self.core.reward_source, TopicReward):
            answered = answered and self._rewards_received() > self._rewards_at_act
        if answered:
            return True
        self._waiting_since = self._waiting_since or now
        if now - self._waiting_since > LOCKSTEP_WAIT_S:   # a lost message must not stall the run
            self.gate_counts["forced"] += 1
            return True
        self.gate_counts["waited"] += 1
        return False

    def _publish_status(self) -> None:
        self.last_status = status = self.status()
        status["lockstep_gate"] = dict(self.gate_counts)
        self._status_pub.publish(convert.status_to_msg(status))


def evaluate_policy(policy_path: str, cfg_json: dict, episodes: int) -> dict:
    """Deterministic success rate and mean return of an ONNX policy on fixed-seed episodes of
    the sim task, actions through the configured SafetyFilter (runs in the evaluation process).
    A camera robot's policy gets the observation dict the actor builds (state and frame stacks,
    `sim.camera.CameraObservation`)."""
    from o2o_robot.control.frame_stack import policy_input
    from o2o_robot.control.safety import SafetyFilter
    from o2o_robot.policy.runtime import OnnxPolicy
    from o2o_robot.sim.camera import camera_env
    from o2o_robot.sim.envs import make_env
    from o2o_robot.sim.rollout import EVAL_SEED_BASE, run_episodes

    cfg = O2OConfig.model_validate(cfg_json)
    policy = OnnxPolicy(policy_path, provider="cpu")
    safety = SafetyFilter(cfg.robot.action.low, cfg.robot.action.high,
                          max_delta_per_tick=cfg.safety.max_delta_per_tick, hold=cfg.safety.hold)
    env = camera_env(make_env(cfg.sim), cfg.robot.cameras, cfg.sim)
    cameras = policy.camera_inputs
    try:
        return run_episodes(env, lambda obs: safety.filter(policy(policy_input(obs, cameras)))[0],
                            episodes, seed=EVAL_SEED_BASE, on_reset=safety.reset,
                            max_steps=cfg.control.max_episode_steps)
    finally:
        env.close()


def budget_end(session, env_steps: int, now: float) -> str | None:
    """Why a run (finetune's or the fleet's session: cfg, stop_when_solved, solved_at,
    max_wall_s, started) ends now on its budget, or None: "steps", "solved", "wall_time"."""
    if env_steps >= session.cfg.train.total_env_steps:
        return "steps"
    if session.stop_when_solved and session.solved_at is not None:
        return "solved"
    if session.max_wall_s is not None and now - session.started > session.max_wall_s:
        return "wall_time"
    return None


class _Session:
    """Episodes, evaluations, logging and the progress line of one run (supervisor thread)."""

    def __init__(self, cfg: O2OConfig, run_dir: Path, logger: RunLogger, progress: bool, *,
                 max_wall_s: float | None = None, stop_when_solved: bool = False,
                 start_step: int = 0):
        self.cfg, self.run_dir, self.logger, self.progress = cfg, run_dir, logger, progress
        self.max_wall_s, self.stop_when_solved = max_wall_s, stop_when_solved
        self.recent: deque = deque(maxlen=RECENT_EPISODES)
        self.episodes, self.solved_at, self.last_return = 0, None, None
        self.last_eval: dict = {}
        self.started = time.monotonic()
        self.learner_error = ""
        self._restarts_shown = 0
        self._pool = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"),
                                         initializer=ignore_sigint)
        self._eval: tuple[int, int, Future] | None = None      # (env step, version, result)
        every = cfg.train.eval_every
        self._next_eval = (start_step // every + 1) * every
        self._next_report = self.started + PROGRESS_PERIOD_S
        if start_step:
            self._resume(start_step)

    def _resume(self, step: int) -> None:
        """Continue the run's records from env step `step`: episodes, the recent success
        window, the last evaluation and solved_at as metrics.jsonl had them then; a "resume"
        record supersedes what was logged after it (work the interruption lost)."""
        logged = read_metrics(self.run_dir)
        last = max((r["step"] for r in logged), default=step)
        episodes = [r for r in logged if r["kind"] == "episode" and r["step"] <= step]
        evals = [r for r in logged if r["kind"] == "eval" and r["step"] <= step]
        self.episodes = len(episodes)
        self.recent.extend(bool(r["success"]) for r in episodes[-RECENT_EPISODES:])
        self.last_return = episodes[-1]["return"] if episodes else None
        if evals:
            self.last_eval = {**evals[-1]}
        self.solved_at = next((r["step"] for r in evals
                               if r["success_rate"] >= self.cfg.train.success_threshold), None)
        self.logger.mark_resume(step, lost_steps=max(last - step, 0), episodes=self.episodes)

    def check(self, actor: FinetuneActor, learner) -> str | None:
        """One supervisor pass (a `graph.supervise` check): log the finished episodes, start
        or log evaluations, report about once a second; returns why the run ends, or None."""
        while True:
            try:
                summary, step = actor.finished.get_nowait()
            except queue.Empty:
                break
            self.episode(summary, step, actor.slot.version)
        self.evaluate(actor.env_steps, actor.slot.version)
        now = time.monotonic()
        if now >= self._next_report:
            self._next_report = now + PROGRESS_PERIOD_S
            stats = learner.stats()
            self.status(actor.env_steps, actor.last_status, stats)
            if stats.get("state") in ("crashed", "died") and stats.get("gave_up", True):
                actor.pace_learner = False   # nothing more will come; the actor keeps going
                return "learner_" + stats["state"]
        return budget_end(self, actor.env_steps, now)

    def episode(self, summary, env_step: int, policy_version: int | None) -> None:
        self.episodes += 1
        self.last_return = summary.episode_return
        self.recent.append(summary.success)
        self.logger.log("episode", env_step, {
            "return": summary.episode_return, "length": summary.steps,
            "success": float(summary.success), "policy_version": policy_version or 0,
            "interventions": summary.interventions, "recent_success_rate": self.success_rate})

    @property
    def success_rate(self) -> float | None:
        return float(np.mean(self.recent)) if self.recent else None

    def evaluate(self, env_step: int, policy_version: int | None) -> None:
        """Start an evaluation when one is due; log the one that finished."""
        if self._eval is not None and self._eval[2].done():
            self._collect()
        if env_step >= self._next_eval and self._eval is None:
            self._start_eval(env_step, policy_version)

    def _start_eval(self, env_step: int, policy_version: int | None) -> None:
        path = self.run_dir / POLICIES / POLICY_NAME.format(policy_version or 0)
        if path.exists():
            every = self.cfg.train.eval_every
            self._next_eval = (env_step // every + 1) * every
            self._eval = (env_step, policy_version, self._pool.submit(
                evaluate_policy, str(path), self.cfg.model_dump(mode="json"),
                self.cfg.train.eval_episodes))

    def status(self, env_step: int, status: dict | None, learner: dict) -> None:
        """Log one "status" (and "train") record and print the progress line."""
        status = status or {}
        jitter = status.get("period_jitter_ms") or {}
        values = {"rate_hz": status.get("rate_hz"), "jitter_p50_ms": jitter.get("p50"),
                  "jitter_p99_ms": jitter.get("p99"), "jitter_max_ms": jitter.get("max"),
                  "policy_version": status.get("policy", {}).get("version"),
                  "non_finite_rollbacks": status.get("policy", {}).get("non_finite_rollbacks"),
                  "intervention_rate": status.get("intervention_rate"),
                  **{k: learner.get(k) for k in ("achieved_utd", "updates", "queue_dropped",
                                                  "pending_updates", "critic_updates_per_s")}}
        self.logger.log("status", env_step, {k: v for k, v in values.items() if v is not None})
        if learner.get("state") == "pretraining":    # OEMA: offline phase before any policy
            done = learner.get("pretrain_steps_done")
            if done != getattr(self, "_pretrain_shown", None):
                self._pretrain_shown = done
                self.logger.log("pretrain", done, learner.get("metrics") or {})
                if self.progress:
                    print(f"[finetune] learner pre-training on the demonstrations: {done}/"
                          f"{learner.get('pretrain_steps')} steps", flush=True)
            return
        if learner.get("metrics"):
            self.logger.log("train", env_step, learner["metrics"])
        self._report_failures(env_step, learner, values["policy_version"])
        if not self.progress:
            return
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        timing = ("lock-step" if self.cfg.sim.lockstep
                  else f"jitter p99 {fmt(jitter.get('p99'), '.2f')} ms")
        ev = self.last_eval
        restarts = learner.get("restarts", 0)
        print(f"[finetune] step {env_step}/{self.cfg.train.total_env_steps}  ep {self.episodes}  "
              f"success {fmt(self.success_rate, '.2f')} (last {len(self.recent)})  eval "
              f"{fmt(ev.get('success_rate'), '.2f')}  return {fmt(self.last_return, '.2f')}  "
              f"policy v{fmt(values['policy_version'], 'd')}  interv "
              f"{fmt(values['intervention_rate'], '.2f')}  utd "
              f"{fmt(learner.get('achieved_utd'), '.1f')}/{self.cfg.learner.utd_ratio}  {timing}  "
              f"learner {learner.get('state', '?')}"
              + (f" (restarted {restarts}x)" if restarts else "")
              + (f"  rolled back {values['non_finite_rollbacks']}x (NaN actions)"
                 if values["non_finite_rollbacks"] else "")
              + f"  {time.monotonic() - self.started:.0f} s",
              flush=True)

    def _report_failures(self, env_step: int, learner: dict, version: int | None) -> None:
        """Say once per learner failure what happens next (a restart from its checkpoint, or
        none left), and log it; the full error once the learner is given up."""
        failures = learner.get("failures") or []
        if len(failures) > self._restarts_shown:
            self._restarts_shown = len(failures)
            gave_up = len(failures) > self.cfg.learner.max_restarts   # the k-th: restart k
            self.logger.log("learner_failure", env_step, {
                "failure": failures[-1], "failures": len(failures), "gave_up": gave_up})
            then = ("no restarts left (learner.max_restarts)" if gave_up else
                    f"restart {len(failures)} of {self.cfg.learner.max_restarts} from its last "
                    f"checkpoint")
            print(f"[finetune] LEARNER {failures[-1]}; {then}; the actor keeps policy "
                  f"v{version if version is not None else '-'}", file=sys.stderr, flush=True)
        if learner.get("state") in ("crashed", "died") and learner.get("gave_up", True) \
                and not self.learner_error:
            self.learner_error = learner.get("error", "")
            print(f"[finetune] LEARNER {learner['state'].upper()}; the actor keeps policy "
                  f"v{version if version is not None else '-'}:\n{self.learner_error}",
                  file=sys.stderr, flush=True)

    def _collect(self, timeout_s: float | None = None) -> None:
        step, version, future = self._eval
        self._eval = None
        try:
            result = future.result(timeout_s)
        except Exception as exc:  # noqa: BLE001 - a failed evaluation is reported, not fatal
            print(f"[finetune] evaluation at step {step} failed: {exc!r}", file=sys.stderr)
            return
        self.last_eval = {**result, "policy_version": version, "step": step}
        self.logger.log("eval", step, {**result, "policy_version": version})
        if self.solved_at is None and result["success_rate"] >= self.cfg.train.success_threshold:
            self.solved_at = step

    def close(self, final: tuple[int, int | None] | None) -> None:
        """With `final` = (env step, policy version): log the evaluation in flight and evaluate
        the final policy unless that was it (so every run has a curve). Then stop the pool."""
        if final is not None:
            if self._eval is not None:
                self._collect(timeout_s=120.0)
            if self.last_eval.get("step") != final[0]:
                self._start_eval(*final)
                if self._eval is not None:
                    self._collect(timeout_s=120.0)
        self._pool.shutdown(wait=True, cancel_futures=True)


def resume_step(run_dir: Path, resume: bool, total: int) -> int:
    """The env step a session in `run_dir` starts from: 0 for a new run dir, the last
    checkpoint's with `resume`. ConfigError for a run dir that already holds a run without
    `resume` (its policy files and curve would be mixed with a new run's), and for a run whose
    checkpoint is at the step budget already."""
    summary = checkpoint_summary(run_dir)
    policies = sorted((run_dir / POLICIES).glob("policy_*.onnx"))
    if not resume:
        if summary is not None or policies:
            at = f"checkpoint at env step {summary['env_steps']}" if summary else \
                f"{len(policies)} policies"
            raise ConfigError(f"{run_dir}: holds a run ({at}): --resume continues it, "
                              f"--run-dir DIR starts a new one elsewhere")
        return 0
    step = summary["env_steps"] if summary else 0
    if step >= total:
        raise ConfigError(f"{run_dir}: the run's checkpoint is at env step {step}, the budget "
                          f"train.total_env_steps is {total}: raise it (--steps) to continue")
    return step


def run_finetune(cfg: O2OConfig, *, progress: bool = True, max_wall_s: float | None = None,
                 stop_when_solved: bool = False, domain_id: int | None = None,
                 namespace: str = "", learner_factory=None, resume: bool = False,
                 label: str = "config") -> dict:
    """Run a session (module docstring) until `train.total_env_steps` env steps, `max_wall_s`,
    a learner that failed past its restarts, SIGINT/SIGTERM, or (`stop_when_solved`) an
    evaluation at the success threshold; return a summary. `resume`: continue the run in
    `train.run_dir` from its last checkpoint (`resume_step`). `learner_factory(cfg, run_dir)`
    replaces `LearnerClient`. First the start-up checks (`learning.preflight`, the same as
    `o2o-robot config validate`): ConfigError naming `label` (the config file) and the key,
    before anything is written."""
    cfg = session_config(cfg)
    startup_checks(cfg, label, sim=True)
    run_dir = Path(cfg.train.run_dir)
    start_step = resume_step(run_dir, resume, cfg.train.total_env_steps)
    run_dir.mkdir(parents=True, exist_ok=True)
    demos = ensure_demos(cfg, progress)
    learner = (learner_factory or LearnerClient)(cfg, run_dir)
    logger = RunLogger(run_dir)
    session = _Session(cfg, run_dir, logger, progress, max_wall_s=max_wall_s,
                       stop_when_solved=stop_when_solved, start_step=start_step)
    if start_step and progress:
        print(f"[finetune] resuming {run_dir} at env step {start_step} (its last checkpoint)",
              flush=True)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    graph, ended, stop = Graph(context, "finetune"), "error", threading.Event()
    handlers, actor = catch_signals(stop.set), None
    try:
        graph.add(SimBridgeNode(cfg, context=context, namespace=namespace))
        actor = FinetuneActor(cfg, learner=learner, context=context, namespace=namespace,
                              start_step=start_step)
        if cfg.teleop.intervene_every:   # the scripted operator steps with the sim
            from o2o_robot.ros.scripted_teleop_node import ScriptedTeleopNode

            graph.add(ScriptedTeleopNode(
                cfg, context=context, namespace=namespace,
                parameter_overrides=[Parameter("mode", value="intervene")]))
        graph.add(actor, group=0 if cfg.sim.lockstep else 1)   # lock-step: with the sim
        graph.start()
        ended = supervise(lambda: session.check(actor, learner), stop, context)
    finally:
        graph.stop()
        final = learner.close()
        restore_signals(handlers)   # the store is safe: a 2nd Ctrl-C may stop us
        if actor is not None:       # the run's last status record and progress line
            session.status(actor.env_steps, actor.status(), final)
        done = ended in ("steps", "wall_time", "interrupted")   # solved: ends on its evaluation
        session.close((actor.env_steps, actor.slot.version) if done else None)
        logger.close()
    curve = plot_curve(run_dir)
    return {"ended": ended, "env_steps": actor.env_steps, "episodes": session.episodes,
            "success_rate_last_n": session.success_rate, "last_n": len(session.recent),
            "last_eval": session.last_eval, "solved_at": session.solved_at,
            "policy_version": actor.slot.version, "achieved_utd": final.get("achieved_utd"),
            "interventions": actor.core.counts["intervention"],
            "intervention_rate": actor.core.intervention_rate,
            "updates": final.get("updates"), "learner_state": final.get("state"),
            "learner_error": final.get("error", ""), "queue_dropped": final.get("queue_dropped"),
            "lockstep": cfg.sim.lockstep, "demos": demos, "run_dir": str(run_dir),
            "learning_curve": str(curve) if curve else None,
            "wall_s": round(time.monotonic() - session.started, 1)}


# ------------------------------------------------------------------------------------ CLI
def apply_overrides(cfg: O2OConfig, args: argparse.Namespace) -> O2OConfig:
    """The CLI flags applied to `cfg` (a copy); ConfigError names a bad flag."""
    cfg = cfg.model_copy(deep=True)
    if args.steps is not None:
        if args.steps < 1:
            raise ConfigError(f"--steps: must be >= 1, got {args.steps}")
        cfg.train.total_env_steps = args.steps
    if args.run_dir:
        old, store = Path(cfg.train.run_dir), Path(cfg.store.path)
        if store.is_relative_to(old):
            cfg.store.path = str(Path(args.run_dir) / store.relative_to(old))
        cfg.train.run_dir = args.run_dir
    if args.lockstep:
        cfg.sim.lockstep = True
    return cfg


def cmd_finetune(args) -> int:
    """`o2o-robot finetune`: exit 0 when the run ended normally, 1 when the learner failed."""
    import json

    path = resolve_config_path(args.config or DEFAULT_CONFIG)
    summary = run_finetune(apply_overrides(load_config(path), args), resume=args.resume,
                           label=str(path))
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 1 if summary["learner_error"] else 0
