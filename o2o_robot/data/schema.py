"""The one transition schema used everywhere (store, replay, learner, control, importers).

A row is one environment step. `terminated` (a true terminal: no bootstrap) and `truncated`
(time limit or external reset: bootstrap still applies) are kept apart; the learner's mask is
`1 - terminated`, never `1 - (terminated | truncated)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Version 2 added camera frames (data/frames/<camera>, meta/frame_ends/<camera>); a version-1
# store is a version-2 store without cameras, and is read and appended to as it is.
SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS: tuple[int, ...] = (1, 2)

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

# Where a stored row came from, beside the producer's FIELDS: `robot` (a code, 0 = this machine;
# a store names the others in its notes, `TransitionStore.robot_code`) and `seq`, the row's
# number in its robot's spool (-1 = not numbered). A fleet learner ingests by (robot, seq).
# Optional wherever rows are given: missing means the defaults.
ORIGIN_FIELDS: dict[str, np.dtype] = {"robot": np.dtype(np.uint16), "seq": np.dtype(np.int64)}
ORIGIN_DEFAULTS: dict[str, int] = {"robot": 0, "seq": -1}
# Every array of a store: the row fields, then the origin fields.
STORED_FIELDS: dict[str, tuple[np.dtype, str]] = {
    **FIELDS, **{f: (dt, "scalar") for f, dt in ORIGIN_FIELDS.items()}}


def row_shape(field: str, obs_dim: int, act_dim: int) -> tuple[int, ...]:
    """Per-row shape of `field` for the given dimensions."""
    kind = STORED_FIELDS[field][1]
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


def validate_rows(rows: dict[str, np.ndarray], obs_dim: int, act_dim: int, *,
                  origin: bool = False) -> dict[str, np.ndarray]:
    """Check a block of rows (every field, leading axis = rows) and return it cast to the schema.

    `source` may hold names or codes. Raises ValueError naming the field when a field is missing
    or unknown, has the wrong shape, holds NaN/inf or (given wider) values beyond float32 range,
    or names an unknown source. The ORIGIN_FIELDS are optional: checked and kept when given,
    filled with their defaults when missing and `origin` (the store's blocks). Nothing is
    modified in place.
    """
    src = np.asarray(rows.get("source", np.zeros(0)))
    if src.dtype.kind in "USO":
        codes = np.array([source_code(s) for s in src.ravel()], np.uint8).reshape(src.shape)
        rows = {**rows, "source": codes}
    missing = [f for f in FIELDS if f not in rows]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(missing)}")
    extra = [f for f in rows if f not in STORED_FIELDS]
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
    for field, dtype in ORIGIN_FIELDS.items():
        if field in rows:
            out[field] = _origin_column(field, rows[field], n)
        elif origin:
            out[field] = np.full(n, ORIGIN_DEFAULTS[field], dtype)
    return out


def _origin_column(field: str, values, n: int) -> np.ndarray:
    """An origin field of a block: integers of shape [n] within the field's range."""
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise _shape_error(field, ("N",), arr.shape)
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{field}: expected integers, got {arr.dtype}")
    low, high = _origin_range(field)
    if arr.size and (arr.min() < low or arr.max() > high):
        raise ValueError(f"{field}: values must lie in [{low}, {high}]")
    return arr.astype(ORIGIN_FIELDS[field])


def _origin_range(field: str) -> tuple[int, int]:
    return (-1 if field == "seq" else 0), int(np.iinfo(ORIGIN_FIELDS[field]).max)


def _origin_scalar(field: str, value) -> int:
    """One row's origin field (the per-step append path: no arrays)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{field}: expected an integer, got {value!r}")
    low, high = _origin_range(field)
    if not low <= value <= high:
        raise ValueError(f"{field}: must lie in [{low}, {high}], got {value}")
    return int(value)


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
                 policy_version, timestamp, robot=0, seq=-1) -> dict:
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
                "policy_version": _scalar("policy_version", policy_version, int), "timestamp": t,
                "robot": _origin_scalar("robot", robot), "seq": _origin_scalar("seq", seq)}


# ------------------------------------------------------------------------- the typed stream
# Sources whose rows are steps the robot (or sim) took in this run: what counts as an env step
# for the learner's update-to-data ratio. Demo and imported offline rows are not.
ACTING_SOURCE_CODES: tuple[int, ...] = (SOURCE_CODE["online"], SOURCE_CODE["intervention"])


@dataclass(frozen=True, slots=True)
class Transition:
    """One environment step as every producer hands it on (actor node, sim harness, bag replay).

    `action` is in physical units, as sent. `episode` is the producer's episode index and `step`
    the row's index within that episode (0-based): together they let an `EpisodeAssembler` see a
    row lost on the way. `success` is the outcome label, meaningful on an episode's last row.
    `robot` and `seq` say where it came from (ORIGIN_FIELDS; set by a fleet learner).
    `frames` holds, per camera, the newest single frame (uint8 [H, W, C], not stacked) seen at
    `obs`, and `next_frames` the one at `next_obs` (the store keeps only an episode's last
    row's: every other next frame is the next row's frame); None for vector-only producers.
    """

    obs: np.ndarray
    action: np.ndarray
    reward: float
    next_obs: np.ndarray
    terminated: bool
    truncated: bool
    source: int
    policy_version: int = 0
    timestamp: float = 0.0
    episode: int = 0
    step: int = 0
    success: bool | None = None
    robot: int = 0
    seq: int = -1
    frames: dict[str, np.ndarray] | None = None
    next_frames: dict[str, np.ndarray] | None = None

    @property
    def ends_episode(self) -> bool:
        """The episode ends with this row (terminal state, time limit or operator)."""
        return bool(self.terminated or self.truncated)

    @property
    def is_env_step(self) -> bool:
        """A step of this run (online or intervention), counted for the update-to-data ratio."""
        return int(self.source) in ACTING_SOURCE_CODES

    def row(self) -> dict:
        """The stored fields (STORED_FIELDS: the row and its origin) as a dict."""
        return {f: getattr(self, f) for f in STORED_FIELDS}


@dataclass(frozen=True, slots=True)
class EpisodeEnd:
    """Episode `episode` ended on a step its producer could not record (e.g. no reward for it):
    close it with `success` instead of waiting for a last row that will not come."""

    episode: int
    success: bool | None = None


@dataclass(frozen=True)
class Segment:
    """What an `EpisodeAssembler` hands to its writer: rows to append, then (when `end`) the
    end of the store episode with its `success` label."""

    rows: tuple[Transition, ...]
    end: bool = False
    success: bool | None = None


class EpisodeAssembler:
    """Turns a stream of `Transition` / `EpisodeEnd` with possible gaps into store episodes.

    The store contract: a store episode is an unbroken run of steps of one producer episode (a
    row's next_obs is the next row's obs), closed exactly once. A gap breaks that, so:

    * a row lost in the middle (its `step` is not the next one): `on_gap="split"` closes the part
      before the gap (success unknown) and starts a new store episode at the row;
      `on_gap="discard"` drops the whole producer episode;
    * an episode whose last row was lost (rows of a later episode arrive while it is open): it is
      closed with success unknown ("split") or dropped ("discard");
    * `EpisodeEnd(i)` closes episode i with its label (the rows before are whole).

    A producer episode may start at any `step` (an operator who engages late, a learner that
    starts mid-episode): only a gap between consecutive rows counts.

    `whole=False` hands rows on as they arrive (the learner: every row is mirrored and counted at
    once); `whole=True` buffers a producer episode and hands it on in one `Segment` with its end
    (demo recorder, importers: a crash leaves an episode complete or absent). `counts` says what
    happened: episodes, splits, cut (last row lost), discarded, rows_discarded.
    Users: `learning.core.LearnerCore` (split, rows as they come), `teleop.recorder.DemoRecorder`
    (discard, whole), the rosbag importer (split, whole).
    """

    def __init__(self, *, on_gap: str = "split", whole: bool = False):
        if on_gap not in ("split", "discard"):
            raise ValueError(f"on_gap: expected 'split' or 'discard', got {on_gap!r}")
        if on_gap == "discard" and not whole:
            raise ValueError("on_gap 'discard' needs whole=True: rows handed on cannot be taken back")
        self.on_gap, self.whole = on_gap, bool(whole)
        self.counts = dict.fromkeys(["episodes", "splits", "cut", "discarded", "rows_discarded"], 0)
        self._episode: int | None = None     # producer episode of the open store episode
        self._next_step = 0
        self._rows: list[Transition] = []    # buffered rows (whole=True)
        self._open_rows = 0                  # rows of the open store episode, handed on or buffered
        self._torn = False                   # discard mode: the open episode has a gap
        self.discarded: list[tuple[int, int]] = []   # (episode, rows) dropped; the user clears it

    @property
    def open_rows(self) -> int:
        """Rows of the episode in progress (handed on or buffered)."""
        return self._open_rows

    def push(self, item: Transition | EpisodeEnd) -> list[Segment]:
        """Take one item; return what to write, in order."""
        if isinstance(item, EpisodeEnd):
            if not self._open_rows:
                return []
            if item.episode == self._episode:
                return self._close(item.success)
            return self._interrupt("cut")
        out: list[Segment] = []
        if self._open_rows and item.episode != self._episode:
            out += self._interrupt("cut")              # its last row never came
        elif self._open_rows and item.step != self._next_step:
            if self.on_gap == "discard":               # a row lost in the middle
                self._torn = True
            else:
                out += self._interrupt("splits")
        if not self._open_rows:
            self._episode = item.episode
        self._next_step, self._open_rows = item.step + 1, self._open_rows + 1
        if self.whole:
            self._rows.append(item)
            return out + (self._close(item.success) if item.ends_episode else [])
        if item.ends_episode:
            return out + self._close(item.success, last=item)
        return out + [Segment((item,))]

    def close(self) -> list[Segment]:
        """The stream ended: an episode in progress is closed (split) or dropped (discard)."""
        return self._interrupt("cut") if self._open_rows else []

    def _interrupt(self, why: str) -> list[Segment]:
        """The open episode cannot continue: close what is whole (split), or drop it (discard)."""
        if self.on_gap == "discard":
            self._torn = True
        else:
            self.counts[why] += 1
        return self._close(None)

    def _close(self, success: bool | None, last: Transition | None = None) -> list[Segment]:
        rows = tuple(self._rows) + ((last,) if last is not None else ())
        n, torn, episode = self._open_rows, self._torn, self._episode
        self._rows, self._open_rows, self._episode, self._torn = [], 0, None, False
        if torn:
            self.counts["discarded"] += 1
            self.counts["rows_discarded"] += n
            self.discarded.append((episode, n))
            return []
        self.counts["episodes"] += 1
        return [Segment(rows, end=True, success=success)]
