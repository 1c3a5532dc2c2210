"""The `TransitionStore` façade: constructors, append / commit / close, committed-row reads.

It composes the pieces of the package (see its docstring for layout, commit order and loss
bound): `zarr_io.StoreFiles` (the directory through zarr), `staging.Stage` (the writer's
buffer), `episodes.EpisodeLog` (episode metadata), `inspection` (info, counts, validate) and
`lock.WriteLock` (the single writer). Rows are validated by `schema` (`validate_rows`,
`RowValidator`); the store only turns its ValueError into StoreValueError.
"""
from __future__ import annotations

import json
import time
import weakref
from pathlib import Path

import numpy as np

from o2o_robot.data.schema import READABLE_SCHEMA_VERSIONS, RowValidator, validate_rows
from o2o_robot.data.schema import STORED_FIELDS as FIELDS
from o2o_robot.data.store import inspection
from o2o_robot.data.store.episodes import EpisodeLog
from o2o_robot.data.store.errors import StoreCorruptError, StoreError, StoreValueError
from o2o_robot.data.store.frames import (FrameStage, check_block_next, check_cameras,
                                         check_frames, next_frame_index)
from o2o_robot.data.store.integrity import CheckedReader, ChunkSums, sum_all
from o2o_robot.data.store.layout import FRAME_ENDS, FRAMES, MARKER, META, chunk_sizes
from o2o_robot.data.store.recovery import (check_marker_fits, check_root, lay_out, make_store_dir,
                                           missing_marker_error, take_lock)
from o2o_robot.data.store.staging import Stage
from o2o_robot.data.store.zarr_io import StoreFiles


class TransitionStore:
    """Episodic transition store (see the package docstring for layout, commit and loss bound).

    Build it with `create`, `open` or `open_or_create`. A reader ("r") sees the rows committed
    when it was opened or last `refresh()`ed; the one writer ("a") appends, buffers, commits.
    An object is not thread-safe: use it from one thread (the learner's) at a time.
    """

    def __init__(self, path: Path, files: StoreFiles, *, writable: bool, flush_every: int,
                 lock=None, checksums: bool = True, marker: dict | None = None):
        """Use the constructors; `marker` replaces the marker file (for `data repair`, which
        validates a rebuilt marker before it writes it)."""
        if int(flush_every) < 1:
            raise StoreError(f"flush_every: expected a positive integer, got {flush_every!r}")
        self.path, self.writable, self.flush_every = path, writable, int(flush_every)
        self._files, self._lock, self._closed, self._checksums = files, lock, False, checksums
        attrs = files.attrs
        if not attrs or attrs.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
            raise StoreError(f"{path}: not a TransitionStore of schema version "
                             f"{' or '.join(map(str, READABLE_SCHEMA_VERSIONS))} "
                             f"(attributes: {attrs!r})")
        self.obs_dim, self.act_dim = int(attrs["obs_dim"]), int(attrs["act_dim"])
        self.schema_version, self.cameras = int(attrs["schema_version"]), files.cameras
        self.chunk_rows, self.spec = int(attrs["chunk_rows"]), attrs.get("spec") or {}
        marker = marker or files.read_marker()
        if marker is None:
            raise missing_marker_error(path)
        self._rows, episodes, self._notes = marker["rows"], marker["episodes"], marker["notes"]
        self._staged_notes = dict(self._notes)
        files.open_arrays()   # after the marker: a writer grows arrays before committing rows
        check_marker_fits(path, files.shapes(), self._rows)
        self._reader = CheckedReader(files, chunk_sizes(self.chunk_rows, self.cameras))
        self._reader.sums = ChunkSums.from_marker(self._reader.sizes, marker.get("crc32"),
                                                  path / MARKER)
        self._log = EpisodeLog(path, files.shapes(), self._read_meta, episodes)
        if writable:
            problems = self.validate()   # never append to (nor trust the tail of) a damaged store
            if problems:
                raise StoreCorruptError(f"{problems[0]} (store {path} not opened for writing; "
                                        f"{len(problems)} problem(s): `o2o-robot data validate {path}`)")
            self._recover()

    def _read_meta(self, name: str, episodes: int) -> np.ndarray:
        return self._reader.read(name, 0, episodes, episodes)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def create(cls, path, obs_dim: int, act_dim: int, *, flush_every: int = 1000,
               spec: dict | None = None, chunk_rows: int = 4096, exist_ok: bool = False,
               durable: bool = True, checksums: bool = True,
               cameras: dict | None = None) -> "TransitionStore":
        """Create an empty store at `path` and open it for writing.

        `cameras` ({name: (H, W, C)}) stores one uint8 frame per row and camera (frames.py).
        An existing store is refused unless `exist_ok`, in which case it is opened for writing
        (its dimensions and cameras must match; its stored spec and chunk_rows win). `spec` is free-form
        JSON (names, bounds) kept in the attributes. `chunk_rows` is the time chunk: every
        commit rewrites the last, partial chunk, so smaller chunks mean cheaper commits.
        `checksums=False` records no chunk checksums (integrity.py; only to measure their
        cost). A directory without a commit marker is created only where it stores no row
        (the leftovers of an interrupted create); one with rows is refused, untouched.
        """
        path = Path(path)
        try:
            spec_json = json.loads(json.dumps(spec or {}))
        except (TypeError, ValueError) as e:
            raise StoreError(f"spec: must be JSON-serialisable ({e})") from None
        if int(obs_dim) < 1 or int(act_dim) < 1 or int(chunk_rows) < 1:
            raise StoreError(f"obs_dim, act_dim, chunk_rows must be positive, got "
                             f"{obs_dim}, {act_dim}, {chunk_rows}")
        try:
            cameras = check_cameras(cameras)
        except ValueError as e:
            raise StoreError(str(e)) from None
        make_store_dir(path)
        lock = take_lock(path)
        try:
            if (path / MARKER).exists():
                if not exist_ok:
                    raise StoreError(f"{path}: a store already exists (pass exist_ok=True to append)")
            else:
                lay_out(path, int(obs_dim), int(act_dim), spec_json, int(chunk_rows), durable,
                        cameras)
            store = cls(path, StoreFiles(path, writable=True, durable=durable), writable=True,
                        flush_every=flush_every, lock=lock, checksums=checksums)
        except BaseException:
            lock.release()
            raise
        if (store.obs_dim, store.act_dim, store.cameras) != (int(obs_dim), int(act_dim), cameras):
            store._closed = True   # leave the store untouched: no flush, no trim
            lock.release()
            raise StoreError(f"{path}: store has obs_dim={store.obs_dim}, act_dim={store.act_dim}, "
                             f"cameras={store.cameras}; asked for obs_dim={obs_dim}, "
                             f"act_dim={act_dim}, cameras={cameras}")
        return store

    @classmethod
    def open(cls, path, mode: str = "r", *, flush_every: int = 1000,
             durable: bool = True) -> "TransitionStore":
        """Open an existing store: "r" reader (no lock), "a" writer (takes the lock, drops an
        uncommitted tail left by a crash, continues the open episode)."""
        path = Path(path)
        if mode not in ("r", "a"):
            raise StoreError(f"mode: expected 'r' or 'a', got {mode!r}")
        check_root(path)
        if mode == "r":
            return cls(path, StoreFiles(path, writable=False), writable=False, flush_every=flush_every)
        lock = take_lock(path)
        try:
            return cls(path, StoreFiles(path, writable=True, durable=durable), writable=True,
                       flush_every=flush_every, lock=lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def open_or_create(cls, path, obs_dim: int, act_dim: int, *, flush_every: int = 1000,
                       spec: dict | None = None, durable: bool = True,
                       cameras: dict | None = None) -> "TransitionStore":
        """Open the store at `path` for writing, creating it if needed; refuses other dims or
        cameras."""
        return cls.create(path, obs_dim, act_dim, flush_every=flush_every, spec=spec,
                          exist_ok=True, durable=durable, cameras=cameras)

    def _recover(self) -> None:
        """Writer: drop a killed writer's temp files, stage the committed tail of the last chunk
        (the uncommitted tail beyond the marker is overwritten), resume the open episode, and
        sum the chunks of a store that has no sums yet."""
        for tmp in self.path.rglob("*.partial"):
            tmp.unlink(missing_ok=True)
        rows, log = self._rows, self._log
        self._stage = Stage(self.obs_dim, self.act_dim, self.chunk_rows, self.flush_every)
        c0 = rows // self.chunk_rows * self.chunk_rows
        self._stage.load_tail(c0, self.read(start=c0))
        tail = self.read(["reward", "source"], start=log.last_end(log.committed))
        log.resume(tail["reward"], tail["source"], rows)
        self._frames = FrameStage(self.cameras, self.flush_every)
        self._frames.load(rows, log.committed, self.open_episode_rows,
                          lambda name, a, b: self._reader.read(name, a, b, b))
        lengths = self._lengths(rows, log.committed)
        sums = self._reader.sums
        if self._checksums and sums is None:   # written before checksums
            self._reader.sums = sum_all(self._reader, lengths)
        elif self._checksums and sums.unsummed:   # arrays added since (the origin columns)
            sums.adopt(sum_all(self._reader, {n: lengths[n] for n in sums.unsummed}),
                       set(sums.unsummed))
        self._check_row = RowValidator(self.obs_dim, self.act_dim)
        weakref.finalize(self, self._lock.release)   # a writer dropped unclosed frees its lock

    # ------------------------------------------------------------------ writing
    def _check_writable(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: store is closed")
        if not self.writable:
            raise StoreError(f"{self.path}: opened read-only; open with mode='a' to append")

    def append(self, *, obs, action, reward, next_obs, terminated, truncated, source,
               policy_version=0, timestamp=None, robot=0, seq=-1, frames=None,
               next_frames=None) -> None:
        """Buffer one row (`source`: name or code; `timestamp` defaults to now; `robot`, `seq`:
        its origin, schema.ORIGIN_FIELDS; `frames`, `next_frames`: {camera: uint8 [H, W, C]}
        as in `schema.Transition`, required on a store with cameras, `next_frames` optional).
        Refused with StoreValueError naming the field (NaN/inf, wrong shape); nothing is
        buffered then."""
        self._check_writable()
        try:
            row = self._check_row(obs, action, reward, next_obs, terminated, truncated, source,
                                  policy_version, time.time() if timestamp is None else timestamp,
                                  robot, seq)
            frames = check_frames(frames, self.cameras)
            if next_frames is not None:
                next_frames = check_frames(next_frames, self.cameras, what="next_frames")
        except ValueError as e:
            raise StoreValueError(str(e)) from None
        self._frames.put_row(frames, next_frames)
        self._log.add(row["source"], self._stage.put_row(row))
        if self.num_buffered >= self.flush_every:
            self.flush()

    def append_rows(self, rows: dict[str, np.ndarray], *, frames=None, next_frames=None) -> None:
        """Buffer a block (every schema field, rows on axis 0; `source` as codes or names;
        `frames`, `next_frames`: {camera: uint8 [N, H, W, C]}, see `check_block_next`),
        validated as a whole: a bad block is refused naming the field and nothing is buffered."""
        self._check_writable()
        block = self._validated(rows, frames, next_frames)
        if len(block["obs"]):
            self._stage_block(block)
            if self.num_buffered >= self.flush_every:
                self.flush()

    def append_episode(self, rows: dict[str, np.ndarray], *, success: bool | None = None,
                       notes: dict | None = None, frames=None, next_frames=None) -> None:
        """Buffer a whole episode (a block as in `append_rows`) and its end, with `notes` merged
        into the store's notes; commit only after the end (when `flush_every` rows are buffered).

        A crash therefore leaves the episode complete or absent, and the notes always describe
        the committed rows; so does an exception here (Ctrl-C included): the buffer is put back
        as it was. Refused (StoreError) while an episode is open; nothing is buffered when the
        block or the notes are refused."""
        self._check_writable()
        open_rows = self._stage.end - self._log.start
        if open_rows:
            raise StoreError(f"append_episode: an episode is open ({open_rows} rows); "
                             "close it with end_episode() first")
        block = self._validated(rows, frames, next_frames)
        if not len(block["obs"]):
            raise StoreError("append_episode: the episode has no rows")
        try:
            staged = json.loads(json.dumps({**self._staged_notes, **(notes or {})}))
        except (TypeError, ValueError) as e:
            raise StoreError(f"notes: must be JSON-serialisable ({e})") from None
        mark = self._stage.n, self._log.mark(), self._frames.mark()
        try:
            self._stage_block(block)
            self.end_episode(success=success)
            self._staged_notes = staged
        except BaseException:   # a Ctrl-C between the rows and their end: neither is kept
            self._stage.n = mark[0]
            self._log.rewind(mark[1])
            self._frames.rewind(mark[2])
            raise
        if self.num_buffered >= self.flush_every:
            self.flush()

    def robot_code(self, name: str) -> int:
        """The `robot` code of the robot called `name` (schema.ORIGIN_FIELDS), given a new one
        if needed. The table lives in the notes (key "robots": names of codes 1, 2, ...), so
        it is committed with the first rows that use a new code."""
        if not name:
            raise StoreValueError("robot: a robot needs a non-empty name")
        robots = list(self._staged_notes.get("robots", []))
        if name not in robots:
            self._check_writable()
            robots.append(name)
            self._staged_notes = {**self._staged_notes, "robots": robots}
        return robots.index(name) + 1

    @property
    def robots(self) -> dict[int, str]:
        """{code: name} of the robots in the committed notes (code 0, this machine, is not
        listed)."""
        return {i + 1: name for i, name in enumerate(self._notes.get("robots", []))}

    @property
    def notes(self) -> dict:
        """The notes committed with the rows (see `append_episode`); a copy."""
        return json.loads(json.dumps(self._notes))

    def _validated(self, rows: dict[str, np.ndarray], frames, next_frames) -> dict:
        """The block checked as a whole, its frames under "frames" and its last row's next
        frames under "last_next" (the caller pops both before staging the rows)."""
        try:
            block = validate_rows(rows, self.obs_dim, self.act_dim, origin=True)
            n = len(block["obs"])
            block["frames"] = check_frames(frames, self.cameras, (n,))
            block["last_next"] = (check_block_next(block["frames"], next_frames, self.cameras, n)
                                  if n and self.cameras else {})
            return block
        except ValueError as e:
            raise StoreValueError(str(e)) from None

    def _stage_block(self, block: dict[str, np.ndarray]) -> None:
        frames, last_next = block.pop("frames"), block.pop("last_next")
        self._frames.put(frames, last_next)
        self._stage.put_block(block)
        self._log.add(block["source"][0], float(block["reward"].sum(dtype=np.float64)))

    def end_episode(self, *, success: bool | None = None, next_frames=None) -> None:
        """Close the current episode (return = sum of its rewards, source = its first row's).
        `next_frames` ({camera: [H, W, C]}) replaces its last row's next frame (frames.py: a
        writer that resumes a cut episode has none but the row's own).

        The boundary is buffered like rows and becomes durable at the next commit.
        """
        self._check_writable()
        try:
            nxt = None if next_frames is None else check_frames(next_frames, self.cameras,
                                                                 what="next_frames")
        except ValueError as e:
            raise StoreValueError(str(e)) from None
        self._log.end(self._stage.end, success)
        self._frames.end_episode(nxt)

    def flush(self) -> None:
        """Write the buffer and commit: chunks (and their directories) first, then the marker.
        StoreWriteError (naming the path and the free space) when the OS refuses a write: the
        committed rows stay, the buffer is kept, a later flush may succeed."""
        self._check_writable()
        stage, log = self._stage, self._log
        end = stage.end
        if end == self._rows and log.n == log.committed and self._staged_notes == self._notes:
            return
        jobs = stage.chunks() if end > self._rows else []
        jobs += log.chunks() + self._frames.chunks()
        marker = {"rows": end, "episodes": log.n, "time": time.time()}
        if self._staged_notes:
            marker["notes"] = self._staged_notes
        sums = None
        if self._checksums:   # of exactly the rows this marker commits (integrity.py)
            sums = self._reader.sums.copy()
            lengths = self._lengths(end, log.n)
            for name, start, block in jobs:
                sums.record(name, start, block, lengths[name])
            marker["crc32"] = sums.to_marker()
        self._files.commit(jobs, marker)
        self._rows, log.committed, self._notes = end, log.n, self._staged_notes
        self._reader.sums = sums
        stage.committed(end)
        self._frames.committed()

    def close(self) -> None:
        """Flush and commit, trim the arrays to the committed length, release the lock.
        Idempotent; a reader's close only marks it closed. When the flush fails (StoreWriteError:
        a full disk) the lock is still released and the buffered rows are lost, as in a crash."""
        if self._closed:
            return
        try:
            if self.writable:
                self.flush()
                self._files.trim(self._lengths(self._rows, self._log.committed))
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

    def _lengths(self, rows: int, episodes: int) -> dict[str, int]:
        """Committed length of every array for `rows` rows and `episodes` episodes."""
        out = {**{f: rows for f in FIELDS}, **{m: episodes for m in META}}
        for cam in self.cameras:
            out[FRAMES + cam], out[FRAME_ENDS + cam] = rows, episodes
        return out

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
        return self._stage.end - self._rows if self.writable else 0

    @property
    def num_episodes(self) -> int:
        """Committed (completed) episodes."""
        return self._log.committed

    @property
    def open_episode_rows(self) -> int:
        """Committed rows after the last committed episode end."""
        return self._rows - self._log.last_end(self._log.committed)

    def refresh(self) -> int:
        """Reader: re-read the marker to see rows committed since; returns `len(self)`."""
        if not self.writable:
            files = self._files
            marker = files.read_marker()
            if marker is None:
                raise missing_marker_error(self.path)
            rows, episodes, self._notes = marker["rows"], marker["episodes"], marker["notes"]
            if (rows, episodes) != (self._rows, self._log.committed):
                shapes, lengths = files.shapes(), self._lengths(rows, episodes)
                if any(shapes[f] < n for f, n in lengths.items()):
                    files.reopen()   # the writer grew them: re-read their shapes
                check_marker_fits(self.path, files.shapes(), rows)
                self._reader.sums = ChunkSums.from_marker(self._reader.sizes, marker.get("crc32"),
                                                          self.path / MARKER)
                self._rows = rows
                self._log.load(files.shapes(), self._read_meta, episodes)
        return self._rows

    def read(self, fields=None, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Committed rows [start, stop) (slice semantics) of `fields` (default: all)."""
        fields = list(FIELDS) if fields is None else list(fields)
        unknown = [f for f in fields if f not in FIELDS]
        if unknown:
            raise StoreError(f"read: unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
        start, stop, _ = slice(start, stop).indices(self._rows)
        stop = max(stop, start)
        return {f: self._reader.read(f, start, stop, self._rows) for f in fields}

    def read_frames(self, camera: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames of committed rows [start, stop) of `camera`: uint8 [n, H, W, C]."""
        if camera not in self.cameras:
            raise StoreError(f"read_frames: unknown camera {camera!r}; the store has "
                             f"{', '.join(self.cameras) or 'no cameras'}")
        start, stop, _ = slice(start, stop).indices(self._rows)
        return self._reader.read(FRAMES + camera, start, max(stop, start), self._rows)

    def read_next_frames(self, camera: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Next frames of committed rows [start, stop) of `camera` (uint8 [n, H, W, C]): the
        next row's frame within an episode, the episode's end frame for its last row."""
        start, stop, _ = slice(start, stop).indices(self._rows)
        stop = max(stop, start)
        ext = self.read_frames(camera, start, min(stop + 1, self._rows))
        log = self._log
        use_end, where = next_frame_index(np.arange(start, stop),
                                          log.meta["episode_ends"][:log.committed], self._rows)
        out = np.empty((stop - start,) + self.cameras[camera], np.uint8)
        inner = np.flatnonzero(~use_end)
        out[inner] = ext[where[inner] - start]
        if use_end.any():
            e = where[use_end]
            ends = self._reader.read(FRAME_ENDS + camera, int(e.min()), int(e.max()) + 1,
                                     log.committed)
            out[use_end] = ends[e - e.min()]
        return out

    def episodes(self) -> list[dict]:
        """Completed episodes: index, start, end, length, source (name), return, success."""
        return self._log.listing()

    def counts(self) -> dict:
        """{source name: {"transitions": n, "episodes": m}} over committed data."""
        return inspection.counts(self, self._log)

    def info(self) -> dict:
        """JSON-able summary of the store (committed data; `buffered_rows` for a writer)."""
        return inspection.info(self, self._log)

    def validate(self) -> list[str]:
        """Consistency problems of the committed data (an empty list means consistent): every
        chunk is read and checked against its checksum, then the values and episodes."""
        return inspection.validate(self, self._log, self._files.arrays, self._files.attrs or {},
                                   self._reader)

    def __repr__(self) -> str:
        return (f"TransitionStore({str(self.path)!r}, {'a' if self.writable else 'r'}, "
                f"rows={self._rows}, episodes={self._log.committed})")
