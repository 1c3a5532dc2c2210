"""Timing of a periodic control loop: achieved rate, missed periods and period jitter."""
from __future__ import annotations

import numpy as np


class TickTiming:
    """Timing of the control timer over its last `window` ticks (a preallocated ring).

    `summary` is a pure read: the achieved rate counts the ticks of the last `rate_window_s`."""

    def __init__(self, period_s: float, window: int = 1000, rate_window_s: float = 2.0):
        self.period_s, self.rate_window_s = period_s, rate_window_s
        self._times = np.full(window, -np.inf)
        self._pos = 0
        self.ticks = self.missed = 0

    def record(self, now: float) -> None:
        last = self._times[self._pos - 1]
        if now - last > 1.5 * self.period_s and np.isfinite(last):
            self.missed += int(round((now - last) / self.period_s)) - 1   # periods not served
        self._times[self._pos] = now
        self._pos = (self._pos + 1) % self._times.size
        self.ticks += 1

    def summary(self, now: float) -> dict:
        times = np.roll(self._times, -self._pos)        # oldest first
        times = times[np.isfinite(times)]
        jitter = np.abs(np.diff(times) - self.period_s) * 1e3
        recent = times[times > now - self.rate_window_s]
        rate = (recent.size - 1) / (recent[-1] - recent[0]) if recent.size > 2 else None
        pct = (lambda q: float(np.percentile(jitter, q))) if jitter.size else (lambda q: None)
        return {"rate_hz": rate, "target_rate_hz": 1.0 / self.period_s, "ticks": self.ticks,
                "missed_ticks": self.missed, "period_jitter_ms": {
                    "p50": pct(50), "p99": pct(99), "max": float(jitter.max()) if jitter.size else None}}
