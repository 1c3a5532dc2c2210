"""Camera frames of the replay mirror, each held once, and frame stacks built by index.

The pool holds one uint8 [H, W, C] entry per frame and camera: a row's observation frame, and
the next frame of a row whose next row is not in the mirror (an episode's last row). Rows do
not hold pixels, only indices into the pool:

* `stack[slot]`: the pool entries of the row's last S frames, oldest first (S = the largest
  frame stack). Never across an episode boundary: at an episode's first steps the oldest
  entries repeat the episode's first frame.
* `next_ref[slot]`: the entry of the row's next frame (the next row's frame within the
  episode). The next stack is `stack[slot][1:] + [next_ref[slot]]`.

Entries are reference counted: when the online FIFO overwrites a row, its frames stay as long as
a live row's stack still names them (the rows after it in its episode), so every stack stays
exact; an entry nobody names is reused. numpy only.
"""
from __future__ import annotations

import numpy as np


def _grown(arr: np.ndarray, need: int, fill=0) -> np.ndarray:
    if need <= len(arr):
        return arr
    out = np.full((max(need, 2 * len(arr)),) + arr.shape[1:], fill, arr.dtype)
    out[:len(arr)] = arr
    return out


class FramePool:
    """Frames of `cameras` ({name: (H, W, C)}) with `stacks` ({name: frames stacked}) for the
    row slots of a `replay.ReplayMirror` (which calls `add` and `gather`)."""

    def __init__(self, cameras: dict[str, tuple], stacks: dict[str, int], capacity: int = 1024):
        bad = [n for n in cameras if int(stacks.get(n, 0)) < 1]
        if bad:
            raise ValueError(f"frame_stack: expected a positive integer for camera(s) {', '.join(bad)}")
        self.cameras = {n: tuple(int(d) for d in s) for n, s in cameras.items()}
        self.stacks = {n: int(stacks[n]) for n in cameras}
        self.depth = max(self.stacks.values())
        self.pool = {n: np.zeros((capacity,) + s, np.uint8) for n, s in self.cameras.items()}
        self.refs = np.zeros(capacity, np.int64)   # how many stacks / next refs name an entry
        self._free = np.arange(capacity - 1, -1, -1, dtype=np.int64)   # a stack: pop from the end
        self._n_free = capacity
        self.stack = np.zeros((capacity, self.depth), np.int64)
        self.next_ref = np.zeros(capacity, np.int64)
        self.last_slot = -1          # the newest row: its successor may continue its episode
        self.last_ended = True

    @property
    def frames_held(self) -> int:
        """Pool entries in use (frames held once each, per camera)."""
        return len(self.refs) - self._n_free

    def nbytes(self) -> int:
        """Bytes of the pool arrays and the per-row indices."""
        return sum(p.nbytes for p in self.pool.values()) + self.refs.nbytes + \
            self._free.nbytes + self.stack.nbytes + self.next_ref.nbytes

    def _alloc(self, k: int) -> np.ndarray:
        if k > self._n_free:   # grow: new entries join the free stack
            old, need = len(self.refs), len(self.refs) + k - self._n_free
            self.refs = _grown(self.refs, need)
            new = len(self.refs)
            for n in self.pool:
                self.pool[n] = _grown(self.pool[n], new)
            self._free = _grown(self._free, new)
            self._free[self._n_free:self._n_free + new - old] = np.arange(new - 1, old - 1, -1)
            self._n_free += new - old
        self._n_free -= k
        return self._free[self._n_free:self._n_free + k][::-1].copy()

    def _release(self, entries: np.ndarray) -> None:
        np.subtract.at(self.refs, entries, 1)
        dead = np.unique(entries[self.refs[entries] == 0])
        self._free[self._n_free:self._n_free + len(dead)] = dead
        self._n_free += len(dead)

    def check(self, n: int, frames, next_frames, episode_start, ended: np.ndarray):
        """A block of `n` rows' (frames, next_frames, episode starts), checked: ValueError
        naming the camera. Episode starts default to the rows after one that `ended`
        (terminated or truncated), the block's first after the newest row added before."""
        for what, d in (("frames", frames), ("next_frames", next_frames)):
            if d is None and what == "next_frames":
                continue
            if d is None or set(d) != set(self.cameras):
                raise ValueError(f"{what}: expected camera(s) {', '.join(self.cameras)}, "
                                 f"got {', '.join(d or ()) or 'none'}")
            for name, shape in self.cameras.items():
                arr = np.asarray(d[name])
                if arr.dtype != np.uint8 or arr.shape != (n,) + shape:
                    raise ValueError(f"{what}/{name}: expected uint8 {[n, *shape]}, got "
                                     f"{arr.dtype} {list(arr.shape)}")
        if episode_start is None:
            episode_start = np.concatenate([[self.last_ended], ended[:-1]])
        starts = np.asarray(episode_start, bool)
        if starts.shape != (n,):
            raise ValueError(f"episode_start: expected shape [{n}], got {list(starts.shape)}")
        return frames, next_frames, starts

    def reserve(self, slots: int) -> None:
        """Room for `slots` row slots."""
        self.stack = _grown(self.stack, slots)
        self.next_ref = _grown(self.next_ref, slots)

    def add(self, dest: np.ndarray, replaced: np.ndarray, frames: dict, starts: np.ndarray,
            next_frames: dict | None, ended: bool) -> None:
        """Rows written to slots `dest` (in order; `replaced`: the slot held a live row, now
        overwritten) with their frames ({camera: [k, H, W, C]}); `starts[i]`: row i starts an
        episode (else it continues the previous row, the block's first one the newest row
        added before); `next_frames` (optional, [k, ...]): next frames of rows whose next row
        does not continue them (default: the row's own frame); `ended`: the block's last row
        ends its episode."""
        k, s = len(dest), self.depth
        p = self._alloc(k)
        for n, f in frames.items():
            self.pool[n][p] = f
        prev = self.last_slot if (not starts[0] and self.last_slot >= 0) else -1
        head = self.stack[prev] if prev >= 0 else np.zeros(0, np.int64)
        seq = np.concatenate([head, p])
        off = len(head)
        first = np.where(starts, off + np.arange(k), -1)
        first[0] = 0 if prev >= 0 else off
        first = np.maximum.accumulate(first)     # seq position of each row's episode start
        cols = off + np.arange(k)[:, None] - np.arange(s - 1, -1, -1)[None, :]
        stack = seq[np.maximum(cols, first[:, None])]
        nxt = np.empty(k, np.int64)
        nxt[:-1] = np.where(starts[1:], p[:-1], p[1:])
        nxt[-1] = p[-1]
        ends = np.flatnonzero(np.append(starts[1:], True))   # rows whose next row is not here
        if next_frames is not None and len(ends):
            e = self._alloc(len(ends))
            for n, f in next_frames.items():
                self.pool[n][e] = f[ends]
            nxt[ends] = e
        np.add.at(self.refs, stack.ravel(), 1)
        np.add.at(self.refs, nxt, 1)
        old = []
        if prev >= 0:   # the previous newest row's next frame is this block's first frame
            old.append(self.next_ref[prev:prev + 1].copy())
            self.next_ref[prev] = p[0]
            self.refs[p[0]] += 1
        live = dest[replaced]
        old += [self.stack[live].ravel(), self.next_ref[live]]
        self.stack[dest], self.next_ref[dest] = stack, nxt
        self._release(np.concatenate(old))
        self.last_slot, self.last_ended = int(dest[-1]), bool(ended)

    def gather(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """`pixels/<camera>` and `next_pixels/<camera>` of rows `slots`: uint8 [B, H, W, C*S],
        the S stacked frames concatenated on the last axis, oldest first."""
        st = self.stack[slots]
        nx = np.concatenate([st[:, 1:], self.next_ref[slots][:, None]], axis=1)
        out = {}
        for n, (h, w, c) in self.cameras.items():
            k, pixel = self.stacks[n], np.dtype((np.void, c))
            # A pixel's C bytes move as one item: interleaving frames byte by byte is ~2x slower.
            src = self.pool[n].reshape(len(self.pool[n]), h * w * c).view(pixel)
            for key, idx in (("pixels/", st), ("next_pixels/", nx)):
                dst = np.empty((len(slots), h * w, k), pixel)
                for j, col in enumerate(range(self.depth - k, self.depth)):
                    dst[:, :, j] = src[idx[:, col]]
                out[key + n] = dst.view(np.uint8).reshape(len(slots), h, w, k * c)
        return out
