"""FrameStacks: the policy's camera inputs, the newest `frame_stack` frames seen at rows' obs.

A stack is built from the frames of the episode's rows, not from the last camera messages:
a camera at 30 Hz under a 10 Hz tick would otherwise show the policy frames that the store
never keeps, and the learner (which builds stacks by row index from the stored frames,
data/replay.py) would train on other inputs than the robot acts on. So the history holds the
frame of each tick that sent an action (a row's obs), oldest first, and at an episode's first
steps the oldest slots repeat the episode's first frame: exactly the mirror's rule.

`build(newest, first)` writes the stack for this tick into a preallocated uint8
[H, W, C * frame_stack] buffer per camera (the history, then the current frame); `commit`
keeps the current frame once the tick sent an action. Without cameras both do nothing.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from o2o_robot.config import CameraSource


class _History:
    """The last `frame_stack - 1` committed frames of one camera and its stack buffer."""

    def __init__(self, src: CameraSource):
        h, w, c = src.shape
        self.channels, self.depth = c, src.frame_stack
        self.frames = np.zeros((max(self.depth - 1, 1), h, w, c), dtype=np.uint8)
        self.count = 0          # committed frames in this episode (capped at depth - 1)
        self.head = 0           # slot the next commit writes
        self.stack = np.zeros((h, w, c * self.depth), dtype=np.uint8)

    def build(self, frame: np.ndarray) -> np.ndarray:
        c, older = self.channels, self.depth - 1
        for k in range(older):             # slot k of the stack: k-th oldest of the history
            back = older - k               # how many commits ago
            if back > self.count:          # before the episode's first frame: repeat it
                src = self.frames[(self.head - self.count) % len(self.frames)] if self.count \
                    else frame
            else:
                src = self.frames[(self.head - back) % len(self.frames)]
            np.copyto(self.stack[..., k * c:(k + 1) * c], src)
        np.copyto(self.stack[..., older * c:], frame)
        return self.stack

    def commit(self, frame: np.ndarray) -> None:
        if self.depth == 1:
            return
        np.copyto(self.frames[self.head], frame)
        self.head = (self.head + 1) % len(self.frames)
        self.count = min(self.count + 1, self.depth - 1)


class FrameStacks:
    """Per camera, the stack of the newest `frame_stack` row frames (see the module docstring)."""

    def __init__(self, cameras: Sequence[CameraSource]):
        self._hist = {src.name: _History(src) for src in cameras}

    def __bool__(self) -> bool:
        return bool(self._hist)

    def build(self, newest: Mapping[str, np.ndarray], *, first: bool) -> dict[str, np.ndarray]:
        """The stacks for this tick, `newest` being each camera's current frame; `first`: the
        episode has no row yet (the history is forgotten). The arrays are reused next tick."""
        out = {}
        for name, hist in self._hist.items():
            if first:
                hist.count = 0
            out[name] = hist.build(newest[name])
        return out

    def commit(self, newest: Mapping[str, np.ndarray]) -> None:
        """This tick sent an action: its frames become the newest of the history."""
        for name, hist in self._hist.items():
            hist.commit(newest[name])


def policy_observation(state: np.ndarray, stacks: Mapping[str, np.ndarray]) -> np.ndarray | dict:
    """The policy observation: the float32 state vector alone without cameras (unchanged from
    a vector robot), else {"state": state, "<camera>": uint8 [H, W, C * frame_stack]}."""
    return {"state": state, **stacks} if stacks else state


def policy_input(obs: np.ndarray | Mapping[str, np.ndarray],
                 camera_inputs: Collection[str]) -> np.ndarray | Mapping[str, np.ndarray]:
    """What to hand a policy whose graph takes the cameras `camera_inputs`: the observation
    dict when it takes any, else the state vector (a state-only policy on a camera robot)."""
    if isinstance(obs, Mapping) and not camera_inputs:
        return obs["state"]
    return obs
