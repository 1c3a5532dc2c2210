"""A store whose commit marker is missing or wrong: never recreated, repaired only where the
arrays tell the whole truth (and the laying out of a new store, which must tell the two apart).

`leftovers` tells an interrupted create (layout files, no stored row: creating the store again
loses nothing) from a store that lost its marker (rows stored: refused, nothing touched).
`repair` rebuilds the marker from the arrays, keeping every row, where they are consistent: every
data array the same length, every meta array the same length, the episodes and values valid and
every chunk readable, and no trailing all-zero padding of an untrimmed crash leftover. Otherwise
it refuses and says why; it never drops or invents a row.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from o2o_robot.data.lock import WriteLock
from o2o_robot.data.schema import STORED_FIELDS as FIELDS
from o2o_robot.data.store.errors import (StoreCorruptError, StoreError, StoreLockedError,
                                         StoreWriteError)
from o2o_robot.data.store.integrity import CheckedReader, ChunkSums, sum_all
from o2o_robot.data.store.layout import FRAME_ENDS, FRAMES, LOCK, MARKER, META, chunk_sizes
from o2o_robot.fsutil import os_error_line


def leftovers(path: Path) -> str | None:
    """What `path` (a store directory without a marker) stores, in words; None when it stores
    nothing (no chunk file, every array empty): the leftovers of an interrupted create."""
    chunks = sorted(p for d in ("data", "meta") for g in ("*/c*", "*/*/c*")
                    for p in (path / d).glob(g) if p.is_file())
    if chunks:
        return f"{len(chunks)} chunk files ({chunks[0].relative_to(path)}, ...)"
    for meta in sorted([*path.glob("*/*/zarr.json"), *path.glob("*/*/*/zarr.json")]):
        try:
            node = json.loads(meta.read_bytes())
            if node.get("node_type") == "group":   # the camera groups: no length of their own
                continue
            n = int(node["shape"][0])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return f"{meta.relative_to(path)}, unreadable"
        if n:
            return f"{meta.parent.relative_to(path)} of length {n}"
    return None


def missing_marker_error(path: Path) -> StoreCorruptError:
    """The error for a store directory without its commit marker."""
    stored = leftovers(path)
    if stored is None:
        return StoreCorruptError(f"{path / MARKER}: missing and no rows stored: the store's "
                                 f"creation is in progress or was interrupted (creating it "
                                 f"again is safe)")
    return StoreCorruptError(f"{path / MARKER}: missing, but the store holds data ({stored}): "
                             f"the commit marker was lost; nothing was changed: rebuild it with "
                             f"`o2o-robot data repair {path}`")


def make_store_dir(path: Path) -> None:
    """Make the store directory `path` (and its parents); one line when the OS refuses."""
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreWriteError(f"store not created: {os_error_line(e, path)}") from None


def take_lock(path: Path) -> WriteLock:
    """The store's write lock, taken (StoreLockedError: held; StoreWriteError: a full disk)."""
    lock = WriteLock(path / LOCK, StoreLockedError, StoreWriteError)
    lock.acquire()
    return lock


def check_root(path: Path) -> None:
    """Refuse a directory without the root zarr.json: a damaged store (it has a marker or
    arrays: StoreCorruptError) or no store at all (StoreError, bad input)."""
    if not (path / "zarr.json").is_file():
        if (path / MARKER).exists() or (path / "data").is_dir():
            raise StoreCorruptError(f"{path / 'zarr.json'}: missing (the store's root "
                                    f"metadata); restore the store from a copy")
        raise StoreError(f"{path}: no TransitionStore here (no zarr.json)")


def lay_out(path: Path, obs_dim: int, act_dim: int, spec: dict, chunk_rows: int,
            durable: bool, cameras: dict | None = None) -> None:
    """Lay out a new store in `path` (the caller holds its lock): an empty directory, or the
    leftovers of an interrupted create; a directory with rows but no marker is refused."""
    from o2o_robot.data.store.zarr_io import init_layout

    own = {LOCK, "zarr.json", "data", "meta"}
    other = [p.name for p in path.iterdir() if p.name not in own and not p.name.endswith(".partial")]
    if other:
        raise StoreError(f"{path}: directory is not empty ({', '.join(sorted(other)[:5])})")
    if leftovers(path) is not None:
        raise missing_marker_error(path)
    try:
        init_layout(path, obs_dim, act_dim, spec, chunk_rows, durable, cameras)
    except OSError as e:
        raise StoreWriteError(f"store not created: {os_error_line(e)}") from None


def check_marker_fits(path: Path, shapes: dict[str, int], rows: int) -> None:
    """StoreCorruptError when the marker claims more rows than the data arrays hold (the
    marker is written last, so this is damage, not a crash)."""
    short = {f: n for f, n in shapes.items() if (f in FIELDS or f.startswith(FRAMES)) and n < rows}
    if short:
        held = (f"the data/ arrays hold {min(short.values())}" if len(short) == len(FIELDS)
                and len(set(short.values())) == 1
                else ", ".join(f"data/{f} holds {n}" for f, n in short.items()))
        raise StoreCorruptError(f"{path / MARKER}: claims {rows} rows but {held} "
                                f"(`o2o-robot data repair {path}` rebuilds it from them)")


def repair(path: str | Path) -> dict:
    """Rebuild the commit marker of the store at `path` from its arrays (module docstring).

    Returns {"repaired": bool, "rows", "episodes", "was": what was wrong}; "repaired" is False
    when the store is consistent as it is. StoreCorruptError saying why when the marker cannot
    be rebuilt; nothing is changed then. Takes the write lock.
    """
    from o2o_robot.data.store.transition_store import TransitionStore

    path = Path(path)
    lock = take_lock(path)
    try:
        try:
            store = TransitionStore.open(path, "r")
            problems = store.validate()
        except StoreCorruptError as exc:
            problems = [str(exc)]
        if not problems:
            return {"repaired": False, "rows": len(store), "episodes": store.num_episodes,
                    "was": None}
        return _rebuild(path, problems[0])
    finally:
        lock.release()


def _rebuild(path: Path, was: str) -> dict:
    from o2o_robot.data.store.transition_store import TransitionStore
    from o2o_robot.data.store.zarr_io import StoreFiles

    files = StoreFiles(path, writable=True)
    files.open_arrays()
    shapes = files.shapes()
    cameras = files.cameras
    data = [*FIELDS, *(FRAMES + c for c in cameras)]
    rows, episodes = _one_length(shapes, data, "data"), _one_length(shapes, META, "meta")
    old = _old_marker(path)
    candidate = {"rows": rows, "episodes": episodes, "notes": dict(old.get("notes") or {})}
    store = TransitionStore(path, files, writable=False, flush_every=1, marker=candidate)
    problems = _check_old_sums(files, store.chunk_rows, old, rows) or store.validate()
    if problems:
        raise StoreCorruptError(f"{path}: cannot rebuild {MARKER} from the arrays ({rows} rows, "
                                f"{episodes} episodes): {problems[0]}; nothing was changed")
    if rows and all(not np.any(v[-1]) for v in store.read(start=rows - 1).values()):
        raise StoreCorruptError(f"{path}: cannot rebuild {MARKER}: the arrays end in all-zero "
                                f"rows (row {rows - 1}), the padding a writer killed before it "
                                f"closed the store leaves: which rows were committed cannot be "
                                f"told; nothing was changed")
    lengths = {**{f: rows for f in data}, **{m: episodes for m in META}}
    for c in cameras:   # end frames: one per episode
        lengths[FRAME_ENDS + c] = episodes
        if shapes[FRAME_ENDS + c] != episodes:
            raise StoreCorruptError(f"{path}: cannot rebuild {MARKER}: meta/frame_ends/{c} holds "
                                    f"{shapes[FRAME_ENDS + c]} entries for {episodes} episodes; "
                                    f"nothing was changed")
    sums = sum_all(CheckedReader(files, chunk_sizes(store.chunk_rows, cameras)), lengths)
    marker = {**candidate, "crc32": sums.to_marker()}
    if not marker["notes"]:
        del marker["notes"]
    files.commit([], marker)
    return {"repaired": True, "rows": rows, "episodes": episodes, "was": was}


def _check_old_sums(files, chunk_rows: int, old: dict, rows: int) -> list[str]:
    """Check the full data chunks against the old marker's sums, where it has them: a damaged
    chunk must not pass into the rebuilt marker as a good one."""
    reader = CheckedReader(files, chunk_sizes(chunk_rows, files.cameras))
    try:
        reader.sums = ChunkSums.from_marker(reader.sizes, old.get("crc32"), files.path / MARKER)
        base = min(int(old.get("rows", 0)), rows)
    except (StoreCorruptError, TypeError, ValueError):
        return []   # unusable old sums: the rebuilt marker's validation is all there is
    if reader.sums is None:
        return []
    data = [*FIELDS, *(FRAMES + c for c in files.cameras)]   # whole chunks: their sums are final
    return [p for f in data for p in reader.check_chunks(f, base // reader.sizes[f] * reader.sizes[f])]


def _one_length(shapes: dict[str, int], names, group: str) -> int:
    lengths = {shapes[n] for n in names}
    if len(lengths) != 1:
        raise StoreCorruptError(f"cannot rebuild {MARKER}: the {group}/ arrays differ in length ("
                                + ", ".join(f"{n} {shapes[n]}" for n in names) + "); nothing was changed")
    return lengths.pop()


def _old_marker(path: Path) -> dict:
    """The old marker as far as it can still be parsed ({} when it cannot): its notes (import
    and demo progress) are kept, its checksums checked."""
    try:
        old = json.loads((path / MARKER).read_text())
        return old if isinstance(old, dict) else {}
    except (OSError, ValueError):
        return {}
