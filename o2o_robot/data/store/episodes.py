"""Episode metadata: the META arrays (ends, source, return, success) in memory, the open
episode's bookkeeping, commit blocks of the new entries, and the `episodes()` listing."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from o2o_robot.data.schema import SOURCES
from o2o_robot.data.store.errors import StoreCorruptError, StoreError
from o2o_robot.data.store.layout import MARKER, META, META_CHUNK, ceil_to


class EpisodeLog:
    """Completed episodes (the first `committed` of `n` are committed) and the open episode.

    The open episode starts at global row `start`; `source` (its first row's) is None until it
    has a row, `return_` sums its rewards.
    """

    def __init__(self, path: Path, shapes: dict[str, int], read, committed: int):
        self.path = path
        self.meta: dict[str, np.ndarray] = {}
        self.load(shapes, read, committed)
        self.start, self.return_, self.source = 0, 0.0, None

    def load(self, shapes: dict[str, int], read, committed: int) -> None:
        """Read the first `committed` entries of the meta arrays (a reader's refresh too);
        `shapes`: the arrays' lengths, `read(name, stop)`: checked entries [0, stop)."""
        short = {m: shapes[m] for m in META if shapes[m] < committed}
        if short:  # the marker is written last, so this is damage, not a crash
            raise StoreCorruptError(f"{self.path / MARKER}: claims {committed} episodes but meta/"
                                    + ", meta/".join(f"{m} holds {n}" for m, n in short.items()))
        self.meta = {m: np.zeros(ceil_to(committed + 1, META_CHUNK), dt) for m, dt in META.items()}
        for m in META:
            self.meta[m][:committed] = read(m, committed)
        self.committed = self.n = committed

    def last_end(self, e: int) -> int:
        """End row of the `e`-th episode (0 before the first)."""
        return int(self.meta["episode_ends"][e - 1]) if e else 0

    def resume(self, reward: np.ndarray, source: np.ndarray, rows: int) -> None:
        """Writer: continue the open episode of the committed rows after the last end, if any
        (`reward`, `source`: the committed rows from the open episode's start on)."""
        self.start, self.return_, self.source = self.last_end(self.committed), 0.0, None
        if self.start < rows:
            self.return_ = float(reward.sum(dtype=np.float64))
            self.source = int(source[0])

    def add(self, first_source: int, reward_sum: float) -> None:
        """Rows joined the open episode (`first_source`: the first of them's source code)."""
        if self.source is None:
            self.source = int(first_source)
        self.return_ += reward_sum

    def end(self, end: int, success: bool | None) -> None:
        """Close the open episode at global row `end` (buffered until the next commit)."""
        if end == self.start:
            raise StoreError("end_episode: the current episode has no rows")
        k = self.n
        if k == len(self.meta["episode_ends"]):
            for m, dt in META.items():
                self.meta[m] = np.concatenate([self.meta[m], np.zeros(META_CHUNK, dt)])
        values = (end, self.source, self.return_, -1 if success is None else int(bool(success)))
        for m, v in zip(META, values):
            self.meta[m][k] = v
        self.n, self.start, self.return_, self.source = k + 1, end, 0.0, None

    def mark(self) -> tuple:
        """The buffered state, for `rewind` (the meta arrays past `n` are ignored anyway)."""
        return self.n, self.start, self.return_, self.source

    def rewind(self, mark: tuple) -> None:
        """Back to the state of `mark` (nothing committed in between)."""
        self.n, self.start, self.return_, self.source = mark

    def chunks(self) -> list[tuple[str, int, np.ndarray]]:
        """(meta name, start, block): whole META chunks covering the uncommitted entries."""
        if self.n <= self.committed:
            return []
        m0 = self.committed // META_CHUNK * META_CHUNK
        m1 = ceil_to(self.n, META_CHUNK)
        return [(m, m0, self.meta[m][m0:m1]) for m in META]

    def listing(self) -> list[dict]:
        """Committed episodes: index, start, end, length, source (name), return, success."""
        e = self.committed
        ends = self.meta["episode_ends"][:e]
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        return [{"index": i, "start": int(s), "end": int(t), "length": int(t - s),
                 "source": SOURCES[int(src)], "return": float(r),
                 "success": None if ok < 0 else bool(ok)}
                for i, (s, t, src, r, ok) in enumerate(zip(
                    starts, ends, self.meta["episode_source"][:e], self.meta["episode_return"][:e],
                    self.meta["episode_success"][:e]))]
