"""ROS 2 messages <-> numpy, checked where they enter (STYLE.md rule 4).

Every `*_from_msg` returns plain numpy / Python values or raises `MessageError` saying what was
wrong (length, NaN/inf, a value beyond float32 range, inconsistent fields); the nodes count and
drop such messages. Every value ends up in a float32 observation, action or reward, where 1e39
(finite in a float64 message) would be inf, so it is refused here like NaN. Outgoing
`*_to_msg` builders fill the float64 sequences from one bytes copy (`array('d')`), which is what
rclpy stores them as anyway, instead of a per-element Python check.

Conventions: Float64MultiArray carries the vector in `data` with an empty layout (ros2_control's
forward command controller convention); an incoming layout is ignored. A JointState field may be
empty (not measured) or have one value per name; its NaN check is left to the
ObservationAssembler, which judges only the joints it uses (others may legitimately be NaN).
"""
from __future__ import annotations

import json
import math
from array import array
from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray, String


class MessageError(ValueError):
    """A message that cannot be used; the text says why (it goes to the status and the log)."""


def _doubles(values) -> array:
    """float64 values as the array('d') rclpy keeps sequences in (one copy, no per-item checks)."""
    return array("d", np.ascontiguousarray(values, dtype=np.float64).ravel().tobytes())


F32_MAX = float(np.finfo(np.float32).max)


def _finite_vector(values, what: str, size: int | None = None) -> np.ndarray:
    arr = np.array(values, dtype=np.float64)   # a copy: the message may be reused by rclpy
    if arr.ndim != 1:
        raise MessageError(f"{what}: expected a flat vector, got shape {arr.shape}")
    if size is not None and arr.size != size:
        raise MessageError(f"{what}: expected {size} values, got {arr.size}")
    if not np.isfinite(arr).all():
        raise MessageError(f"{what}: contains NaN or inf")
    if arr.size and float(np.abs(arr).max()) > F32_MAX:
        raise MessageError(f"{what}: contains values beyond float32 range (|x| > {F32_MAX:.4g})")
    return arr


# ------------------------------------------------------------------------------------ in
def array_from_msg(msg: Float64MultiArray, size: int | None = None) -> np.ndarray:
    """`msg.data` as a finite float64 vector (of exactly `size` values when given)."""
    return _finite_vector(msg.data, "data", size)


def joint_state_from_msg(msg: JointState) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(names, position, velocity, effort); each field is empty or has one value per name."""
    names = list(msg.name)
    fields = []
    for what in ("position", "velocity", "effort"):
        arr = np.array(getattr(msg, what), dtype=np.float64)
        if arr.size not in (0, len(names)):
            raise MessageError(f"{what}: {arr.size} values for {len(names)} joint names")
        fields.append(arr)
    if len(set(names)) != len(names):
        raise MessageError(f"duplicate joint names in {names}")
    return names, fields[0], fields[1], fields[2]


def pose_from_msg(msg: PoseStamped) -> tuple[np.ndarray, np.ndarray]:
    """(position xyz, orientation quaternion xyzw), both finite."""
    p, q = msg.pose.position, msg.pose.orientation
    return (_finite_vector((p.x, p.y, p.z), "position"),
            _finite_vector((q.x, q.y, q.z, q.w), "orientation"))


def float_from_msg(msg: Float64) -> float:
    """A float from std_msgs/Float64, finite in float32 (the stored reward's type)."""
    value = float(msg.data)
    if not math.isfinite(value):
        raise MessageError(f"data: contains NaN or inf ({value})")
    if abs(value) > F32_MAX:
        raise MessageError(f"data: beyond float32 range ({value:g})")
    return value


def bool_from_msg(msg: Bool) -> bool:
    return bool(msg.data)


# ----------------------------------------------------------------------------------- out
def array_to_msg(values, msg: Float64MultiArray | None = None) -> Float64MultiArray:
    """A Float64MultiArray with `data` = values (layout left empty); `msg` is reused if given."""
    msg = Float64MultiArray() if msg is None else msg
    msg.data = _doubles(values)
    return msg


def stamp_from_seconds(seconds: float) -> Time:
    sec = math.floor(seconds)
    return Time(sec=int(sec), nanosec=min(int(round((seconds - sec) * 1e9)), 999_999_999))


def joint_state_to_msg(names: Sequence[str], position=(), velocity=(), effort=(), *,
                       stamp: Time | None = None, frame_id: str = "") -> JointState:
    """A JointState; every non-empty field must have one value per name."""
    msg = JointState()
    msg.name = [str(n) for n in names]
    for what, values in (("position", position), ("velocity", velocity), ("effort", effort)):
        data = _doubles(values)
        if len(data) not in (0, len(msg.name)):
            raise MessageError(f"{what}: {len(data)} values for {len(msg.name)} joint names")
        setattr(msg, what, data)
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


def pose_to_msg(xyz: Sequence[float], quat_xyzw: Sequence[float], *, stamp: Time | None = None,
                frame_id: str = "") -> PoseStamped:
    msg = PoseStamped()
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in xyz)
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in quat_xyzw)
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


def float_to_msg(value: float) -> Float64:
    return Float64(data=float(value))


def bool_to_msg(value: bool) -> Bool:
    return Bool(data=bool(value))


def _plain(value):
    """JSON-ready value: numpy scalars/arrays to Python, NaN/inf to None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def status_to_msg(status: dict) -> String:
    """The status dict as std_msgs/String JSON (strict JSON: NaN/inf become null)."""
    return String(data=json.dumps(_plain(status), allow_nan=False, default=str,
                                  separators=(",", ":")))
