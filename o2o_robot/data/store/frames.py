"""Camera frames of a schema-v2 store: checking them at append, the writer's frame buffers, and
the next-frame rule.

Each frame is stored once (DESIGN.md "Observations"): `frames/<camera>` holds row i's
observation frame; row i's *next* frame is row i+1's frame while the episode goes on, and for
an episode's last row it is `frame_ends/<camera>[e]` (episode e), written with the episode's
end. Both arrays are append-only: a commit never changes a committed entry, so a writer killed
mid-commit cannot change what the marker covers (integrity.py).

The newest row of an open episode has no stored next frame yet (its next row, or its episode's
end, brings it): it reads its own frame. So does the last row of an episode cut by a crash and
closed later (the writer keeps the next frame it was given in memory until the episode ends).
A producer that does not know a row's next frame (it passes none) gets the row's own frame as
its next frame: only an episode's last row's is ever used.
"""
from __future__ import annotations

import re

import numpy as np

from o2o_robot.data.store.layout import FRAME_ENDS, FRAMES, ceil_to, frame_chunk_rows

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*\Z")


def check_cameras(cameras) -> dict[str, tuple[int, int, int]]:
    """{name: (H, W, C)} from a mapping of camera names to shapes; ValueError naming the bad
    entry (a name that is not an identifier, a shape that is not three positive integers)."""
    out = {}
    for name, shape in dict(cameras or {}).items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"cameras: {name!r} is not a camera name (letters, digits, _ and -, "
                             f"starting with a letter)")
        try:
            dims = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            dims = ()
        if len(dims) != 3 or min(dims) < 1 or dims[2] not in (1, 3, 4):
            raise ValueError(f"cameras.{name}: expected (height, width, channels 1, 3 or 4), "
                             f"got {shape!r}")
        out[name] = dims
    return out


def check_frames(frames, cameras: dict, lead: tuple = (), what: str = "frames") -> dict:
    """`frames` ({camera: uint8 array of shape lead + (H, W, C)}) checked against the store's
    `cameras`; ValueError naming the camera when one is missing, unknown, of another dtype or
    shape. None is allowed only for a store without cameras."""
    if frames is None:
        if cameras:
            raise ValueError(f"{what}: missing; the store has camera(s) {', '.join(cameras)}")
        return {}
    if not cameras and frames:
        raise ValueError(f"{what}: the store has no cameras (create it with cameras=...)")
    unknown = [k for k in frames if k not in cameras]
    if unknown:
        raise ValueError(f"{what}: unknown camera(s) {', '.join(map(str, unknown))}; the store "
                         f"has {', '.join(cameras)}")
    out = {}
    for name, shape in cameras.items():
        if name not in frames:
            raise ValueError(f"{what}/{name}: missing")
        arr = np.asarray(frames[name])
        if arr.dtype != np.uint8:
            raise ValueError(f"{what}/{name}: expected uint8, got {arr.dtype}")
        if arr.shape != tuple(lead) + shape:
            want = ", ".join(map(str, tuple(lead) + shape))
            raise ValueError(f"{what}/{name}: expected shape [{want}], got {list(arr.shape)}")
        out[name] = arr
    return out


def check_block_next(frames: dict, next_frames, cameras: dict, n: int) -> dict:
    """The next frame of a block's last row per camera, from `next_frames` ({camera: [n, H, W,
    C]}, or None: the last row's own frame). Each frame is stored once, so a block's next
    frames must be its frames shifted by one row: ValueError naming the first that is not."""
    if next_frames is None:
        return {name: f[-1] for name, f in frames.items()}
    nxt = check_frames(next_frames, cameras, (n,), "next_frames")
    for name, f in frames.items():
        same = (nxt[name][:-1] == f[1:]).reshape(n - 1, -1).all(axis=1)
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            raise ValueError(f"next_frames/{name}: row {i} differs from row {i + 1}'s frame (a "
                             f"frame is stored once: within a block a row's next frame is the "
                             f"next row's frame)")
    return {name: f[-1] for name, f in nxt.items()}


def next_frame_index(i: np.ndarray, ends: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Where row i's next frame is: (use_end, where), `where` a frames row (i + 1, or i itself
    for the open episode's newest row) or, where `use_end`, a frame_ends entry (the row's
    episode). `ends`: the committed episode ends."""
    i = np.asarray(i, np.int64)
    episode = np.searchsorted(ends, i, side="right")
    last = np.isin(i + 1, ends)
    return last, np.where(last, episode, np.minimum(i + 1, rows - 1))


class FrameStage:
    """The writer's frame buffers, beside `staging.Stage`: per camera the frames from the last
    committed frame chunk's start on, the frame_ends entries from the chunk of the next one on,
    and the next frame of the newest row (`pending`, written as the end entry when its episode
    ends). Row and episode numbers are the store's (global)."""

    def __init__(self, cameras: dict[str, tuple], flush_every: int):
        self.cameras = cameras
        self.chunk = {name: frame_chunk_rows(shape) for name, shape in cameras.items()}
        self._room = min(int(flush_every), 1 << 12)
        self.frames: dict[str, np.ndarray] = {}
        self.ends: dict[str, np.ndarray] = {}
        self.r0, self.e0 = {}, {}   # global row / episode of buffer entry 0, per camera
        self.rows = self.episode = 0   # rows staged (global end); the open episode's index
        self.pending: dict[str, np.ndarray] = {}

    def load(self, rows: int, episodes: int, open_rows: int, read) -> None:
        """Start after a committed store of `rows` rows and `episodes` episodes (`open_rows`
        of them after the last end); `read(array, start, stop)` gives committed entries."""
        self.rows, self.episode = rows, episodes
        for name, shape in self.cameras.items():
            c = self.chunk[name]
            r0, e0 = rows // c * c, episodes // c * c
            self.r0[name], self.e0[name] = r0, e0
            self.frames[name] = np.zeros((ceil_to(rows - r0 + self._room + 1, c),) + shape, np.uint8)
            self.frames[name][:rows - r0] = read(FRAMES + name, r0, rows)
            self.ends[name] = np.zeros((ceil_to(episodes - e0 + 2, c),) + shape, np.uint8)
            self.ends[name][:episodes - e0] = read(FRAME_ENDS + name, e0, episodes)
            if open_rows:   # a cut episode: its newest row's next frame was never stored
                self.pending[name] = read(FRAMES + name, rows - 1, rows)[0]

    def put(self, frames: dict, last_next: dict) -> None:
        """Stage a block of checked frames ([k, H, W, C] per camera) and the next frame of its
        last row, the open episode's end entry until more rows come."""
        k = len(next(iter(frames.values()))) if frames else 0
        for name, block in frames.items():
            i = self.rows - self.r0[name]
            self.frames[name] = _room_for(self.frames[name], i + k)
            self.frames[name][i:i + k] = block
            self.pending[name] = last_next[name]
        self.rows += k

    def put_row(self, frames: dict, next_frames: dict | None) -> None:
        """Stage one row's checked frames ([H, W, C] per camera)."""
        i = self.rows
        for name, frame in frames.items():
            buf = self.frames[name] = _room_for(self.frames[name], i - self.r0[name] + 1)
            buf[i - self.r0[name]] = frame
            self.pending[name] = frame if next_frames is None else next_frames[name]
        self.rows = i + 1

    def end_episode(self, next_frames: dict | None = None) -> None:
        """The open episode ends: its newest row's next frame (or `next_frames`) becomes its
        end entry."""
        for name in self.cameras:
            j = self.episode - self.e0[name]
            self.ends[name] = _room_for(self.ends[name], j + 1)
            self.ends[name][j] = self.pending[name] if next_frames is None else next_frames[name]
        self.episode += 1

    def mark(self) -> tuple:
        return self.rows, self.episode, dict(self.pending)

    def rewind(self, mark: tuple) -> None:
        """Back to `mark` (rows and ends staged after it are ignored and overwritten)."""
        self.rows, self.episode, self.pending = mark[0], mark[1], dict(mark[2])

    def chunks(self) -> list[tuple[str, int, np.ndarray]]:
        """(array, start, block): whole chunks covering the uncommitted frames and end entries
        (padded with zeros)."""
        jobs = []
        for name in self.cameras:
            c = self.chunk[name]
            for arr, buf, start, stop in ((FRAMES, self.frames, self.r0, self.rows),
                                          (FRAME_ENDS, self.ends, self.e0, self.episode)):
                n = stop - start[name]
                padded = ceil_to(n, c)
                buf[name] = _room_for(buf[name], padded)
                buf[name][n:padded] = 0
                if n:
                    jobs.append((arr + name, start[name], buf[name][:padded]))
        return jobs

    def committed(self) -> None:
        """Everything staged is committed: shift out the chunks the next commit does not
        rewrite (frames before the chunk of the next row, end entries before the chunk of the
        open episode's)."""
        for name in self.cameras:
            c = self.chunk[name]
            for buf, start, first, valid in ((self.frames, self.r0, self.rows, self.rows),
                                             (self.ends, self.e0, self.episode, self.episode)):
                new = first // c * c
                keep = new - start[name]
                if keep:
                    buf[name] = _room_for(buf[name], valid - start[name])
                    buf[name][:valid - new] = buf[name][keep:valid - start[name]]
                    start[name] = new


def _room_for(buf: np.ndarray, n: int) -> np.ndarray:
    """`buf` with at least `n` entries (doubling)."""
    if n <= len(buf):
        return buf
    out = np.zeros((max(n, 2 * len(buf)),) + buf.shape[1:], buf.dtype)
    out[:len(buf)] = buf
    return out
