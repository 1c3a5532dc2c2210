"""Zarr I/O of a store directory, and the only module that imports zarr.

Creates the array layout, opens the arrays, commits (chunks, fsynced, first; then the commit
marker replaces the old one) and reads the marker. Chunk files are written by tmp + rename
(+ fsync when durable) so a chunk is never torn, and the directories those renames changed are
fsynced before the marker, so a row below the marker survives `kill -9` (and, durable, a power cut).

Errors are turned into one line naming the file: an unreadable or missing `zarr.json` or chunk
(StoreCorruptError), a failed write such as a full disk (StoreWriteError, with the free space;
its temp file is removed, the old marker stays).
"""
from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
import uuid
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.sync import sync
from zarr.storage import LocalStore

from o2o_robot.data.schema import (FIELDS, ORIGIN_DEFAULTS, SCHEMA_VERSION, STORED_FIELDS,
                                   row_shape)
from o2o_robot.data.store.errors import StoreCorruptError, StoreWriteError
from o2o_robot.data.store.layout import (FRAME_ENDS, FRAMES, MARKER, META, META_CHUNK, array_dir,
                                         chunk_file, frame_chunk_rows)
from o2o_robot.fsutil import os_error_line


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DurableStore(LocalStore):
    """LocalStore whose writes are tmp + rename (+ fsync when durable) and which remembers the
    directories it changed, so a commit can make those renames durable before the marker.

    During a commit (`collect`) a write the OS refuses (a full disk) is not raised into zarr but
    kept in `error`, and the commit's remaining writes are skipped: zarr writes chunks in
    concurrent tasks and, on the first exception, would leave the others running unobserved,
    where one could still rename a stale chunk over a later commit's. The commit raises `error`
    once every task has ended."""

    def __init__(self, root, *, read_only: bool = False, durable: bool = True):
        super().__init__(root, read_only=read_only)
        self.durable, self.dirty, self._mu = durable, set(), threading.Lock()
        self.collect, self.error = False, None

    def with_read_only(self, read_only: bool = False):
        return type(self)(self.root, read_only=read_only, durable=self.durable)

    def _put(self, key: str, value) -> None:
        if self.collect and self.error is not None:
            return   # the commit has failed: write nothing more
        path, dirty = self.root / key, [self.root / key]
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
        try:
            if not path.parent.is_dir():   # new directories are entries of their parents too
                dirty += [p for p in path.parents if not p.exists()]
                path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(value.as_buffer_like())
                if self.durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            tmp.unlink(missing_ok=True)   # a full disk must not keep the space it got
            if not isinstance(e, OSError):
                raise
            if e.filename is None:
                e.filename = str(path)    # name the file the error is about
            if not self.collect:
                raise
            with self._mu:
                self.error = self.error or e
            return
        with self._mu:
            self.dirty.update(p.parent for p in dirty)

    async def set(self, key, value) -> None:
        if not self._is_open:
            await self._open()
        self._check_writable()
        await asyncio.to_thread(self._put, key, value)

    def set_sync(self, key, value) -> None:
        self._ensure_open_sync()
        self._check_writable()
        self._put(key, value)

    async def sync_dirs(self) -> None:
        """fsync the directories changed since the last call (makes their renames durable)."""
        with self._mu:
            dirs, self.dirty = self.dirty, set()
        if self.durable:   # concurrently: the filesystem batches them into one journal commit
            await asyncio.gather(*(asyncio.to_thread(_fsync_dir, d) for d in dirs))


async def _write_block(arr, start: int, block: np.ndarray) -> None:
    """Write `block` at row `start` (both chunk-aligned: zarr never reads a chunk back)."""
    arr, need = arr.async_array, start + len(block)
    if arr.shape[0] < need:   # grow by doubling: the metadata rewrite is rare, unused chunks are free
        await arr.resize((max(need, 2 * arr.shape[0]),) + arr.shape[1:])
    await arr.setitem(slice(start, need), block)


async def _commit(jobs: list[tuple], zstore: _DurableStore, marker: dict) -> None:
    """Chunks (fsynced) and their directories first, then the marker replaces the old one.

    One event-loop call for all arrays pays zarr's per-call overhead once; the marker's temp
    file is written and fsynced meanwhile, as it is invisible until the rename. A refused write
    (see _DurableStore) is raised after all of them ended, and the marker is left as it was.
    """
    path, durable = Path(zstore.root) / MARKER, zstore.durable
    zstore.collect, zstore.error = True, None
    try:
        chunks, tmp = await asyncio.gather(asyncio.gather(*(_write_block(*job) for job in jobs)),
                                           asyncio.to_thread(_write_tmp, path, marker, durable),
                                           return_exceptions=True)
    finally:
        zstore.collect = False
    failed = zstore.error or next((r for r in (chunks, tmp) if isinstance(r, BaseException)), None)
    if failed is not None:
        if isinstance(tmp, Path):
            tmp.unlink(missing_ok=True)
        raise failed
    await zstore.sync_dirs()
    os.replace(tmp, path)
    if durable:
        _fsync_dir(path.parent)


def _write_tmp(path: Path, obj: dict, durable: bool) -> Path:
    """Write `obj` as JSON to a fresh temp file beside `path` (fsynced when durable)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        data = json.dumps(obj).encode()
        if os.write(fd, data) != len(data):   # a short write: the disk filled up meanwhile
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if durable:
            os.fsync(fd)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)
        raise
    finally:
        os.close(fd)
    return tmp


_COMMON = dict(overwrite=True, config={"write_empty_chunks": True},
               chunk_key_encoding={"name": "default", "separator": "."},
               compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")])


def _create_data_array(data, field: str, rows: int, obs_dim: int, act_dim: int,
                       chunk_rows: int):
    """data/<field> with `rows` rows; unwritten chunks read as the field's default (0, or the
    origin default), so an origin array added to an older store reads as "no origin"."""
    shape = row_shape(field, obs_dim, act_dim)
    return data.create_array(field, shape=(rows,) + shape, chunks=(chunk_rows,) + shape,
                             dtype=STORED_FIELDS[field][0],
                             fill_value=ORIGIN_DEFAULTS.get(field, 0), **_COMMON)


def _create_frame_arrays(data, meta, cameras: dict) -> None:
    """data/frames/<camera> and meta/frame_ends/<camera>, uint8 [0, H, W, C], chunked along
    time (frame_chunk_rows frames a chunk, one chunk across H, W, C) and compressed."""
    if not cameras:
        return
    frames, ends = data.require_group(FRAMES[:-1]), meta.require_group(FRAME_ENDS[:-1])
    for name, shape in cameras.items():
        chunks = (frame_chunk_rows(shape),) + tuple(shape)
        for group in (frames, ends):
            group.create_array(name, shape=(0,) + tuple(shape), chunks=chunks, dtype=np.uint8,
                               fill_value=0, **_COMMON)


def init_layout(path: Path, obs_dim: int, act_dim: int, spec: dict, chunk_rows: int,
                durable: bool, cameras: dict | None = None) -> None:
    """Create the empty arrays and attributes at `path`, then the first marker (creation done).
    `cameras` ({name: (H, W, C)}) adds each camera's frame arrays (schema version 2)."""
    group = zarr.open_group(store=_DurableStore(path, durable=durable), mode="a")
    data, meta = group.require_group("data"), group.require_group("meta")
    for field in STORED_FIELDS:
        _create_data_array(data, field, 0, obs_dim, act_dim, chunk_rows)
    for name, dtype in META.items():
        meta.create_array(name, shape=(0,), chunks=(META_CHUNK,), dtype=dtype, fill_value=0,
                          **_COMMON)
    _create_frame_arrays(data, meta, cameras or {})
    group.attrs["o2o_store"] = {"schema_version": SCHEMA_VERSION, "obs_dim": obs_dim,
                                "act_dim": act_dim, "chunk_rows": chunk_rows, "spec": spec,
                                "commit_marker": MARKER,
                                "cameras": {k: list(v) for k, v in (cameras or {}).items()}}
    sync(_commit([], group.store, {"rows": 0, "episodes": 0}))   # creation complete


def _metadata_problem(path: Path, cameras=()) -> str | None:
    """The first missing or unparsable zarr.json of the layout (with the arrays of `cameras`),
    as one line (None: all fine)."""
    origin = [n for n in ORIGIN_DEFAULTS if (path / array_dir(n)).exists()]   # newer stores
    frames = [p + c for c in cameras for p in (FRAMES, FRAME_ENDS)]
    groups = ["data/frames/", "meta/frame_ends/"] if cameras else []
    names = ["", "data/", "meta/"] + groups + [f"{array_dir(n)}/" for n in
                                               (*FIELDS, *origin, *META, *frames)]
    for name in names:
        meta = path / f"{name}zarr.json"
        try:
            json.loads(meta.read_bytes())
        except FileNotFoundError:
            return f"{meta}: missing" + ("" if name else " (the store's root metadata); restore "
                                                         "the store from a copy")
        except (OSError, ValueError) as e:
            return f"{meta}: unreadable ({type(e).__name__}: {_one_line(e)})"
    return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _corrupt(path: Path, exc: BaseException, cameras=()) -> StoreCorruptError:
    """The store's metadata could not be opened: name the bad file where one is bad."""
    return StoreCorruptError(_metadata_problem(path, cameras) or
                             f"{path}: cannot open the zarr layout ({type(exc).__name__}: "
                             f"{_one_line(exc)})")


class _Filled:
    """A reader's stand-in for an array the store does not have yet: `rows` x the default."""

    def __init__(self, rows: int, dtype: np.dtype, value: int):
        self.shape, self.dtype, self._value = (rows,), dtype, value

    def __getitem__(self, key: slice) -> np.ndarray:
        return np.full(len(range(*key.indices(self.shape[0]))), self._value, self.dtype)


class StoreFiles:
    """One store directory opened through zarr: its attributes, arrays and commit marker.

    `arrays` maps each schema field (data/<field>) and each META name (meta/<name>) to its
    zarr array; a writer's arrays may be longer than the committed rows.
    """

    def __init__(self, path: Path, *, writable: bool, durable: bool = True):
        self.path = path
        self._zstore = (_DurableStore(path, durable=durable) if writable
                        else LocalStore(path, read_only=True))
        try:
            self._group = zarr.open_group(store=self._zstore, mode="r+" if writable else "r")
            self._attrs = dict(self._group.attrs).get("o2o_store")
        except Exception as e:   # zarr raises JSONDecodeError, GroupNotFoundError, ...
            raise _corrupt(path, e) from None
        self.arrays: dict = {}

    @property
    def cameras(self) -> dict[str, tuple[int, int, int]]:
        """{camera: (H, W, C)} of the store's attributes (empty for a vector-only store)."""
        return {k: tuple(int(d) for d in v)
                for k, v in ((self._attrs or {}).get("cameras") or {}).items()}

    @property
    def attrs(self) -> dict | None:
        """The store's attributes ("o2o_store"), or None when the group has none."""
        return self._attrs

    def open_arrays(self) -> None:
        """(Re)open every array, reading its current shape. A store written before the origin
        fields existed gets them: a writer adds the arrays (nothing but their metadata is
        written), a reader sees the defaults."""
        try:
            data = self._group["data"]
            self.arrays = {f: data[f] for f in STORED_FIELDS
                           if f not in ORIGIN_DEFAULTS or f in data}
            rows = self.arrays["obs"].shape[0]
            meta = {m: self._group[f"meta/{m}"] for m in META}
            for cam in self.cameras:
                for prefix in (FRAMES, FRAME_ENDS):
                    meta[prefix + cam] = self._group[array_dir(prefix + cam)]
        except Exception as e:
            raise _corrupt(self.path, e, self.cameras) from None
        for field in ORIGIN_DEFAULTS.keys() - self.arrays.keys():
            if self._zstore.read_only:
                self.arrays[field] = _Filled(rows, STORED_FIELDS[field][0], ORIGIN_DEFAULTS[field])
            else:
                attrs = self.attrs
                self.arrays[field] = _create_data_array(data, field, rows, attrs["obs_dim"],
                                                        attrs["act_dim"], attrs["chunk_rows"])
                sync(self._zstore.sync_dirs())
        self.arrays.update(meta)

    def reopen(self) -> None:
        """Reader: re-read the group and the arrays' shapes (after a writer grew them)."""
        try:
            self._group = zarr.open_group(store=self._zstore, mode="r")
        except Exception as e:
            raise _corrupt(self.path, e) from None
        self.open_arrays()

    def read_marker(self) -> dict | None:
        """The commit marker ({"rows", "episodes"[, "notes", "crc32"]}), None when there is
        none; StoreCorruptError naming it when it cannot be parsed."""
        path = self.path / MARKER
        try:
            marker = json.loads(path.read_text())
            marker["rows"], marker["episodes"] = int(marker["rows"]), int(marker["episodes"])
            marker["notes"] = dict(marker.get("notes") or {})
            return marker
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreCorruptError(f"{path}: unreadable ({type(e).__name__}: {_one_line(e)})") from None

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of array `name`; StoreCorruptError naming the chunk file that
        cannot be decoded (a truncated or garbled file)."""
        arr = self.arrays[name]
        try:
            return arr[start:stop]
        except Exception as e:   # blosc: RuntimeError; a wrong size: ValueError; ...
            size = arr.chunks[0]
            for k in range(start // size, -(-stop // size)):   # find the chunk to name it
                try:
                    arr[k * size:min((k + 1) * size, stop)]
                except Exception as e_k:
                    raise StoreCorruptError(
                        f"{self.path / chunk_file(name, k, arr.ndim)}: unreadable chunk "
                        f"({type(e_k).__name__}: {_one_line(e_k)})") from None
            raise StoreCorruptError(f"{self.path / array_dir(name)}: unreadable rows "
                                    f"{start}..{stop - 1} ({type(e).__name__}: {_one_line(e)})") from None

    def metadata_problem(self) -> str | None:
        """The first missing or unparsable zarr.json (zarr reads some only when it needs them)."""
        return _metadata_problem(self.path, self.cameras)

    def shapes(self) -> dict[str, int]:
        """Length (axis 0) of every array."""
        return {name: int(arr.shape[0]) for name, arr in self.arrays.items()}

    def commit(self, jobs: list[tuple[str, int, np.ndarray]], marker: dict) -> None:
        """Write each (array name, start row, chunk-aligned block), then replace the marker.
        StoreWriteError (the path, the free space) when the OS refuses a write."""
        try:
            sync(_commit([(self.arrays[name], start, block) for name, start, block in jobs],
                         self._zstore, marker))
        except OSError as e:
            self.open_arrays()   # zarr may hold a grown shape whose metadata file was refused
            raise StoreWriteError(f"commit not written: {os_error_line(e)}; rows committed "
                                  f"before are intact") from None

    def trim(self, lengths: dict[str, int]) -> None:
        """Shrink arrays longer than their committed length (external readers then see exact
        lengths) and make the metadata renames durable."""
        try:
            for name, n in lengths.items():
                arr = self.arrays[name]
                if arr.shape[0] > n:
                    arr.resize((n,) + arr.shape[1:])
            sync(self._zstore.sync_dirs())
        except OSError as e:
            raise StoreWriteError(f"arrays not trimmed: {os_error_line(e)}") from None
