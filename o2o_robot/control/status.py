"""What an actor reports on `~/status` (DESIGN.md "ROS 2 interface"), as plain JSON values.

The node gathers the values (its counters, `ControlCore.stats()`, `TickTiming.summary()`, the
policy slot, the learner) and `actor_status` arranges them under the status keys; the result
owns its containers, so the node's counters may change while a status is being published.
"""
from __future__ import annotations

import math
from collections.abc import Callable

OBS_WAIT_WARN_S = 3.0         # no observation on a topic this long after start: say which
OBS_WAIT_REPEAT_S = 10.0      # ... and again this often while it lasts


def learner_stats(learner) -> dict | None:
    """`learner.stats()`; {"stats_error": ...} when it raised (reported in the status, not
    fatal: the status must go out whatever the learner does); None without a learner."""
    if learner is None:
        return None
    try:
        return learner.stats()
    except Exception as exc:  # noqa: BLE001 - reported in the status itself
        return {"stats_error": repr(exc)}


def actor_status(*, timing: dict, core: dict, policy_version: int | None,
                 policy_source: str | None, deterministic: bool, swaps: dict, superseded: int,
                 malformed: dict, malformed_reasons: dict, learning_enabled: bool, mode: str,
                 learner_counts: dict, learner: dict | None, reset_counts: dict) -> dict:
    """The `~/status` document.

    `timing`: `TickTiming.summary()`; `core`: `ControlCore.stats()`; `policy_*`, `swaps`
    (accepted / rejected / last_rejection) and `superseded` (learner policies replaced before
    validation) describe the policy slot; `malformed[_reasons]`: dropped messages per topic;
    `learner_counts`: submitted / dropped / errors / polled; `learner`: `learner_stats()`;
    `reset_counts`: `ResetSequencer.counts`.
    """
    safety = core["safety"]
    return {
        **timing,
        "policy": {"version": policy_version, "deterministic": deterministic,
                   "source": policy_source, **swaps, "superseded": superseded},
        "intervention_rate": core["intervention_rate"],
        "estop": {"latched": safety["estop_latched"], "signal": safety["estop_signal"]},
        "malformed": dict(malformed), "malformed_reasons": dict(malformed_reasons),
        "safety": safety["counts"],
        "learning_enabled": learning_enabled, "mode": mode,
        "learner": {**learner_counts, "stats": learner},
        "reset": dict(reset_counts),
        "core": core,
    }


class MissingObservations:
    """Says which observation topics have delivered nothing yet: until every one has, the
    robot holds, and a wrong topic name or namespace would otherwise look like a hang.

    `check(observations, sources, now)` returns a warning naming each silent topic (its
    resolved name, type, and what was dropped from it) `OBS_WAIT_WARN_S` after `started` and
    every `OBS_WAIT_REPEAT_S` after that, one line once they have all arrived, else None."""

    def __init__(self, started: float, resolve: Callable[[str], str] = str):
        self.started, self.resolve = started, resolve
        self._warned_at: float | None = None

    def check(self, observations, sources, now: float, cameras=None,
              camera_sources=()) -> tuple[str, str] | None:
        """(level "warning" | "info", message) to log now, or None. `cameras` (a
        FrameAssembler) and `camera_sources` (`robot.cameras`): camera topics count too."""
        if observations.ready and (cameras is None or cameras.ready):
            if self._warned_at is None:
                return None
            self._warned_at = None
            count = len(observations.topics) + len(camera_sources)
            return "info", f"observations arriving on all {count} topics"
        due = self.started + OBS_WAIT_WARN_S if self._warned_at is None else \
            self._warned_at + OBS_WAIT_REPEAT_S
        if now < due:
            return None
        self._warned_at = now
        ages, waiting = observations.ages_ms(now), {}
        for src in sources:
            key = src.topic.lstrip("/")
            if math.isfinite(ages[key]) or key in waiting:
                continue
            dropped = observations.dropped.get(key)
            note = f"; {dropped} dropped: {observations.drop_reasons.get(key)}" if dropped else ""
            waiting[key] = f"{self.resolve(src.topic)} ({src.type}{note})"
        camera_ages = cameras.ages_ms(now) if cameras is not None else {}
        for cam in camera_sources:
            if math.isfinite(camera_ages.get(cam.name, math.inf)):
                continue
            dropped = cameras.dropped.get(cam.name)
            note = f"; {dropped} dropped: {cameras.drop_reasons.get(cam.name)}" if dropped else ""
            waiting[cam.name] = f"{self.resolve(cam.topic)} ({cam.type}{note})"
        return "warning", (f"no observations after {now - self.started:.0f} s, holding: waiting "
                           f"for {', '.join(waiting.values())}")
