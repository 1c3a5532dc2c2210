"""What every importer shares: the source protocol, spec checks, provenance, resumable writing.

`run_import(source, store)` reads the source twice. The first pass checks every episode (shapes,
NaN/inf, actions within the bounds) without writing, so a bad file leaves the store as it was.
The second pass writes each episode with `TransitionStore.append_episode`, which commits only at
episode ends and carries a provenance note in the same commit marker:

    notes["import:<sha256[:16]>"] = {format, path, sha256, options, source, episodes,
                                     episodes_done, rows_done}

The key is the content hash of the source (file bytes + the options that change the rows), so a
re-run after `kill -9` finds how many episodes are already committed and resumes after them, and
a completed import is refused as a duplicate unless `force` (then it is written again under a
new key). An interrupted import therefore never leaves a torn or duplicated episode.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from o2o_robot.data.schema import SOURCE_CODE, validate_rows
from o2o_robot.data.store import MARKER, TransitionStore
from o2o_robot.data.store.frames import check_block_next, check_frames

IMPORT_SOURCES = ("demo", "offline")          # what `--source` may name
ROW_FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")
NOTE_PREFIX = "import:"
BOUND_TOL = 1e-6                              # relative slack on action bounds (float32 rounding)


class ImportInputError(ValueError):
    """The source does not fit the store or the options (spec mismatch, missing topic, already
    imported): bad input, CLI exit 2. The message names the key, topic or option."""


class SourceFileError(Exception):
    """The source cannot be read, or holds unusable data (NaN, wrong shapes): CLI exit 1."""


@dataclass
class SourceEpisode:
    """One episode: `rows` has ROW_FIELDS on axis 0 (optionally `timestamp`, seconds since the
    epoch); `success` is the episode's label when the source knows it. A source with cameras
    gives `frames` ({camera: uint8 [n, H, W, C]}, row i's observation) and `next_frames` (the
    same at next_obs; within an episode the next row's frame, schema v2 stores each once)."""

    rows: dict[str, np.ndarray]
    success: bool | None = None
    frames: dict[str, np.ndarray] | None = None
    next_frames: dict[str, np.ndarray] | None = None


class Source(Protocol):
    """An importer's view of its input."""

    format: str     # "minari" | "rosbag" | "hdf5"
    path: Path      # the file or directory read (hashed for provenance)
    spec: dict      # store spec: obs_dim, act_dim, action_low/high (when known), task, names, dt
    options: dict   # settings that change the rows (part of the provenance key)
    cameras: dict   # {camera: (H, W, C)} of the episodes' frames; {} for vectors only

    def episodes(self) -> Iterator[SourceEpisode]: ...   # a fresh iteration on every call

    def stats(self) -> dict: ...                         # format-specific counts for the summary


def content_hash(path: Path, options: dict | None = None) -> str:
    """sha256 over the bytes of `path` (a file, or every file below a directory, by relative
    name) and the JSON of `options`."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        digest.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    digest.update(json.dumps(options or {}, sort_keys=True).encode())
    return digest.hexdigest()


def _bounds(spec: dict) -> tuple[np.ndarray, np.ndarray] | None:
    low, high = spec.get("action_low"), spec.get("action_high")
    if low is None or high is None:
        return None
    return np.asarray(low, np.float64), np.asarray(high, np.float64)


def check_spec(store_dims: tuple[int, int], store_spec: dict, src_spec: dict, label: str) -> None:
    """Refuse (ImportInputError naming the key) a source whose dims, action bounds or names
    differ from the store's. Keys the store does not record are not checked."""
    for key, have in zip(("obs_dim", "act_dim"), store_dims):
        if int(src_spec[key]) != int(have):
            raise ImportInputError(f"{key}: the store has {have}, {label} has {src_spec[key]}")
    ours, theirs = _bounds(store_spec), _bounds(src_spec)
    if ours is not None and theirs is not None:
        for key, a, b in (("action_low", ours[0], theirs[0]), ("action_high", ours[1], theirs[1])):
            if a.shape != b.shape or not np.allclose(a, b, rtol=BOUND_TOL, atol=BOUND_TOL):
                raise ImportInputError(f"{key}: the store has {a.tolist()}, {label} has {b.tolist()}")
    for key in ("obs_names", "action_names"):
        if store_spec.get(key) and src_spec.get(key) and list(store_spec[key]) != list(src_spec[key]):
            raise ImportInputError(f"{key}: the store has {store_spec[key]}, {label} has {src_spec[key]}")


def check_cameras(store_cameras: dict, src_cameras: dict, label: str) -> None:
    """Refuse (ImportInputError) a source whose cameras differ from the store's."""
    if dict(store_cameras) != dict(src_cameras):
        raise ImportInputError(f"cameras: the store has {dict(store_cameras) or 'none'}, {label} "
                               f"has {dict(src_cameras) or 'none'}")


def episode_frames(ep: SourceEpisode, index: int, cameras: dict, n: int, label: str) -> dict:
    """The episode's `frames` / `next_frames` arguments of `append_episode`, checked against
    `cameras` (SourceFileError naming the episode and the camera)."""
    if not cameras:
        return {}
    try:
        frames = check_frames(ep.frames, cameras, (n,))
        check_block_next(frames, ep.next_frames, cameras, n)
    except ValueError as e:
        raise SourceFileError(f"{label}: episode {index}: {e}") from None
    return {"frames": frames, "next_frames": ep.next_frames}


def episode_rows(ep: SourceEpisode, index: int, dims: tuple[int, int], source_code: int,
                 bounds, label: str, now: float) -> dict[str, np.ndarray]:
    """The episode as a full schema block, checked; SourceFileError / ImportInputError name the
    episode and the field."""
    rows = {f: np.asarray(ep.rows[f]) for f in ROW_FIELDS if f in ep.rows}
    missing = [f for f in ROW_FIELDS if f not in rows]
    if missing:
        raise SourceFileError(f"{label}: episode {index}: missing {', '.join(missing)}")
    n = len(rows["reward"])
    rows["source"] = np.full(n, source_code, np.uint8)
    rows["policy_version"] = np.asarray(ep.rows.get("policy_version", np.zeros(n, np.int64)))
    rows["timestamp"] = np.asarray(ep.rows.get("timestamp", np.full(n, now)))
    try:
        block = validate_rows(rows, *dims)
    except ValueError as e:
        raise SourceFileError(f"{label}: episode {index}: {e}") from None
    if n == 0:
        raise SourceFileError(f"{label}: episode {index} has no rows")
    if bounds is not None:
        low, high = bounds
        slack = BOUND_TOL * (high - low) + BOUND_TOL
        bad = (block["action"] < low - slack) | (block["action"] > high + slack)
        if bad.any():
            row, dim = map(int, np.argwhere(bad)[0])
            raise ImportInputError(
                f"action: {label} episode {index} row {row} dim {dim} is "
                f"{float(block['action'][row, dim]):g}, outside the bounds "
                f"[{low[dim]:g}, {high[dim]:g}] of the store")
    return block


def _progress(enabled: bool, total: int | None, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="ep", desc=desc, dynamic_ncols=True, leave=False,
                disable=None)   # None: only on a terminal


def run_import(src: Source, store_path, *, source: str = "offline", force: bool = False,
               flush_every: int = 1000, durable: bool = True, progress: bool = False,
               on_episode: Callable[[int], None] | None = None) -> dict:
    """Check `src` against the store at `store_path` (created with `src.spec` when absent), then
    import its episodes resumably (see the module docstring); returns a summary dict.

    `on_episode(i)` is called after source episode i was handed to the store (tests use it)."""
    if source not in IMPORT_SOURCES:
        raise ImportInputError(f"--source: expected one of {', '.join(IMPORT_SOURCES)}, got {source!r}")
    store_path, label = Path(store_path), str(src.path)
    dims = (int(src.spec["obs_dim"]), int(src.spec["act_dim"]))
    cameras = dict(getattr(src, "cameras", None) or {})
    existed = (store_path / MARKER).is_file()   # else absent, or a create that was cut short
    store_spec: dict = {}
    notes: dict = {}
    if existed:
        with TransitionStore.open(store_path, "r") as reader:
            check_spec((reader.obs_dim, reader.act_dim), reader.spec, src.spec, label)
            check_cameras(reader.cameras, cameras, label)
            store_spec, notes = reader.spec, reader.notes
    digest = content_hash(src.path, {"format": src.format, **src.options})
    base_key = NOTE_PREFIX + digest[:16]
    _pick_key(notes, base_key, force, label, store_path)   # a duplicate fails before any work
    bounds = _bounds(store_spec) or _bounds(src.spec)
    code, now = SOURCE_CODE[source], time.time()

    bar, lengths = _progress(progress, None, "checking"), []
    for i, ep in enumerate(src.episodes()):          # pass 1: nothing is written
        lengths.append(len(episode_rows(ep, i, dims, code, bounds, label, now)["reward"]))
        episode_frames(ep, i, cameras, lengths[-1], label)
        bar is not None and bar.update(1)
    bar is not None and bar.close()
    if not lengths:
        raise SourceFileError(f"{label}: no complete episode found")

    store = TransitionStore.open_or_create(store_path, *dims, flush_every=flush_every,
                                           spec=src.spec, durable=durable, cameras=cameras)
    summary = {"source_path": label, "format": src.format, "store": str(store_path),
               "source": source, "task": store.spec.get("task"), "sha256": digest,
               "episodes_in_source": len(lengths)}
    returns: list[float] = []
    finished = False
    try:
        key, entry = _pick_key(store.notes, base_key, force, label, store_path)
        skip = int(entry["episodes_done"]) if entry else 0
        summary["resumed_after"] = skip
        if store.open_episode_rows:   # cut by another writer's crash: never merge it with ours
            summary["closed_open_episode_rows"] = store.open_episode_rows
            store.end_episode(success=None)
        note = {"format": src.format, "path": label, "sha256": digest, "options": src.options,
                "source": source, "episodes": len(lengths), "time": now}
        done_rows = sum(lengths[:skip])
        bar = _progress(progress, len(lengths) - skip, "importing")
        for i, ep in enumerate(src.episodes()):       # pass 2: episode by episode
            if i < skip:
                continue
            block = episode_rows(ep, i, dims, code, bounds, label, now)
            done_rows += len(block["reward"])
            store.append_episode(block, success=ep.success, notes={key: {
                **note, "episodes_done": i + 1, "rows_done": done_rows}},
                **episode_frames(ep, i, cameras, len(block["reward"]), label))
            returns.append(float(block["reward"].sum(dtype=np.float64)))
            bar is not None and bar.update(1)
            if on_episode is not None:
                on_episode(i)
        bar is not None and bar.close()
        finished = True
    finally:   # interrupted (Ctrl-C, an error): commit nothing more, a part-staged episode least
        store.close() if finished else store.abort()
        if not existed and store.num_episodes == 0:   # created here and nothing landed in it
            shutil.rmtree(store_path, ignore_errors=True)
    summary.update(episodes=len(returns), transitions=sum(lengths[skip:]),
                   return_mean=float(np.mean(returns)) if returns else None,
                   return_min=float(np.min(returns)) if returns else None,
                   return_max=float(np.max(returns)) if returns else None,
                   note_key=key, details=src.stats())
    return summary


def _pick_key(notes: dict, key: str, force: bool, label: str,
              store_path: Path) -> tuple[str, dict | None]:
    """(provenance key, its entry to resume or None). A completed import is refused, unless
    `force`: then the next copy `key#2`, `key#3`, ... is used (and resumed, if cut short)."""
    complete = lambda e: int(e["episodes_done"]) >= int(e["episodes"])  # noqa: E731
    entry = notes.get(key)
    if entry is None or not complete(entry):
        return key, entry
    if not force:
        raise ImportInputError(
            f"{label}: already imported into {store_path} ({entry['episodes']} episodes, "
            f"{entry['rows_done']} transitions as {entry['source']}, sha256 "
            f"{entry['sha256'][:12]}); pass --force to import it again")
    for n in range(2, 10**6):
        copy = notes.get(f"{key}#{n}")
        if copy is None or not complete(copy):
            return f"{key}#{n}", copy
    raise ImportInputError(f"{label}: too many copies in {store_path}")


def source_spec(obs_dim: int, act_dim: int, *, task: str, low=None, high=None,
                obs_names=(), action_names=(), dt: float | None = None, **extra) -> dict:
    """A store spec with the keys `sim.envs.env_spec` uses (bounds only when finite)."""
    spec = {"task": task, "obs_dim": int(obs_dim), "act_dim": int(act_dim),
            "obs_names": list(obs_names), "action_names": list(action_names), "dt": dt, **extra}
    if low is not None and high is not None:
        low, high = np.ravel(low).astype(float), np.ravel(high).astype(float)
        if np.isfinite(low).all() and np.isfinite(high).all():
            spec["action_low"], spec["action_high"] = low.tolist(), high.tolist()
    return spec

