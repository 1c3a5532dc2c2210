"""LearnerCore: the one learning loop behind `o2o-robot train`, the robot's learner worker and
(later) the fleet learner node (DESIGN.md "One learner, three ways to feed it").

    ingest(Transition | EpisodeEnd) -> EpisodeAssembler -> TransitionStore (durable) + ReplayMirror
    step(): while updates are owed (learner.utd_ratio critic steps per env step, after
            learner.warmup_steps env steps): batch plan -> Agent.update -> plan feedback
    export() every learner.export_every_updates updates -> policies/policy_NNNNN.onnx
    checkpoint() -> checkpoints/latest.pt (agent, RNG, counters, the store rows learned from)

No threads, queues, ROS or env in here: whoever feeds it decides where it runs. Fed the same
stream, every feeder gets bit-identical agents and stores (tests/test_learning_core.py).

Rules that hold for every feeder:
* Env steps are rows of sources online and intervention (`Transition.is_env_step`). The update
  owed for env step t is done before row t+1 when the feeder calls `step()` after each
  `ingest()`; a feeder that falls behind catches up (`owed` counts them).
* The mirror holds the store's demo-side rows (demo, intervention, offline) and the online rows
  this learner ingested itself (its checkpointed `online_ranges`). Online rows of other runs,
  and rows written after the last checkpoint by a learner that died, stay in the store but are
  not learned from: a resumed learner sees exactly what it had checkpointed.
* Warm-up (`learner.warmup_actions`): the policy exported before the first update is the
  uniform warm-up graph (`uniform`) or the agent's own exported actor (`policy`); the agent's
  actor is exported as soon as warm-up ends.
* Randomness: batch draws use the core's numpy generator (checkpointed); export probes use a
  generator of their own, so exporting never changes what is learned.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from o2o_robot.config import O2OConfig
from o2o_robot.data.replay import ReplayMirror
from o2o_robot.data.schema import (ACTING_SOURCE_CODES, OFFLINE_SIDE_CODES, EpisodeAssembler,
                                   EpisodeEnd, Segment, Transition)
from o2o_robot.spaces import ActionScaler

CHECKPOINT = Path("checkpoints") / "latest.pt"
CHECKPOINT_SUMMARY = Path("checkpoints") / "latest.json"   # its counters, readable without torch
POLICIES = Path("policies")
POLICY_NAME = "policy_{:05d}.onnx"


def highest_policy_file(run_dir: Path) -> int:
    """The highest version among the run dir's policies/policy_NNNNN.onnx files (0: none)."""
    versions = [int(p.stem.split("_")[-1]) for p in (run_dir / POLICIES).glob("policy_*.onnx")
                if p.stem.split("_")[-1].isdigit()]
    return max(versions, default=0)


def checkpoint_summary(run_dir: str | Path) -> dict | None:
    """The counters of the run dir's last checkpoint (env_steps, updates, policy_version and
    the feeder's plain entries), or None when there is none."""
    path = Path(run_dir) / CHECKPOINT_SUMMARY
    if not path.exists():
        return None
    return json.loads(path.read_text())


@dataclass
class CoreState:
    """What a checkpoint holds besides the agent (plain data)."""

    env_steps: int = 0
    updates: int = 0
    policy_version: int = 0
    online_ranges: list[list[int]] = field(default_factory=list)   # store rows [a, b) ingested
    np_rng: dict | None = None
    plan_state: dict | None = None
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ["rejected_rows", "export_errors", "cut_episodes", "split_episodes"], 0))


DEFAULT_FRAME_STACK = 3


def frame_stacks(cfg: O2OConfig, cameras) -> dict[str, int]:
    """Frames stacked per camera of the store: the config's `robot.cameras[].frame_stack`
    (`config.frame_stacks`), DEFAULT_FRAME_STACK for a camera the config does not name."""
    from o2o_robot import config

    # config.frame_stacks comes with robot.cameras (issue 15, its sensors part); a config
    # module without it configures no camera.
    named = config.frame_stacks(cfg) if hasattr(config, "frame_stacks") else {}
    return {name: int(named.get(name, DEFAULT_FRAME_STACK)) for name in cameras}


def load_mirror(store, cfg: O2OConfig, scaler: ActionScaler,
                online_ranges: list[list[int]]) -> ReplayMirror:
    """The demo-side rows of the whole store and the online rows of `online_ranges`, actions
    scaled to [-1, 1]: the mirror content rule of the module docstring. In store order, which
    is the order a live core added them in (intervention rows sit among its online rows), so
    slot-keyed plan state (OEMA's priorities) restores onto the same rows on resume. A row
    whose predecessor is not mirrored (another run's online row) starts its frame stack."""
    mirror = ReplayMirror(store.obs_dim, store.act_dim,
                          online_capacity=cfg.sampler.online_capacity,
                          initial_capacity=max(len(store), 4096), cameras=store.cameras,
                          frame_stacks=frame_stacks(cfg, store.cameras))
    rows = store.read()
    demo_side = np.isin(rows["source"], OFFLINE_SIDE_CODES)
    ours = np.zeros(len(demo_side), bool)
    for a, b in online_ranges:
        ours[a:min(b, len(ours))] = True
    index = np.flatnonzero(demo_side | ours)
    if index.size:
        block = {k: v[index] for k, v in rows.items()}
        block["action"] = scaler.to_unit(block["action"])
        mirror.add_rows(block, **_frames_of(store, index))
    return mirror


def _frames_of(store, index: np.ndarray) -> dict:
    """The mirror's frame arguments for store rows `index` (none for a vector-only store)."""
    if not store.cameras:
        return {}
    firsts = np.concatenate([[0], [e["end"] for e in store.episodes()]])
    starts = np.isin(index, firsts) | (np.diff(index, prepend=-1) != 1)
    return {"frames": {c: store.read_frames(c)[index] for c in store.cameras},
            "next_frames": {c: store.read_next_frames(c)[index] for c in store.cameras},
            "episode_start": starts}


class LearnerCore:
    """The learning loop of the module docstring. Build it with `open`; one thread at a time."""

    def __init__(self, cfg: O2OConfig, store, run_dir: Path, agent, state: CoreState):
        from o2o_robot.learning.batches import batch_plan

        self.cfg, self.store, self.run_dir, self.agent, self.state = cfg, store, run_dir, agent, state
        robot = cfg.robot
        self.scaler = ActionScaler(robot.action.low, robot.action.high)
        self.rng = np.random.default_rng(cfg.train.seed)
        if state.np_rng is not None:
            self.rng.bit_generator.state = state.np_rng
        if store.open_episode_rows:   # cut by an earlier crash: never merge it with ours
            store.end_episode(success=None)
        self.mirror = load_mirror(store, cfg, self.scaler, state.online_ranges)
        self.plan = batch_plan(agent, cfg, self.mirror)
        if state.plan_state is not None:
            self.plan.load_state_dict(state.plan_state)
        start = len(store) + store.num_buffered
        self._range = [start, start]
        state.online_ranges.append(self._range)
        self.assembler = EpisodeAssembler(on_gap="split")
        self._episode_rows = 0            # rows of the open store episode this core appended
        self.metrics: dict[str, float] = {}
        self.update_time = 0.0
        self.last_problem = ""
        self._exported_warmup = False
        self._export: bytes | None = None
        self.resumed: dict = {}           # the feeder's own checkpoint entries (see `open`)

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(cls, cfg: O2OConfig, store, run_dir: str | Path, *, resume: bool,
             agent_factory: Callable | None = None, adopt_tail: bool = False) -> "LearnerCore":
        """A core on `store` (open for writing) and `run_dir`: resumed from the run dir's
        checkpoint when `resume` and one exists, else a fresh agent (`agent_factory(cfg,
        obs_dim, act_dim, device)`, default `agents.build_agent`).

        `adopt_tail` (resuming): also learn from the rows committed after the checkpoint (by
        the learner that wrote it, which then died), counting their env steps. For a feeder
        that acknowledged those rows to their producers, which will not send them again (the
        fleet learner node); the others resume exactly what they checkpointed."""
        from o2o_robot.agents import build_agent, resolve_device
        from o2o_robot.agents.checkpoint import load_checkpoint

        run_dir = Path(run_dir)
        device = resolve_device(cfg.learner.device)
        robot, path = cfg.robot, run_dir / CHECKPOINT
        extra: dict = {}
        if resume and path.exists():
            agent, _, extra = load_checkpoint(path, device=device)
            known = CoreState.__dataclass_fields__
            state = CoreState(**{k: extra[k] for k in known if k in extra})
            state.counters = {**CoreState().counters, **state.counters}
            start = max((b for _, b in state.online_ranges), default=len(store))
            if adopt_tail and start < len(store):
                source = store.read(["source"], start)["source"]
                state.online_ranges.append([start, len(store)])
                state.env_steps += int(np.isin(source, ACTING_SOURCE_CODES).sum())
        else:
            factory = agent_factory or (lambda c, o, a, d: build_agent(c, o, a, device=d,
                                                                       seed=c.train.seed))
            agent, state = factory(cfg, robot.obs_dim, robot.act_dim, device), CoreState()
        # Versions exported after the checkpoint by a learner that then died stay on disk and may
        # have acted (their rows are in the store): never write a version twice.
        state.policy_version = max(state.policy_version, highest_policy_file(run_dir))
        core = cls(cfg, store, run_dir, agent, state)
        core.resumed = {k: v for k, v in extra.items() if k not in CoreState.__dataclass_fields__}
        return core

    # ------------------------------------------------------------------ the loop
    def ingest(self, item: Transition | EpisodeEnd) -> None:
        """One item of the stream: its rows go to the store and the mirror; env steps count."""
        before = dict(self.assembler.counts)
        for segment in self.assembler.push(item):
            self._write(segment)
        self.state.counters["cut_episodes"] += self.assembler.counts["cut"] - before["cut"]
        self.state.counters["split_episodes"] += self.assembler.counts["splits"] - before["splits"]

    def _write(self, segment: Segment) -> None:
        from o2o_robot.data.store import StoreValueError

        for t in segment.rows:
            row = t.row()
            try:
                self.store.append(**row, frames=t.frames, next_frames=t.next_frames)
            except (StoreValueError, TypeError) as exc:   # a bad row is dropped, not fatal
                self.state.counters["rejected_rows"] += 1
                self.last_problem = f"rejected row: {exc}"
                if self._episode_rows:   # a step is missing: the rows after it start anew
                    self.store.end_episode(success=None)
                    self._episode_rows = 0
                    self.state.counters["split_episodes"] += 1
                continue
            self._range[1] += 1
            frames = {"frames": t.frames, "next_frames": t.next_frames,
                      "episode_start": not self._episode_rows} if self.store.cameras else {}
            self._episode_rows += 1
            self.mirror.add(**{**row, "action": self.scaler.to_unit(row["action"])}, **frames)
            if t.is_env_step:
                self.state.env_steps += 1
        if segment.end and self._episode_rows:   # not when the store refused all its rows
            self.store.end_episode(success=segment.success)
            self._episode_rows = 0

    @property
    def owed(self) -> int:
        """Updates owed for the env steps ingested (0 during warm-up)."""
        return max(self.state.env_steps - self.cfg.learner.warmup_steps, 0) - self.state.updates

    @property
    def in_warmup(self) -> bool:
        return self.state.env_steps < self.cfg.learner.warmup_steps

    def ready(self) -> bool:
        """The batch plan can draw (the mirror holds the rows it needs)."""
        return self.plan.ready()

    def step(self) -> bool:
        """One update if one is owed and the plan can draw; True when it ran. Exports the agent
        when warm-up has just ended and every `learner.export_every_updates` updates."""
        if self._exported_warmup and not self.in_warmup:
            self.export()                           # warm-up is over: the agent acts from now
        if self.owed <= 0:
            return False
        if not self.plan.ready():    # owed but impossible: say why (in report()), never silently
            self.last_problem = f"cannot update: {self.plan.missing()}"
            return False
        tick = time.perf_counter()
        batch = self.plan.draw(self.rng)
        self.metrics = self.agent.update(batch)
        self.plan.after_update(self.agent, batch)
        self.update_time += time.perf_counter() - tick
        self.state.updates += 1
        if self.state.updates % self.cfg.learner.export_every_updates == 0:
            self.export()
        return True

    def pretrain(self, *, progress: bool = False, log=None) -> dict[str, float]:
        """Offline pre-training for agents with a phase (OEMA), once; checkpointed after it."""
        from o2o_robot.learning.batches import pretrain

        metrics = pretrain(self.agent, self.cfg, self.mirror, self.rng, progress=progress, log=log)
        if metrics:
            self.checkpoint()   # a restarted learner does not pre-train again
        return metrics

    # ------------------------------------------------------------------ outputs
    def export(self) -> bytes | None:
        """Export the acting policy (the warm-up policy while in warm-up with `uniform`, else the
        agent's actor) as the next version, written to policies/; None when the export failed
        (counted; the robot keeps the last good policy)."""
        from o2o_robot.policy.export import (ExportError, UniformWarmupActor, export_policy,
                                             write_policy)

        robot, version = self.cfg.robot, self.state.policy_version + 1
        warmup = self.in_warmup and self.cfg.learner.warmup_actions == "uniform"
        actor = UniformWarmupActor(robot.obs_dim, robot.act_dim) if warmup else \
            self.agent.export_actor()
        probe_rng = np.random.default_rng(version)   # never the training generator
        cameras = self.agent.cameras
        probe = None
        if len(self.mirror):   # stored observations (with cameras: states and images)
            rows = self.mirror.sample_uniform(64, probe_rng)
            probe = rows["obs"] if not cameras else {
                "state": rows["obs"], **{c.name: rows[f"pixels/{c.name}"] for c in cameras}}
        try:
            data = export_policy(actor, obs_dim=robot.obs_dim, act_dim=robot.act_dim,
                                 action_low=robot.action.low, action_high=robot.action.high,
                                 algorithm="warmup" if warmup else self.cfg.algorithm.name,
                                 version=version, config_hash=self.cfg.config_hash(),
                                 probe_obs=probe, names=robot.action.names or None,
                                 cameras=cameras)
        except ExportError as exc:   # e.g. a diverged actor: the actor keeps the last good one
            self.state.counters["export_errors"] += 1
            self.last_problem = f"export of version {version} failed: {exc}"
            return None
        write_policy(data, self.run_dir / POLICIES / POLICY_NAME.format(version))
        self.state.policy_version = version
        self._exported_warmup, self._export = warmup, data
        return data

    def pop_export(self) -> bytes | None:
        """The policy exported since the last call (None if none): what a feeder publishes."""
        data, self._export = self._export, None
        return data

    def checkpoint(self, **extra: Any) -> Path:
        """Commit the store (the rows the checkpoint refers to), then write the checkpoint with
        the core's state and the feeder's `extra` (plain data), and its counters beside it as
        JSON (`checkpoint_summary`)."""
        from o2o_robot.agents.checkpoint import save_checkpoint
        from o2o_robot.fsutil import atomic_write_bytes

        self.store.flush()
        self.state.np_rng = self.rng.bit_generator.state
        self.state.plan_state = self.plan.state_dict()
        state = asdict(self.state)
        state["online_ranges"] = [list(r) for r in self.state.online_ranges]
        path = save_checkpoint(self.run_dir / CHECKPOINT, self.agent, self.cfg, **state, **extra)
        s = self.state
        summary = {"env_steps": s.env_steps, "updates": s.updates,
                   "policy_version": s.policy_version, "time": time.time(), **extra}
        atomic_write_bytes(self.run_dir / CHECKPOINT_SUMMARY, json.dumps(summary).encode())
        return path

    def close_episode(self) -> None:
        """The stream stops mid-episode (the run ends): close the open store episode."""
        for segment in self.assembler.close():
            self._write(segment)

    def report(self, status: str) -> dict:
        """The learner's state for status lines and metrics (plain values)."""
        lc, s = self.cfg.learner, self.state
        steps = max(s.env_steps - lc.warmup_steps, 0)
        return {"state": status, "env_steps": s.env_steps, "updates": s.updates,
                "policy_version": s.policy_version, **s.counters,
                "last_problem": self.last_problem,
                "achieved_utd": (s.updates * lc.utd_ratio / steps) if steps else 0.0,
                "critic_updates_per_s": (s.updates * lc.utd_ratio / self.update_time)
                if self.update_time else 0.0,
                "store_rows": len(self.store) + self.store.num_buffered,
                "mirror": self.mirror.sizes(),
                "metrics": {k: float(v) for k, v in self.metrics.items()}}
