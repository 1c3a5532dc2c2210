"""Names of the store directory's on-disk layout (part of the format): files, metadata arrays,
array directories and chunk file names."""
from __future__ import annotations

import numpy as np

from o2o_robot.data.schema import STORED_FIELDS

MARKER, LOCK = "commit.json", "write.lock"
# meta/<name> arrays, one entry per completed episode
META: dict[str, np.dtype] = {"episode_ends": np.dtype(np.int64), "episode_source": np.dtype(np.uint8),
                             "episode_return": np.dtype(np.float64), "episode_success": np.dtype(np.int8)}
META_CHUNK = 4096


def ceil_to(n: int, chunk: int) -> int:
    """`n` rounded up to a multiple of `chunk`."""
    return -(-n // chunk) * chunk


# Camera arrays (schema v2): frames/<camera> on the row axis (data/frames/<camera>, one frame a
# row: the row's observation) and frame_ends/<camera> on the episode axis (meta/frame_ends/
# <camera>: the next frame of each episode's last row, entry E the open episode's so far).
FRAMES, FRAME_ENDS = "frames/", "frame_ends/"
# Rows per frame chunk: about this many raw bytes, so a commit rewrites ~1 MiB per camera.
FRAME_CHUNK_BYTES = 1 << 20


def frame_chunk_rows(shape) -> int:
    """Frames per time chunk of a camera of `shape` (H, W, C)."""
    return max(1, FRAME_CHUNK_BYTES // int(np.prod(shape)))


def array_dir(name: str) -> str:
    """Directory of array `name` in the store: data/<field>, data/frames/<camera>, meta/<name>
    or meta/frame_ends/<camera>."""
    return f"data/{name}" if name in STORED_FIELDS or name.startswith(FRAMES) else f"meta/{name}"


def chunk_file(name: str, k: int, ndim: int) -> str:
    """Path (relative to the store) of time chunk `k` of array `name` with `ndim` dimensions:
    zarr v3 default chunk keys with the "." separator, one chunk across the other axes."""
    return f"{array_dir(name)}/c." + ".".join([str(k)] + ["0"] * (ndim - 1))


def chunk_sizes(chunk_rows: int, cameras: dict | None = None) -> dict[str, int]:
    """Rows per time chunk of every array: `chunk_rows` for data/, META_CHUNK for meta/,
    `frame_chunk_rows` for both arrays of each camera of `cameras` ({name: (H, W, C)})."""
    sizes = {**{f: chunk_rows for f in STORED_FIELDS}, **{m: META_CHUNK for m in META}}
    for name, shape in (cameras or {}).items():
        sizes[FRAMES + name] = sizes[FRAME_ENDS + name] = frame_chunk_rows(shape)
    return sizes
