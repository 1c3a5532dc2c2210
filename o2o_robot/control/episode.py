"""EpisodeTracker: step counting, episode ends and operator labels for online collection.

An episode ends on the transition where one of these holds (checked in this order):

* the environment said the state is terminal (`mark_done()`, e.g. a sim "done" signal)
  -> terminated;
* the operator marked success (`mark_success()`) -> terminated if `terminate_on_success`
  (the task ends at success, no bootstrap past it), else truncated;
* the operator marked failure (`mark_failure()`) -> truncated (the state is not terminal, the
  operator just gave up), or terminated if `failure_is_terminal` (e.g. the object fell);
* the time limit: `max_episode_steps` transitions -> truncated. A time limit is never a
  termination: the learner must keep bootstrapping from that state.

After an end, `needs_reset` stays True until `reset_done()` (the node called the reset
service), and labels arriving in between are ignored and counted.
"""
from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EpisodeSummary:
    """One finished episode, for the status JSON and run logs."""

    index: int
    steps: int
    episode_return: float
    success: bool
    terminated: bool
    truncated: bool
    interventions: int
    end_reason: str   # "done" | "success" | "failure" | "time_limit"


class EpisodeTracker:
    """Counts transitions of the current episode and decides terminated / truncated."""

    def __init__(self, max_episode_steps: int, *, terminate_on_success: bool = True,
                 failure_is_terminal: bool = False, history: int = 100):
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps: must be >= 1, got {max_episode_steps}")
        self.max_episode_steps = int(max_episode_steps)
        self.terminate_on_success = terminate_on_success
        self.failure_is_terminal = failure_is_terminal
        self.index = 0                 # episodes started so far, minus one
        self.steps = 0
        self.episode_return = 0.0
        self.interventions = 0
        self._needs_reset = False
        self._label: str | None = None        # "success" | "failure" from the operator
        self._done: bool = False              # terminal state reported by the environment
        self._done_success = False
        self.history: deque[EpisodeSummary] = deque(maxlen=history)
        self.counts = dict.fromkeys(["episodes", "successes", "terminated", "truncated",
                                     "labels_ignored", "resets_refused"], 0)

    # ------------------------------------------------------------------------------ labels
    @property
    def needs_reset(self) -> bool:
        return self._needs_reset

    @property
    def success_pending(self) -> bool:
        """True when the next transition carries the operator's success (the sparse reward)."""
        return self._label == "success"

    def mark_success(self) -> bool:
        """The operator says the task succeeded; the next transition ends the episode."""
        return self._set_label("success")

    def mark_failure(self) -> bool:
        """The operator gives up on this episode; the next transition ends it."""
        return self._set_label("failure")

    def mark_done(self, *, success: bool = False) -> bool:
        """The environment reports a terminal state; the next transition is terminated."""
        if self._needs_reset:
            self.counts["labels_ignored"] += 1
            return False
        self._done, self._done_success = True, bool(success)
        return True

    def _set_label(self, label: str) -> bool:
        if self._needs_reset:   # between episodes there is no transition to label
            self.counts["labels_ignored"] += 1
            return False
        self._label = label     # a later press corrects an earlier one
        return True

    # ------------------------------------------------------------------------------- steps
    def step(self, reward: float, *, intervention: bool = False) -> tuple[bool, bool]:
        """Account one transition of the current episode; return (terminated, truncated)."""
        if self._needs_reset:
            raise RuntimeError("EpisodeTracker.step() after the episode ended; call reset_done()")
        self.steps += 1
        self.episode_return += float(reward)
        self.interventions += int(intervention)
        if self._done:
            reason, terminated = "done", True
        elif self._label == "success":
            reason, terminated = "success", self.terminate_on_success
        elif self._label == "failure":
            reason, terminated = "failure", self.failure_is_terminal
        elif self.steps >= self.max_episode_steps:
            reason, terminated = "time_limit", False
        else:
            return False, False
        self._end(reason, terminated)
        return terminated, not terminated

    def _end(self, reason: str, terminated: bool) -> None:
        success = reason == "success" or (reason == "done" and self._done_success)
        self.history.append(EpisodeSummary(
            index=self.index, steps=self.steps, episode_return=self.episode_return,
            success=success, terminated=terminated, truncated=not terminated,
            interventions=self.interventions, end_reason=reason))
        self.counts["episodes"] += 1
        self.counts["successes"] += int(success)
        self.counts["terminated" if terminated else "truncated"] += 1
        self._needs_reset = True
        self._label, self._done, self._done_success = None, False, False

    def reset_done(self) -> bool:
        """The robot / sim was reset: start the next episode. Refused (False) mid-episode:
        end it first with `mark_failure()` so its last transition carries the end."""
        if not self._needs_reset:
            self.counts["resets_refused"] += 1
            return False
        self._needs_reset = False
        self.index += 1
        self.steps, self.episode_return, self.interventions = 0, 0.0, 0
        return True

    def stats(self) -> dict:
        recent = list(self.history)[-10:]
        return {"episode": self.index, "steps": self.steps, "needs_reset": self._needs_reset,
                "return": self.episode_return, **self.counts,
                "recent_success_rate": (sum(e.success for e in recent) / len(recent)) if recent else None,
                "last_episode": asdict(self.history[-1]) if self.history else None}
