"""ObservationAssembler: the latest value of every configured source -> one float32 obs vector.

The ROS node turns each message into plain values and calls an `update_*` method from its
subscription callback; the control tick calls `assemble()`. Each source owns a fixed slice of a
preallocated vector (config order; a JointState source is joint-major: ``[j1.position,
j1.velocity, j2.position, ...]``, the layout `o2o_robot.sim.reach` produces), so an update writes
in place and the tick only copies.

A malformed update (unknown topic, wrong type or length, NaN/inf, a value beyond float32 range,
which the float32 observation would turn into inf, a configured joint missing from a JointState)
is rejected whole: nothing is written, the previous value and its age are kept, and
the drop is counted per topic in `dropped` with the last reason in `drop_reasons`.

`stamp_s` is the receive time on the clock that the tick's `now_s` uses (the node's clock), not
the header stamp: ages must not depend on clock offsets between the robot and this computer.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from o2o_robot.config import ObservationSource, RobotSpec

JOINT_FIELDS = ("position", "velocity", "effort")
F32_MAX = float(np.finfo(np.float32).max)


class MalformedMessage(ValueError):
    """An observation update that was rejected; `reason` says why in words."""

    def __init__(self, topic: str, reason: str):
        super().__init__(f"{topic}: {reason}")
        self.topic = topic
        self.reason = reason


def _topic_key(topic: str) -> str:
    # "joint_states" and "/joint_states" name the same topic in the root namespace.
    return topic.lstrip("/")


def _check_float32(topic: str, what: str, arr: np.ndarray) -> None:
    """MalformedMessage unless every value is finite and within float32 range (the observation
    is float32: 1e39 is finite in float64 but inf there)."""
    if not np.isfinite(arr).all():
        raise MalformedMessage(topic, f"{what}: contains NaN or inf")
    if arr.size and float(np.abs(arr).max()) > F32_MAX:
        raise MalformedMessage(topic, f"{what}: contains values beyond float32 range "
                                      f"(|x| > {F32_MAX:.4g})")


def _vector(topic: str, what: str, values, length: int) -> np.ndarray:
    """`values` as a float64 vector of exactly `length` entries, finite in float32, else
    MalformedMessage."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise MalformedMessage(topic, f"{what}: not numeric") from None
    if arr.shape != (length,):
        raise MalformedMessage(topic, f"{what}: expected {length} values, got shape {arr.shape}")
    _check_float32(topic, what, arr)
    return arr


class _Slot:
    """One configured source: its slice of the obs vector and, for JointState, the joint lookup."""

    __slots__ = ("src", "start", "stop", "_names", "_rows")

    def __init__(self, src: ObservationSource, start: int):
        self.src = src
        self.start, self.stop = start, start + src.dim
        self._names: list[str] | None = None   # message joint order seen last (usually constant)
        self._rows: np.ndarray | None = None   # message index of each configured joint

    def joint_rows(self, topic: str, names: Sequence[str]) -> np.ndarray:
        """Index in the message of each configured joint; cached while the message order holds."""
        if self._names is None or list(names) != self._names:
            where = {}
            for i, name in enumerate(names):
                where.setdefault(name, i)
            missing = [j for j in self.src.joint_names if j not in where]
            if missing:
                raise MalformedMessage(topic, f"missing joint(s) {', '.join(missing)} "
                                              f"(message has: {', '.join(map(str, names)) or 'none'})")
            self._rows = np.array([where[j] for j in self.src.joint_names], dtype=np.intp)
            self._names = list(names)
        return self._rows


class ObservationAssembler:
    """Latest value per source, ages, readiness, and the assembled float32 observation."""

    def __init__(self, robot: RobotSpec, *, strict: bool = False):
        """`strict=True` raises MalformedMessage on a rejected update (after counting it)."""
        self.obs_dim = robot.obs_dim
        self.strict = strict
        self._obs = np.zeros(self.obs_dim, dtype=np.float32)
        self._slots: list[_Slot] = []
        self._by_topic: dict[str, list[int]] = {}
        start = 0
        for src in robot.observations:
            key = _topic_key(src.topic)
            same = self._by_topic.setdefault(key, [])
            if same and self._slots[same[0]].src.type != src.type:
                raise ValueError(f"robot.observations: topic {src.topic!r} is listed as both "
                                 f"{self._slots[same[0]].src.type} and {src.type}")
            same.append(len(self._slots))
            self._slots.append(_Slot(src, start))
            start += src.dim
        self.topics: list[str] = list(self._by_topic)        # config order, unique
        self._stamps = np.full(len(self._slots), -np.inf)    # -inf = never arrived (age inf)
        self.received: dict[str, int] = dict.fromkeys(self.topics, 0)
        self.dropped: dict[str, int] = {}
        self.drop_reasons: dict[str, str] = {}
        # The node may run callbacks and the timer on different threads (MultiThreadedExecutor):
        # the lock keeps the tick from copying a half-written slice.
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------- updates
    def update_joint_state(self, topic: str, names: Sequence[str], position: Sequence[float] = (),
                           velocity: Sequence[float] = (), effort: Sequence[float] = (),
                           stamp_s: float = 0.0) -> bool:
        """A sensor_msgs/JointState as plain lists; joints are picked by name, in config order."""
        try:
            slots = self._slots_for(topic, "joint_state", stamp_s)
            arrays = {"position": position, "velocity": velocity, "effort": effort}
            writes = []
            for i in slots:
                slot = self._slots[i]
                rows = slot.joint_rows(topic, names)
                block = np.empty((len(rows), len(slot.src.fields)), dtype=np.float64)
                for col, field in enumerate(slot.src.fields):
                    try:
                        arr = np.asarray(arrays[field], dtype=np.float64)
                    except (TypeError, ValueError):
                        raise MalformedMessage(topic, f"{field}: not numeric") from None
                    if arr.shape != (len(names),):
                        raise MalformedMessage(topic, f"{field}: {arr.size} values for "
                                                      f"{len(names)} joint names")
                    block[:, col] = arr[rows]
                # Only the selected joints must be finite: other joints are not ours to judge.
                _check_float32(topic, "selected joint values", block)
                writes.append((i, block.reshape(-1)))
        except MalformedMessage as exc:
            return self._reject(topic, exc)
        return self._write(topic, writes, stamp_s)

    def update_array(self, topic: str, values: Sequence[float], stamp_s: float = 0.0) -> bool:
        """A std_msgs/Float64MultiArray's data, of exactly the configured size."""
        try:
            slots = self._slots_for(topic, "float64_multi_array", stamp_s)
            writes = [(i, _vector(topic, "data", values, self._slots[i].src.dim)) for i in slots]
        except MalformedMessage as exc:
            return self._reject(topic, exc)
        return self._write(topic, writes, stamp_s)

    def update_pose(self, topic: str, xyz: Sequence[float], quat_xyzw: Sequence[float],
                    stamp_s: float = 0.0) -> bool:
        """A geometry_msgs/PoseStamped as position xyz and orientation xyzw (7 entries)."""
        try:
            slots = self._slots_for(topic, "pose_stamped", stamp_s)
            pos = _vector(topic, "position", xyz, 3)
            quat = _vector(topic, "orientation", quat_xyzw, 4)
            if float(np.dot(quat, quat)) < 1e-12:   # an all-zero quaternion is no rotation at all
                raise MalformedMessage(topic, "orientation: zero quaternion")
            value = np.concatenate([pos, quat])
            writes = [(i, value) for i in slots]
        except MalformedMessage as exc:
            return self._reject(topic, exc)
        return self._write(topic, writes, stamp_s)

    def _slots_for(self, topic: str, kind: str, stamp_s: float) -> list[int]:
        slots = self._by_topic.get(_topic_key(topic))
        if slots is None:
            raise MalformedMessage(topic, "not a configured observation topic")
        configured = self._slots[slots[0]].src.type
        if configured != kind:
            raise MalformedMessage(topic, f"configured as {configured}, got a {kind} update")
        if not np.isfinite(stamp_s):
            raise MalformedMessage(topic, f"stamp_s is not finite ({stamp_s!r})")
        return slots

    def _write(self, topic: str, writes: list[tuple[int, np.ndarray]], stamp_s: float) -> bool:
        with self._lock:
            for i, value in writes:
                slot = self._slots[i]
                self._obs[slot.start:slot.stop] = value
                self._stamps[i] = stamp_s
        self.received[_topic_key(topic)] += 1
        return True

    def _reject(self, topic: str, exc: MalformedMessage) -> bool:
        key = _topic_key(topic)
        self.dropped[key] = self.dropped.get(key, 0) + 1
        self.drop_reasons[key] = exc.reason
        if self.strict:
            raise exc
        return False

    # ----------------------------------------------------------------------------- the tick
    @property
    def ready(self) -> bool:
        """True once every source has delivered at least one accepted update."""
        return bool(np.isfinite(self._stamps).all())

    def any_stale(self, now_s: float, timeout_ms: float) -> bool:
        """Allocation-light check for the tick: is any source older than `timeout_ms` (or absent)?"""
        return bool(((now_s - self._stamps) * 1000.0 > timeout_ms).any())

    def ages_ms(self, now_s: float) -> dict[str, float]:
        """Age of each topic's latest accepted update in ms (inf before the first one)."""
        ages = (now_s - self._stamps) * 1000.0
        out: dict[str, float] = {}
        for key, slots in self._by_topic.items():
            out[key] = float(max(ages[i] for i in slots))
        return out

    def stale(self, now_s: float, timeout_ms: float) -> list[str]:
        """Topics whose latest update is older than `timeout_ms` or that never arrived."""
        return [topic for topic, age in self.ages_ms(now_s).items() if age > timeout_ms]

    def assemble(self, out: np.ndarray | None = None) -> np.ndarray:
        """Copy of the current observation (into `out` when given: float32, shape [obs_dim])."""
        if out is None:
            with self._lock:
                return self._obs.copy()
        if out.shape != (self.obs_dim,) or out.dtype != np.float32:
            raise ValueError(f"out: expected float32 [{self.obs_dim}], got {out.dtype} {list(out.shape)}")
        with self._lock:
            np.copyto(out, self._obs)
        return out

    def stats(self, now_s: float | None = None) -> dict:
        """Counts (and ages when `now_s` is given) for the status JSON."""
        info = {"ready": self.ready, "received": dict(self.received),
                "dropped": dict(self.dropped), "drop_reasons": dict(self.drop_reasons)}
        if now_s is not None:
            info["ages_ms"] = {k: (round(v, 1) if np.isfinite(v) else None)
                               for k, v in self.ages_ms(now_s).items()}
        return info
