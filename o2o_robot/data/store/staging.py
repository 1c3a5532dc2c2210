"""The writer's chunk-aligned staging buffer: rows from the last committed chunk's start on.

Buffer row 0 is global row `c0`, a chunk boundary, so a commit writes whole chunks and zarr
never reads one back. Rows [0, n) are the committed tail of the last chunk followed by the rows
appended since the last commit. After a commit the finished chunks are shifted out.
"""
from __future__ import annotations

import numpy as np

from o2o_robot.data.schema import STORED_FIELDS as FIELDS, row_shape
from o2o_robot.data.store.layout import ceil_to


class Stage:
    """Staging arrays, one per schema field, grown on demand and shrunk back after big blocks."""

    def __init__(self, obs_dim: int, act_dim: int, chunk_rows: int, flush_every: int):
        self._shapes = {f: row_shape(f, obs_dim, act_dim) for f in FIELDS}
        self.chunk_rows = chunk_rows
        self.base_rows = ceil_to(chunk_rows + min(flush_every, 1 << 16), chunk_rows)
        self.c0, self.n = 0, 0
        self.arrays: dict[str, np.ndarray] = {}
        self._alloc(self.base_rows)

    @property
    def end(self) -> int:
        """Global row after the last staged one."""
        return self.c0 + self.n

    def load_tail(self, c0: int, tail: dict[str, np.ndarray]) -> None:
        """Start at chunk boundary `c0`, holding `tail`: the committed rows from `c0` on (those
        of the chunk holding the last committed row)."""
        self.c0, self.n = c0, len(tail["obs"])
        for f in FIELDS:
            self.arrays[f][:self.n] = tail[f]

    def reserve(self, k: int) -> None:
        """Make room for `k` more rows."""
        if self.n + k > len(self.arrays["obs"]):
            self._alloc(max(self.n + k, 2 * len(self.arrays["obs"])))

    def put_block(self, block: dict[str, np.ndarray]) -> None:
        """Stage a validated block (every field) after the staged rows."""
        k = len(block["obs"])
        self.reserve(k)
        i = self.n
        for f in FIELDS:
            self.arrays[f][i:i + k] = block[f]
        self.n += k

    def put_row(self, row: dict) -> float:
        """Stage one validated row; returns its reward as stored (float32)."""
        self.reserve(1)
        i, arrays = self.n, self.arrays
        for f, v in row.items():
            arrays[f][i] = v
        self.n = i + 1
        return float(arrays["reward"][i])

    def chunks(self) -> list[tuple[str, int, np.ndarray]]:
        """(field, start row, block) covering the staged rows, padded to whole chunks with zeros
        so the bytes past the end are deterministic."""
        padded = ceil_to(self.n, self.chunk_rows)
        jobs = []
        for f in FIELDS:
            self.arrays[f][self.n:padded] = 0
            jobs.append((f, self.c0, self.arrays[f][:padded]))
        return jobs

    def committed(self, rows: int) -> None:
        """Rows up to `rows` are committed: drop the chunks before the last, partial one."""
        keep = rows // self.chunk_rows * self.chunk_rows - self.c0
        if keep:
            for a in self.arrays.values():
                a[:self.n - keep] = a[keep:self.n]
            self.c0, self.n = self.c0 + keep, self.n - keep
        if len(self.arrays["obs"]) > 2 * self.base_rows and self.n <= self.base_rows:
            self._alloc(self.base_rows)   # give back what a big block took

    def _alloc(self, rows: int) -> None:
        rows = ceil_to(rows, self.chunk_rows)
        old = self.arrays
        self.arrays = {f: np.zeros((rows,) + self._shapes[f], dt) for f, (dt, _) in FIELDS.items()}
        for f in old:
            self.arrays[f][:self.n] = old[f][:self.n]
