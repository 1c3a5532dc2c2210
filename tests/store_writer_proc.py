"""Writer process for tests/test_store.py: appends deterministic rows to a store until killed.

    python store_writer_proc.py PATH FLUSH_EVERY MODE PROGRESS [MAX_ROWS]

Row i (its global index) holds obs = i, action = -i, reward = i % 7, next_obs = i + 1,
terminated at the last row of each EP-row episode, truncated = False, source "demo" for every
third episode else "online", policy_version = i, timestamp = i. Episode k ends with
success = (k % 2 == 0). MODE "row" uses append(), "block" append_rows() with blocks of 1..37 rows;
"row+frames" and "block+frames" also write CAMERAS' frames: row i's is `frame(i)`, the next frame
of an episode's last row i is `frame(END + i)` (the store must be created with CAMERAS).

PROGRESS is an int64[2] file mapped shared: [rows appended by returned calls, len(store) after
the last returned call]; the test reads it after SIGKILL. "ready" is printed once the store is open.
"""
from __future__ import annotations

import sys

import numpy as np

from o2o_robot.data.store import TransitionStore

OBS_DIM, ACT_DIM, EP = 4, 2, 50
CAMERAS = {"front": (24, 20, 3), "wrist": (8, 8, 1)}
END = 10_000_000


def frame(i: int, camera: str) -> np.ndarray:
    """Row i's frame: every byte depends on i, so a torn or shifted frame cannot pass."""
    shape = CAMERAS[camera]
    return ((np.arange(int(np.prod(shape))) * 3 + i * 7 + (i >> 8)) % 256).astype(np.uint8).reshape(shape)


def expected_frames(start: int, stop: int, camera: str) -> np.ndarray:
    return np.stack([frame(i, camera) for i in range(start, stop)]) if stop > start else \
        np.zeros((0,) + CAMERAS[camera], np.uint8)


def expected_next_frames(start: int, stop: int, camera: str, rows: int) -> np.ndarray:
    """Next frames of rows [start, stop) of a store of `rows` rows, whose newest row, when its
    episode is open, reads its own frame (frames.py)."""
    return np.stack([frame(END + i if i % EP == EP - 1 else i if i == rows - 1 else i + 1, camera)
                     for i in range(start, stop)])


def expected_rows(start: int, stop: int) -> dict[str, np.ndarray]:
    """The rows [start, stop) this writer produces (shared with the test's checks)."""
    i = np.arange(start, stop)
    return {"obs": np.repeat(i[:, None], OBS_DIM, 1).astype(np.float32),
            "action": np.repeat(-i[:, None], ACT_DIM, 1).astype(np.float32),
            "reward": (i % 7).astype(np.float32),
            "next_obs": np.repeat(i[:, None] + 1, OBS_DIM, 1).astype(np.float32),
            "terminated": i % EP == EP - 1, "truncated": np.zeros(len(i), bool),
            "source": np.where((i // EP) % 3 == 0, 0, 1).astype(np.uint8),
            "policy_version": i.astype(np.int64), "timestamp": i.astype(np.float64)}


def main(path: str, flush_every: str, mode: str, progress: str, max_rows: str = "100000000") -> None:
    prog = np.memmap(progress, dtype=np.int64, mode="r+", shape=(2,))
    store = TransitionStore.open(path, "a", flush_every=int(flush_every), durable=False)
    if store.open_episode_rows == EP:   # its boundary was still buffered when the last writer died
        last = len(store) - 1
        store.end_episode(success=(store.num_episodes % 2 == 0), next_frames={
            c: frame(END + last, c) for c in CAMERAS} if store.cameras else None)
    i = len(store)
    prog[:] = (i, i)
    print("ready", i, flush=True)
    rng = np.random.default_rng(i)
    cams = mode.endswith("+frames")
    while i < int(max_rows):
        n = 1 if mode.startswith("row") else int(min(rng.integers(1, 38), EP - i % EP))
        rows = expected_rows(i, i + n)
        frames = {c: expected_frames(i, i + n, c) for c in CAMERAS} if cams else None
        nxt = {c: expected_next_frames(i, i + n, c, -1) for c in CAMERAS} if cams else None
        if mode.startswith("row"):
            store.append(**{f: v[0] for f, v in rows.items()},
                         frames=cams and {c: f[0] for c, f in frames.items()} or None,
                         next_frames=cams and {c: f[0] for c, f in nxt.items()} or None)
        else:
            store.append_rows(rows, frames=frames, next_frames=nxt)
        i += n
        if i % EP == 0:
            store.end_episode(success=((i // EP - 1) % 2 == 0))
        prog[:] = (i, len(store))
    store.close()
    print("done", i, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
