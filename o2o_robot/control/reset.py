"""Reset sequencing between episodes, one non-blocking step per control tick (no ROS).

After an episode ends, the robot holds until the next one may start. The node asks its
`ResetSequencer` once per tick what to do; the sequencer

  * calls the reset routine (a `reset` service on a robot, the sim bridge's in simulation)
    as soon as it is ready,
  * abandons a call that has not answered within `timeout_s` and retries `retry_s` later, and
    retries a call that failed (an exception or a response with `success` false) likewise,
  * starts the next episode once a call succeeded AND every observation source delivered a
    message received after that success: the first row of an episode must not start from the
    previous episode's state,
  * starts it without a reset when no reset routine has ever been seen and none appeared
    within `discovery_s` of the episode's end (a robot without one: reset-free operation).
    Once a reset routine was seen, the sequencer waits for it, however long it is away.

The node supplies the I/O as callables, so the same logic runs under any middleware and in
unit tests: `service_ready()`, `call()` (starts a call, returns a future-like object with
`done()` and `result()`, whose `.success` / `.message` are the response, raising when the call
itself failed), `cancel(call)` (forgets an abandoned call) and `oldest_obs_age_ms(now)` (the age
of the stalest observation source). All times are seconds on one monotonic clock.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

RESET_DISCOVERY_S = 3.0       # no reset routine seen by then: continue without resets
RESET_TIMEOUT_S = 5.0         # a reset call that takes longer is abandoned and retried
RESET_RETRY_S = 1.0           # pause before calling again after a failure or a timeout
COUNT_KEYS = ("calls", "done", "failed", "timeouts", "skipped_no_service")

# What one step did (`ResetStep.event`).
WAITING = "waiting"                          # nothing to do this tick
CALLED = "called"                            # a reset call was sent
SUCCEEDED = "succeeded"                      # the call succeeded: waiting for fresh observations
FAILED = "failed"                            # the call failed (`reason`); retried later
TIMED_OUT = "timed_out"                      # the call was abandoned; retried later
START = "start"                              # reset done: the next episode may start
START_WITHOUT_RESET = "start_without_reset"  # no reset routine: the next episode may start


class ResetCall(Protocol):
    """A call in flight (an rclpy Future satisfies it)."""

    def done(self) -> bool: ...
    def result(self): ...   # the response (`success`, `message`); raises if the call failed


@dataclass(frozen=True)
class ResetStep:
    """The outcome of one `ResetSequencer.step`: `event` is one of the constants above."""

    event: str
    reason: str = ""     # why a call failed (FAILED only)

    @property
    def starts_episode(self) -> bool:
        """The node may start the next episode now."""
        return self.event in (START, START_WITHOUT_RESET)


@dataclass
class _Attempt:
    """The bookkeeping of the reset of one ended episode."""

    ended_at: float                   # the first step after the episode ended
    retry_at: float                   # no call before this time
    call: ResetCall | None = None     # the call in flight
    sent_at: float = 0.0
    succeeded_at: float | None = None


@dataclass
class ResetSequencer:
    """Decides, tick by tick, when to call the reset routine and when the next episode starts
    (module docstring). `counts` are reported in the node's status."""

    service_ready: Callable[[], bool]
    call: Callable[[], ResetCall]
    cancel: Callable[[ResetCall], object]
    oldest_obs_age_ms: Callable[[float], float]
    discovery_s: float = RESET_DISCOVERY_S
    timeout_s: float = RESET_TIMEOUT_S
    retry_s: float = RESET_RETRY_S
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    service_seen: bool = False        # a reset routine was ready once: never skip resets again
    _attempt: _Attempt | None = field(default=None, init=False, repr=False)

    def clear(self) -> None:
        """No reset is needed (an episode is running): forget any bookkeeping."""
        self._attempt = None

    def step(self, now: float) -> ResetStep:
        """Advance the reset of the ended episode by one non-blocking step at time `now`."""
        if self._attempt is None:
            self._attempt = _Attempt(ended_at=now, retry_at=now)
        attempt = self._attempt
        if attempt.succeeded_at is not None:
            return self._await_fresh_observations(attempt, now)
        if attempt.call is not None:
            return self._check_call(attempt, now)
        if now < attempt.retry_at:
            return ResetStep(WAITING)
        if self.service_ready():
            self.service_seen = True
            attempt.call, attempt.sent_at = self.call(), now
            self.counts["calls"] += 1
            return ResetStep(CALLED)
        if not self.service_seen and now - attempt.ended_at > self.discovery_s:
            self.counts["skipped_no_service"] += 1
            self._attempt = None
            return ResetStep(START_WITHOUT_RESET)
        return ResetStep(WAITING)

    def _await_fresh_observations(self, attempt: _Attempt, now: float) -> ResetStep:
        if self.oldest_obs_age_ms(now) < (now - attempt.succeeded_at) * 1e3:
            self.counts["done"] += 1
            self._attempt = None
            return ResetStep(START)
        return ResetStep(SUCCEEDED)

    def _check_call(self, attempt: _Attempt, now: float) -> ResetStep:
        call = attempt.call
        if call.done():
            attempt.call = None
            try:
                response = call.result()
                ok, why = response.success, response.message
            except Exception as exc:  # noqa: BLE001 - the call itself failed: retried, reported
                ok, why = False, repr(exc)
            if ok:
                attempt.succeeded_at = now
                return ResetStep(SUCCEEDED)
            self.counts["failed"] += 1
            attempt.retry_at = now + self.retry_s
            return ResetStep(FAILED, why)
        if now - attempt.sent_at > self.timeout_s:
            self.cancel(call)
            attempt.call, attempt.retry_at = None, now + self.retry_s
            self.counts["timeouts"] += 1
            return ResetStep(TIMED_OUT)
        return ResetStep(WAITING)
