"""`o2o-robot fleet`: a simulated fleet on this machine, as it runs on real robots.

    o2o-robot fleet --config config/sim_reach.yaml --robots 2

Processes (`fleet_graph.Fleet`), each what a user runs with `ros2 run`: one learner node, and
per robot i a sim bridge and an actor node with `learner:=remote` in namespace /robot<i>; their
configs in <run_dir>/configs/, their logs in <run_dir>/logs/. Before they start, the learner's
store gets scripted demos when it has none and the sampler wants some, as in `o2o-robot
finetune`.

The supervisor (this process) watches the graph through a node of its own: the actors'
`~/status` and `~/episode`, the learner's `~/status`. It prints a progress line per period (the
learner's version, updates, UTD and live robots; per robot its episodes, success rate, serving
version and "LEARNER LOST" when it is) and logs to <run_dir>/metrics.jsonl: "episode" records
(with the robot), "status" records, and every `train.eval_every` env steps (all robots
together) an "eval" record of the learner's newest policy, run deterministically on
`train.eval_episodes` fixed-seed episodes in a separate process; `learning_curve.png` plots
them. The run ends at `train.total_env_steps` learner env steps, `--max-wall-s`, on Ctrl-C, or
when the learner process exits. Shutdown order: the sims stop (the robots hold), the robots get
the learner's last policy, the actors stop (handing their last rows over), then the learner
(final commit and checkpoint).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from o2o_robot.config import ConfigError, O2OConfig, load_config, resolve_config_path
from o2o_robot.ros.fleet_graph import Fleet, Monitor
from o2o_robot.ros.graph import catch_signals, ignore_sigint, restore_signals

PROGRESS_PERIOD_S = 2.0
SETTLE_S = 60.0               # at the end: for every robot to serve the learner's last policy
RECENT_EPISODES = 20


class _Session:
    """Episodes, evaluations, the progress line and the metrics of one fleet run."""

    def __init__(self, cfg: O2OConfig, fleet: Fleet, monitor: Monitor, *, progress: bool,
                 max_wall_s: float | None, stop_when_solved: bool):
        from o2o_robot.runlog import RunLogger

        self.cfg, self.fleet, self.monitor, self.progress = cfg, fleet, monitor, progress
        self.max_wall_s, self.stop_when_solved = max_wall_s, stop_when_solved
        self.logger = RunLogger(fleet.run_dir)
        self.robots = {n: {"episodes": 0, "successes": 0, "recent": deque(maxlen=RECENT_EPISODES)}
                       for n in fleet.names}
        self.started = time.monotonic()
        self.solved_at, self.last_eval, self.evals = None, {}, []
        self._pool = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"),
                                         initializer=ignore_sigint)
        self._eval = None
        self._next_eval = cfg.train.eval_every
        self._next_report = self.started

    @property
    def env_steps(self) -> int:
        return int(self.monitor.learner.get("env_steps", 0))

    def check(self) -> str | None:
        """One supervisor pass; returns why the run ends, or None."""
        while True:
            try:
                name, event = self.monitor.episodes.get_nowait()
            except queue.Empty:
                break
            if event.get("event") == "end":
                self._episode(name, event)
        self.evaluate()
        now = time.monotonic()
        if now >= self._next_report:
            self._next_report = now + PROGRESS_PERIOD_S
            self._report(now)
        if not self.fleet.alive("learner"):
            return "learner_exited"
        from o2o_robot.ros.finetune import budget_end
        return budget_end(self, self.env_steps, now)

    def _episode(self, name: str, event: dict) -> None:
        robot = self.robots[name]
        robot["episodes"] += 1
        robot["successes"] += bool(event.get("success"))
        robot["recent"].append(bool(event.get("success")))
        self.logger.log("episode", self.env_steps, {
            "robot": name, "return": event.get("episode_return"), "length": event.get("steps"),
            "success": float(bool(event.get("success"))),
            "policy_version": self.monitor.serving(name) or 0,
            "recent_success_rate": float(np.mean(robot["recent"]))})

    def evaluate(self, final: bool = False) -> None:
        """Start an evaluation when one is due (or `final`); log the one that finished."""
        from o2o_robot.ros.finetune import evaluate_policy

        if self._eval is not None and (self._eval[2].done() or final):
            self._collect()
        version = self.monitor.learner.get("policy_version")
        due = self.env_steps >= self._next_eval or (
            final and self.last_eval.get("step") != self.env_steps)
        if due and self._eval is None and version:
            path = self.fleet.run_dir / "policies" / f"policy_{version:05d}.onnx"
            if path.exists():
                every = self.cfg.train.eval_every
                self._next_eval = (self.env_steps // every + 1) * every
                self._eval = (self.env_steps, version, self._pool.submit(
                    evaluate_policy, str(path), self.cfg.model_dump(mode="json"),
                    self.cfg.train.eval_episodes))
                if final:
                    self._collect()

    def _collect(self) -> None:
        step, version, future = self._eval
        self._eval = None
        try:
            result = future.result(timeout=300)
        except Exception as exc:  # noqa: BLE001 - a failed evaluation is reported, not fatal
            print(f"[fleet] evaluation at step {step} failed: {exc!r}", file=sys.stderr)
            return
        self.last_eval = {**result, "policy_version": version, "step": step}
        self.evals.append(self.last_eval)
        self.logger.log("eval", step, {**result, "policy_version": version})
        if self.solved_at is None and result["success_rate"] >= self.cfg.train.success_threshold:
            self.solved_at = step

    def robot_lines(self) -> dict[str, str]:
        out = {}
        for name, robot in self.robots.items():
            recent = f"{np.mean(robot['recent']):.2f}" if robot["recent"] else "-"
            link = self.monitor.link(name)
            out[name] = (f"{name} ep {robot['episodes']} success {recent} v"
                         f"{self.monitor.serving(name) or '-'}"
                         + ("  LEARNER LOST" if link == "learner lost" else ""))
        return out

    def _report(self, now: float) -> None:
        lr = self.monitor.learner
        live = lr.get("live_robots", [])
        self.logger.log("status", self.env_steps, {
            k: lr[k] for k in ("updates", "policy_version", "achieved_utd", "torch_threads",
                               "critic_updates_per_s") if lr.get(k) is not None})
        if lr.get("metrics"):
            self.logger.log("train", self.env_steps, lr["metrics"])
        if self.progress:
            ev = self.last_eval.get("success_rate")
            print(f"[fleet] {now - self.started:.0f} s  step {self.env_steps}/"
                  f"{self.cfg.train.total_env_steps}  learner v{lr.get('policy_version', '-')} "
                  f"upd {lr.get('updates', 0)} utd {lr.get('achieved_utd', 0):.1f}/"
                  f"{self.cfg.learner.utd_ratio} live {len(live)}/{len(self.robots)}  eval "
                  f"{'-' if ev is None else f'{ev:.2f}'}  | "
                  + " | ".join(self.robot_lines().values()), flush=True)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.logger.close()


def settle(monitor: Monitor, names: list[str], timeout_s: float = SETTLE_S) -> tuple[int, dict]:
    """With the sims stopped (no new rows), wait (bounded) until the learner has done the
    updates it owes (no export is coming) and every robot serves its newest policy: (that
    version, {robot: version served})."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        version = monitor.learner.get("policy_version")
        if version and monitor.learner.get("owed_updates", 1) <= 0 and \
                all(monitor.serving(n) == version for n in names):
            break
        time.sleep(0.1)
    return monitor.learner.get("policy_version"), {n: monitor.serving(n) for n in names}


def run_fleet(cfg: O2OConfig, robots: int, *, run_dir: str | Path | None = None,
              progress: bool = True, max_wall_s: float | None = None,
              stop_when_solved: bool = False, domain_id: int | None = None) -> dict:
    """Run a sim fleet (module docstring) and return its summary."""
    from o2o_robot.data.store import TransitionStore
    from o2o_robot.ros.finetune import ensure_demos
    from o2o_robot.runlog import plot_curve

    fleet = Fleet(cfg, robots, run_dir or cfg.train.run_dir, domain_id=domain_id)
    cfg = fleet.cfg
    demos = ensure_demos(cfg, progress)
    stop = threading.Event()
    handlers = catch_signals(stop.set)
    monitor = Monitor(fleet.names, domain_id)
    session = _Session(cfg, fleet, monitor, progress=progress, max_wall_s=max_wall_s,
                       stop_when_solved=stop_when_solved)
    ended, served, codes, lines, settled = "error", {}, {}, {}, None
    try:
        fleet.start_all()
        while (ended := session.check()) is None and not stop.is_set():
            time.sleep(0.05)
        ended = ended or "interrupted"
        codes.update(fleet.stop([f"sim:{n}" for n in fleet.names]))
        if fleet.alive("learner"):
            settled, served = settle(monitor, fleet.names)
        lines = session.robot_lines()
        codes.update(fleet.stop([f"actor:{n}" for n in fleet.names]))
        codes.update(fleet.stop(["learner"]))
        session.evaluate(final=True)
    finally:
        fleet.kill_all()
        monitor.close()
        session.close()
        restore_signals(handlers)
    with TransitionStore.open(cfg.store.path) as store:
        per_robot = store.info().get("robots", {})
    curve = plot_curve(fleet.run_dir)
    return {"ended": ended, "robots": {n: {"episodes": r["episodes"], "successes": r["successes"],
                                           "success_rate_last_n": float(np.mean(r["recent"]))
                                           if r["recent"] else None,
                                           "serving_version_at_end": served.get(n),
                                           "rows_in_store": per_robot.get(n, 0),
                                           "line": lines.get(n)}
                                       for n, r in session.robots.items()},
            "policy_version_at_end": settled,   # the learner's when the robots stopped
            "learner": {k: monitor.learner.get(k) for k in (
                "policy_version", "updates", "env_steps", "achieved_utd", "torch_threads")},
            "exit_codes": codes, "solved_at": session.solved_at, "last_eval": session.last_eval,
            "demos": demos, "run_dir": str(fleet.run_dir), "store": cfg.store.path,
            "learning_curve": str(curve) if curve else None,
            "wall_s": round(time.monotonic() - session.started, 1)}


def cmd_fleet(args) -> int:
    """`o2o-robot fleet`: exit 0 when the run ended normally, 1 when a process failed."""
    cfg = load_config(resolve_config_path(args.config or "sim_reach.yaml"))
    if args.steps is not None:
        if args.steps < 1:
            raise ConfigError(f"--steps: must be >= 1, got {args.steps}")
        cfg.train.total_env_steps = args.steps
    summary = run_fleet(cfg, args.robots, run_dir=args.run_dir, max_wall_s=args.max_wall_s)
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    failed = summary["ended"] == "learner_exited" or any(summary["exit_codes"].values())
    return 1 if failed else 0
