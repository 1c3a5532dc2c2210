"""How an agent is fed: the batch drawn per environment step, and offline pre-training. Used by
`learning.core.LearnerCore` only, so the harness, the worker and the fleet learner feed every
algorithm the same way. No torch here.

Each agent declares the plan it needs (`Agent.batch_plan`, agents/base.py); `PLANS` maps that
name to the class:

* "mixed" (RLPD, OBAC): `MixedBatches`, one big batch of `learner.utd_ratio` minibatches of
  `sampler.batch_size` rows, each exactly `sampler.offline_ratio` demo-side rows (demo,
  intervention, offline). That is RLPD's symmetric sampling; for OBAC it is our O2O adaptation
  (the paper trains on one online buffer).
* "balanced_replay" (OEMA): `BalancedReplayBatches`, OEMA's balanced replay (see
  `o2o_robot.agents.oema`).

A plan has `ready()` (the mirror holds the rows it needs), `missing()` (what it waits for,
"" when ready: the core reports it, so a learner never waits silently), `draw(rng)` (the argument of
`agent.update`), `after_update(agent, batch)` (feedback such as OEMA's priorities, read from
`agent.feedback()`), and `state_dict()`/`load_state_dict()` (its own learning state as plain
data: OEMA's priorities; empty for the mixed plan).
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from o2o_robot.config import O2OConfig
from o2o_robot.data.replay import PrioritySampler, ReplayMirror
from o2o_robot.runlog import Progress


class BatchPlan(Protocol):
    def ready(self) -> bool: ...

    def missing(self) -> str: ...

    def draw(self, rng: np.random.Generator) -> dict[str, Any]: ...

    def after_update(self, agent: Any, batch: dict[str, Any]) -> None: ...


class MixedBatches:
    """G minibatches per update, each exactly `offline_ratio` demo-side rows (RLPD, OBAC)."""

    def __init__(self, cfg: O2OConfig, mirror: ReplayMirror):
        self.mirror = mirror
        self.batch_size, self.offline_ratio = cfg.sampler.batch_size, cfg.sampler.offline_ratio
        self.num_minibatches = cfg.learner.utd_ratio

    def ready(self) -> bool:
        ratio = self.offline_ratio
        return (ratio == 0 or self.mirror.size("offline") > 0) and \
            (ratio == 1 or self.mirror.size("online") > 0)

    def missing(self) -> str:
        return _missing(self.mirror, offline=self.offline_ratio > 0,
                        online=self.offline_ratio < 1, why=f"sampler.offline_ratio "
                        f"{self.offline_ratio:g} of every minibatch")

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        return self.mirror.sample_big_batch(self.batch_size, self.num_minibatches,
                                            self.offline_ratio, rng)

    def after_update(self, agent: Any, batch: dict[str, Any]) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class BalancedReplayBatches:
    """OEMA's batches (ALGORITHMS.md 3.2), `learner.utd_ratio` iterations of N rows each:

    * B_rl (obs, action, reward, next_obs, mask, index): P(slot) proportional to its priority,
      over every mirror row (demo side + online), no IS weights; new rows enter at the running
      max priority; `after_update` writes the agent's `last_priorities` for these slots.
    * B_off / B_on (off_obs, off_action / on_obs, on_action): uniform over one side.
    * B_r (recent_obs): uniform over the newest `algorithm.recent_window` online rows.

    The priorities are learning state that lives here, with the slots they belong to, not in
    the agent: `state_dict()` is plain data that the learner core checkpoints beside the agent and
    restores into the mirror it rebuilt from the store in the same row order. The sampler's
    clip range is the config's [priority_min, priority_max]. `sampler.offline_ratio` is not
    used (it only tells the harness that demonstrations are needed).
    """

    def __init__(self, cfg: O2OConfig, mirror: ReplayMirror):
        algo = cfg.algorithm
        self.mirror, self.window = mirror, int(algo.recent_window)
        self.rows = cfg.sampler.batch_size * cfg.learner.utd_ratio
        self.sampler = PrioritySampler(mirror, min_priority=algo.priority_min,
                                       max_priority=algo.priority_max)

    def ready(self) -> bool:
        return self.mirror.size("offline") > 0 and self.mirror.size("online") > 0

    def missing(self) -> str:
        return _missing(self.mirror, offline=True, online=True, why="B_off of OEMA's balanced "
                        "replay")

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        m, n = self.mirror, self.rows
        batch = m.gather(self.sampler.sample(n, rng))
        off, on = m.sample_mixed(n, 1.0, rng), m.sample_mixed(n, 0.0, rng)
        batch.update(off_obs=off["obs"], off_action=off["action"], on_obs=on["obs"],
                     on_action=on["action"],
                     recent_obs=m.sample_recent(n, self.window, rng)["obs"])
        return batch

    def after_update(self, agent: Any, batch: dict[str, Any]) -> None:
        self.sampler.update(batch["index"], agent.feedback()["priorities"])

    def state_dict(self) -> dict[str, Any]:
        return {"priorities": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["priorities"])


def _missing(mirror: ReplayMirror, *, offline: bool, online: bool, why: str) -> str:
    """What a plan waits for: demo-side rows it must draw (for `why`), online rows, or ""."""
    if offline and mirror.size("offline") == 0:
        return f"no demo, intervention or offline rows to draw ({why})"
    if online and mirror.size("online") == 0:
        return "no online rows yet"
    return ""


PLANS: dict[str, type] = {"mixed": MixedBatches, "balanced_replay": BalancedReplayBatches}


def batch_plan(agent: Any, cfg: O2OConfig, mirror: ReplayMirror) -> BatchPlan:
    """The plan `agent` declares (`agent.batch_plan`), feeding it from `mirror`."""
    if agent.batch_plan not in PLANS:
        raise ValueError(f"{agent.name}: unknown batch plan {agent.batch_plan!r} "
                         f"(known: {sorted(PLANS)})")
    return PLANS[agent.batch_plan](cfg, mirror)


def pretrain(agent: Any, cfg: O2OConfig, mirror: ReplayMirror, rng: np.random.Generator, *,
             progress: bool = True, log=None) -> dict[str, float]:
    """Offline pre-training (OEMA's TD3+BC): `agent.pretrain_update(batch)` on demo-side batches
    of `sampler.batch_size` rows until `agent.pretrain_steps_done` reaches `agent.pretrain_steps`,
    then `agent.finish_pretraining()`. A no-op (empty metrics) for agents without a phase
    (`pretrain_steps` 0) or once `pretrain_finished`, so a resumed run never pre-trains twice.
    `log(step, metrics)` every 1000 steps."""
    total = int(agent.pretrain_steps)
    if agent.pretrain_finished or agent.pretrain_steps_done >= total:
        return {}
    if mirror.size("offline") == 0:
        raise ValueError(f"algorithm.pretrain_steps: {total} pre-training steps need demo, "
                         f"intervention or offline rows, and the store has none")
    metrics: dict[str, float] = {}
    bar = Progress(total, agent.pretrain_steps_done, desc="pretrain", enabled=progress)
    while agent.pretrain_steps_done < total:
        metrics = agent.pretrain_update(mirror.sample_mixed(cfg.sampler.batch_size, 1.0, rng))
        bar.update()
        if log is not None and agent.pretrain_steps_done % 1000 == 0:
            log(agent.pretrain_steps_done, metrics)
    bar.close()
    agent.finish_pretraining()
    return metrics
