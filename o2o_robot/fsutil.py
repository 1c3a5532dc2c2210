"""Atomic file writes shared by checkpoints and exported policies, and the one-line report of a
failed write (standard library only)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> Path:
    """Write `data` to `path` so that readers see the old file or the new one, never a torn one.

    A temporary file in the same folder (named `.<name>.*.tmp`, so watchers of `*.onnx` or
    `*.pt` ignore it) is written and fsynced, renamed over `path`, then the folder is fsynced to
    make the rename itself durable. `mode` replaces mkstemp's 0600, which would hide the file
    from a process run as another user (an actor reading the learner's policies).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)   # a full disk: say which file it refused
        raise
    try:  # not every platform can open a directory
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def free_space(path: str | Path) -> str:
    """Free space of the filesystem holding `path` (its nearest existing folder), in words."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = float(shutil.disk_usage(path).free)
    except OSError:
        return "free space unknown"
    for unit in ("bytes", "KiB", "MiB"):
        if free < 1024:
            return f"{free:.0f} bytes free" if unit == "bytes" else f"{free:.1f} {unit} free"
        free /= 1024
    return f"{free:.1f} GiB free"


def os_error_line(exc: OSError, path: str | Path | None = None) -> str:
    """One line for a failed write: the path, what the OS said, and the free space there
    (`path` defaults to the file the error names)."""
    where = path if path is not None else (exc.filename or "?")
    return f"{where}: {exc.strerror or exc} ({free_space(where)})"
