"""A full disk (issue 13, item 3), on a real filesystem that fills up: a 2 MiB tmpfs mounted
for the test (the tests need root or CAP_SYS_ADMIN for `mount`). Each failure is one line naming
the path and the free space; nothing committed is lost; the learner's report reaches the
client; no empty lock file is left; the run's metrics go on once there is space again."""
from __future__ import annotations

import io
import re
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from o2o_robot.data.schema import FIELDS
from o2o_robot.data.store import LOCK, StoreWriteError, TransitionStore
from o2o_robot.runlog import RunLogger, plot_curve, read_metrics
from store_writer_proc import ACT_DIM, OBS_DIM, expected_rows


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs, unmounted (lazily, so a file left open cannot block it) at the end."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if out.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(fs: Path) -> Path:
    """Fill the filesystem to the last byte with one file; delete it to free the space."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 16, 1 << 10, 1):   # big blocks, then what is left
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    assert os.statvfs(fs).f_bavail == 0
    return filler


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def same_rows(path: Path, rows: int) -> None:
    got, want = TransitionStore.open(path).read(), expected_rows(0, rows)
    assert len(got["obs"]) == rows
    for f in FIELDS:
        np.testing.assert_array_equal(got[f], want[f], err_msg=f)


# ------------------------------------------------------------------------------------ store
def test_a_full_disk_at_start_leaves_no_lock_file(small_fs):
    path = small_fs / "s"
    with TransitionStore.create(path, OBS_DIM, ACT_DIM, chunk_rows=64) as s:
        s.append_rows(expected_rows(0, 100))
    before = snapshot(path)
    fill(small_fs)
    for opening in (lambda: TransitionStore.open(path, "a"),
                    lambda: TransitionStore.open_or_create(small_fs / "new", OBS_DIM, ACT_DIM)):
        with pytest.raises(StoreWriteError, match=rf"^lock not taken: .*{LOCK}: No space left on "
                                                  r"device \(0 bytes free\)$"):
            opening()
    assert snapshot(path) == before and not (small_fs / "new" / LOCK).exists()
    (small_fs / "filler").unlink()
    with TransitionStore.open(path, "a") as s:   # a lock file left behind would block this
        s.append_rows(expected_rows(100, 110))
    same_rows(path, 110)


def test_a_commit_on_a_full_disk_keeps_every_committed_row(small_fs):
    path = small_fs / "s"
    s = TransitionStore.create(path, OBS_DIM, ACT_DIM, chunk_rows=64, flush_every=10_000)
    s.append_rows(expected_rows(0, 100))
    s.flush()
    filler = fill(small_fs)
    s.append_rows(expected_rows(100, 300))      # a rewritten chunk and new ones: pages each
    with pytest.raises(StoreWriteError, match=rf"^commit not written: {small_fs}/s/.*: No space "
                                              r"left on device \([\d.]+ (bytes|KiB) free\); rows committed "
                                              r"before are intact$"):
        s.flush()
    assert (len(s), s.num_buffered) == (100, 200)
    assert not list(path.rglob("*.partial"))     # the failed writes gave their space back
    assert TransitionStore.open(path).validate() == []
    same_rows(path, 100)
    filler.unlink()                              # space again: the buffer is committed
    s.flush()
    s.close()
    same_rows(path, 300)


def test_close_on_a_full_disk_releases_the_lock(small_fs):
    path = small_fs / "s"
    s = TransitionStore.create(path, OBS_DIM, ACT_DIM, chunk_rows=64, flush_every=10_000)
    s.append_rows(expected_rows(0, 100))
    s.flush()
    s.append_rows(expected_rows(100, 300))
    filler = fill(small_fs)
    with pytest.raises(StoreWriteError, match="No space left on device"):
        s.close()
    assert not (path / LOCK).exists()
    filler.unlink()
    TransitionStore.open(path, "a").close()     # the next writer opens as after a crash
    same_rows(path, 100)


# ---------------------------------------------------------------------------------- learner
def learner_setup(fs: Path, tmp: Path):
    """A tiny sim_reach learner whose store (2 demo episodes) lives on the small filesystem;
    its run dir (checkpoints, policies) elsewhere."""
    from o2o_robot.config import load_config, resolve_config_path
    from o2o_robot.sim.demos import generate_demos
    from o2o_robot.sim.envs import env_spec, make_env

    cfg = load_config(resolve_config_path("sim_reach.yaml"), overrides={
        "store": {"path": str(fs / "store.zarr"), "flush_every": 20},
        "sampler": {"batch_size": 32},
        "algorithm": {"name": "rlpd", "hidden_dims": [32, 32], "critic_ensemble_size": 2},
        # No restart: the report of the first failure is what is checked.
        "learner": {"utd_ratio": 1, "warmup_steps": 10, "export_every_updates": 5,
                    "checkpoint_every_steps": 10_000, "device": "cpu", "max_restarts": 0},
        "train": {"run_dir": str(tmp / "run")}})
    with TransitionStore.create(cfg.store.path, 12, 3, spec=env_spec(make_env(cfg.sim))) as s:
        generate_demos(s, cfg.sim, episodes=2, noise=0.1, seed=0, progress=False)
    return cfg


def online(n: int) -> list:
    from o2o_robot.data.schema import Transition

    rng = np.random.default_rng(0)
    return [Transition(obs=rng.normal(size=12).astype(np.float32),
                       action=rng.uniform(-2, 2, 3).astype(np.float32), reward=0.0,
                       next_obs=rng.normal(size=12).astype(np.float32), terminated=False,
                       truncated=(i + 1) % 25 == 0, source=1, policy_version=1,
                       timestamp=time.time(), episode=i // 25, step=i % 25) for i in range(n)]


def wait_state(client, states: tuple[str, ...], timeout_s: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = client.stats()
        if stats["state"] in states:
            return stats
        time.sleep(0.1)
    raise AssertionError(f"learner never reached {states}: {client.stats()}")


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_the_learner_reports_a_full_disk_in_one_line(small_fs, tmp_path, mode):
    """Issue 13: the crash handler's second failed commit swallowed the report ("exited without
    a report", ~70 traceback lines)."""
    from o2o_robot.learning.worker import LearnerClient

    cfg = learner_setup(small_fs, tmp_path)
    store = Path(cfg.store.path)
    before = TransitionStore.open(store).read()
    client = LearnerClient(cfg, tmp_path / "run", mode=mode)
    try:
        wait_state(client, ("running",))
        filler = fill(small_fs)
        for row in online(100):              # 5 commits' worth: the first one fails
            client.submit(row)
        stats = wait_state(client, ("crashed", "died"))
        assert client.submit(online(1)[0]) in (True, False)   # the actor side goes on
    finally:
        client.close()
    error = stats["error"]
    assert stats["state"] == "crashed" and "\n" not in error, error
    assert error.startswith(f"learner stopped: commit not written: {store}/") and \
        "No space left on device (" in error and " free)" in error, error
    filler.unlink()
    after = TransitionStore.open(store)
    assert after.validate() == [] and len(after) >= len(before["obs"])
    for f in FIELDS:                          # every committed row is still there, unchanged
        np.testing.assert_array_equal(after.read([f], 0, len(before[f]))[f], before[f])
    TransitionStore.open(store, "a").close()  # and the lock was released


# ----------------------------------------------------------------------------------- runlog
def test_run_metrics_on_a_full_disk_are_dropped_and_the_run_goes_on(small_fs, capsys, recwarn):
    run = small_fs / "run"
    stream = io.StringIO()
    # Without TensorBoard here: its writer thread frees pages of the filesystem at moments of
    # its own when its writes fail, which would make the drop count a race (the test below
    # covers it).
    logger = RunLogger(run, stream=stream, tensorboard=False)
    for i in range(5):
        logger.log("train", i, {"x": 1.0})
    filler = fill(small_fs)
    for i in range(5, 2000):                 # ~100 records fill what is left of a page
        logger.log("train", i, {"x": float(i), "pad": "y" * 100})
    dropped = logger.dropped
    assert dropped > 1000
    filler.unlink()
    for i in range(2000, 2005):
        logger.log("eval", i, {"success_rate": 1.0})
    logger.close()
    records = read_metrics(run)              # every line parses: no torn record
    steps = [r["step"] for r in records]
    assert steps[:5] == list(range(5)) and steps[-5:] == list(range(2000, 2005))
    assert steps == sorted(steps) and len(records) + dropped == 2005
    # One line when writing starts failing, one when it works again. A page the filesystem
    # frees meanwhile (a dropped record's partial write given back) may let one record through
    # early: then the pair repeats; each "again" line counts the records dropped so far.
    lines = stream.getvalue().splitlines()
    full = (f"{run / 'metrics.jsonl'}: No space left on device (0.0 MiB free): metrics are "
            f"dropped until it can be written; the run goes on")
    assert lines[0::2] == [full] * (len(lines) // 2) and len(lines) % 2 == 0, lines
    again = [re.fullmatch(rf"{re.escape(str(run / 'metrics.jsonl'))}: metrics written again "
                          rf"\((\d+) records dropped\)", line) for line in lines[1::2]]
    counts = [int(m.group(1)) for m in again if m]
    assert len(counts) == len(again) and counts == sorted(counts) and counts[-1] == dropped, lines
    filler = fill(small_fs)
    assert plot_curve(run) is None           # the picture is not made; no exception
    err = capsys.readouterr().err
    assert f"{run / 'learning_curve.png'}: No space left on device" in err
    assert "Traceback" not in err
    filler.unlink()


def test_tensorboard_on_a_full_disk_says_one_line_and_no_traceback(small_fs, capsys, recwarn):
    run = small_fs / "tb"
    stream = io.StringIO()
    logger = RunLogger(run, stream=stream)
    logger.log("train", 0, {"x": 1.0})
    filler = fill(small_fs)
    for i in range(1, 200):
        logger.log("train", i, {"x": float(i), "pad": "y" * 100})
    logger.close()
    filler.unlink()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Traceback" not in stream.getvalue()   # writer thread too
    assert not [w for w in recwarn if "Thread" in type(w.message).__name__]
    assert stream.getvalue().splitlines()[0].startswith(f"{run / 'metrics.jsonl'}: No space left")
