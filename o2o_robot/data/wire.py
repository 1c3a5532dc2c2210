"""The fleet's payloads on standard ROS 2 message types, versioned (docs/fleet.md writes it down).

Transitions and policies travel as the `data` of a std_msgs/UInt8MultiArray (no custom
interface package: the pinned Jazzy wheels cannot build one on a machine without a ROS 2
install), so `ros2 bag record` records them like any topic. Acknowledgements and robot
heartbeats are small JSON documents in a std_msgs/String (`ros2 topic echo` shows them).

Both binary payloads share a frame, all integers little-endian:

    magic (4 bytes) | format version u16 | flags u16 (0) | header length u32 | JSON header | body

Transitions (magic b"O2OB"), one batch of consecutive rows of one robot's spool. Header:
{"robot", "first_seq", "rows" n, "obs_dim", "act_dim", "next_obs_rows" k, "cameras": [{"name",
"height", "width", "channels"}]}. Body, each column contiguous, in this order:

    obs f32 [n, obs_dim] | action f32 [n, act_dim] | reward f32 [n] | terminated u8 [n] |
    truncated u8 [n] | source u8 [n] | policy_version i64 [n] | timestamp f64 [n] |
    end i8 [n] | next_sent u8 [n] | next_obs f32 [k, obs_dim] |
    per camera: frames u8 [n, h, w, c], next frames u8 [k, h, w, c]

`end` says how the row's episode goes on: END_CONTINUES (-2), or it ends here with success
unknown (-1), failed (0), succeeded (1). A row's next observation (vector and frames) is sent
only where it is not the next row's observation (`next_sent` 1: the last row, an episode's last
row, a gap); so each frame travels once.

Policies (magic b"O2OP"): header {"version", "learner", "time" (wall-clock seconds at
publication), "bytes", "sha256"}, body the ONNX file (its own metadata: spec, algorithm,
config hash).
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field

import numpy as np

from o2o_robot.data.schema import FIELDS

FORMAT_VERSION = 1
BATCH_MAGIC, POLICY_MAGIC = b"O2OB", b"O2OP"
_FRAME = struct.Struct("<4sHHI")
END_CONTINUES = -2
_COLUMNS = (("obs", np.float32, "obs"), ("action", np.float32, "act"), ("reward", np.float32, ""),
            ("terminated", np.uint8, ""), ("truncated", np.uint8, ""), ("source", np.uint8, ""),
            ("policy_version", np.int64, ""), ("timestamp", np.float64, ""),
            ("end", np.int8, ""), ("next_sent", np.uint8, ""))


class WireError(ValueError):
    """A payload that cannot be decoded; the message says what is wrong."""


@dataclass
class RowBatch:
    """Rows [first_seq, first_seq + n) of `robot`'s spool: the schema FIELDS (obs, action, ...,
    next_obs), `end` per row (see the module docstring) and optional camera frames (name ->
    uint8 [n, h, w, c], with their next frames)."""

    robot: str
    first_seq: int
    rows: dict[str, np.ndarray]
    end: np.ndarray
    frames: dict[str, np.ndarray] = field(default_factory=dict)
    next_frames: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.end)


def _frame(magic: bytes, header: dict, body: list) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([_FRAME.pack(magic, FORMAT_VERSION, 0, len(head)), head,
                     *(np.ascontiguousarray(a).tobytes() for a in body)])


def _unframe(data, magic: bytes, what: str) -> tuple[dict, memoryview]:
    view = memoryview(data).cast("B")
    if len(view) < _FRAME.size:
        raise WireError(f"{what}: {len(view)} bytes, shorter than the frame header")
    got, version, _, size = _FRAME.unpack_from(view)
    if got != magic:
        raise WireError(f"{what}: magic {bytes(got)!r}, expected {magic!r}")
    if version != FORMAT_VERSION:
        raise WireError(f"{what}: format version {version}; this build reads {FORMAT_VERSION}")
    end = _FRAME.size + size
    if len(view) < end:
        raise WireError(f"{what}: {len(view)} bytes, shorter than its {size}-byte header")
    try:
        header = json.loads(bytes(view[_FRAME.size:end]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"{what}: unreadable JSON header ({exc})") from None
    if not isinstance(header, dict):
        raise WireError(f"{what}: the header is not a JSON object")
    return header, view[end:]


# ------------------------------------------------------------------------------ transitions
def next_sent(batch: RowBatch) -> np.ndarray:
    """Rows whose next observation must be sent: not implied by the following row's obs."""
    obs, nxt, n = batch.rows["obs"], batch.rows["next_obs"], len(batch)
    sent = np.ones(n, bool)
    if n > 1:
        same = np.all(nxt[:-1] == obs[1:], axis=1) & (batch.end[:-1] == END_CONTINUES)
        for name, frames in batch.frames.items():
            same &= np.all(batch.next_frames[name][:-1] == frames[1:], axis=(1, 2, 3))
        sent[:-1] = ~same
    return sent


def encode_batch(batch: RowBatch) -> bytes:
    """The UInt8MultiArray data of `batch` (module docstring)."""
    rows, n = batch.rows, len(batch)
    sent = next_sent(batch)
    cameras = [{"name": k, "height": v.shape[1], "width": v.shape[2], "channels": v.shape[3]}
               for k, v in batch.frames.items()]
    header = {"robot": batch.robot, "first_seq": int(batch.first_seq), "rows": n,
              "obs_dim": int(rows["obs"].shape[1]), "act_dim": int(rows["action"].shape[1]),
              "next_obs_rows": int(sent.sum()), "cameras": cameras}
    cols = {**rows, "end": batch.end, "next_sent": sent}
    body = [np.asarray(cols[name], dtype) for name, dtype, _ in _COLUMNS]
    body.append(np.asarray(rows["next_obs"][sent], np.float32))
    for name in batch.frames:
        body += [np.asarray(batch.frames[name], np.uint8),
                 np.asarray(batch.next_frames[name][sent], np.uint8)]
    return _frame(BATCH_MAGIC, header, body)


def decode_batch(data) -> RowBatch:
    """The batch in a UInt8MultiArray's data; WireError names what is wrong."""
    what = "transitions payload"
    header, body = _unframe(data, BATCH_MAGIC, what)
    try:
        robot, first, n = str(header["robot"]), int(header["first_seq"]), int(header["rows"])
        dims = {"obs": int(header["obs_dim"]), "act": int(header["act_dim"]), "": None}
        k = int(header["next_obs_rows"])
        cameras = [(str(c["name"]), (int(c["height"]), int(c["width"]), int(c["channels"])))
                   for c in header.get("cameras", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"{what}: header field {exc} missing or not a number") from None
    if not robot or first < 0 or n < 1 or not 0 <= k <= n or min(dims["obs"], dims["act"]) < 1:
        raise WireError(f"{what}: header out of range (robot {robot!r}, first_seq {first}, "
                        f"rows {n}, next_obs_rows {k})")
    reader = _Reader(body, what)
    cols = {name: reader.take(dtype, (n,) + ((dims[kind],) if dims[kind] else ()))
            for name, dtype, kind in _COLUMNS}
    sent = cols.pop("next_sent").astype(bool)
    if int(sent.sum()) != k or not sent[-1]:
        raise WireError(f"{what}: next_sent marks {int(sent.sum())} rows, header says {k}")
    explicit = reader.take(np.float32, (k, dims["obs"]))
    frames, next_frames = {}, {}
    for name, shape in cameras:
        frames[name] = reader.take(np.uint8, (n,) + shape)
        next_frames[name] = _expand(frames[name], reader.take(np.uint8, (k,) + shape), sent)
    reader.done()
    rows = {f: cols[f] for f in FIELDS if f != "next_obs"}
    rows["terminated"], rows["truncated"] = rows["terminated"] != 0, rows["truncated"] != 0
    rows["next_obs"] = _expand(cols["obs"], explicit, sent)
    if np.any((cols["end"] < END_CONTINUES) | (cols["end"] > 1)):
        raise WireError(f"{what}: end values outside [{END_CONTINUES}, 1]")
    return RowBatch(robot, first, rows, cols["end"], frames, next_frames)


def _expand(current: np.ndarray, explicit: np.ndarray, sent: np.ndarray) -> np.ndarray:
    """Per-row next values: the explicit ones where sent, else the following row's current."""
    out = np.empty_like(current)
    out[sent] = explicit
    implied = np.flatnonzero(~sent)
    out[implied] = current[implied + 1]
    return out


class _Reader:
    def __init__(self, body: memoryview, what: str):
        self.body, self.pos, self.what = body, 0, what

    def take(self, dtype, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        size = count * np.dtype(dtype).itemsize
        if self.pos + size > len(self.body):
            raise WireError(f"{self.what}: body ends before its columns ({len(self.body)} bytes)")
        arr = np.frombuffer(self.body, dtype, count, self.pos).reshape(shape)
        self.pos += size
        return arr.copy()   # owns its memory: the message buffer is reused by rclpy

    def done(self) -> None:
        if self.pos != len(self.body):
            raise WireError(f"{self.what}: {len(self.body) - self.pos} bytes after the columns")


# ------------------------------------------------------------------------------- policies
def encode_policy(onnx_bytes: bytes, version: int, learner: str,
                  published_at: float = 0.0) -> bytes:
    """The UInt8MultiArray data of one exported policy."""
    header = {"version": int(version), "learner": learner, "time": float(published_at),
              "bytes": len(onnx_bytes), "sha256": hashlib.sha256(onnx_bytes).hexdigest()}
    return _frame(POLICY_MAGIC, header, [np.frombuffer(onnx_bytes, np.uint8)])


def decode_policy(data) -> tuple[dict, bytes]:
    """(header, ONNX bytes) of a policy payload; WireError when it is not one or is damaged."""
    header, body = _unframe(data, POLICY_MAGIC, "policy payload")
    onnx_bytes = bytes(body)
    if len(onnx_bytes) != header.get("bytes") or \
            hashlib.sha256(onnx_bytes).hexdigest() != header.get("sha256"):
        raise WireError("policy payload: size or sha256 does not match its header")
    return header, onnx_bytes


# --------------------------------------------------------------------------- JSON messages
def encode_json(kind: str, body: dict) -> str:
    """A String message's data: {"format": version, "kind": kind, ...body}."""
    return json.dumps({"format": FORMAT_VERSION, "kind": kind, **body}, separators=(",", ":"))


def decode_json(text: str, kind: str) -> dict:
    """The document of a String message of `kind` ("acks", "robot"); WireError otherwise."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WireError(f"{kind} message: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("kind") != kind:
        raise WireError(f"{kind} message: kind {doc.get('kind') if isinstance(doc, dict) else doc!r}")
    if doc.get("format") != FORMAT_VERSION:
        raise WireError(f"{kind} message: format {doc.get('format')!r}; this build reads "
                        f"{FORMAT_VERSION}")
    return doc
