"""Episodic, append-only, crash-safe transition store: a Zarr v3 directory, one job per module.

Layout (DESIGN.md "Data store contract")::

    data/<field>          one array per schema field, time on axis 0, `chunk_rows` rows per chunk
    meta/episode_ends     int64, exclusive end row of each completed episode
    meta/episode_source   uint8, source code of the episode's first row
    meta/episode_return   float64, sum of the episode's rewards
    meta/episode_success  int8, 1 / 0 / -1 (unknown)
    zarr.json             attribute "o2o_store": schema_version, obs_dim, act_dim, chunk_rows, spec
    commit.json           the commit marker {"rows": R, "episodes": E, "crc32": {...}[, "notes": {...}]}
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

Integrity: the marker holds a crc32 of every committed chunk's committed rows (`integrity`);
every read checks a chunk before it is trusted, `validate` checks them all, and a writer opens
only a store that validates. Damage gives StoreCorruptError naming the file; a directory whose
marker is missing but which holds rows is never created again (`recovery`: `repair` rebuilds the
marker from consistent arrays). A write the OS refuses (a full disk) gives StoreWriteError naming
the path and the free space; the committed rows stay, the buffer is kept.

Single writer: `write.lock` is created with O_EXCL and held with flock; a second writer, in this
process or another, gets StoreLockedError naming the lock file and the holder's pid. The lock of
a writer that died (flock free and its pid gone, a zombie or reused) is taken over. Readers take
no lock. `close()` (or `with`) commits the buffer; a writer dropped without it loses its buffer
as in a crash. `durable=False` skips the fsyncs: safe against `kill -9`, not against power loss.

Modules: `transition_store` (the `TransitionStore` façade that composes the others),
`zarr_io` (the only zarr importer: durable chunk writes, commit, layout, marker), `staging`
(the writer's chunk-aligned buffer), `episodes` (episode metadata), `inspection` (`info`,
`counts`, `validate`), `integrity` (chunk checksums, checked reads), `recovery` (a missing or
wrong marker, `repair`), `layout` (file and array names), `errors`. Rows are validated by
`o2o_robot.data.schema`.
"""
from o2o_robot.data.store.errors import (StoreCorruptError, StoreError, StoreLockedError,
                                         StoreValueError, StoreWriteError)
from o2o_robot.data.store.layout import LOCK, MARKER, META
from o2o_robot.data.store.recovery import repair
from o2o_robot.data.store.transition_store import TransitionStore

__all__ = ["LOCK", "MARKER", "META", "StoreCorruptError", "StoreError", "StoreLockedError",
           "StoreValueError", "StoreWriteError", "TransitionStore", "repair"]
