"""How an agent is fed: the batch drawn per environment step, warm-up actions and offline
pre-training. Shared by the ROS-free harness (`train.py`) and the background learner
(`learner.py`), so both feed every algorithm the same way. No torch here.

`batch_plan(cfg, mirror)` returns the plan registered for `cfg.algorithm.name`:

* rlpd, obac: `MixedBatches`, one big batch of `learner.utd_ratio` minibatches of
  `sampler.batch_size` rows, each exactly `sampler.offline_ratio` demo-side rows (demo,
  intervention, offline). That is RLPD's symmetric sampling; for OBAC it is our O2O adaptation
  (the paper trains on one online buffer).
* oema: balanced replay (see `o2o_robot.agents.oema`).

A plan has `ready()` (the mirror holds the rows it needs), `draw(rng)` (the argument of
`agent.update`) and `after_update(agent, batch)` (feedback such as OEMA's priorities).
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from o2o_robot.config import O2OConfig
from o2o_robot.data.replay import ReplayMirror


class BatchPlan(Protocol):
    def ready(self) -> bool: ...

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

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        return self.mirror.sample_big_batch(self.batch_size, self.num_minibatches,
                                            self.offline_ratio, rng)

    def after_update(self, agent: Any, batch: dict[str, Any]) -> None:
        return None


def _plans() -> dict[str, type]:
    plans: dict[str, type] = {"rlpd": MixedBatches, "obac": MixedBatches}
    return plans


def batch_plan(cfg: O2OConfig, mirror: ReplayMirror) -> BatchPlan:
    """The plan that feeds `cfg.algorithm.name` from `mirror`."""
    plans = _plans()
    name = cfg.algorithm.name
    if name not in plans:
        raise ValueError(f"algorithm.name: no batch plan for {name!r} (known: {sorted(plans)})")
    return plans[name](cfg, mirror)


def warmup_action(agent: Any, obs: np.ndarray, act_dim: int,
                  rng: np.random.Generator) -> np.ndarray:
    """The unit action during warm-up: uniform random, or the deterministic (pre-trained) actor
    for agents that say `warmup_uses_actor` (OEMA, section 3.6 pitfall 5)."""
    if getattr(agent, "warmup_uses_actor", False):
        return np.asarray(agent.act(obs, deterministic=True), np.float32)
    return rng.uniform(-1.0, 1.0, size=act_dim).astype(np.float32)


def pretrain(agent: Any, cfg: O2OConfig, mirror: ReplayMirror, rng: np.random.Generator, *,
             progress: bool = True, log=None) -> dict[str, float]:
    """Offline pre-training for agents that have one (OEMA's TD3+BC): `agent.pretrain_update(batch)`
    on demo-side batches of `sampler.batch_size` until `agent.pretrain_steps_done` reaches
    `algorithm.pretrain_steps`. A no-op (empty metrics) for agents without `pretrain_update`
    or once done, so a resumed run never pre-trains twice. `log(step, metrics)` every 1000 steps."""
    update = getattr(agent, "pretrain_update", None)
    total = int(getattr(cfg.algorithm, "pretrain_steps", 0))
    if update is None or agent.pretrain_steps_done >= total:
        return {}
    if mirror.size("offline") == 0:
        raise ValueError(f"algorithm.pretrain_steps: {total} pre-training steps need demo, "
                         f"intervention or offline rows, and the store has none")
    from tqdm import tqdm

    metrics: dict[str, float] = {}
    bar = tqdm(total=total, initial=agent.pretrain_steps_done, desc="pretrain", unit="step",
               disable=not progress, dynamic_ncols=True)
    while agent.pretrain_steps_done < total:
        metrics = update(mirror.sample_mixed(cfg.sampler.batch_size, 1.0, rng))
        bar.update(1)
        if log is not None and agent.pretrain_steps_done % 1000 == 0:
            log(agent.pretrain_steps_done, metrics)
    bar.close()
    return metrics
