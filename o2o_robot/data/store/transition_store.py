"""Episodic, append-only, crash-safe transition store: a Zarr v3 directory (the only zarr importer).

Layout (DESIGN.md "Data store contract")::

    data/<field>          one array per schema field, time on axis 0, `chunk_rows` rows per chunk
    meta/episode_ends     int64, exclusive end row of each completed episode
    meta/episode_source   uint8, source code of the episode's first row
    meta/episode_return   float64, sum of the episode's rewards
    meta/episode_success  int8, 1 / 0 / -1 (unknown)
    zarr.json             attribute "o2o_store": schema_version, obs_dim, act_dim, chunk_rows, spec
    commit.json           the commit marker {"rows": R, "episodes": E[, "notes": {...}]}
    write.lock            the single writer's lock (pid, host, process start time)

Only the first R rows and E episodes exist. Arrays may be longer: a writer killed between its
chunk writes and the marker leaves an uncommitted tail, which readers ignore and the next writer
overwrites. A commit writes whole chunks (each file replaced atomically by tmp + rename, fsynced
when `durable`), fsyncs the changed directories, and only then replaces `commit.json`; so a
row below the marker is never torn, after `kill -9` or (with `durable`) a power cut.

Loss bound: appends are buffered and committed automatically as soon as `flush_every` rows are
buffered, so when `append`/`append_rows` returns fewer than `flush_every` rows are uncommitted;
a crash loses at most `flush_every - 1` rows from returned calls (plus those of a call in
progress). `end_episode()` records the boundary in the buffer: it becomes durable with the
rows at the next commit (call `flush()` to make it durable now). Rows after the last committed
boundary form an *open episode*: they are ordinary readable rows; a writer that reopens the store
continues that episode with its next appends, or closes it first with `end_episode()`.
`append_episode()` buffers a whole episode with its boundary and commits only at episode ends,
so a crash leaves each such episode either complete or absent. Its `notes` (small JSON, e.g.
import provenance) live in the marker itself: they become visible with exactly those rows.

Single writer: `write.lock` is created with O_EXCL and held with flock; a second writer, in this
process or another, gets StoreLockedError naming the lock file and the holder's pid. The lock of
a writer that died (flock free and its pid gone, a zombie or reused) is taken over. Readers take
no lock. `close()` (or `with`) commits the buffer; a writer dropped without it loses its buffer
as in a crash. `durable=False` skips the fsyncs: safe against `kill -9`, not against power loss.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
import uuid
import weakref
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.sync import sync
from zarr.storage import LocalStore

from o2o_robot.data.lock import WriteLock
from o2o_robot.data.schema import (FIELDS, FLOAT_FIELDS, SCHEMA_VERSION, SOURCES, row_shape,
                                   source_code, validate_rows)

MARKER, LOCK = "commit.json", "write.lock"
META: dict[str, np.dtype] = {"episode_ends": np.dtype(np.int64), "episode_source": np.dtype(np.uint8),
                             "episode_return": np.dtype(np.float64), "episode_success": np.dtype(np.int8)}
META_CHUNK = 4096


class StoreError(Exception):
    """A store cannot be created, opened or written as asked; the message says why."""


class StoreLockedError(StoreError):
    """Another writer holds the store's lock file."""


class StoreValueError(StoreError, ValueError):
    """Rows refused at append (NaN/inf, wrong shape, unknown source); the message names the field."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DurableStore(LocalStore):
    """LocalStore whose writes are tmp + rename (+ fsync when durable) and which remembers the
    directories it changed, so a commit can make those renames durable before the marker."""

    def __init__(self, root, *, read_only: bool = False, durable: bool = True):
        super().__init__(root, read_only=read_only)
        self.durable, self.dirty, self._mu = durable, set(), threading.Lock()

    def with_read_only(self, read_only: bool = False):
        return type(self)(self.root, read_only=read_only, durable=self.durable)

    def _put(self, key: str, value) -> None:
        path, dirty = self.root / key, [self.root / key]
        if not path.parent.is_dir():   # new directories are entries of their parents too
            dirty += [p for p in path.parents if not p.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
        with open(tmp, "wb") as f:
            f.write(value.as_buffer_like())
            if self.durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
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


# ------------------------------------------------------------------------------- the store
def _ceil(n: int, chunk: int) -> int:
    return -(-n // chunk) * chunk


async def _write_block(arr, start: int, block: np.ndarray) -> None:
    """Write `block` at row `start` (both chunk-aligned: zarr never reads a chunk back)."""
    arr, need = arr.async_array, start + len(block)
    if arr.shape[0] < need:   # grow by doubling: the metadata rewrite is rare, unused chunks are free
        await arr.resize((max(need, 2 * arr.shape[0]),) + arr.shape[1:])
    await arr.setitem(slice(start, need), block)


async def _commit(jobs: list[tuple], zstore: "_DurableStore", marker: dict) -> None:
    """Chunks (fsynced) and their directories first, then the marker replaces the old one.

    One event-loop call for all arrays pays zarr's per-call overhead once; the marker's temp
    file is written and fsynced meanwhile, as it is invisible until the rename.
    """
    path, durable = Path(zstore.root) / MARKER, zstore.durable
    _, tmp = await asyncio.gather(asyncio.gather(*(_write_block(*job) for job in jobs)),
                                  asyncio.to_thread(_write_tmp, path, marker, durable))
    await zstore.sync_dirs()
    os.replace(tmp, path)
    if durable:
        _fsync_dir(path.parent)


def _scalar(field: str, value, cast):
    if not isinstance(value, (float, int, np.generic)) and np.ndim(value) != 0:
        raise StoreValueError(f"{field}: expected shape [], got {list(np.shape(value))}")
    try:
        return cast(value)
    except (TypeError, ValueError) as e:
        raise StoreValueError(f"{field}: {e}") from None


_F32_MAX = float(np.finfo(np.float32).max)


class TransitionStore:
    """Episodic transition store (see the module docstring for layout, commit and loss bound).

    Build it with `create`, `open` or `open_or_create`. A reader ("r") sees the rows committed
    when it was opened or last `refresh()`ed; the one writer ("a") appends, buffers, commits.
    An object is not thread-safe: use it from one thread (the learner's) at a time.
    """

    def __init__(self, path: Path, zstore, *, writable: bool, flush_every: int, lock=None):
        if int(flush_every) < 1:
            raise StoreError(f"flush_every: expected a positive integer, got {flush_every!r}")
        self.path, self.writable, self.flush_every = path, writable, int(flush_every)
        self._zstore, self._lock, self._closed = zstore, lock, False
        group = zarr.open_group(store=zstore, mode="r+" if writable else "r")
        attrs = dict(group.attrs).get("o2o_store")
        if not attrs or attrs.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"{path}: not a TransitionStore of schema version {SCHEMA_VERSION} "
                             f"(attributes: {attrs!r})")
        self.obs_dim, self.act_dim = int(attrs["obs_dim"]), int(attrs["act_dim"])
        self.chunk_rows, self.spec = int(attrs["chunk_rows"]), attrs.get("spec") or {}
        self._group = group
        self._rows, self._episodes, self._notes = self._read_marker()
        self._staged_notes = dict(self._notes)
        self._open_arrays()   # after the marker: a writer grows arrays before committing rows
        self._load_meta()
        if writable:
            self._recover()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def create(cls, path, obs_dim: int, act_dim: int, *, flush_every: int = 1000,
               spec: dict | None = None, chunk_rows: int = 4096, exist_ok: bool = False,
               durable: bool = True) -> "TransitionStore":
        """Create an empty store at `path` and open it for writing.

        An existing store is refused unless `exist_ok`, in which case it is opened for writing
        (its dimensions must match; its stored spec and chunk_rows win). `spec` is free-form
        JSON (names, bounds) kept in the attributes. `chunk_rows` is the time chunk: every
        commit rewrites the last, partial chunk, so smaller chunks mean cheaper commits.
        """
        path = Path(path)
        try:
            spec_json = json.loads(json.dumps(spec or {}))
        except (TypeError, ValueError) as e:
            raise StoreError(f"spec: must be JSON-serialisable ({e})") from None
        if int(obs_dim) < 1 or int(act_dim) < 1 or int(chunk_rows) < 1:
            raise StoreError(f"obs_dim, act_dim, chunk_rows must be positive, got "
                             f"{obs_dim}, {act_dim}, {chunk_rows}")
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path}: exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        lock = WriteLock(path / LOCK, StoreLockedError)
        lock.acquire()
        try:
            if (path / MARKER).exists():
                if not exist_ok:
                    raise StoreError(f"{path}: a store already exists (pass exist_ok=True to append)")
            else:
                own = {LOCK, "zarr.json", "data", "meta"}   # leftovers of an interrupted create
                other = [p.name for p in path.iterdir() if p.name not in own
                         and not p.name.endswith(".partial")]
                if other:
                    raise StoreError(f"{path}: directory is not empty ({', '.join(sorted(other)[:5])})")
                cls._init_layout(path, int(obs_dim), int(act_dim), spec_json, int(chunk_rows), durable)
            store = cls(path, _DurableStore(path, durable=durable), writable=True,
                        flush_every=flush_every, lock=lock)
        except BaseException:
            lock.release()
            raise
        if (store.obs_dim, store.act_dim) != (int(obs_dim), int(act_dim)):
            store._closed = True   # leave the store untouched: no flush, no trim
            lock.release()
            raise StoreError(f"{path}: store has obs_dim={store.obs_dim}, act_dim={store.act_dim}; "
                             f"asked for obs_dim={obs_dim}, act_dim={act_dim}")
        return store

    @classmethod
    def open(cls, path, mode: str = "r", *, flush_every: int = 1000,
             durable: bool = True) -> "TransitionStore":
        """Open an existing store: "r" reader (no lock), "a" writer (takes the lock, drops an
        uncommitted tail left by a crash, continues the open episode)."""
        path = Path(path)
        if mode not in ("r", "a"):
            raise StoreError(f"mode: expected 'r' or 'a', got {mode!r}")
        if not (path / "zarr.json").is_file():
            raise StoreError(f"{path}: no TransitionStore here (no zarr.json)")
        if mode == "r":
            return cls(path, LocalStore(path, read_only=True), writable=False, flush_every=flush_every)
        lock = WriteLock(path / LOCK, StoreLockedError)
        lock.acquire()
        try:
            return cls(path, _DurableStore(path, durable=durable), writable=True,
                       flush_every=flush_every, lock=lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def open_or_create(cls, path, obs_dim: int, act_dim: int, *, flush_every: int = 1000,
                       spec: dict | None = None, durable: bool = True) -> "TransitionStore":
        """Open the store at `path` for writing, creating it if needed; refuses other dims."""
        return cls.create(path, obs_dim, act_dim, flush_every=flush_every, spec=spec,
                          exist_ok=True, durable=durable)

    @staticmethod
    def _init_layout(path: Path, obs_dim: int, act_dim: int, spec: dict, chunk_rows: int,
                     durable: bool) -> None:
        group = zarr.open_group(store=_DurableStore(path, durable=durable), mode="a")
        common = dict(fill_value=0, overwrite=True, config={"write_empty_chunks": True},
                      chunk_key_encoding={"name": "default", "separator": "."},
                      compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")])
        data, meta = group.require_group("data"), group.require_group("meta")
        for field, (dtype, _) in FIELDS.items():
            shape = row_shape(field, obs_dim, act_dim)
            data.create_array(field, shape=(0,) + shape, chunks=(chunk_rows,) + shape,
                              dtype=dtype, **common)
        for name, dtype in META.items():
            meta.create_array(name, shape=(0,), chunks=(META_CHUNK,), dtype=dtype, **common)
        group.attrs["o2o_store"] = {"schema_version": SCHEMA_VERSION, "obs_dim": obs_dim,
                                    "act_dim": act_dim, "chunk_rows": chunk_rows, "spec": spec,
                                    "commit_marker": MARKER}
        sync(_commit([], group.store, {"rows": 0, "episodes": 0}))   # creation complete

    # ------------------------------------------------------------------ state on disk
    def _open_arrays(self) -> None:
        self._arrays = {f: self._group[f"data/{f}"] for f in FIELDS}
        self._arrays.update({m: self._group[f"meta/{m}"] for m in META})

    def _read_marker(self) -> tuple[int, int, dict]:
        try:
            marker = json.loads((self.path / MARKER).read_text())
            return int(marker["rows"]), int(marker["episodes"]), dict(marker.get("notes") or {})
        except FileNotFoundError:
            raise StoreError(f"{self.path}: no {MARKER}: its creation is in progress or was "
                             f"interrupted (then create it again)") from None
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{self.path}: unreadable {MARKER} ({e})") from None

    def _load_meta(self) -> None:
        e = self._episodes
        short = {m: self._arrays[m].shape[0] for m in META if self._arrays[m].shape[0] < e}
        if short:  # the marker is written last, so this is damage, not a crash
            raise StoreError(f"{self.path}: {MARKER} claims {e} episodes but meta/"
                             + ", meta/".join(f"{m} holds {n}" for m, n in short.items()))
        self._meta = {m: np.zeros(_ceil(e + 1, META_CHUNK), dt) for m, dt in META.items()}
        for m in META:
            self._meta[m][:e] = self._arrays[m][:e]

    def _recover(self) -> None:
        for tmp in self.path.rglob("*.partial"):   # temp files of a killed writer
            tmp.unlink(missing_ok=True)
        short = [f for f in FIELDS if self._arrays[f].shape[0] < self._rows]
        short += [m for m in META if self._arrays[m].shape[0] < self._episodes]
        if short:
            raise StoreError(f"{self.path}: arrays shorter than {MARKER}: {', '.join(short)}")
        self._n_meta = self._episodes
        c = self.chunk_rows
        self._c0 = self._rows // c * c         # global row of stage row 0: a chunk boundary
        self._n_stage = self._rows - self._c0  # committed tail of the last chunk, then the buffer
        self._stage = {}
        self._stage_rows = _ceil(c + min(self.flush_every, 1 << 16), c)   # grown on demand
        self._alloc_stage(self._stage_rows)
        for f in FIELDS:
            self._stage[f][:self._n_stage] = self._arrays[f][self._c0:self._rows]
        self._ep_start = int(self._meta["episode_ends"][self._episodes - 1]) if self._episodes else 0
        self._ep_return, self._ep_source = 0.0, None
        if self._ep_start < self._rows:   # an open episode: the next appends continue it
            self._ep_return = float(self._arrays["reward"][self._ep_start:self._rows].sum(dtype=np.float64))
            self._ep_source = int(self._arrays["source"][self._ep_start])
        weakref.finalize(self, self._lock.release)   # a writer dropped unclosed frees its lock
        self._shapes = {f: row_shape(f, self.obs_dim, self.act_dim) for f in FIELDS}
        o, a = self.obs_dim, self.act_dim
        self._row_vec = np.zeros(2 * o + a, np.float32)
        self._row_slices = {"obs": slice(0, o), "action": slice(o, o + a),
                            "next_obs": slice(o + a, 2 * o + a)}

    def _alloc_stage(self, rows: int) -> None:
        rows = _ceil(rows, self.chunk_rows)
        old = self._stage
        self._stage = {f: np.zeros((rows,) + row_shape(f, self.obs_dim, self.act_dim), dt)
                       for f, (dt, _) in FIELDS.items()}
        for f in old:
            self._stage[f][:self._n_stage] = old[f][:self._n_stage]

    # ------------------------------------------------------------------ writing
    def _check_writable(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: store is closed")
        if not self.writable:
            raise StoreError(f"{self.path}: opened read-only; open with mode='a' to append")

    def append(self, *, obs, action, reward, next_obs, terminated, truncated, source,
               policy_version=0, timestamp=None) -> None:
        """Buffer one row (`source`: name or code; `timestamp` defaults to now). Refused with
        StoreValueError naming the field (NaN/inf, wrong shape); nothing is buffered then."""
        self._check_writable()
        try:
            src = source_code(source)
        except ValueError as e:
            raise StoreValueError(str(e)) from None
        # The three vectors go through one float32 scratch row so that a single reduction checks
        # them all for NaN/inf (inf also catches float32 overflow); per-field checks only on failure.
        vec, slices = self._row_vec, self._row_slices
        for field, value in (("obs", obs), ("action", action), ("next_obs", next_obs)):
            if np.shape(value) != self._shapes[field]:
                raise StoreValueError(f"{field}: expected shape {list(self._shapes[field])}, "
                                      f"got {list(np.shape(value))}")
            try:
                vec[slices[field]] = value
            except (TypeError, ValueError) as e:
                raise StoreValueError(f"{field}: {e}") from None
        if not math.isfinite(np.add.reduce(vec, dtype=np.float64)):
            bad = next(f for f, sl in slices.items() if not np.isfinite(vec[sl]).all())
            raise StoreValueError(f"{bad}: contains NaN or inf")
        r = _scalar("reward", reward, float)
        if not abs(r) <= _F32_MAX:
            raise StoreValueError("reward: contains NaN or inf")
        t = time.time() if timestamp is None else _scalar("timestamp", timestamp, float)
        if not math.isfinite(t):
            raise StoreValueError("timestamp: contains NaN or inf")
        values = {"reward": r, "terminated": _scalar("terminated", terminated, bool),
                  "truncated": _scalar("truncated", truncated, bool), "source": src,
                  "policy_version": _scalar("policy_version", policy_version, int), "timestamp": t}
        self._reserve(1)
        i, stage = self._n_stage, self._stage
        for field, sl in slices.items():
            stage[field][i] = vec[sl]
        for field, v in values.items():
            stage[field][i] = v
        self._add_to_episode(i, 1, float(stage["reward"][i]))   # the stored float32 value

    def append_rows(self, rows: dict[str, np.ndarray]) -> None:
        """Buffer a block (every schema field, rows on axis 0; `source` as codes or names),
        validated as a whole: a bad block is refused naming the field and nothing is buffered."""
        self._check_writable()
        block = self._validated(rows)
        if len(block["obs"]):
            self._stage_block(block, auto_flush=True)

    def append_episode(self, rows: dict[str, np.ndarray], *, success: bool | None = None,
                       notes: dict | None = None) -> None:
        """Buffer a whole episode (a block as in `append_rows`) and its end, with `notes` merged
        into the store's notes; commit only after the end (when `flush_every` rows are buffered).

        A crash therefore leaves the episode complete or absent, and the notes always describe
        the committed rows. Refused (StoreError) while an episode is open; nothing is buffered
        when the block or the notes are refused."""
        self._check_writable()
        open_rows = self._c0 + self._n_stage - self._ep_start
        if open_rows:
            raise StoreError(f"append_episode: an episode is open ({open_rows} rows); "
                             "close it with end_episode() first")
        block = self._validated(rows)
        if not len(block["obs"]):
            raise StoreError("append_episode: the episode has no rows")
        try:
            staged = json.loads(json.dumps({**self._staged_notes, **(notes or {})}))
        except (TypeError, ValueError) as e:
            raise StoreError(f"notes: must be JSON-serialisable ({e})") from None
        self._stage_block(block, auto_flush=False)
        self.end_episode(success=success)
        self._staged_notes = staged
        if self.num_buffered >= self.flush_every:
            self.flush()

    @property
    def notes(self) -> dict:
        """The notes committed with the rows (see `append_episode`); a copy."""
        return json.loads(json.dumps(self._notes))

    def _validated(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = dict(rows)
        src = np.asarray(rows.get("source", np.zeros(0)))
        try:
            if src.dtype.kind in "USO":
                rows["source"] = np.array([source_code(s) for s in src.ravel()],
                                          np.uint8).reshape(src.shape)
            block = validate_rows(rows, self.obs_dim, self.act_dim)
        except ValueError as e:
            raise StoreValueError(str(e)) from None
        for f in FLOAT_FIELDS:   # a float64 beyond float32 range becomes inf in the cast
            if np.asarray(rows[f]).dtype != block[f].dtype and not np.isfinite(block[f]).all():
                raise StoreValueError(f"{f}: contains values beyond float32 range")
        return block

    def _stage_block(self, block: dict[str, np.ndarray], *, auto_flush: bool) -> None:
        n = len(block["obs"])
        self._reserve(n)
        i = self._n_stage
        for f in FIELDS:
            self._stage[f][i:i + n] = block[f]
        self._add_to_episode(i, n, float(block["reward"].sum(dtype=np.float64)), auto_flush)

    def _reserve(self, n: int) -> None:
        if self._n_stage + n > len(self._stage["obs"]):
            self._alloc_stage(max(self._n_stage + n, 2 * len(self._stage["obs"])))

    def _add_to_episode(self, i: int, n: int, reward_sum: float, auto_flush: bool = True) -> None:
        if self._ep_source is None:
            self._ep_source = int(self._stage["source"][i])
        self._ep_return += reward_sum
        self._n_stage += n
        if auto_flush and self.num_buffered >= self.flush_every:
            self.flush()

    def end_episode(self, *, success: bool | None = None) -> None:
        """Close the current episode (return = sum of its rewards, source = its first row's).

        The boundary is buffered like rows and becomes durable at the next commit.
        """
        self._check_writable()
        end = self._c0 + self._n_stage
        if end == self._ep_start:
            raise StoreError("end_episode: the current episode has no rows")
        k = self._n_meta
        if k == len(self._meta["episode_ends"]):
            for m, dt in META.items():
                self._meta[m] = np.concatenate([self._meta[m], np.zeros(META_CHUNK, dt)])
        values = (end, self._ep_source, self._ep_return, -1 if success is None else int(bool(success)))
        for m, v in zip(META, values):
            self._meta[m][k] = v
        self._n_meta, self._ep_start, self._ep_return, self._ep_source = k + 1, end, 0.0, None

    def flush(self) -> None:
        """Write the buffer and commit: chunks (and their directories) first, then the marker."""
        self._check_writable()
        end, c = self._c0 + self._n_stage, self.chunk_rows
        if end == self._rows and self._n_meta == self._episodes and self._staged_notes == self._notes:
            return
        jobs = []
        if end > self._rows:
            padded = _ceil(self._n_stage, c)
            for f in FIELDS:
                self._stage[f][self._n_stage:padded] = 0   # deterministic bytes past the end
                jobs.append((self._arrays[f], self._c0, self._stage[f][:padded]))
        if self._n_meta > self._episodes:
            m0 = self._episodes // META_CHUNK * META_CHUNK
            m1 = _ceil(self._n_meta, META_CHUNK)
            jobs += [(self._arrays[m], m0, self._meta[m][m0:m1]) for m in META]
        marker = {"rows": end, "episodes": self._n_meta, "time": time.time()}
        if self._staged_notes:
            marker["notes"] = self._staged_notes
        sync(_commit(jobs, self._zstore, marker))
        self._rows, self._episodes, self._notes = end, self._n_meta, self._staged_notes
        keep = end // c * c - self._c0   # stage rows before the last (partial) chunk are done
        if keep:
            for f in FIELDS:
                self._stage[f][:self._n_stage - keep] = self._stage[f][keep:self._n_stage]
            self._c0, self._n_stage = self._c0 + keep, self._n_stage - keep
        if len(self._stage["obs"]) > 2 * self._stage_rows and self._n_stage <= self._stage_rows:
            self._alloc_stage(self._stage_rows)   # give back what a big block took

    def close(self) -> None:
        """Flush and commit, trim the arrays to the committed length, release the lock.
        Idempotent; a reader's close only marks it closed."""
        if self._closed:
            return
        try:
            if self.writable:
                self.flush()
                trims = [(self._arrays[f], self._rows) for f in FIELDS]
                trims += [(self._arrays[m], self._episodes) for m in META]
                for arr, n in trims:   # external zarr readers then see exact lengths
                    if arr.shape[0] > n:
                        arr.resize((n,) + arr.shape[1:])
                sync(self._zstore.sync_dirs())
        finally:
            self._closed = True
            if self.writable:
                self._lock.release()

    def abort(self) -> None:
        """Release the lock without committing the buffer, as a crash would: committed rows stay,
        buffered ones are dropped (for a writer interrupted mid-episode). Idempotent."""
        if not self._closed:
            self._closed = True
            if self.writable:
                self._lock.release()

    def __enter__(self) -> "TransitionStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        """Committed rows."""
        return self._rows

    @property
    def num_buffered(self) -> int:
        """Rows appended but not yet committed (0 for a reader)."""
        return self._c0 + self._n_stage - self._rows if self.writable else 0

    @property
    def num_episodes(self) -> int:
        """Committed (completed) episodes."""
        return self._episodes

    @property
    def open_episode_rows(self) -> int:
        """Committed rows after the last committed episode end."""
        return self._rows - (int(self._meta["episode_ends"][self._episodes - 1]) if self._episodes else 0)

    def refresh(self) -> int:
        """Reader: re-read the marker to see rows committed since; returns `len(self)`."""
        if not self.writable:
            rows, episodes, self._notes = self._read_marker()
            if (rows, episodes) != (self._rows, self._episodes):
                if any(a.shape[0] < rows for f, a in self._arrays.items() if f in FIELDS) or \
                        any(self._arrays[m].shape[0] < episodes for m in META):
                    self._group = zarr.open_group(store=self._zstore, mode="r")
                    self._open_arrays()   # the writer grew them: re-read their shapes
                self._rows, self._episodes = rows, episodes
                self._load_meta()
        return self._rows

    def read(self, fields=None, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Committed rows [start, stop) (slice semantics) of `fields` (default: all)."""
        fields = list(FIELDS) if fields is None else list(fields)
        unknown = [f for f in fields if f not in FIELDS]
        if unknown:
            raise StoreError(f"read: unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
        start, stop, _ = slice(start, stop).indices(self._rows)
        stop = max(stop, start)
        return {f: self._arrays[f][start:stop] for f in fields}

    def episodes(self) -> list[dict]:
        """Completed episodes: index, start, end, length, source (name), return, success."""
        e = self._episodes
        ends = self._meta["episode_ends"][:e]
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        return [{"index": i, "start": int(s), "end": int(t), "length": int(t - s),
                 "source": SOURCES[int(src)], "return": float(r),
                 "success": None if ok < 0 else bool(ok)}
                for i, (s, t, src, r, ok) in enumerate(zip(
                    starts, ends, self._meta["episode_source"][:e], self._meta["episode_return"][:e],
                    self._meta["episode_success"][:e]))]

    def counts(self) -> dict:
        """{source name: {"transitions": n, "episodes": m}} over committed data."""
        rows = np.bincount(self.read(["source"])["source"], minlength=len(SOURCES))
        eps = np.bincount(self._meta["episode_source"][:self._episodes], minlength=len(SOURCES))
        return {s: {"transitions": int(rows[i]), "episodes": int(eps[i])} for i, s in enumerate(SOURCES)}

    def info(self) -> dict:
        """JSON-able summary of the store (committed data; `buffered_rows` for a writer)."""
        sources = self.counts()
        e = self._episodes
        rets, srcs = self._meta["episode_return"][:e], self._meta["episode_source"][:e]
        for code, name in enumerate(SOURCES):
            r = rets[srcs == code]
            sources[name].update({k: (float(fn(r)) if len(r) else None) for k, fn in
                                  (("return_mean", np.mean), ("return_min", np.min), ("return_max", np.max))})
        return {"path": str(self.path), "schema_version": SCHEMA_VERSION, "obs_dim": self.obs_dim,
                "act_dim": self.act_dim, "spec": self.spec, "chunk_rows": self.chunk_rows,
                "rows": self._rows, "episodes": self._episodes,
                "open_episode_rows": self.open_episode_rows, "buffered_rows": self.num_buffered,
                "sources": sources}

    def validate(self) -> list[str]:
        """Consistency problems of the committed data (an empty list means consistent)."""
        problems, n, e = [], self._rows, self._episodes
        attrs = dict(self._group.attrs).get("o2o_store", {})
        if attrs.get("schema_version") != SCHEMA_VERSION:
            problems.append(f"schema_version {attrs.get('schema_version')!r} is not {SCHEMA_VERSION}")
        for name, arr in self._arrays.items():
            length = n if name in FIELDS else e
            want = row_shape(name, self.obs_dim, self.act_dim) if name in FIELDS else ()
            dtype = FIELDS[name][0] if name in FIELDS else META[name]
            if arr.shape[0] < length:
                problems.append(f"{name}: {arr.shape[0]} rows < {length} committed")
            if tuple(arr.shape[1:]) != want or arr.dtype != dtype:
                problems.append(f"{name}: shape {arr.shape} {arr.dtype}, expected [N, *{want}] {dtype}")
        if problems:
            return problems
        ends = self._meta["episode_ends"][:e]
        if e and (ends[0] <= 0 or np.any(np.diff(ends) <= 0) or ends[-1] > n):
            problems.append(f"meta/episode_ends: not strictly increasing within (0, {n}]")
        if np.any(self._meta["episode_source"][:e] >= len(SOURCES)):
            problems.append("meta/episode_source: unknown source code")
        if not np.isin(self._meta["episode_success"][:e], (-1, 0, 1)).all():
            problems.append("meta/episode_success: values other than -1, 0, 1")
        step = 8 * self.chunk_rows
        for lo in range(0, n, step):   # block-wise: bounded memory on large stores
            block = self.read(start=lo, stop=min(lo + step, n))
            for f in FLOAT_FIELDS:
                if not np.isfinite(block[f]).all():
                    problems.append(f"{f}: NaN or inf in committed rows {lo}..{lo + len(block[f])}")
            if np.any(block["source"] >= len(SOURCES)):
                problems.append(f"source: unknown code in committed rows {lo}..{lo + len(block['source'])}")
        if problems or not e or ends[-1] > n:
            return problems
        reward, source = self.read(["reward", "source"], 0, int(ends[-1])).values()
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        sums = np.add.reduceat(reward.astype(np.float64), starts)
        bad = np.flatnonzero(~np.isclose(sums, self._meta["episode_return"][:e], rtol=1e-5, atol=1e-3))
        if len(bad):
            problems.append(f"meta/episode_return: differs from the sum of rewards in episode(s) "
                            f"{bad[:5].tolist()}")
        bad = np.flatnonzero(source[starts] != self._meta["episode_source"][:e])
        if len(bad):
            problems.append(f"meta/episode_source: differs from the first row's source in "
                            f"episode(s) {bad[:5].tolist()}")
        return problems

    def __repr__(self) -> str:
        return (f"TransitionStore({str(self.path)!r}, {'a' if self.writable else 'r'}, "
                f"rows={self._rows}, episodes={self._episodes})")


def _write_tmp(path: Path, obj: dict, durable: bool) -> Path:
    """Write `obj` as JSON to a fresh temp file beside `path` (fsynced when durable)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, json.dumps(obj).encode())
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    return tmp
