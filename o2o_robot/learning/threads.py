"""`learner.torch_threads: auto`: torch's CPU thread count from the cores and the load.

Why (issues 17 and 18, a 2-core machine, `benchmarks/learner_throughput.py --contend`): on an
idle machine two torch threads do almost twice the critic updates of one; with one core busy
elsewhere, two threads under OpenMP's default (spinning) wait policy collapse to a few updates
per second, because every parallel region waits for the thread that is not scheduled. Two
remedies, both applied by `auto`:

* `OMP_WAIT_POLICY=PASSIVE` (threads sleep at a barrier instead of spinning) for the processes
  this package starts, unless the user set it: it turns the collapse into a small loss. It must
  be in the environment before torch (its OpenMP runtime) is loaded: `prefer_passive_omp`.
* the count follows the cores free for us: the CPUs this process may use (affinity, and a
  cgroup CPU quota), minus what the other processes used over the last window (from
  /proc/stat, less our own CPU time), minus `reserve` (one core beside an actor node, whose tick
  must not wait: the learner worker; none for a learner on its own: the learner node,
  `o2o-robot train`). `ThreadTuner` re-evaluates it every `period_s` between updates: a count
  that shrinks applies at once, one that grows only once it held for two windows.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

PERIOD_S = 5.0
FIRST_WINDOW_S = 0.25
HEADROOM = 0.3        # a core used at most 70% by others still counts as ours


def prefer_passive_omp() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless set (call before torch is imported; module docstring)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cpus() -> list[int]:
    """CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return list(range(os.cpu_count() or 1))


def quota_cores(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> float | None:
    """The cgroup (v2) CPU quota in cores, None when unlimited or unknown."""
    try:
        quota, period = path.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    cpus = len(available_cpus())
    quota = quota_cores()
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


class CpuMeter:
    """CPU time the other processes used on our CPUs, in cores, between two `sample()`s."""

    def __init__(self, stat: Path = Path("/proc/stat")):
        self.stat, self.cpus = stat, {f"cpu{i}" for i in available_cpus()}
        self.tick_s = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
        self._last = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        """(wall, busy CPU seconds on our CPUs, our own CPU seconds), None without /proc/stat."""
        try:
            lines = self.stat.read_text().splitlines()
        except OSError:
            return None
        busy = 0
        for line in lines:
            name, *fields = line.split()
            if name in self.cpus:
                values = [int(v) for v in fields[:8]]
                busy += sum(values) - values[3] - values[4]   # all but idle and iowait
        return time.monotonic(), busy * self.tick_s, time.process_time()

    def sample(self) -> float | None:
        """Cores the other processes used since the last sample (None: cannot tell)."""
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[0] - last[0] <= 0:
            return None
        others = (now[1] - last[1]) - (now[2] - last[2])
        return max(others, 0.0) / (now[0] - last[0])


def choose_threads(cores: int, others_busy: float, reserve: int = 0) -> int:
    """The thread count for `cores` usable cores when others keep `others_busy` cores busy."""
    free = cores - reserve - others_busy
    return max(1, min(cores, int(free + HEADROOM)))


class ThreadTuner:
    """Applies `learner.torch_threads` (a number: once; "auto": followed, module docstring)."""

    def __init__(self, setting: int | str, *, reserve: int = 0, period_s: float = PERIOD_S,
                 meter: CpuMeter | None = None, cores: int | None = None,
                 set_threads=None):
        if set_threads is None:
            import torch

            set_threads = torch.set_num_threads
        self.auto, self.reserve, self.period_s = setting == "auto", reserve, period_s
        self._set = set_threads
        self.cores = cores or usable_cores()
        self.changes = 0
        self._candidate: int | None = None
        if not self.auto:
            self.threads = int(setting)
            self._set(self.threads)
            return
        self.meter = meter or CpuMeter()
        time.sleep(FIRST_WINDOW_S)       # a first look at the load
        self.threads = self._target(self.meter.sample())
        self._set(self.threads)
        self._next = time.monotonic() + period_s

    def _target(self, others: float | None) -> int:
        return choose_threads(self.cores, 0.0 if others is None else others, self.reserve)

    def maybe_adjust(self, now: float | None = None) -> int:
        """Re-evaluate when a period has passed (cheap otherwise); returns the count in use."""
        if not self.auto:
            return self.threads
        now = time.monotonic() if now is None else now
        if now < self._next:
            return self.threads
        self._next = now + self.period_s
        target = self._target(self.meter.sample())
        if target < self.threads or (target > self.threads and self._candidate == target):
            self.threads, self._candidate = target, None
            self._set(target)
            self.changes += 1
        else:
            self._candidate = target if target > self.threads else None
        return self.threads

    def report(self) -> dict:
        return {"torch_threads": self.threads, "torch_threads_auto": self.auto,
                "torch_thread_changes": self.changes,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
