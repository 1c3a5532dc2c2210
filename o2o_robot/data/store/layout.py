"""Names of the store directory's on-disk layout (part of the format): files, metadata arrays."""
from __future__ import annotations

import numpy as np

MARKER, LOCK = "commit.json", "write.lock"
# meta/<name> arrays, one entry per completed episode
META: dict[str, np.dtype] = {"episode_ends": np.dtype(np.int64), "episode_source": np.dtype(np.uint8),
                             "episode_return": np.dtype(np.float64), "episode_success": np.dtype(np.int8)}
META_CHUNK = 4096


def ceil_to(n: int, chunk: int) -> int:
    """`n` rounded up to a multiple of `chunk`."""
    return -(-n // chunk) * chunk
