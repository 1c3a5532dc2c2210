"""Swap policies into a running control loop: `PolicySlot` and `PolicyProposer` (no torch).

* `PolicySlot`: the (policy, version) pair the control thread reads without a lock; `propose` loads
  and validates (`runtime.validate_policy`) on the caller's (non-control) thread and then
  publishes with one attribute store; the previous policy is kept for `rollback`. `check` and
  `install` are its two halves, for callers that validate on one thread and swap on another.
* `PolicyProposer`: validates offered policies (e.g. a learner's) on its own thread, keeping only
  the newest one waiting, and reports each result.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from o2o_robot.policy.runtime import (OnnxPolicy, PolicyRejected, NoPolicy, validate_policy)
from o2o_robot.spaces import CameraSpec


@dataclass(frozen=True)
class SwapResult:
    """What one `propose` / `rollback` did. `version` is the slot version serving afterwards."""

    accepted: bool
    version: int | None
    reason: str = ""
    source: str = ""
    metadata_version: int | None = None
    seconds: float = 0.0  # load + validation time, spent on the proposer's thread
    kind: str = "propose"
    at: float = 0.0  # wall-clock time.time()


@dataclass(frozen=True)
class Candidate:
    """A policy loaded and validated by `PolicySlot.check`, not yet serving; `policy` None means
    rejected, for `reason`."""

    policy: OnnxPolicy | None
    source: str
    reason: str = ""
    seconds: float = 0.0


class PolicySlot:
    """The policy the control thread runs, swapped atomically between ticks.

    `current` is one attribute holding an immutable (policy, version) tuple (or None). The control
    thread reads it once per tick (`act` does), so a tick runs one policy end to end; writers
    replace the whole tuple, and a Python attribute store is atomic, so the tick path takes no lock.

    Versions: every accepted policy gets `max(highest version so far + 1, its metadata version)`,
    so they increase strictly and follow the learner's numbering when the learner's is ahead.
    `rollback` re-installs the previous (policy, version) pair unchanged: the version names the
    policy that produced a transition, so the same policy keeps its number.
    """

    def __init__(self, obs_dim: int, act_dim: int, action_low: Sequence[float],
                 action_high: Sequence[float], *, latency_budget_s: float | None = None,
                 probe_obs: np.ndarray | None = None, seed: int = 0, provider: str = "auto",
                 intra_op_threads: int = 1, history_len: int = 100,
                 cameras: Sequence[CameraSpec] | None = None):
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.cameras = tuple(cameras or ())   # the robot's; a policy must take exactly these
        self.action_low, self.action_high = list(action_low), list(action_high)
        self.latency_budget_s, self.probe_obs = latency_budget_s, probe_obs
        self.provider, self.intra_op_threads = provider, intra_op_threads
        self.current: tuple[OnnxPolicy, int] | None = None
        self.previous: tuple[OnnxPolicy, int] | None = None
        self.history: deque[SwapResult] = deque(maxlen=history_len)
        self._highest = -1
        self._swap_lock = threading.Lock()  # serialises writers only; `act` never takes it
        # Only the control thread draws from this generator (validation has its own), so the
        # noise sequence is reproducible from `seed`.
        self._rng = np.random.default_rng(seed)
        self._noise = np.zeros(act_dim, np.float32)
        self._zeros = np.zeros(act_dim, np.float32)

    @property
    def version(self) -> int | None:
        current = self.current
        return None if current is None else current[1]

    def act(self, obs: np.ndarray | Mapping[str, np.ndarray], deterministic: bool = False,
            out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """(action in physical units, version of the policy that produced it) for one observation:
        a vector [obs_dim] or a dict {"state": [obs_dim], camera: uint8 [H, W, C*S]}; the tick
        path: no lock, noise drawn into a preallocated buffer."""
        current = self.current  # one read: the whole tick uses this policy
        if current is None:
            raise NoPolicy("no policy accepted yet")
        policy, version = current
        if deterministic:
            noise = self._zeros
        else:
            noise = self._rng.standard_normal(dtype=np.float32, out=self._noise)
        return policy(obs, noise, out), version

    def propose(self, source: OnnxPolicy | bytes | str | Path) -> SwapResult:
        """Load and validate `source` on the calling thread (never the control thread), then swap
        it in. A rejected candidate leaves the current policy serving; the result says why."""
        return self.install(self.check(source))

    def check(self, source: OnnxPolicy | bytes | str | Path) -> Candidate:
        """Load and validate `source` without installing it (the slow part of `propose`, for
        a worker thread); never raises: a rejection is a `Candidate` without a policy."""
        start = time.perf_counter()
        name = source.source if isinstance(source, OnnxPolicy) else _read_name(source)
        try:
            policy = source if isinstance(source, OnnxPolicy) else OnnxPolicy(
                source, provider=self.provider, intra_op_threads=self.intra_op_threads)
            validate_policy(policy, obs_dim=self.obs_dim, act_dim=self.act_dim,
                            action_low=self.action_low, action_high=self.action_high,
                            probe_obs=self.probe_obs, latency_budget_s=self.latency_budget_s,
                            cameras=self.cameras)
        except PolicyRejected as err:
            return Candidate(None, name, err.reason, time.perf_counter() - start)
        except Exception as err:  # a validator bug must not take the serving policy down
            return Candidate(None, name, f"unexpected: {err!r}", time.perf_counter() - start)
        return Candidate(policy, name, "", time.perf_counter() - start)

    def install(self, candidate: Candidate) -> SwapResult:
        """Swap a checked candidate in (one attribute store); a rejected one is only recorded."""
        if candidate.policy is None:
            return self._record(SwapResult(False, self.version, candidate.reason,
                                           candidate.source, seconds=candidate.seconds))
        policy = candidate.policy
        with self._swap_lock:
            version = max(self._highest + 1, policy.version or 0)
            self.previous, self.current = self.current, (policy, version)
            self._highest = version
        return self._record(SwapResult(True, version, "", candidate.source, policy.version,
                                       candidate.seconds))

    def rollback(self) -> SwapResult:
        """Put the previous policy back (one level). Nothing to roll back to: not accepted."""
        with self._swap_lock:
            if self.previous is None:
                return self._record(SwapResult(False, self.version, "rollback: no previous policy",
                                               kind="rollback"))
            self.current, self.previous = self.previous, None
            policy, version = self.current
        return self._record(SwapResult(True, version, "", policy.source, policy.version, kind="rollback"))

    def _record(self, result: SwapResult) -> SwapResult:
        result = replace(result, at=time.time())
        self.history.append(result)
        return result


def _read_name(source: bytes | str | Path) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)


class PolicyProposer:
    """Validates learner policies on its own thread; only the newest waiting one is kept."""

    def __init__(self, slot: PolicySlot, on_result: Callable[[SwapResult], None]):
        self.slot, self.on_result = slot, on_result
        self.superseded = 0
        self._next: bytes | None = None
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="policy-proposer", daemon=True)
        self._thread.start()

    def offer(self, data: bytes) -> None:
        with self._cv:
            self.superseded += self._next is not None
            self._next = data
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=10.0)

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._stop or self._next is not None)
                if self._stop:
                    return
                data, self._next = self._next, None
            self.on_result(self.slot.propose(data))   # propose never raises (rejections are results)
