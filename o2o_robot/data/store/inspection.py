"""Read-only summaries and checks of a store's committed data: `counts`, `info`, `validate`.

Each takes the `TransitionStore` (for its committed rows and dimensions) and its `EpisodeLog`.
"""
from __future__ import annotations

import numpy as np

from o2o_robot.data.schema import FLOAT_FIELDS, READABLE_SCHEMA_VERSIONS, SOURCES, row_shape
from o2o_robot.data.schema import STORED_FIELDS as FIELDS
from o2o_robot.data.store.episodes import EpisodeLog
from o2o_robot.data.store.layout import FRAME_ENDS, FRAMES, META, array_dir


def counts(store, log: EpisodeLog) -> dict:
    """{source name: {"transitions": n, "episodes": m}} over committed data."""
    rows = np.bincount(store.read(["source"])["source"], minlength=len(SOURCES))
    eps = np.bincount(log.meta["episode_source"][:log.committed], minlength=len(SOURCES))
    return {s: {"transitions": int(rows[i]), "episodes": int(eps[i])} for i, s in enumerate(SOURCES)}


def info(store, log: EpisodeLog) -> dict:
    """JSON-able summary of the store (committed data; `buffered_rows` for a writer)."""
    sources = counts(store, log)
    e = log.committed
    rets, srcs = log.meta["episode_return"][:e], log.meta["episode_source"][:e]
    for code, name in enumerate(SOURCES):
        r = rets[srcs == code]
        sources[name].update({k: (float(fn(r)) if len(r) else None) for k, fn in
                              (("return_mean", np.mean), ("return_min", np.min), ("return_max", np.max))})
    out = {"path": str(store.path), "schema_version": store.schema_version, "obs_dim": store.obs_dim,
           "act_dim": store.act_dim, "spec": store.spec, "chunk_rows": store.chunk_rows,
           "rows": len(store), "episodes": e,
           "open_episode_rows": store.open_episode_rows, "buffered_rows": store.num_buffered,
           "sources": sources}
    if store.robots:   # rows per robot of a fleet learner's store
        per = np.bincount(store.read(["robot"])["robot"], minlength=max(store.robots) + 1)
        out["robots"] = {name: int(per[code]) for code, name in store.robots.items()}
    if store.cameras:
        out["cameras"] = cameras(store)
    return out


def _disk_bytes(directory) -> int:
    """Bytes of the chunk files in an array's directory."""
    return sum(p.stat().st_size for p in directory.glob("c*") if p.is_file())


def cameras(store) -> dict:
    """Per camera: shape, frames stored (one per row), end frames (one per episode), raw and
    on-disk bytes per frame (the chunk files of both arrays over the frames they hold; a
    writer's last chunk may hold uncommitted frames too)."""
    out = {}
    for cam, shape in store.cameras.items():
        stored = len(store) + store.num_episodes
        disk = sum(_disk_bytes(store.path / array_dir(p + cam)) for p in (FRAMES, FRAME_ENDS))
        out[cam] = {"shape": list(shape), "frames": len(store),
                    "end_frames": stored - len(store), "raw_bytes_per_frame": int(np.prod(shape)),
                    "disk_bytes_per_frame": round(disk / stored, 1) if stored else None}
    return out


def _layout(store, name: str) -> tuple[tuple, np.dtype]:
    """Per-row shape and dtype of array `name`."""
    if name in FIELDS:
        return row_shape(name, store.obs_dim, store.act_dim), FIELDS[name][0]
    if name in META:
        return (), META[name]
    return store.cameras[name.split("/", 1)[1]], np.dtype(np.uint8)   # a camera's arrays


def validate(store, log: EpisodeLog, arrays: dict, attrs: dict, reader) -> list[str]:
    """Consistency problems of the committed data (an empty list means consistent): the
    attributes, the arrays' lengths, shapes and dtypes, every chunk against its checksum
    (`reader`, an integrity.CheckedReader), then the values, block-wise."""
    problems, n, e = [], len(store), log.committed
    broken = reader.files.metadata_problem()
    if broken:
        problems.append(broken)
    if attrs.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
        problems.append(f"schema_version {attrs.get('schema_version')!r} is not one of "
                        f"{READABLE_SCHEMA_VERSIONS}")
    lengths = store._lengths(n, e)
    for name, arr in arrays.items():
        length = lengths[name]
        want, dtype = _layout(store, name)
        if arr.shape[0] < length:
            problems.append(f"{name}: {arr.shape[0]} rows < {length} committed")
        if tuple(arr.shape[1:]) != want or arr.dtype != dtype:
            problems.append(f"{name}: shape {arr.shape} {arr.dtype}, expected [N, *{want}] {dtype}")
    if problems:
        return problems
    for name in arrays:
        problems += reader.check_chunks(name, lengths[name])
    if problems:
        return problems
    meta = log.meta
    ends = meta["episode_ends"][:e]
    if e and (ends[0] <= 0 or np.any(np.diff(ends) <= 0) or ends[-1] > n):
        problems.append(f"meta/episode_ends: not strictly increasing within (0, {n}]")
    if np.any(meta["episode_source"][:e] >= len(SOURCES)):
        problems.append("meta/episode_source: unknown source code")
    if not np.isin(meta["episode_success"][:e], (-1, 0, 1)).all():
        problems.append("meta/episode_success: values other than -1, 0, 1")
    step = 8 * store.chunk_rows
    for lo in range(0, n, step):   # block-wise: bounded memory on large stores
        block = store.read(start=lo, stop=min(lo + step, n))
        for f in FLOAT_FIELDS:
            if not np.isfinite(block[f]).all():
                problems.append(f"{f}: NaN or inf in committed rows {lo}..{lo + len(block[f])}")
        if np.any(block["source"] >= len(SOURCES)):
            problems.append(f"source: unknown code in committed rows {lo}..{lo + len(block['source'])}")
    if problems or not e or ends[-1] > n:
        return problems
    reward, source = store.read(["reward", "source"], 0, int(ends[-1])).values()
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    sums = np.add.reduceat(reward.astype(np.float64), starts)
    bad = np.flatnonzero(~np.isclose(sums, meta["episode_return"][:e], rtol=1e-5, atol=1e-3))
    if len(bad):
        problems.append(f"meta/episode_return: differs from the sum of rewards in episode(s) "
                        f"{bad[:5].tolist()}")
    bad = np.flatnonzero(source[starts] != meta["episode_source"][:e])
    if len(bad):
        problems.append(f"meta/episode_source: differs from the first row's source in "
                        f"episode(s) {bad[:5].tolist()}")
    return problems
