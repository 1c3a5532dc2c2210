"""Scripted teleop: the sim task's expert as the operator's hands, and a schedule for when it
takes over, so demonstrations and interventions can be tested without a person.

`ScriptedOperator` follows episodes through the actor's episode events and counts the
observations it acts on within an episode as steps. It switches to the next episode's schedule
already at the "end" event: the actor may take the first step of the next episode before the
"start" event has reached the operator, so that step must already see the right engagement.
Observations between "end" and "start" (the reset) are not counted as steps. In demo
collection it is always engaged (`InterventionSchedule.always()`); during fine-tuning it
takes over episodes 0, k, 2k, ... (`teleop.intervene_every`), for their first
`teleop.intervene_steps` steps or the whole episode.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from o2o_robot.config import O2OConfig

EXPERT_SEED_OFFSET = 20_000   # the operator's noise stream differs from the demo generator's


@dataclass(frozen=True)
class InterventionSchedule:
    """Episodes `every` apart (0 = never), for their first `steps` steps (None = all)."""

    every: int
    steps: int | None = None

    def __post_init__(self):
        if self.every < 0 or (self.steps is not None and self.steps < 1):
            raise ValueError(f"every must be >= 0 and steps >= 1 or None, got {self.every}, "
                             f"{self.steps}")

    @classmethod
    def always(cls) -> "InterventionSchedule":
        return cls(every=1, steps=None)

    @classmethod
    def from_config(cls, cfg: O2OConfig) -> "InterventionSchedule":
        return cls(every=cfg.teleop.intervene_every, steps=cfg.teleop.intervene_steps)

    def engaged(self, episode: int, step: int) -> bool:
        return self.every > 0 and episode % self.every == 0 and (
            self.steps is None or step < self.steps)


class ScriptedOperator:
    """`act(obs) -> (action, engaged)` of an expert on a schedule; episodes from `on_episode`."""

    def __init__(self, expert: Callable[[np.ndarray], np.ndarray],
                 schedule: InterventionSchedule):
        self.expert, self.schedule = expert, schedule
        self.episode, self.step = 0, 0
        self.between = False          # after an episode's end, before the next one's start
        self.counts = dict.fromkeys(["observations", "engaged_steps", "episodes_engaged"], 0)
        self._engaged_this_episode = False

    def on_episode(self, event: dict) -> None:
        """An actor episode event: {"event": "end", "episode": i} switches to episode i + 1,
        {"event": "start", "episode": i} starts counting its steps."""
        kind = event.get("event")
        if kind in ("end", "start"):
            self.episode = int(event["episode"]) + (kind == "end")
            self.step, self.between = 0, kind == "end"
            self._engaged_this_episode = False

    @property
    def engaged(self) -> bool:
        return self.schedule.engaged(self.episode, self.step)

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, bool]:
        """The expert's action for `obs` (computed engaged or not, so it is fresh on engaging)
        and whether the operator drives this step."""
        action = np.asarray(self.expert(obs), dtype=np.float64)
        engaged = self.engaged
        self.counts["observations"] += 1
        if not self.between:
            self.counts["engaged_steps"] += engaged
            if engaged and not self._engaged_this_episode:
                self._engaged_this_episode = True
                self.counts["episodes_engaged"] += 1
            self.step += 1
        return action, engaged


def scripted_expert(cfg: O2OConfig) -> Callable[[np.ndarray], np.ndarray]:
    """The expert of `cfg.sim.task` reading the robot's observation vector (noise
    `teleop.expert_noise`); ValueError naming the task when it has none."""
    from o2o_robot.sim.envs import make_env
    from o2o_robot.sim.experts import expert_for

    env = make_env(cfg.sim)
    try:
        obs_dim = int(np.prod(env.observation_space.shape))
        if obs_dim != cfg.robot.obs_dim:
            raise ValueError(f"robot.observations: {cfg.robot.obs_dim} values, but the expert of "
                             f"sim.task {cfg.sim.task!r} reads {obs_dim}")
        expert = expert_for(env, cfg.teleop.expert_noise, cfg.train.seed + EXPERT_SEED_OFFSET)
    finally:
        env.close()
    return expert.act
