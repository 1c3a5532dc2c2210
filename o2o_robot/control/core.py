"""ControlCore: one control tick, without ROS (DESIGN.md "Data flow").

The actor node owns one ControlCore. Its subscription callbacks feed plain values in
(`observations.update_*`, `set_teleop`, `update_reward`, `estop`, `mark_success`, ...); its timer
calls `tick(now_s)` and publishes `TickResult.action`, forwards `TickResult.transition` to the
learner queue and calls the reset service while `needs_reset`, then `episode_reset_done()`.

One tick, in order:

1. observation: fresh only if every source and camera has arrived and none is older than
   `obs_timeout_ms`; with cameras the policy sees {"state": vector, "<camera>": frame stack}
   (control/frame_stack.py), the row keeps each camera's newest frame (`frames`);
2. the transition pending from the previous tick is completed with this observation as
   `next_obs` (reward, terminated/truncated from the episode tracker). Without a fresh
   observation it is dropped (counted): a hold was published meanwhile, so no honest `next_obs`
   for that action exists any more;
3. action: policy (source "online"), or the teleop action while teleop is engaged ("intervention");
   a hold when not ready, stale, between episodes, on a policy error or a silent teleop;
4. SafetyFilter; a tick that ends up holding (e-stop, NaN guard, ...) starts no transition,
   so the store only holds actions that the policy or operator chose, as actually sent (clipped,
   rate limited).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from o2o_robot.config import ControlConfig, RobotSpec, SafetyConfig
from o2o_robot.control.episode import EpisodeTracker
from o2o_robot.control.frame_stack import FrameStacks, policy_observation
from o2o_robot.control.frames import FrameAssembler
from o2o_robot.control.observation import ObservationAssembler
from o2o_robot.control.rewards import RewardSource, TopicReward, make_reward_source
from o2o_robot.control.safety import SafetyFilter, SafetyFlag, flag_names
from o2o_robot.data.schema import FIELDS, SOURCE_CODE, source_code

# obs is the state vector, or with cameras {"state": vector, "<camera>": uint8 stack}
PolicyAct = Callable[[np.ndarray | dict], tuple[Sequence[float], int]]
_DT = {name: dtype for name, (dtype, _) in FIELDS.items()}
HOLD_REASONS = ("not_ready", "stale", "needs_reset", "no_policy", "policy_error", "teleop_stale",
                "estop", "non_finite", "bad_shape")


@dataclass(frozen=True)
class TickResult:
    """What the node does with one tick."""

    action: np.ndarray            # float64 [act_dim], physical units, already safety-filtered
    source: str                   # "online" | "intervention" (or teleop_source) | "hold"
    policy_version: int           # version of the policy active on this tick (0 = none yet)
    transition: dict | None       # the row completed this tick (schema.FIELDS), or None
    flags: SafetyFlag             # what the SafetyFilter did
    episode_done: bool            # the episode ended this tick; its last row is `transition`
                                  # (None if that row was dropped: the node closes the episode)
    needs_reset: bool             # hold until episode_reset_done()
    hold_reason: str = ""         # why source == "hold", one of HOLD_REASONS ("" otherwise)
    step: int = -1                # index of `transition`'s action among the actions sent in its
                                  # episode (0-based; a row dropped on the way leaves a gap)


@dataclass(frozen=True)
class _Pending:
    """An action sent at tick t, waiting for obs_{t+1}."""

    obs: np.ndarray
    action: np.ndarray
    source: int
    policy_version: int
    timestamp: float
    step: int                     # index among the actions sent in this episode
    frames: dict | None           # camera -> newest frame at obs (None without cameras)


class ControlCore:
    """Observation -> policy or teleop -> SafetyFilter, with transitions and episode bookkeeping."""

    def __init__(self, robot: RobotSpec, control_cfg: ControlConfig, safety_cfg: SafetyConfig,
                 policy_act: PolicyAct | None, *, reward_source: RewardSource | None = None,
                 teleop_timeout_ms: float = 250.0, teleop_source: str = "intervention",
                 intervention_window: int = 100, terminate_on_success: bool = True,
                 failure_is_terminal: bool = False):
        """`policy_act(obs) -> (action_physical, version)`; None runs teleop only (demo
        collection, with `teleop_source="demo"`). `reward_source` defaults to the one
        `control_cfg.reward` names (a function reward is validated here)."""
        if teleop_timeout_ms <= 0 or intervention_window < 1:
            raise ValueError("teleop_timeout_ms must be > 0 and intervention_window >= 1")
        self.obs_dim, self.act_dim = robot.obs_dim, robot.act_dim
        self.obs_timeout_ms = control_cfg.obs_timeout_ms
        self.teleop_timeout_ms = teleop_timeout_ms
        self.policy_act = policy_act
        self.observations = ObservationAssembler(robot)
        self.cameras = FrameAssembler(robot.cameras)
        self._stacks = FrameStacks(robot.cameras)
        self.safety = SafetyFilter(robot.action.low, robot.action.high,
                                   max_delta_per_tick=safety_cfg.max_delta_per_tick,
                                   hold=safety_cfg.hold)
        self.episode = EpisodeTracker(control_cfg.max_episode_steps,
                                      terminate_on_success=terminate_on_success,
                                      failure_is_terminal=failure_is_terminal)
        self.reward_source = reward_source or make_reward_source(
            control_cfg.reward, self.obs_dim, self.act_dim)
        self._teleop_name = teleop_source
        self._teleop_code = source_code(teleop_source)
        self._teleop_engaged = False
        # (action, stamp_s) in one attribute: a callback thread replaces it with one store, so
        # the tick never pairs one message's action with another's stamp.
        self._teleop: tuple[np.ndarray, float] | None = None
        self._pending: _Pending | None = None
        self._actions_sent = 0                                    # in the current episode
        self.policy_version = 0                                   # 0 = no learned policy yet
        self.non_finite_streak = 0   # consecutive ticks the policy acted with a NaN/inf action
        self.last_policy_error = ""
        # Intervention rate over the last N acting ticks: a preallocated ring, no per-tick lists.
        self._window = np.zeros(intervention_window, dtype=bool)
        self._window_pos = self._window_fill = 0
        self.counts: dict[str, int] = dict.fromkeys(
            ["ticks", "online", "intervention", "hold", "transitions", "dropped_stale",
             "dropped_reward", "policy_errors", "teleop_rejected", "reward_ignored"], 0)
        self.hold_reasons: dict[str, int] = {}

    # ------------------------------------------------------------------------- inputs
    def set_teleop(self, engaged: bool | None, action: Sequence[float] | None = None,
                   stamp_s: float = 0.0) -> bool:
        """Teleop input: `engaged` None keeps the flag, `action` None keeps the last action.
        A malformed action (length, NaN/inf) is rejected and counted; False then."""
        if engaged is not None:
            self._teleop_engaged = bool(engaged)
        if action is None:
            return True
        try:
            arr = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            arr = None
        if arr is None or arr.shape != (self.act_dim,) or not np.isfinite(arr).all():
            self.counts["teleop_rejected"] += 1
            return False
        self._teleop = (arr, float(stamp_s))
        return True

    def update_reward(self, value: float, stamp_s: float | None = None) -> bool:
        """A reward message; only used when the reward source is a topic ("sim"/"topic")."""
        if not isinstance(self.reward_source, TopicReward):
            self.counts["reward_ignored"] += 1
            return False
        return self.reward_source.update(value, stamp_s)

    def estop(self, engaged: bool) -> None:
        self.safety.estop(engaged)

    def clear_estop(self) -> bool:
        return self.safety.clear_estop()

    def mark_success(self) -> bool:
        return self.episode.mark_success()

    def mark_failure(self) -> bool:
        return self.episode.mark_failure()

    def mark_done(self, *, success: bool = False) -> bool:
        return self.episode.mark_done(success=success)

    def episode_reset_done(self) -> bool:
        """The reset service succeeded: the next fresh tick starts a new episode."""
        self._pending = None
        self._actions_sent = 0
        return self.episode.reset_done()

    # --------------------------------------------------------------------------- tick
    def tick(self, now_s: float) -> TickResult:
        """One control period; never raises for bad inputs (they are held, counted, reported)."""
        self.counts["ticks"] += 1
        obs_in, cams = self.observations, self.cameras
        fresh = (obs_in.ready and not obs_in.any_stale(now_s, self.obs_timeout_ms)
                 and cams.ready and not cams.any_stale(now_s, self.obs_timeout_ms))
        obs = obs_in.assemble() if fresh else None
        frames = cams.newest() if fresh and cams else None
        for array in [obs, *(frames or {}).values()]:
            if array is not None:
                # obs of this tick's row and next_obs of the previous one: read-only, so a
                # consumer editing one row cannot silently change another.
                array.flags.writeable = False

        transition, episode_done, step = None, False, -1
        if self._pending is not None:
            if obs is None:
                self._pending = None
                self.counts["dropped_stale"] += 1
            else:
                step = self._pending.step
                transition, episode_done = self._complete(obs, frames)

        policy_obs = obs
        if frames is not None:
            stacks = self._stacks.build(frames, first=self._actions_sent == 0)
            policy_obs = policy_observation(obs, stacks)
        raw, source, reason = self._choose(policy_obs, now_s)
        action, flags = self.safety.filter(raw, stale=obs is None)
        if source == "online":       # the policy's action, before a hold replaces it
            self.non_finite_streak = (self.non_finite_streak + 1
                                      if flags & SafetyFlag.NON_FINITE else 0)
        if flags & SafetyFlag.HELD:
            if flags & SafetyFlag.ESTOP or not reason:
                reason = flag_names(flags & ~SafetyFlag.HELD)[0]
            source = "hold"
            self.hold_reasons[reason] = self.hold_reasons.get(reason, 0) + 1
        else:
            code = SOURCE_CODE["online"] if source == "online" else self._teleop_code
            self._pending = _Pending(obs, action.astype(np.float32), code,
                                     self.policy_version, float(now_s), self._actions_sent,
                                     frames)
            if frames is not None:
                self._stacks.commit(frames)
            self._actions_sent += 1
            self._record_intervention(source != "online")
        self.counts[source if source in ("online", "hold") else "intervention"] += 1
        return TickResult(action, source, self.policy_version, transition, flags, episode_done,
                          self.episode.needs_reset, reason if source == "hold" else "",
                          step if transition is not None else -1)

    def _choose(self, obs: np.ndarray | dict | None,
                now_s: float) -> tuple[np.ndarray | None, str, str]:
        """(raw action or None, intended source, hold reason) before the safety filter."""
        if obs is None:
            ready = self.observations.ready and self.cameras.ready
            return None, "hold", "stale" if ready else "not_ready"
        if self.episode.needs_reset:
            return None, "hold", "needs_reset"
        policy_action, policy_failed = None, False
        if self.policy_act is not None:
            # Called under teleop too: keeps the reported version current and the tick's
            # timing the same whoever acts.
            try:
                policy_action, version = self.policy_act(obs)
                self.policy_version = int(version)
            except Exception as exc:  # counted and reported; the robot holds meanwhile
                policy_failed = True
                self.counts["policy_errors"] += 1
                self.last_policy_error = f"{type(exc).__name__}: {exc}"
        if self._teleop_engaged:
            teleop = self._teleop
            if teleop is None or (now_s - teleop[1]) * 1000.0 > self.teleop_timeout_ms:
                # The operator holds the override but the device went quiet: hold, do not
                # silently hand control back to the policy.
                return None, "hold", "teleop_stale"
            return teleop[0], self._teleop_name, ""
        if policy_failed:
            return None, "hold", "policy_error"
        if self.policy_act is None:
            return None, "hold", "no_policy"
        return policy_action, "online", ""

    def _complete(self, next_obs: np.ndarray,
                  next_frames: dict | None) -> tuple[dict | None, bool]:
        """The pending transition with `next_obs`; (row or None if dropped, episode ended).
        With cameras the row also has `frames` / `next_frames` (newest frame per camera)."""
        p, self._pending = self._pending, None
        reward = self.reward_source.reward(p.obs, p.action, next_obs,
                                           success=self.episode.success_pending)
        intervention = p.source != SOURCE_CODE["online"]
        # The episode advances even when the reward failed: the robot did take the step.
        terminated, truncated = self.episode.step(reward or 0.0, intervention=intervention)
        ended = terminated or truncated
        if reward is None:
            self.counts["dropped_reward"] += 1
            return None, ended
        self.counts["transitions"] += 1
        row = {"obs": p.obs, "action": p.action, "reward": _DT["reward"].type(reward),
               "next_obs": next_obs, "terminated": _DT["terminated"].type(terminated),
               "truncated": _DT["truncated"].type(truncated), "source": _DT["source"].type(p.source),
               "policy_version": _DT["policy_version"].type(p.policy_version),
               "timestamp": _DT["timestamp"].type(p.timestamp)}
        if p.frames is not None:
            row["frames"], row["next_frames"] = p.frames, next_frames
        return row, ended

    def _record_intervention(self, intervened: bool) -> None:
        self._window[self._window_pos] = intervened
        self._window_pos = (self._window_pos + 1) % self._window.size
        self._window_fill = min(self._window_fill + 1, self._window.size)

    # -------------------------------------------------------------------------- status
    @property
    def intervention_rate(self) -> float | None:
        """Share of intervention ticks among the last N acting (non-hold) ticks."""
        if not self._window_fill:
            return None
        return float(self._window[:self._window_fill].mean())

    def stats(self, now_s: float | None = None) -> dict:
        """Plain values for the `~/status` JSON."""
        acting = self.counts["online"] + self.counts["intervention"]
        return {**self.counts, "hold_reasons": dict(self.hold_reasons),
                "policy_version": self.policy_version, "last_policy_error": self.last_policy_error,
                "non_finite_streak": self.non_finite_streak,
                "teleop_engaged": self._teleop_engaged,
                "intervention_rate": self.intervention_rate,
                "intervention_window": int(self._window.size),
                "intervention_rate_total": (self.counts["intervention"] / acting) if acting else None,
                "episode": self.episode.stats(), "safety": self.safety.state(),
                "observations": self.observations.stats(now_s),
                "cameras": self.cameras.stats(now_s),
                "reward": self.reward_source.stats()}
