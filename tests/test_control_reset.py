"""ResetSequencer (control/reset.py) without ROS: a fake reset service and observation clock,
driven tick by tick with explicit times."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from o2o_robot.control.reset import (CALLED, FAILED, RESET_DISCOVERY_S, RESET_RETRY_S,
                                     RESET_TIMEOUT_S, START, START_WITHOUT_RESET, SUCCEEDED,
                                     TIMED_OUT, WAITING, ResetSequencer)


class FakeCall:
    """A future-like call: pending until `answer()` or `fail()`."""

    def __init__(self):
        self._done, self._response, self._error = False, None, None

    def answer(self, success: bool, message: str = "") -> None:
        self._done, self._response = True, SimpleNamespace(success=success, message=message)

    def fail(self, error: Exception) -> None:
        self._done, self._error = True, error

    def done(self) -> bool:
        return self._done

    def result(self):
        if self._error is not None:
            raise self._error
        return self._response


class FakeRobot:
    """The reset service (ready or not, its calls) and the newest observation's receive time."""

    def __init__(self, ready: bool = True):
        self.ready = ready
        self.calls: list[FakeCall] = []
        self.cancelled: list[FakeCall] = []
        self.obs_at = 0.0        # every source last delivered at this time

    def sequencer(self) -> ResetSequencer:
        return ResetSequencer(service_ready=lambda: self.ready, call=self._call,
                              cancel=self.cancelled.append,
                              oldest_obs_age_ms=lambda now: (now - self.obs_at) * 1e3)

    def _call(self) -> FakeCall:
        self.calls.append(FakeCall())
        return self.calls[-1]


@pytest.fixture
def robot():
    return FakeRobot()


def test_a_ready_service_is_called_on_the_first_step_and_only_once(robot):
    seq = robot.sequencer()
    assert seq.step(10.0).event == CALLED
    assert [seq.step(10.0 + 0.1 * i).event for i in range(1, 6)] == [WAITING] * 5
    assert len(robot.calls) == 1 and seq.counts["calls"] == 1 and seq.service_seen


def test_success_then_a_stale_observation_waits_and_a_fresh_one_starts_the_episode(robot):
    seq = robot.sequencer()
    seq.step(10.0)
    robot.calls[0].answer(True, "reset")
    robot.obs_at = 10.15                   # delivered before the success is seen
    assert seq.step(10.2).event == SUCCEEDED
    assert seq.step(10.3).event == SUCCEEDED and seq.counts["done"] == 0
    robot.obs_at = 10.2                    # received exactly at the success: still not after it
    assert seq.step(10.3).event == SUCCEEDED
    robot.obs_at = 10.25
    step = seq.step(10.3)
    assert step.event == START and step.starts_episode
    assert seq.counts == {"calls": 1, "done": 1, "failed": 0, "timeouts": 0,
                          "skipped_no_service": 0}
    assert seq.step(20.0).event == CALLED and len(robot.calls) == 2   # the next episode's reset


def test_a_failure_response_is_retried_after_the_retry_delay(robot):
    seq = robot.sequencer()
    seq.step(10.0)
    robot.calls[0].answer(False, "gripper stuck")
    step = seq.step(10.1)
    assert (step.event, step.reason, step.starts_episode) == (FAILED, "gripper stuck", False)
    assert seq.step(10.1 + RESET_RETRY_S - 0.01).event == WAITING and len(robot.calls) == 1
    assert seq.step(10.1 + RESET_RETRY_S).event == CALLED and len(robot.calls) == 2
    assert seq.counts["failed"] == 1 and seq.counts["calls"] == 2


def test_a_call_that_raises_counts_as_a_failure_and_is_retried(robot):
    seq = robot.sequencer()
    seq.step(10.0)
    robot.calls[0].fail(RuntimeError("service went away"))
    step = seq.step(10.1)
    assert step.event == FAILED and "service went away" in step.reason
    assert seq.step(10.1 + RESET_RETRY_S).event == CALLED and seq.counts["failed"] == 1


def test_a_call_without_an_answer_is_abandoned_after_the_timeout_and_retried(robot):
    seq = robot.sequencer()
    seq.step(10.0)
    assert seq.step(10.0 + RESET_TIMEOUT_S).event == WAITING          # not yet: strictly longer
    assert seq.step(10.0 + RESET_TIMEOUT_S + 0.01).event == TIMED_OUT
    assert robot.cancelled == [robot.calls[0]] and seq.counts["timeouts"] == 1
    t = 10.0 + RESET_TIMEOUT_S + 0.01
    assert seq.step(t + RESET_RETRY_S - 0.01).event == WAITING and len(robot.calls) == 1
    assert seq.step(t + RESET_RETRY_S).event == CALLED and len(robot.calls) == 2
    robot.calls[0].answer(True)            # a late answer to the abandoned call is ignored
    assert seq.step(t + RESET_RETRY_S + 0.1).event == WAITING


def test_no_service_within_the_discovery_time_starts_without_a_reset():
    robot = FakeRobot(ready=False)
    seq = robot.sequencer()
    assert seq.step(10.0).event == WAITING
    assert seq.step(10.0 + RESET_DISCOVERY_S).event == WAITING
    step = seq.step(10.0 + RESET_DISCOVERY_S + 0.01)
    assert step.event == START_WITHOUT_RESET and step.starts_episode
    assert seq.counts["skipped_no_service"] == 1 and seq.counts["calls"] == 0
    assert not robot.calls
    # The next episode's end waits its own discovery time again.
    assert seq.step(30.0).event == WAITING
    assert seq.step(30.0 + RESET_DISCOVERY_S + 0.01).event == START_WITHOUT_RESET


def test_once_a_service_was_seen_its_absence_never_skips_a_reset(robot):
    seq = robot.sequencer()
    seq.step(10.0)
    robot.calls[0].answer(False, "busy")
    seq.step(10.1)
    robot.ready = False                    # the service disappears
    for t in (12.0, 20.0, 60.0):
        assert seq.step(t).event == WAITING
    assert seq.counts["skipped_no_service"] == 0
    robot.ready = True
    assert seq.step(61.0).event == CALLED


def test_clear_forgets_the_reset_in_progress(robot):
    seq = robot.sequencer()
    seq.step(10.0)
    seq.clear()                            # an episode is running again
    assert seq.step(11.0).event == CALLED and len(robot.calls) == 2
