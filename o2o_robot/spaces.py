"""Scaling between physical action units and the learner's [-1, 1] box (numpy only).

The store and the robot speak physical units; the agents see actions in [-1, 1]. RLPD clips
dataset actions to +-(1 - 1e-5) so that atanh-based densities stay finite.
"""
from __future__ import annotations

import numpy as np

UNIT_CLIP = 1.0 - 1e-5


class ActionScaler:
    """Affine map between [low, high] (physical) and [-1, 1] (unit), per dimension."""

    def __init__(self, low, high):
        self.low = np.asarray(low, dtype=np.float32)
        self.high = np.asarray(high, dtype=np.float32)
        if self.low.shape != self.high.shape or self.low.ndim != 1:
            raise ValueError(f"action bounds: low {self.low.shape} and high {self.high.shape} "
                             "must be 1-D of equal length")
        if not np.all(self.low < self.high):
            raise ValueError("action bounds: every low must be < high")
        self._half_range = (self.high - self.low) / 2.0
        self._mid = (self.high + self.low) / 2.0

    @property
    def dim(self) -> int:
        return int(self.low.shape[0])

    def to_unit(self, action: np.ndarray, clip: float = UNIT_CLIP) -> np.ndarray:
        """Physical -> [-clip, clip] (float32)."""
        unit = (np.asarray(action, dtype=np.float32) - self._mid) / self._half_range
        return np.clip(unit, -clip, clip).astype(np.float32, copy=False)

    def to_physical(self, unit: np.ndarray) -> np.ndarray:
        """[-1, 1] -> physical (float32); inputs outside the box are clipped first."""
        unit = np.clip(np.asarray(unit, dtype=np.float32), -1.0, 1.0)
        return (self._mid + unit * self._half_range).astype(np.float32, copy=False)
