"""Checksums of the committed chunks: recorded by the writer in the commit marker, checked by
every read before a chunk is trusted, and by `validate`.

What is summed: for each array (data/<field>, meta/<name>) and each time chunk k, the crc32 of
the little-endian bytes of the chunk's *committed* rows [k*C, min((k+1)*C, length)) as decoded,
not of the chunk file. A commit rewrites the last, partial chunk together with rows the marker
does not cover yet, and a writer killed before its marker leaves such a file behind: its
committed rows, and so their sum, are unchanged. A full chunk's sum never changes.

A deleted chunk file reads as zeros (zarr's fill value), a flipped bit as other values or a
decompression error: either way the chunk's sum differs, or the read fails, and the error names
the chunk file. In the marker: "crc32": {array name: base64 of the little-endian uint32 sums, one
per chunk}, about 5.4 bytes per chunk and array (13 KB per million rows at chunk_rows 4096).
A marker without "crc32" (a store written before checksums, or with `checksums=False`) is read
unverified; a writer opening it with checksums on sums what is there (after `validate`).
"""
from __future__ import annotations

import base64
import zlib

import numpy as np

from o2o_robot.data.store.errors import StoreCorruptError
from o2o_robot.data.store.layout import MARKER, chunk_file


def crc32(rows: np.ndarray) -> int:
    """crc32 of `rows` as little-endian bytes (the on-disk byte order of zarr's bytes codec)."""
    rows = np.ascontiguousarray(rows)
    if rows.dtype.byteorder == ">":
        rows = rows.astype(rows.dtype.newbyteorder("<"))
    return zlib.crc32(rows)


class ChunkSums:
    """Per-array tables of chunk sums; `sizes` maps each array name to its rows per chunk."""

    def __init__(self, sizes: dict[str, int], table: dict[str, np.ndarray] | None = None,
                 unsummed: set[str] | frozenset = frozenset()):
        self.sizes = sizes
        self.table = {name: np.zeros(0, np.uint32) for name in sizes}
        self.table.update(table or {})
        # Arrays the marker has no sums for (added to the store after its sums were written,
        # such as the origin columns of an older store): read unchecked until a writer sums
        # them (`sum_all`).
        self.unsummed = set(unsummed)

    @classmethod
    def from_marker(cls, sizes: dict[str, int], entry, where) -> "ChunkSums | None":
        """The sums of a marker's "crc32" entry (None when it has none); StoreCorruptError
        naming `where` (the marker's path) when the entry is malformed."""
        if entry is None:
            return None
        try:
            table = {name: np.frombuffer(base64.b64decode(entry[name], validate=True), "<u4")
                     .astype(np.uint32) for name in sizes if name in entry}
        except (TypeError, ValueError) as e:
            raise StoreCorruptError(f"{where}: malformed crc32 entry ({type(e).__name__}: {e})") from None
        return cls(sizes, table, set(sizes) - set(table))

    def to_marker(self) -> dict[str, str]:
        """The "crc32" entry of a marker."""
        return {name: base64.b64encode(sums.astype("<u4").tobytes()).decode()
                for name, sums in self.table.items()}

    def copy(self) -> "ChunkSums":
        return ChunkSums(self.sizes, {name: sums.copy() for name, sums in self.table.items()},
                         self.unsummed)

    def adopt(self, other: "ChunkSums", names) -> None:
        """Take `other`'s sums of `names` (a writer summing what its marker lacked)."""
        for name in names:
            self.table[name] = other.table[name]
        self.unsummed -= set(names)

    def record(self, name: str, start: int, block: np.ndarray, stop: int) -> None:
        """Sum the chunks covering rows [start, stop) of array `name`; `block` holds rows from
        `start` (a chunk boundary) on, at least up to `stop`."""
        size = self.sizes[name]
        k0, k1 = start // size, -(-stop // size)
        sums = self.table[name]
        if len(sums) < k1:
            sums = self.table[name] = np.concatenate([sums, np.zeros(k1 - len(sums), np.uint32)])
        for k in range(k0, k1):
            sums[k] = crc32(block[k * size - start:min((k + 1) * size, stop) - start])
        self.table[name] = sums[:k1]

    def expected(self, name: str, k: int) -> int | None:
        """The recorded sum of chunk `k` of `name`, None when the marker has none for it."""
        sums = self.table[name]
        return int(sums[k]) if k < len(sums) else None


class CheckedReader:
    """Reads committed rows of the store's arrays through `files` (a zarr_io.StoreFiles),
    checking each chunk against `sums` the first time it is read (while its committed rows
    stay the same). With `sums` None (a store without checksums) reads are unchecked."""

    def __init__(self, files, sizes: dict[str, int]):
        self.files, self.sizes = files, sizes
        self.sums: ChunkSums | None = None
        self._ok: set[tuple[str, int, int]] = set()   # (name, chunk, committed rows in it)

    def read(self, name: str, start: int, stop: int, length: int) -> np.ndarray:
        """Rows [start, stop) of array `name`, whose first `length` rows are committed."""
        if stop <= start or self.sums is None or name in self.sums.unsummed:
            return self.files.read(name, start, stop)
        size = self.sizes[name]
        k0, k1 = start // size, -(-stop // size)
        todo = [k for k in range(k0, k1) if (name, k, min(size, length - k * size)) not in self._ok]
        if not todo:
            return self.files.read(name, start, stop)
        lo = k0 * size
        block = self.files.read(name, lo, min(k1 * size, length))   # whole chunks: decoded anyway
        for k in todo:
            n = min(size, length - k * size)
            self._check(name, k, block[k * size - lo:k * size - lo + n])
            self._ok.add((name, k, n))
        out = block[start - lo:stop - lo]
        return out if len(out) == len(block) else out.copy()   # do not pin the whole chunk

    def check_chunks(self, name: str, length: int) -> list[str]:
        """Read and check every committed chunk of `name`: the problems, one per bad chunk."""
        size, problems = self.sizes[name], []
        for lo in range(0, length, 8 * size):   # 8 chunks a call; per chunk only to name one
            hi = min(lo + 8 * size, length)
            try:
                self.read(name, lo, hi, length)
            except StoreCorruptError:
                for k in range(lo // size, -(-hi // size)):
                    try:
                        self.read(name, k * size, min((k + 1) * size, length), length)
                    except StoreCorruptError as e:
                        problems.append(str(e))
        return problems

    def _check(self, name: str, k: int, rows: np.ndarray) -> None:
        want = self.sums.expected(name, k)
        where = self.files.path / chunk_file(name, k, rows.ndim)
        if want is None:
            raise StoreCorruptError(f"{self.files.path / MARKER}: no checksum for {where.name} "
                                    f"of {name} (its committed rows need one)")
        if crc32(rows) != want:
            a = k * self.sizes[name]
            what = ("missing chunk file (its rows read as zeros)" if not where.exists()
                    else "checksum mismatch: the chunk file is damaged")
            raise StoreCorruptError(f"{where}: {what}, committed rows {a}..{a + len(rows) - 1} "
                                    f"of {name}; restore the store from a copy")


def sum_all(reader: CheckedReader, lengths: dict[str, int]) -> ChunkSums:
    """Sums of every committed chunk, read through `reader` (for a store that has none yet:
    one written before checksums, or a marker rebuilt by `data repair`), 8 chunks a read."""
    sums = ChunkSums(reader.sizes)
    for name, length in lengths.items():
        step = 8 * reader.sizes[name]
        for lo in range(0, length, step):
            hi = min(lo + step, length)
            sums.record(name, lo, reader.read(name, lo, hi, length), hi)
    return sums
