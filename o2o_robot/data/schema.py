"""The one transition schema used everywhere (store, replay, learner, control, importers).

A row is one environment step. `terminated` (a true terminal: no bootstrap) and `truncated`
(time limit or external reset: bootstrap still applies) are kept apart; the learner's mask is
`1 - terminated`, never `1 - (terminated | truncated)`.
"""
from __future__ import annotations

import math

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


_F32_MAX = float(np.finfo(np.float32).max)


def _shape_error(field: str, want, got) -> ValueError:
    return ValueError(f"{field}: expected shape [{', '.join(map(str, want))}], got {list(got)}")


def _nonfinite_error(field: str) -> ValueError:
    return ValueError(f"{field}: contains NaN or inf")


def validate_rows(rows: dict[str, np.ndarray], obs_dim: int, act_dim: int) -> dict[str, np.ndarray]:
    """Check a block of rows (every field, leading axis = rows) and return it cast to the schema.

    `source` may hold names or codes. Raises ValueError naming the field when a field is missing
    or unknown, has the wrong shape, holds NaN/inf or (given wider) values beyond float32 range,
    or names an unknown source. Nothing is modified in place.
    """
    src = np.asarray(rows.get("source", np.zeros(0)))
    if src.dtype.kind in "USO":
        codes = np.array([source_code(s) for s in src.ravel()], np.uint8).reshape(src.shape)
        rows = {**rows, "source": codes}
    missing = [f for f in FIELDS if f not in rows]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(missing)}")
    extra = [f for f in rows if f not in FIELDS]
    if extra:
        raise ValueError(f"unknown field(s): {', '.join(extra)}")
    n = None
    out: dict[str, np.ndarray] = {}
    narrowed = []
    for field, (dtype, _) in FIELDS.items():
        arr = np.asarray(rows[field])
        want = row_shape(field, obs_dim, act_dim)
        if arr.ndim != 1 + len(want) or tuple(arr.shape[1:]) != want:
            raise _shape_error(field, ("N",) + want, arr.shape)
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise ValueError(f"{field}: has {arr.shape[0]} rows, other fields have {n}")
        if field in FLOAT_FIELDS and not np.all(np.isfinite(arr)):
            raise _nonfinite_error(field)
        if field == "source":
            bad = arr[(arr < 0) | (arr >= len(SOURCES))] if arr.size else arr
            if bad.size:
                raise ValueError(f"source: unknown code {bad.flat[0]!r}")
        out[field] = arr.astype(dtype, copy=False)
        if field in FLOAT_FIELDS and arr.dtype != dtype:
            narrowed.append(field)
    for field in narrowed:   # finite in a wider float, inf once cast
        if not np.isfinite(out[field]).all():
            raise ValueError(f"{field}: contains values beyond float32 range")
    return out


def _scalar(field: str, value, cast):
    if not isinstance(value, (float, int, np.generic)) and np.ndim(value) != 0:
        raise _shape_error(field, (), np.shape(value))
    try:
        return cast(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{field}: {e}") from None


class RowValidator:
    """The rules of `validate_rows` for one row given field by field (the per-step append path).

    Built once per (obs_dim, act_dim). A call checks one row and returns it as schema values:
    the three vectors as float32 views of one scratch row, which the next call overwrites (so a
    single reduction checks them all for NaN/inf). Raises ValueError naming the field, as
    `validate_rows` does; a float beyond float32 range reads "contains NaN or inf" here, as it
    is inf once cast.
    """

    def __init__(self, obs_dim: int, act_dim: int):
        o, a = obs_dim, act_dim
        self._row = np.zeros(2 * o + a, np.float32)
        self._views = {"obs": self._row[:o], "action": self._row[o:o + a],
                       "next_obs": self._row[o + a:]}
        self._shapes = {f: row_shape(f, obs_dim, act_dim) for f in self._views}

    def __call__(self, obs, action, reward, next_obs, terminated, truncated, source,
                 policy_version, timestamp) -> dict:
        src = source_code(source)
        views = self._views
        for field, value in (("obs", obs), ("action", action), ("next_obs", next_obs)):
            if np.shape(value) != self._shapes[field]:
                raise _shape_error(field, self._shapes[field], np.shape(value))
            try:
                views[field][...] = value
            except (TypeError, ValueError) as e:
                raise ValueError(f"{field}: {e}") from None
        if not math.isfinite(np.add.reduce(self._row, dtype=np.float64)):
            raise _nonfinite_error(next(f for f, v in views.items() if not np.isfinite(v).all()))
        r = _scalar("reward", reward, float)
        if not abs(r) <= _F32_MAX:
            raise _nonfinite_error("reward")
        t = _scalar("timestamp", timestamp, float)
        if not math.isfinite(t):
            raise _nonfinite_error("timestamp")
        return {"obs": views["obs"], "action": views["action"], "reward": r,
                "next_obs": views["next_obs"], "terminated": _scalar("terminated", terminated, bool),
                "truncated": _scalar("truncated", truncated, bool), "source": src,
                "policy_version": _scalar("policy_version", policy_version, int), "timestamp": t}


# Key the actor adds to each row it hands on (not a stored field): the index of the episode the
# row belongs to. A consumer that sees it change while an episode is still open knows that the
# open episode's last row was dropped on the way, and closes (or discards) it.
EPISODE_INDEX_KEY = "episode_index"
# Key of the marker row (no data) the actor hands on when an episode ended on a row it could not
# record (e.g. no reward for it): the consumer closes the open episode with the marker's label.
END_EPISODE_KEY = "end_episode"
