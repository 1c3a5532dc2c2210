"""SafetyFilter: the last stage before every published action (DESIGN.md "Safety contract").

Order of checks, each counted in `counts`:

1. e-stop latched -> hold. `estop(True)` latches; the signal going back to False does NOT clear
   the latch (a bouncing button or a restarted publisher must not restart the robot);
   `clear_estop()` clears it, and only while the signal is released.
2. stale observations -> hold (the caller decides staleness; the filter only obeys).
3. no action, wrong shape or any NaN/inf -> hold (a broken policy never reaches the motors).
4. clip to [low, high].
5. rate limit: each entry moves at most `max_delta_per_tick` from the last published action.

The hold action is zeros ("zero", for velocity-style commands: a zero command stops) or the last
published action ("last", for position-style commands: zero would be a jump), clipped into the
bounds in both cases. Holds bypass the rate limit: ramping into the safe state would delay the
stop. Actions are float64, as published in std_msgs/Float64MultiArray, so they sit exactly
inside the configured bounds.
"""
from __future__ import annotations

import enum
from collections.abc import Sequence

import numpy as np


class SafetyFlag(enum.IntFlag):
    """What the filter did on one tick (several may be set)."""

    NONE = 0
    ESTOP = 1          # held: e-stop latched
    STALE = 2          # held: observations stale / not ready
    NO_ACTION = 4      # held: nothing to publish (no policy, teleop silent, episode over)
    NON_FINITE = 8     # held: the action held NaN or inf
    BAD_SHAPE = 16     # held: the action had the wrong length or was not numeric
    CLIPPED = 32       # some entry was outside [low, high]
    RATE_LIMITED = 64  # some entry moved more than max_delta_per_tick
    HELD = 128         # the hold action was published


def flag_names(flags: SafetyFlag | int) -> list[str]:
    """Names of the set flags, for logs and the status JSON."""
    return [f.name.lower() for f in SafetyFlag if f and (int(flags) & f)]


_HOLD_COUNTER = {SafetyFlag.ESTOP: "estop_hold", SafetyFlag.STALE: "stale_hold",
                 SafetyFlag.NO_ACTION: "no_action_hold", SafetyFlag.NON_FINITE: "non_finite",
                 SafetyFlag.BAD_SHAPE: "bad_shape"}


class SafetyFilter:
    """Clip, rate limit, NaN guard, e-stop latch and stale hold for one action vector."""

    def __init__(self, low: Sequence[float], high: Sequence[float], *,
                 max_delta_per_tick: float | Sequence[float] | None = None,
                 hold: str = "zero"):
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        if self.low.ndim != 1 or self.low.shape != self.high.shape or not self.low.size:
            raise ValueError(f"bounds: low {self.low.shape} and high {self.high.shape} must be "
                             "non-empty 1-D of equal length")
        if not (self.low < self.high).all():
            raise ValueError("bounds: every low must be < high")
        if hold not in ("zero", "last"):
            raise ValueError(f"hold: expected 'zero' or 'last', got {hold!r}")
        self.hold = hold
        self.max_delta = None
        if max_delta_per_tick is not None:
            delta = np.broadcast_to(np.asarray(max_delta_per_tick, dtype=np.float64),
                                    self.low.shape).copy()
            if not (np.isfinite(delta).all() and (delta > 0).all()):
                raise ValueError(f"max_delta_per_tick: must be finite and > 0, got {max_delta_per_tick}")
            self.max_delta = delta
        self.dim = int(self.low.size)
        self._zero_hold = np.clip(np.zeros(self.dim), self.low, self.high)
        self._last = self._zero_hold.copy()   # before any publish, "last" falls back to this
        self._signal = False                  # the e-stop input as last received
        self._latched = False
        self.counts: dict[str, int] = dict.fromkeys(
            ["ticks", "passed", "held", "estop_hold", "stale_hold", "no_action_hold",
             "non_finite", "bad_shape", "clipped", "rate_limited",
             "estop_latched", "estop_cleared", "estop_clear_refused"], 0)

    # ---------------------------------------------------------------------------- e-stop
    def estop(self, engaged: bool) -> None:
        """The e-stop signal as received; engaging latches a hold until `clear_estop()`."""
        self._signal = bool(engaged)
        if self._signal and not self._latched:
            self._latched = True
            self.counts["estop_latched"] += 1

    def clear_estop(self) -> bool:
        """Clear the latch; refused (False) while the e-stop signal is still engaged."""
        if self._signal:
            self.counts["estop_clear_refused"] += 1
            return False
        if self._latched:
            self._latched = False
            self.counts["estop_cleared"] += 1
        return True

    @property
    def estopped(self) -> bool:
        return self._latched

    # ---------------------------------------------------------------------------- filter
    def hold_action(self) -> np.ndarray:
        """What a hold publishes now (a fresh array)."""
        if self.hold == "last":
            return np.clip(self._last, self.low, self.high)
        return self._zero_hold.copy()

    def reset(self, last_action: Sequence[float] | None = None) -> None:
        """Forget the last published action, or seed it (e.g. with the measured joint positions,
        so that hold="last" and the rate limit start from where a position-controlled robot is)."""
        if last_action is None:
            self._last = self._zero_hold.copy()
            return
        seed = np.asarray(last_action, dtype=np.float64)
        if seed.shape != (self.dim,) or not np.isfinite(seed).all():
            raise ValueError(f"last_action: expected {self.dim} finite values, got {seed}")
        self._last = np.clip(seed, self.low, self.high)

    def filter(self, action: Sequence[float] | np.ndarray | None, *,
               stale: bool = False) -> tuple[np.ndarray, SafetyFlag]:
        """The action to publish (float64, a fresh array) and what was done to get it."""
        self.counts["ticks"] += 1
        reason = self._hold_reason(action, stale)
        if reason:
            out = self.hold_action()
            flags = reason | SafetyFlag.HELD
            self.counts["held"] += 1
            self.counts[_HOLD_COUNTER[reason]] += 1
        else:
            flags = SafetyFlag.NONE
            raw = np.asarray(action, dtype=np.float64)
            out = np.clip(raw, self.low, self.high)
            if (out != raw).any():
                flags |= SafetyFlag.CLIPPED
                self.counts["clipped"] += 1
            if self.max_delta is not None:
                limited = np.clip(out, self._last - self.max_delta, self._last + self.max_delta)
                if (limited != out).any():
                    flags |= SafetyFlag.RATE_LIMITED
                    self.counts["rate_limited"] += 1
                out = limited   # between last and a clipped target: still inside the bounds
            if not flags:
                self.counts["passed"] += 1
        self._last = out.copy()
        return out, flags

    def _hold_reason(self, action, stale: bool) -> SafetyFlag:
        """The first reason to hold, in priority order, or NONE."""
        if self._latched:
            return SafetyFlag.ESTOP
        if stale:
            return SafetyFlag.STALE
        if action is None:
            return SafetyFlag.NO_ACTION
        try:
            arr = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            return SafetyFlag.BAD_SHAPE
        if arr.shape != (self.dim,):
            return SafetyFlag.BAD_SHAPE
        if not np.isfinite(arr).all():
            return SafetyFlag.NON_FINITE
        return SafetyFlag.NONE

    def state(self) -> dict:
        """Plain values for the status JSON."""
        return {"estop_latched": self._latched, "estop_signal": self._signal, "hold": self.hold,
                "max_delta_per_tick": None if self.max_delta is None else self.max_delta.tolist(),
                "last_action": self._last.tolist(), "counts": dict(self.counts)}
