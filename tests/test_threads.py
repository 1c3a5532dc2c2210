"""`learner.torch_threads: auto` (learning/threads.py): the count from the cores and the load,
followed while learning; PASSIVE OpenMP waits in the processes the package starts."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from o2o_robot.config import ConfigError, load_config, resolve_config_path
from o2o_robot.learning.threads import (CpuMeter, ThreadTuner, choose_threads, quota_cores,
                                        usable_cores)
from o2o_robot.learning.worker import LearnerClient
from ros_helpers import wait_for


@pytest.mark.parametrize("cores, others, reserve, want", [
    (2, 0.0, 0, 2),     # idle 2-core box, learner on its own: both cores
    (2, 0.0, 1, 1),     # beside an actor: one core left to its tick
    (2, 0.9, 0, 1),     # one core busy elsewhere: one thread, no collapse
    (2, 0.25, 0, 2),    # a light neighbour (an actor at 20 Hz) still leaves two
    (16, 3.2, 0, 13),   # a workstation running a few robots' sims
    (2, 2.0, 0, 1),     # saturated: never fewer than one
    (4, 0.0, 1, 3),
])
def test_the_count_follows_free_cores(cores, others, reserve, want):
    assert choose_threads(cores, others, reserve) == want


def stat_file(tmp_path, busy: list[int], idle: list[int]):
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"] + [
        f"cpu{i} {b} 0 0 {d} 0 0 0 0 0 0" for i, (b, d) in enumerate(zip(busy, idle))]
    path = tmp_path / "stat"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_meter_counts_the_others_cpu_time_not_ours(tmp_path, monkeypatch):
    """Two snapshots of /proc/stat 1 s apart: 150 busy ticks on our CPUs, of which 50 are ours
    (process_time): the others used one core."""
    path = stat_file(tmp_path, [0, 0], [0, 0])
    clock = iter([10.0, 11.0])
    own = iter([3.0, 3.5])
    monkeypatch.setattr("o2o_robot.learning.threads.available_cpus", lambda: [0, 1])
    monkeypatch.setattr("o2o_robot.learning.threads.time.monotonic", lambda: next(clock))
    monkeypatch.setattr("o2o_robot.learning.threads.time.process_time", lambda: next(own))
    meter = CpuMeter(path)
    meter.tick_s = 0.01
    stat_file(tmp_path, [100, 50], [100, 150])
    assert meter.sample() == pytest.approx(1.0)


def test_a_busy_neighbour_is_seen_by_the_real_meter():
    meter = CpuMeter()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        meter.sample()                          # from here the spinner runs the whole window
        time.sleep(1.0)
        others = meter.sample()
    finally:
        spinner.kill()
        spinner.wait()
    assert others is not None and others >= 0.5, others


class FakeMeter:
    def __init__(self, values):
        self.values = iter(values)

    def sample(self):
        return next(self.values)


def test_auto_shrinks_at_once_and_grows_only_after_two_windows():
    applied = []
    tuner = ThreadTuner("auto", meter=FakeMeter([0.0, 0.9, 0.9, 0.1, 0.8, 0.1, 0.1]), cores=2,
                        period_s=5.0, set_threads=applied.append)
    assert tuner.threads == 2 and applied == [2]
    assert tuner.maybe_adjust(now=tuner._next - 1) == 2        # not due: nothing measured
    counts = [tuner.maybe_adjust(now=tuner._next) for _ in range(6)]
    assert counts == [1, 1, 1, 1, 1, 2]     # busy: 1 at once; free, busy, free, free: back to 2
    assert applied == [2, 1, 2] and tuner.report()["torch_thread_changes"] == 2


def test_a_fixed_count_is_applied_once_and_kept():
    applied = []
    tuner = ThreadTuner(3, meter=FakeMeter([]), set_threads=applied.append)
    assert (tuner.maybe_adjust(now=1e9), applied) == (3, [3])


def test_the_config_takes_auto_or_a_count_and_names_a_bad_value():
    assert load_config().learner.torch_threads == "auto"
    assert load_config(overrides={"learner": {"torch_threads": 2}}).learner.torch_threads == 2
    for bad in (0, "two", 1.5, True):
        with pytest.raises(ConfigError, match=r"learner.torch_threads: expected a whole number "
                                              r">= 1 or 'auto', got"):
            load_config(overrides={"learner": {"torch_threads": bad}})


def test_a_cgroup_quota_caps_the_cores(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert quota_cores(tmp_path / "cpu.max") == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert quota_cores(tmp_path / "cpu.max") is None


def test_the_worker_process_waits_passively_and_leaves_a_core_to_the_actor(tmp_path):
    """The learner worker's own process (learner.mode process) sets OMP_WAIT_POLICY=PASSIVE
    before torch loads, and with the actor beside it uses at most cores - 1 threads."""
    cfg = load_config(resolve_config_path("sim_reach.yaml"), overrides={
        "store": {"path": str(tmp_path / "store.zarr")},
        "algorithm": {"name": "rlpd", "hidden_dims": [16], "critic_ensemble_size": 2},
        "learner": {"device": "cpu", "mode": "process"}, "train": {"run_dir": str(tmp_path)}})
    env_before = os.environ.pop("OMP_WAIT_POLICY", None)
    client = LearnerClient(cfg, tmp_path)
    try:
        stats = wait_for(lambda: (s := client.stats()).get("state") == "running" and s, 60.0,
                         "the worker's first report")
    finally:
        client.close()
        if env_before is not None:
            os.environ["OMP_WAIT_POLICY"] = env_before
    assert stats["omp_wait_policy"] == "PASSIVE" and stats["torch_threads_auto"] is True
    assert 1 <= stats["torch_threads"] <= max(usable_cores() - 1, 1)
    assert "OMP_WAIT_POLICY" not in os.environ or env_before is not None   # ours untouched
