"""The one transition schema used everywhere (store, replay, learner, control, importers).

A row is one environment step. `terminated` (a true terminal: no bootstrap) and `truncated`
(time limit or external reset: bootstrap still applies) are kept apart; the learner's mask is
`1 - terminated`, never `1 - (terminated | truncated)`.
"""
from __future__ import annotations

import numpy as np

SCHEMA_VERSION = 1

# Source codes as stored in `data/source` (uint8). The order is part of the on-disk format.
SOURCES: tuple[str, ...] = ("demo", "online", "intervention", "offline")
SOURCE_CODE: dict[str, int] = {name: code for code, name in enumerate(SOURCES)}
# RLPD's "offline" half: everything that is not the learner's own online data.
OFFLINE_SIDE: tuple[str, ...] = ("demo", "intervention", "offline")
OFFLINE_SIDE_CODES: tuple[int, ...] = tuple(SOURCE_CODE[s] for s in OFFLINE_SIDE)
ONLINE_SIDE_CODES: tuple[int, ...] = (SOURCE_CODE["online"],)

# field -> (dtype, per-row shape kind): "obs" = [obs_dim], "act" = [act_dim], "scalar" = []
FIELDS: dict[str, tuple[np.dtype, str]] = {
    "obs": (np.dtype(np.float32), "obs"),
    "action": (np.dtype(np.float32), "act"),
    "reward": (np.dtype(np.float32), "scalar"),
    "next_obs": (np.dtype(np.float32), "obs"),
    "terminated": (np.dtype(np.bool_), "scalar"),
    "truncated": (np.dtype(np.bool_), "scalar"),
    "source": (np.dtype(np.uint8), "scalar"),
    "policy_version": (np.dtype(np.int64), "scalar"),
    "timestamp": (np.dtype(np.float64), "scalar"),
}
FLOAT_FIELDS: tuple[str, ...] = ("obs", "action", "reward", "next_obs", "timestamp")


def row_shape(field: str, obs_dim: int, act_dim: int) -> tuple[int, ...]:
    """Per-row shape of `field` for the given dimensions."""
    kind = FIELDS[field][1]
    return {"obs": (obs_dim,), "act": (act_dim,), "scalar": ()}[kind]


def source_code(source: str | int) -> int:
    """Map a source name (or an already valid code) to its uint8 code; raise naming bad values."""
    if isinstance(source, (int, np.integer)):
        if 0 <= int(source) < len(SOURCES):
            return int(source)
        raise ValueError(f"source: unknown code {source!r}; expected 0..{len(SOURCES) - 1}")
    if source not in SOURCE_CODE:
        raise ValueError(f"source: unknown source {source!r}; expected one of {', '.join(SOURCES)}")
    return SOURCE_CODE[source]


def validate_rows(rows: dict[str, np.ndarray], obs_dim: int, act_dim: int) -> dict[str, np.ndarray]:
    """Check a block of rows (every field, leading axis = rows) and return it cast to the schema.

    Raises ValueError naming the field when a field is missing or unknown, has the wrong shape,
    or holds NaN/inf. Nothing is modified in place.
    """
    missing = [f for f in FIELDS if f not in rows]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(missing)}")
    extra = [f for f in rows if f not in FIELDS]
    if extra:
        raise ValueError(f"unknown field(s): {', '.join(extra)}")
    n = None
    out: dict[str, np.ndarray] = {}
    for field, (dtype, _) in FIELDS.items():
        arr = np.asarray(rows[field])
        want = row_shape(field, obs_dim, act_dim)
        if arr.ndim != 1 + len(want) or tuple(arr.shape[1:]) != want:
            raise ValueError(f"{field}: expected shape [N, {', '.join(map(str, want))}]"
                             .replace(", ]", "]") + f", got {list(arr.shape)}")
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise ValueError(f"{field}: has {arr.shape[0]} rows, other fields have {n}")
        if field in FLOAT_FIELDS and not np.all(np.isfinite(arr)):
            raise ValueError(f"{field}: contains NaN or inf")
        if field == "source":
            bad = arr[(arr < 0) | (arr >= len(SOURCES))] if arr.size else arr
            if bad.size:
                raise ValueError(f"source: unknown code {bad.flat[0]!r}")
        out[field] = arr.astype(dtype, copy=False)
    return out


# Key the actor adds to each row it hands on (not a stored field): the index of the episode the
# row belongs to. A consumer that sees it change while an episode is still open knows that the
# open episode's last row was dropped on the way, and closes (or discards) it.
EPISODE_INDEX_KEY = "episode_index"
# Key of the marker row (no data) the actor hands on when an episode ended on a row it could not
# record (e.g. no reward for it): the consumer closes the open episode with the marker's label.
END_EPISODE_KEY = "end_episode"
