"""The single-writer lock of a store directory (`write.lock`); see `WriteLock`."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

from o2o_robot.fsutil import os_error_line

_HELD: set[str] = set()              # lock files held by open writers of this process
_HELD_MU = threading.Lock()


def _proc_start(pid: int) -> int | str | None:
    """Start time of `pid` in clock ticks since boot ("zombie" for one; None where unknown)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    rest = stat[stat.rindex(b")") + 2:].split()   # the command name may hold spaces and ')'
    return "zombie" if rest[0] == b"Z" else int(rest[19])


class WriteLock:
    """`write.lock`: created with O_EXCL, held with flock, holds {pid, host, start, time}.

    A lock whose flock is free is stale only if its holder is also gone (pid dead or a zombie,
    pid reused: start time differs, or another host, where only the flock can tell); a free lock
    that is still empty and younger than 5 s is a writer between create and flock: held.
    """

    def __init__(self, path: Path, error: type[Exception] = RuntimeError,
                 io_error: type[Exception] = OSError):
        """`error`: raised when another writer holds the lock; `io_error`: when the lock file
        cannot be written (a full disk: one line naming it and the free space, no file left)."""
        self.path, self.key, self.fd, self.error = path, str(path.resolve()), None, error
        self.io_error = io_error

    def _read(self, fd: int) -> dict | None:
        try:
            return json.loads(os.pread(fd, 4096, 0).decode())
        except (ValueError, OSError):
            return None

    def _refuse(self, info: dict | None) -> Exception:
        who = (f"pid {info.get('pid')} on host {info.get('host')} since "
               f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info.get('time', 0)))}"
               if info else "a writer that is still starting (no pid written yet)")
        return self.error(f"{self.path.parent}: already open for writing by {who} "
                                f"(lock file {self.path}); close that writer first")

    def _alive(self, info: dict) -> bool:
        if info.get("host") != socket.gethostname():
            return False
        pid = int(info.get("pid", -1))
        if pid == os.getpid():
            return self.key in _HELD
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        start = _proc_start(pid)
        return start != "zombie" and (start is None or info.get("start") in (None, start))

    def _clear_if_stale(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._refuse(self._read(fd)) from None
            try:   # unlink only the file we hold: it may have been replaced meanwhile
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    return
            except FileNotFoundError:
                return
            info = self._read(fd)
            if (self._alive(info) if info else time.time() - os.fstat(fd).st_mtime < 5):
                raise self._refuse(info)
            os.unlink(self.path)
        finally:
            os.close(fd)

    def acquire(self) -> None:
        with _HELD_MU:
            if self.key in _HELD:
                raise self._refuse({"pid": os.getpid(), "host": socket.gethostname(),
                                    "time": time.time()})
            for _ in range(50):
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    self._clear_if_stale()
                    continue
                except OSError as e:
                    raise self.io_error(f"lock not taken: {os_error_line(e, self.path)}") from None
                for _ in range(100):   # a contender may hold our fresh file while it checks it
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        time.sleep(0.01)
                else:
                    os.close(fd)
                    continue
                try:
                    self._write_info(fd)
                except OSError as e:   # an empty lock file would block the next writer 5 s
                    os.unlink(self.path)
                    os.close(fd)
                    raise self.io_error(f"lock not taken: {os_error_line(e, self.path)}") from None
                self.fd = fd
                _HELD.add(self.key)
                return
        raise self.error(f"{self.path.parent}: could not take the lock file {self.path}")

    @staticmethod
    def _write_info(fd: int) -> None:
        data = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "start": _proc_start(os.getpid()), "time": time.time()}).encode()
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None
        with _HELD_MU:
            _HELD.discard(self.key)
