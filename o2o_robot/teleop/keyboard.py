"""KeyboardJoy: terminal key presses -> the axes and buttons of a Joy message (no ROS, no tty).

A terminal reports key presses, never releases; a held key only repeats (after the terminal's
repeat delay, often 0.25-0.66 s). So an axis key deflects its axis by the current speed for
`hold_s` after its last press: holding a key moves steadily, letting go stops within `hold_s`.
The space bar toggles button 0 (the keyboard profile's deadman): it stays "held" until the next
space. Label keys are momentary: their button reads 1 in exactly one Joy message.

Layout (the "keyboard" profile in config.JOY_PROFILES reads it):

    axis 0: w / s      axis 1: a / d      axis 2: r / f
    axis 3: i / k      axis 4: j / l      axis 5: u / o
    space: engage / release (button 0)    Enter: success (button 1)
    Backspace: failure, reset (button 2)  x: e-stop (button 3)
    + / -: speed (deflection) up / down by 0.1, within 0.1..1
"""
from __future__ import annotations

AXIS_KEYS: dict[str, tuple[int, float]] = {
    "w": (0, 1.0), "s": (0, -1.0), "a": (1, 1.0), "d": (1, -1.0), "r": (2, 1.0), "f": (2, -1.0),
    "i": (3, 1.0), "k": (3, -1.0), "j": (4, 1.0), "l": (4, -1.0), "u": (5, 1.0), "o": (5, -1.0)}
NUM_AXES = 6
ENGAGE, SUCCESS, FAILURE, ESTOP = range(4)          # button indices
NUM_BUTTONS = 4
MOMENTARY = {"enter": SUCCESS, "backspace": FAILURE, "x": ESTOP}
SPEED_STEP, SPEED_MIN, SPEED_MAX = 0.1, 0.1, 1.0
HELP = ("keys: w/s a/d r/f i/k j/l u/o move axes 0-5 | space engage/release | Enter success | "
        "Backspace failure (reset) | x e-stop | +/- speed | Ctrl-C quit")


def split_keys(data: str) -> list[str]:
    """Raw terminal input -> key names: printable characters as themselves (lower case),
    "space", "enter", "backspace"; escape sequences (arrows, function keys) are skipped."""
    keys, i = [], 0
    while i < len(data):
        ch = data[i]
        if ch == "\x1b":                               # ESC [ ... final byte, or a lone ESC
            i += 1
            if i < len(data) and data[i] in "[O":
                i += 1
                while i < len(data) and not data[i].isalpha() and data[i] != "~":
                    i += 1
                i += 1                                  # the final byte
            continue
        keys.append({" ": "space", "\r": "enter", "\n": "enter", "\x7f": "backspace",
                     "\x08": "backspace"}.get(ch, ch.lower()))
        i += 1
    return keys


class KeyboardJoy:
    """Key presses in, Joy axes/buttons out; times are seconds on one monotonic clock."""

    def __init__(self, hold_s: float = 0.6, speed: float = 0.5):
        if hold_s <= 0:
            raise ValueError(f"hold_s: must be > 0, got {hold_s}")
        if not SPEED_MIN <= speed <= SPEED_MAX:
            raise ValueError(f"speed: must be in [{SPEED_MIN}, {SPEED_MAX}], got {speed}")
        self.hold_s, self.speed = float(hold_s), float(speed)
        self.engaged = False
        self._axes: dict[int, tuple[float, float]] = {}   # axis -> (sign, time of last press)
        self._momentary: set[int] = set()

    def press(self, key: str, now: float) -> str | None:
        """Apply one key; returns a line for the operator when something changed state."""
        if key in AXIS_KEYS:
            axis, sign = AXIS_KEYS[key]
            self._axes[axis] = (sign, now)
            return None
        if key == "space":
            self.engaged = not self.engaged
            if not self.engaged:
                self._axes.clear()      # releasing never leaves a deflection behind
            return "ENGAGED: your keys drive the robot" if self.engaged else "released"
        if key in MOMENTARY:
            self._momentary.add(MOMENTARY[key])
            return {"enter": "success", "backspace": "failure (reset)", "x": "E-STOP"}[key]
        if key in ("+", "=", "-"):
            step = -SPEED_STEP if key == "-" else SPEED_STEP
            self.speed = round(min(max(self.speed + step, SPEED_MIN), SPEED_MAX), 3)
            return f"speed {self.speed:.1f}"
        return None

    def joy(self, now: float) -> tuple[list[float], list[int]]:
        """The Joy axes and buttons at `now`; momentary buttons are consumed by this call."""
        axes = [0.0] * NUM_AXES
        for axis, (sign, pressed_at) in list(self._axes.items()):
            if now - pressed_at <= self.hold_s:
                axes[axis] = sign * self.speed
            else:
                del self._axes[axis]
        buttons = [0] * NUM_BUTTONS
        buttons[ENGAGE] = int(self.engaged)
        for index in self._momentary:
            buttons[index] = 1
        self._momentary.clear()
        return axes, buttons
