"""In-memory replay mirror of the transition store, and the samplers the learners use.

The mirror holds every committed row in preallocated numpy arrays (one slot per row, growth
by doubling), so sampling never touches the disk. Offline-side rows (demo, intervention,
imported offline) are kept forever; online rows are a FIFO of `online_capacity` rows, as
RLPD's online buffer (capacity = max_steps): once full, a new online row overwrites the slot
of the oldest one. Each side keeps its own slot list, so drawing from a side is O(batch).

Samplers draw uniformly *with replacement*, as RLPD does (ALGORITHMS.md 1.2):
* `sample_mixed`: exactly `offline_count(n, offline_ratio)` offline-side rows, the rest online.
* `sample_big_batch`: the N*G UTD batch whose every contiguous minibatch of N rows has that
  exact composition (RLPD's even/odd interleave at ratio 0.5).
* `sample_recent`: OEMA's B_r, uniform over the newest `window` online rows.
* `PrioritySampler`: OEMA's balanced replay, P(i) proportional to priority, no IS weights.

A batch is a dict of arrays: obs, action, reward, next_obs, mask (= 1 - terminated; truncation
never changes it), terminated, truncated, source, policy_version, index (the mirror slot);
with cameras also `pixels/<camera>` and `next_pixels/<camera>`, uint8 [B, H, W, C * S] (S
stacked frames, oldest first), built by index from frames held once (frame_pool.py).
The mirror is not thread-safe: the learner thread owns it. numpy only (no torch, zarr, rclpy).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from o2o_robot.data.frame_pool import FramePool
from o2o_robot.data.schema import (FIELDS, SOURCE_CODE, SOURCES, source_code,
                                   validate_rows)

Batch = dict[str, np.ndarray]
_ONLINE = SOURCE_CODE["online"]
# Mirrored fields (timestamp is not needed for learning) plus the derived mask.
_STORED = ("obs", "action", "reward", "next_obs", "mask", "terminated", "truncated", "source",
           "policy_version")


def offline_count(n: int, offline_ratio: float) -> int:
    """Offline-side rows in a batch of `n`: `round(n * offline_ratio)` (Python rounding)."""
    if not 0.0 <= offline_ratio <= 1.0:
        raise ValueError(f"offline_ratio: expected a value in [0, 1], got {offline_ratio!r}")
    return int(round(n * offline_ratio))


def split_minibatches(batch: Batch, num_minibatches: int) -> list[Batch]:
    """Cut a big batch into `num_minibatches` contiguous minibatches (views, no copies)."""
    rows = len(batch["index"])
    if num_minibatches <= 0 or rows % num_minibatches:
        raise ValueError(f"num_minibatches: {num_minibatches} does not divide {rows} rows")
    size = rows // num_minibatches
    return [{k: v[g * size:(g + 1) * size] for k, v in batch.items()}
            for g in range(num_minibatches)]


def _grown(arr: np.ndarray, need: int) -> np.ndarray:
    """`arr` with at least `need` rows (capacity doubles, so appends are amortised O(1))."""
    if need <= len(arr):
        return arr
    out = np.empty((max(need, 2 * len(arr)),) + arr.shape[1:], arr.dtype)
    out[:len(arr)] = arr
    return out


class ReplayMirror:
    """Growable in-memory copy of the store's rows, with per-side slot lists for O(batch) draws.

    `index` in a batch is the row's slot. Offline-side slots never change meaning; an online
    slot is reused by a newer online row once `online_capacity` online rows are held.
    Actions are held in the learner's [-1, 1] units: callers pass the store's physical actions
    through `o2o_robot.spaces.ActionScaler.to_unit` before `add_rows`.
    `cameras` ({name: (H, W, C)}) and `frame_stacks` ({name: S}) add frames (FramePool).
    """

    def __init__(self, obs_dim: int, act_dim: int, *, online_capacity: int | None = None,
                 initial_capacity: int = 4096, cameras: dict | None = None,
                 frame_stacks: dict | None = None):
        if online_capacity is not None and online_capacity <= 0:
            raise ValueError(f"online_capacity: expected a positive integer or None, "
                             f"got {online_capacity!r}")
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.online_capacity = online_capacity
        cap = max(int(initial_capacity), 1)
        dims = {"obs": (obs_dim,), "act": (act_dim,), "scalar": ()}
        self._data = {f: np.zeros((cap,) + dims[FIELDS[f][1]], FIELDS[f][0])
                      for f in _STORED if f != "mask"}
        self._data["mask"] = np.zeros(cap, np.float32)
        self._n = 0                                   # slots in use (all hold live rows)
        self._off_slots = np.zeros(cap, np.int64)     # offline-side slots, insertion order
        self._n_off = 0
        self._on_slots = np.zeros(cap, np.int64)      # online slots; ring once at capacity
        self._n_on = 0
        self._on_start = 0                            # ring position of the oldest online row
        self._counts = np.zeros(len(SOURCES), np.int64)
        self._listeners: list[Callable[[np.ndarray], None]] = []
        self.frames = FramePool(cameras, frame_stacks or {}, cap) if cameras else None

    # ------------------------------------------------------------------------------ appends
    def add(self, *, frames=None, next_frames=None, episode_start=None, **row) -> None:
        """Append one row given as keyword fields; `source` may be a name ("demo", ...).

        `truncated`, `policy_version` and `timestamp` default to False, 0 and 0.0. `frames`,
        `next_frames`: {camera: [H, W, C]}; `episode_start` as in `add_rows`.
        """
        row.setdefault("truncated", False)
        row.setdefault("policy_version", 0)
        if "source" in row:
            row["source"] = source_code(row["source"])
        one = (lambda d: None if d is None else {k: np.asarray(v)[None] for k, v in d.items()})
        self.add_rows({k: np.asarray(v)[None] for k, v in row.items()}, frames=one(frames),
                      next_frames=one(next_frames),
                      episode_start=None if episode_start is None else [episode_start])

    def add_rows(self, rows: dict[str, np.ndarray], *, frames=None, next_frames=None,
                 episode_start=None) -> None:
        """Append a block of schema rows (validated; `timestamp` optional, it is not mirrored).

        Online rows beyond `online_capacity` overwrite the oldest online rows (FIFO). With
        cameras: `frames` ({camera: uint8 [N, H, W, C]}) is required, `next_frames` (the same
        shape) is used for rows whose next row does not follow them here (default: the row's
        own frame), and `episode_start` (bool [N]) says which rows begin an episode (default: the
        first row after a terminated or truncated one), so stacks never cross one.
        """
        rows = dict(rows)
        if self.frames is not None or frames:
            frames, next_frames, starts = self._check_frames(rows, frames, next_frames,
                                                             episode_start)
            cap = self.online_capacity
            n = len(starts)
            if cap is not None and n > cap:   # in pieces the FIFO can hold: stacks stay exact
                for a in range(0, n, cap):
                    cut = (lambda d: None if d is None else {k: v[a:a + cap] for k, v in d.items()})
                    self.add_rows(cut(rows), frames=cut(frames), next_frames=cut(next_frames),
                                  episode_start=starts[a:a + cap])
                return
            self._add_rows(rows, (frames, next_frames, starts))
            return
        self._add_rows(rows, None)

    def _check_frames(self, rows, frames, next_frames, episode_start):
        if self.frames is None:
            raise ValueError("frames: the mirror has no cameras")
        n = len(np.asarray(rows.get("obs", ())))
        ended = (np.asarray(rows.get("terminated", np.zeros(n, bool)), bool) |
                 np.asarray(rows.get("truncated", np.zeros(n, bool)), bool))
        return self.frames.check(n, frames, next_frames, episode_start, ended)

    def _add_rows(self, rows: dict[str, np.ndarray], frames: tuple | None) -> None:
        if "timestamp" not in rows and "obs" in rows:
            rows["timestamp"] = np.zeros(len(np.asarray(rows["obs"])), np.float64)
        rows = validate_rows(rows, self.obs_dim, self.act_dim)
        src = rows["source"]
        online = src == _ONLINE
        cap = self.online_capacity
        if cap is not None and online.sum() > cap:   # only the newest `cap` can survive
            keep = ~online | (np.cumsum(online[::-1])[::-1] <= cap)
            rows, src, online = {k: v[keep] for k, v in rows.items()}, src[keep], online[keep]
        if len(src) == 0:
            return
        dest, fresh = self._allocate(online)
        n_fresh = int(fresh.sum())
        self._reserve(self._n + n_fresh)
        if frames is not None:
            f, nf, starts = frames
            ended = bool(rows["terminated"][-1] or rows["truncated"][-1])
            self.frames.add(dest, ~fresh, f, starts, nf, ended)
        for f in _STORED:
            if f != "mask":
                self._data[f][dest] = rows[f]
        self._data["mask"][dest] = 1.0 - rows["terminated"].astype(np.float32)
        self._n += n_fresh
        new_off, new_on = dest[~online], dest[online & fresh]
        self._off_slots = _grown(self._off_slots, self._n_off + len(new_off))
        self._off_slots[self._n_off:self._n_off + len(new_off)] = new_off
        self._n_off += len(new_off)
        self._on_slots = _grown(self._on_slots, self._n_on + len(new_on))
        self._on_slots[self._n_on:self._n_on + len(new_on)] = new_on
        self._n_on += len(new_on)
        self._counts += np.bincount(src, minlength=len(SOURCES))
        self._counts[_ONLINE] = self._n_on
        for listener in self._listeners:
            listener(dest)

    def _allocate(self, online: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slots for a block (at most `online_capacity` online rows): offline rows and online
        rows while the FIFO has room take new slots at the end (`fresh`); later online rows
        take the slots of the oldest online rows, in order."""
        cap = self.online_capacity
        free = len(online) if cap is None else cap - self._n_on
        fresh = ~online | (np.cumsum(online) - 1 < free)
        n_fresh = int(fresh.sum())
        dest = np.empty(len(online), np.int64)
        dest[fresh] = self._n + np.arange(n_fresh)
        n_reuse = len(online) - n_fresh
        if n_reuse:
            dest[~fresh] = self._on_slots[(self._on_start + np.arange(n_reuse)) % cap]
            self._on_start = int((self._on_start + n_reuse) % cap)
        return dest, fresh

    def subscribe(self, listener: Callable[[np.ndarray], None]) -> None:
        """Call `listener(slots)` with the slots written by every later append."""
        self._listeners.append(listener)

    def _reserve(self, need: int) -> None:
        for f, arr in self._data.items():
            self._data[f] = _grown(arr, need)
        if self.frames is not None:
            self.frames.reserve(len(self._data["obs"]))

    # ---------------------------------------------------------------------------- sizes
    def __len__(self) -> int:
        return self._n

    def size(self, side_or_source: str) -> int:
        """Rows held for a side ("offline" = demo+intervention+offline, "online") or a source.

        "offline" names the side; the imported-offline source alone is `sizes()["offline"]`.
        """
        if side_or_source == "offline":
            return self._n_off
        if side_or_source in SOURCE_CODE:
            return int(self._counts[SOURCE_CODE[side_or_source]])
        raise ValueError(f"size: unknown side or source {side_or_source!r}; expected offline, "
                         f"online or one of {', '.join(SOURCES)}")

    def sizes(self) -> dict[str, int]:
        """Rows held per source name."""
        return {name: int(c) for name, c in zip(SOURCES, self._counts)}

    # ---------------------------------------------------------------------------- sampling
    def gather(self, idx: np.ndarray) -> Batch:
        """Rows at slots `idx` as a batch (copies); raises IndexError on a slot not in use."""
        idx = np.asarray(idx, np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self._n):
            raise IndexError(f"gather: slot out of range [0, {self._n})")
        return self._gather(idx)

    def _gather(self, idx: np.ndarray) -> Batch:
        batch = {f: np.take(self._data[f], idx, axis=0) for f in _STORED}
        batch["index"] = idx
        if self.frames is not None:
            batch.update(self.frames.gather(idx))
        return batch

    def _side_slots(self, side: str) -> np.ndarray:
        if side == "offline":
            return self._off_slots[:self._n_off]
        if side == "online":
            return self._on_slots[:self._n_on]
        raise ValueError(f"side: expected 'offline' or 'online', got {side!r}")

    def _draw(self, side: str, n: int, rng: np.random.Generator) -> np.ndarray:
        slots = self._side_slots(side)
        if n == 0:
            return np.empty(0, np.int64)
        if len(slots) == 0:
            raise ValueError(f"cannot sample {n} {side} rows: the {side} side is empty")
        return slots[rng.integers(0, len(slots), n)]

    def sample_uniform(self, n: int, rng: np.random.Generator) -> Batch:
        """`n` rows uniformly (with replacement) over all rows, whatever their source."""
        if self._n == 0:
            raise ValueError("cannot sample from an empty replay mirror")
        return self._gather(rng.integers(0, self._n, n))

    def sample_mixed(self, n: int, offline_ratio: float, rng: np.random.Generator) -> Batch:
        """Exactly `offline_count(n, offline_ratio)` offline-side rows first, then online rows."""
        k = offline_count(n, offline_ratio)
        return self._gather(np.concatenate([self._draw("offline", k, rng),
                                            self._draw("online", n - k, rng)]))

    def sample_big_batch(self, minibatch_size: int, num_minibatches: int, offline_ratio: float,
                         rng: np.random.Generator) -> Batch:
        """RLPD's UTD batch: G*N rows; every contiguous minibatch of N rows holds exactly
        `offline_count(N, offline_ratio)` offline-side rows.

        At ratio 0.5 with even N the rows interleave (even offline, odd online) as in RLPD;
        otherwise each minibatch is an offline block followed by an online block.
        Use `split_minibatches(batch, num_minibatches)` to cut it.
        """
        n, g = int(minibatch_size), int(num_minibatches)
        if n <= 0 or g <= 0:
            raise ValueError(f"minibatch_size and num_minibatches must be positive, got {n}, {g}")
        k = offline_count(n, offline_ratio)
        off = self._draw("offline", g * k, rng)
        on = self._draw("online", g * (n - k), rng)
        idx = np.empty(g * n, np.int64)
        if 2 * k == n:
            idx[0::2], idx[1::2] = off, on
        else:
            grid = idx.reshape(g, n)
            grid[:, :k] = off.reshape(g, k)
            grid[:, k:] = on.reshape(g, n - k)
        return self._gather(idx)

    def recent_slots(self, window: int, side: str = "online") -> np.ndarray:
        """Slots of the newest `window` rows of a side, oldest first (all rows if fewer)."""
        slots = self._side_slots(side)
        w = min(int(window), len(slots))
        if w <= 0:
            return np.empty(0, np.int64)
        if side == "online" and self._on_start:       # ring: logical order starts at _on_start
            return slots[(self._on_start + np.arange(len(slots) - w, len(slots))) % len(slots)]
        return slots[len(slots) - w:]

    def sample_recent(self, n: int, window: int, rng: np.random.Generator,
                      side: str = "online") -> Batch:
        """`n` rows uniformly among the newest `window` rows of `side` (OEMA's B_r)."""
        slots = self._side_slots(side)
        w = min(int(window), len(slots))
        if w <= 0:
            raise ValueError(f"cannot sample recent {side} rows: the window or side is empty")
        # Ring position of a draw j in [0, w): newest-w + j past the oldest row.
        pos = (self._on_start if side == "online" else 0) + len(slots) - w + rng.integers(0, w, n)
        return self._gather(slots[pos % len(slots)])


class PrioritySampler:
    """OEMA's balanced replay over all rows of a mirror: P(i) proportional to priority_i.

    A flat-array sum tree (leaves at [P, 2P), node i sums 2i and 2i+1). Rows written to the
    mirror after construction, including online slots reused by the FIFO, enter with the
    running maximum priority (initially 1). No importance-sampling weights, as in OEMA.
    """

    MIN_PRIORITY, MAX_PRIORITY = 0.001, 1000.0

    def __init__(self, mirror: ReplayMirror, *, min_priority: float = MIN_PRIORITY,
                 max_priority: float = MAX_PRIORITY):
        if not 0 < min_priority < max_priority:
            raise ValueError(f"priority clip: expected 0 < min < max, got {min_priority}, "
                             f"{max_priority}")
        self.mirror = mirror
        self.clip = (float(min_priority), float(max_priority))
        self.max_priority = 1.0
        self._leaves = 1
        self._tree = np.zeros(2, np.float64)
        self._size = 0
        self._on_rows(np.arange(len(mirror), dtype=np.int64))
        mirror.subscribe(self._on_rows)

    def _on_rows(self, slots: np.ndarray) -> None:
        self._size = len(self.mirror)
        if self._size > self._leaves:                  # grow: keep leaves, rebuild the sums
            leaves = self._tree[self._leaves:]
            self._leaves = 1 << int(np.ceil(np.log2(self._size)))
            self._tree = np.zeros(2 * self._leaves, np.float64)
            self._tree[self._leaves:self._leaves + len(leaves)] = leaves
            self._rebuild(np.arange(self._leaves, 2 * self._leaves))  # full pass
        self._set(slots, np.full(len(slots), self.max_priority))

    def _set(self, slots: np.ndarray, priorities: np.ndarray) -> None:
        nodes = np.asarray(slots, np.int64) + self._leaves
        self._tree[nodes] = priorities
        self._rebuild(nodes)

    def _rebuild(self, nodes: np.ndarray) -> None:
        """Recompute (not add to) the sums above `nodes` (all on the leaf level): no drift."""
        if len(nodes) * 4 > self._leaves:            # many leaves: one pass per level
            lo, hi = self._leaves // 2, self._leaves
            while lo >= 1:
                self._tree[lo:hi] = self._tree[2 * lo:2 * hi:2] + self._tree[2 * lo + 1:2 * hi:2]
                lo, hi = lo // 2, lo
            return
        nodes = nodes // 2                             # duplicates just rewrite the same sum
        while nodes.size and nodes[0] >= 1:
            self._tree[nodes] = self._tree[2 * nodes] + self._tree[2 * nodes + 1]
            nodes = nodes // 2

    @property
    def total(self) -> float:
        """Sum of all priorities."""
        return float(self._tree[1])

    def priorities(self, indices: np.ndarray) -> np.ndarray:
        """Current priorities of the given slots."""
        return self._tree[np.asarray(indices, np.int64) + self._leaves].copy()

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` slots drawn independently with P(i) = priority_i / total (vectorised descent)."""
        if self._size == 0:
            raise ValueError("cannot sample from an empty priority sampler")
        if n == 0:
            return np.empty(0, np.int64)
        u = rng.random(n) * self._tree[1]
        node = np.ones(n, np.int64)
        while node[0] < self._leaves:                  # every draw is at the same depth
            left = self._tree[2 * node]
            right = u >= left
            u = np.where(right, u - left, u)
            node = 2 * node + right
        # Rounding at the right edge can land on an empty padding leaf: take the last row.
        return np.minimum(node - self._leaves, self._size - 1)

    def update(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Set priorities (clipped to `clip`, default [0.001, 1000]) of slots; raises on NaN or
        bad slots."""
        indices = np.asarray(indices, np.int64)
        priorities = np.asarray(priorities, np.float64).reshape(indices.shape)
        if not np.all(np.isfinite(priorities)):
            raise ValueError("priorities: contains NaN or inf")
        if indices.size and (indices.min() < 0 or indices.max() >= self._size):
            raise IndexError(f"indices: slot out of range [0, {self._size})")
        clipped = np.clip(priorities, *self.clip)
        self._set(indices, clipped)
        if clipped.size:
            self.max_priority = max(self.max_priority, float(clipped.max()))

    # ------------------------------------------------------------ state (exact resume, OEMA)
    def state_dict(self) -> dict:
        """Plain data (checkpoint-safe): the priority of every slot (float64 bytes) and the
        running max. Slots are the mirror's, so restore into a mirror rebuilt in the same row
        order (`learning.core.load_mirror` does)."""
        leaves = self._tree[self._leaves:self._leaves + self._size]
        return {"rows": int(self._size), "priorities": leaves.astype(np.float64).tobytes(),
                "max_priority": float(self.max_priority)}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; ValueError when it does not fit the mirror's rows."""
        rows = int(state["rows"])
        values = np.frombuffer(state["priorities"], np.float64)
        if rows != self._size or len(values) != rows:
            raise ValueError(f"priority state: {rows} rows ({len(values)} priorities), the mirror "
                             f"holds {self._size}")
        if not np.all(np.isfinite(values)) or (rows and values.min() <= 0):
            raise ValueError("priority state: priorities must be finite and > 0")
        self._set(np.arange(rows, dtype=np.int64), values)
        self.max_priority = float(state["max_priority"])
