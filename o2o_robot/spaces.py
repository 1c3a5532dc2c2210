"""What the policy sees and commands, as plain data (numpy only).

* `ActionScaler`: the store and the robot speak physical units; the agents see actions in
  [-1, 1]. RLPD clips dataset actions to +-(1 - 1e-5) so that atanh-based densities stay finite.
* `CameraSpec`: one camera as the learner and the policy see it (uint8 [H, W, C*S] images), the
  one shape description that agents, policy export and validation share.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

RESERVED_INPUTS = ("state", "obs", "noise", "action")  # graph names a camera may not take
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class CameraSpec:
    """One camera: uint8 images [height, width, channels * frame_stack], the last `frame_stack`
    frames concatenated on the last axis, oldest first (channels 3 = RGB, 1 = grey)."""

    name: str
    height: int
    width: int
    channels: int
    frame_stack: int = 3

    def __post_init__(self) -> None:
        if not _NAME.match(str(self.name)) or self.name in RESERVED_INPUTS:
            raise ValueError(f"camera name {self.name!r}: expected letters, digits and _ (a "
                             f"letter first), not one of {list(RESERVED_INPUTS)}")
        sizes = (self.height, self.width, self.channels, self.frame_stack)
        if not all(type(v) is int and v >= 1 for v in sizes):
            raise ValueError(f"camera {self.name!r}: height, width, channels and frame_stack "
                             f"must be whole numbers >= 1, got {sizes}")

    @property
    def depth(self) -> int:
        """Channels of one stacked observation: channels * frame_stack."""
        return self.channels * self.frame_stack

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, channels * frame_stack) of one observation."""
        return (self.height, self.width, self.depth)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "height": self.height, "width": self.width,
                "channels": self.channels, "frame_stack": self.frame_stack}


def camera_specs(robot: Any) -> tuple[CameraSpec, ...]:
    """The cameras of a robot config (`robot.cameras`: name, height, width, channels,
    frame_stack per entry) as CameraSpecs, in config order; () for a robot without cameras."""
    sources: Iterable[Any] = robot.cameras
    specs = tuple(CameraSpec(str(c.name), int(c.height), int(c.width), int(c.channels),
                             int(c.frame_stack)) for c in sources)
    names = [c.name for c in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"robot.cameras: camera names must be distinct, got {names}")
    return specs


def camera_shapes(cameras: Iterable[CameraSpec]) -> dict[str, tuple[int, int, int]]:
    """{name: (height, width, channels * frame_stack)}: what the policy runtime checks."""
    return {c.name: c.shape for c in cameras}

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
