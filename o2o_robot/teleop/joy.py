"""JoyMapper: sensor_msgs/Joy axes and buttons -> a teleop action, the engaged flag, and events.

An axis value v in [-1, 1] (clipped) becomes a deflection d: 0 inside the deadzone, the rest of
the travel rescaled to 0..1, sign kept (and flipped by `invert`). The action of a dimension rests
at 0 clipped into its bounds, r = clip(0, low, high), and moves towards the bound on d's side:

    action = r + scale * d * (high - r)   if d >= 0
    action = r + scale * |d| * (low - r)  if d < 0

so a symmetric velocity command rests at zero and full deflection reaches `scale` times the bound.
The result is in physical units (what `teleop/action` carries).

Engaged: the deadman button is held, or (`engage_on_motion`) any mapped axis is outside its
deadzone. Buttons give events on their edges: "success" and "failure" on a press, "estop" on a
press and "estop_released" on the release (the actor latches the e-stop either way).

A message too short for the profile (an index beyond `axes` / `buttons`) or with NaN is refused
with a `JoyError` naming the profile key; the previous button state is kept, so a refused message
neither fires nor swallows an edge.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from o2o_robot.config import JoyProfile

LABEL_BUTTONS = (("success_button", "success"), ("failure_button", "failure"),
                 ("estop_button", "estop"))


class JoyError(ValueError):
    """A Joy message that the profile cannot read; the text names the key."""


@dataclass(frozen=True)
class JoyOutput:
    action: np.ndarray                 # float64 [act_dim], physical units
    engaged: bool
    events: tuple[str, ...] = field(default=())   # in LABEL_BUTTONS order


class JoyMapper:
    """Maps Joy messages through one profile onto an action space with bounds `low`, `high`."""

    def __init__(self, profile: JoyProfile, low: Sequence[float], high: Sequence[float],
                 where: str = "teleop.joy"):
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        act_dim = self.low.size
        problems = profile.problems()
        if len(profile.axes) < act_dim:
            problems.append(f"axes: {len(profile.axes)} entries for {act_dim} action dimensions "
                            f"(add entries; null rests a dimension)")
        if problems:
            raise ValueError("; ".join(f"{where}.{p}" for p in problems))
        self.where = where
        self.axes = profile.axes[:act_dim]
        self.profile = profile
        self.rest = np.clip(0.0, self.low, self.high)
        self._pressed: dict[str, bool] = {}

    def map(self, axes: Sequence[float], buttons: Sequence[int]) -> JoyOutput:
        """One Joy message -> JoyOutput; JoyError (state unchanged) when it cannot be read."""
        axes = np.asarray(axes, dtype=np.float64)
        deflection = np.zeros(self.low.size)
        for dim, ax in enumerate(self.axes):
            if ax is None:
                continue
            if ax.axis >= axes.size:
                raise JoyError(f"{self.where}.axes[{dim}].axis: index {ax.axis}, the Joy message "
                               f"has {axes.size} axes")
            deflection[dim] = self._deflect(float(axes[ax.axis]), ax.deadzone, ax.invert,
                                            f"Joy.axes[{ax.axis}]") * ax.scale
        pressed = {key: self._button(buttons, key) for key in
                   ("deadman_button", *(k for k, _ in LABEL_BUTTONS))}
        toward = np.where(deflection >= 0, self.high, self.low)
        action = self.rest + np.abs(deflection) * (toward - self.rest)
        engaged = pressed["deadman_button"] or (
            self.profile.engage_on_motion and bool(np.any(deflection != 0)))
        events = []
        for key, name in LABEL_BUTTONS:
            was, now = self._pressed.get(key, False), pressed[key]
            if now and not was:
                events.append(name)
            elif was and not now and name == "estop":
                events.append("estop_released")
        self._pressed = pressed
        return JoyOutput(np.clip(action, self.low, self.high), engaged, tuple(events))

    def _button(self, buttons: Sequence[int], key: str) -> bool:
        index = getattr(self.profile, key)
        if index is None:
            return False
        if index >= len(buttons):
            raise JoyError(f"{self.where}.{key}: index {index}, the Joy message has "
                           f"{len(buttons)} buttons")
        return bool(buttons[index])

    @staticmethod
    def _deflect(value: float, deadzone: float, invert: bool, what: str) -> float:
        if not np.isfinite(value):
            raise JoyError(f"{what}: NaN or inf")
        value = min(max(value, -1.0), 1.0)
        size = max(abs(value) - deadzone, 0.0) / (1.0 - deadzone)
        signed = size if value >= 0 else -size
        return -signed if invert else signed
