"""TransitionStore (o2o_robot/data/store.py): round trips, crash safety under SIGKILL, the single
writer lock, refusal of bad rows, committed-only reads, and validate() catching corruption."""
from __future__ import annotations

import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from o2o_robot.data.schema import FIELDS
from o2o_robot.data.lock import _proc_start
from o2o_robot.data.store import (LOCK, MARKER, StoreCorruptError, StoreError, StoreLockedError,
                                  StoreValueError, TransitionStore)
from store_writer_proc import (ACT_DIM, CAMERAS, EP, OBS_DIM, expected_frames,
                               expected_next_frames, expected_rows)

ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).with_name("store_writer_proc.py")
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def make_rows(n: int, start: int = 0, source="online") -> dict[str, np.ndarray]:
    rows = expected_rows(start, start + n)
    rows["source"] = np.array([source] * n, dtype=object)
    return rows


def row(rows: dict, k: int) -> dict:
    return {f: v[k] for f, v in rows.items()}


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV)


def wait_line(proc: subprocess.Popen, prefix: str, timeout: float = 30.0) -> str:
    deadline, other = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.1)[0]:
            line = proc.stdout.readline()
            if line.startswith(prefix):
                return line
            assert line, f"process exited before printing {prefix!r}:\n{''.join(other)}"
            other.append(line)
    raise AssertionError(f"no {prefix!r} line within {timeout} s:\n{''.join(other)}")


# ------------------------------------------------------------------------------ round trips
def test_round_trip_episodes_meta_and_reopen(tmp_path):
    path = tmp_path / "s"
    spec = {"obs_names": [f"q{i}" for i in range(OBS_DIM)], "action_low": [-1.0, -2.0]}
    with TransitionStore.create(path, OBS_DIM, ACT_DIM, flush_every=7, chunk_rows=16, spec=spec) as s:
        demo, online = make_rows(20, 0, "demo"), make_rows(30, 20, "online")
        online["source"][5:9] = "intervention"     # a takeover inside an online episode
        s.append_rows(demo)
        s.end_episode(success=True)
        for k in range(30):
            s.append(**row(online, k))
        s.end_episode(success=False)
        s.append_rows(make_rows(5, 50, "offline"))
        s.end_episode()
        s.append_rows(make_rows(3, 55, "online"))  # left open at close
    r = TransitionStore.open(path, "r")
    assert (len(r), r.num_episodes, r.open_episode_rows, r.spec) == (58, 3, 3, spec)
    got, want = r.read(), expected_rows(0, 58)
    want["source"] = np.array([0] * 20 + [1] * 5 + [2] * 4 + [1] * 21 + [3] * 5 + [1] * 3, np.uint8)
    for f in FIELDS:
        np.testing.assert_array_equal(got[f], want[f], err_msg=f)
        assert got[f].dtype == FIELDS[f][0]
    rew = want["reward"].astype(np.float64)
    assert r.episodes() == [
        {"index": 0, "start": 0, "end": 20, "length": 20, "source": "demo", "return": rew[:20].sum(), "success": True},
        {"index": 1, "start": 20, "end": 50, "length": 30, "source": "online", "return": rew[20:50].sum(), "success": False},
        {"index": 2, "start": 50, "end": 55, "length": 5, "source": "offline", "return": rew[50:55].sum(), "success": None}]
    assert r.counts() == {"demo": {"transitions": 20, "episodes": 1}, "online": {"transitions": 29, "episodes": 1},
                          "intervention": {"transitions": 4, "episodes": 0}, "offline": {"transitions": 5, "episodes": 1}}
    info = json.loads(json.dumps(r.info()))
    assert (info["rows"], info["episodes"], info["open_episode_rows"]) == (58, 3, 3)
    assert info["sources"]["online"]["return_max"] == rew[20:50].sum()
    assert r.read(["obs"], 10, 12)["obs"][:, 0].tolist() == [10, 11]
    assert r.read(["reward"], start=-2)["reward"].tolist() == [56 % 7, 57 % 7]
    assert r.validate() == []
    # A clean close trims every array to the committed length (plain zarr readers see exact sizes).
    assert json.loads((path / "data" / "obs" / "zarr.json").read_text())["shape"] == [58, OBS_DIM]
    # Reopened for writing, the open episode is continued by the next appends.
    with TransitionStore.open(path, "a") as w:
        assert (len(w), w.num_episodes, w.open_episode_rows) == (58, 3, 3)
        w.append_rows(make_rows(2, 58, "online"))
        w.end_episode(success=True)
    r2 = TransitionStore.open(path, "r")
    last = r2.episodes()[-1]
    assert (last["start"], last["end"], last["source"], last["success"]) == (55, 60, "online", True)
    assert last["return"] == rew[55:58].sum() + (58 % 7) + (59 % 7)
    assert r2.validate() == []


def test_flush_every_bounds_the_buffer_and_end_episode_waits_for_commit(tmp_path):
    s = TransitionStore.create(tmp_path / "s", OBS_DIM, ACT_DIM, flush_every=10, chunk_rows=8)
    rows = make_rows(25)
    for k in range(25):
        s.append(**row(rows, k))
        assert s.num_buffered < 10
    assert (len(s), s.num_buffered) == (20, 5)
    s.end_episode()
    assert s.num_episodes == 0                 # the boundary is buffered with the rows
    s.append_rows(make_rows(23, 25))           # 28 buffered >= 10: one commit of all of them
    assert (len(s), s.num_buffered, s.num_episodes) == (48, 0, 1)
    s.close()
    assert TransitionStore.open(tmp_path / "s").read()["obs"][:, 0].tolist() == list(range(48))


def test_reader_sees_only_committed_rows(tmp_path):
    w = TransitionStore.create(tmp_path / "s", OBS_DIM, ACT_DIM, flush_every=100, chunk_rows=16)
    r = TransitionStore.open(tmp_path / "s", "r")
    w.append_rows(make_rows(30))
    w.end_episode()
    assert (r.refresh(), r.num_episodes, len(r.read()["obs"])) == (0, 0, 0)
    w.flush()
    assert (r.refresh(), r.num_episodes) == (30, 1)
    w.append_rows(make_rows(50, 30))           # grows the arrays past the reader's cached shape
    assert len(r.read()["obs"]) == 30
    w.flush()
    assert r.refresh() == 80
    assert r.read(["obs"])["obs"][:, 0].tolist() == list(range(80))
    with pytest.raises(StoreError, match="read-only"):
        r.append_rows(make_rows(1))
    w.close()


# ------------------------------------------------------------------------------ bad input
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("field", ["obs", "action", "reward", "next_obs", "timestamp"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e39])
def test_non_finite_rows_are_refused_and_nothing_changes(tmp_path, field, bad):
    if field == "timestamp" and bad == 1e39:  # float64: 1e39 is a valid timestamp
        bad = -np.inf
    path = tmp_path / "s"
    s = TransitionStore.create(path, OBS_DIM, ACT_DIM, flush_every=4, chunk_rows=8)
    s.append_rows(make_rows(6))                # one commit (4+ rows), 0 buffered
    s.append(**row(make_rows(1, 6), 0))        # 1 buffered
    before = snapshot(path)
    one = row(make_rows(1, 7), 0)
    one[field] = np.full(np.shape(one[field]), bad)     # float64: 1e39 overflows float32 in the store
    with pytest.raises(StoreValueError, match=f"^{field}: "):
        s.append(**one)
    block = make_rows(5, 7)
    block[field] = block[field].astype(np.float64)
    block[field][3] = bad
    with pytest.raises(StoreValueError, match=f"^{field}: "):
        s.append_rows(block)
    assert (len(s), s.num_buffered) == (6, 1)
    assert snapshot(path) == before
    s.close()
    assert TransitionStore.open(path).read()["obs"][:, 0].tolist() == list(range(7))


@pytest.mark.parametrize("field, value", [("action", np.zeros(ACT_DIM + 1)), ("obs", np.zeros((1, OBS_DIM))),
                                          ("next_obs", 1.0), ("reward", np.zeros(2)), ("terminated", [True, False])])
def test_wrong_shapes_are_refused_naming_the_field(tmp_path, field, value):
    s = TransitionStore.create(tmp_path / "s", OBS_DIM, ACT_DIM, flush_every=4)
    one = row(make_rows(1), 0)
    one[field] = value
    with pytest.raises(StoreValueError, match=f"^{field}: expected shape"):
        s.append(**one)
    block = make_rows(3)
    block[field] = np.stack([np.asarray(value)] * 3)
    with pytest.raises(StoreValueError, match=f"^{field}: expected shape"):
        s.append_rows(block)
    with pytest.raises(StoreValueError, match="source"):
        s.append(**{**row(make_rows(1), 0), "source": "teleop"})
    assert (len(s), s.num_buffered) == (0, 0)


def test_dims_mismatch_refused_and_store_left_usable(tmp_path):
    path = tmp_path / "s"
    TransitionStore.create(path, OBS_DIM, ACT_DIM).close()
    before = snapshot(path)
    with pytest.raises(StoreError, match=r"obs_dim=4, act_dim=2.*obs_dim=5, act_dim=2"):
        TransitionStore.open_or_create(path, OBS_DIM + 1, ACT_DIM)
    with pytest.raises(StoreError, match="already exists"):
        TransitionStore.create(path, OBS_DIM, ACT_DIM)
    assert snapshot(path) == before
    TransitionStore.open_or_create(path, OBS_DIM, ACT_DIM).close()   # the lock was released


def test_validate_reports_corruption(tmp_path):
    path = tmp_path / "s"
    with TransitionStore.create(path, OBS_DIM, ACT_DIM, chunk_rows=8) as s:
        s.append_rows(make_rows(20))
        s.end_episode()
    assert TransitionStore.open(path).validate() == []
    (path / MARKER).write_text(json.dumps({"rows": 25, "episodes": 1}))
    with pytest.raises(StoreCorruptError, match=rf"{MARKER}: claims 25 rows but the data/ arrays hold 20"):
        TransitionStore.open(path)
    (path / MARKER).write_text(json.dumps({"rows": 15, "episodes": 1}))   # episode end beyond rows
    assert any("episode_ends" in p for p in TransitionStore.open(path).validate())


# ------------------------------------------------------------------------------ the lock
def test_second_writer_refused_in_process_and_from_another_process(tmp_path):
    path = tmp_path / "s"
    w = TransitionStore.create(path, OBS_DIM, ACT_DIM)
    with pytest.raises(StoreLockedError, match=rf"pid {os.getpid()}.*{LOCK}"):
        TransitionStore.open(path, "a")
    code = ("import sys; from o2o_robot.data.store import TransitionStore\n"
            "try: TransitionStore.open(sys.argv[1], 'a')\n"
            "except Exception as e: print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         env=ENV, timeout=60).stdout
    assert out.startswith("StoreLockedError") and f"pid {os.getpid()}" in out and str(path / LOCK) in out
    TransitionStore.open(path, "r").close()    # readers need no lock
    w.close()
    assert not (path / LOCK).exists()
    TransitionStore.open(path, "a").close()


def test_lock_of_a_killed_writer_is_taken_over(tmp_path):
    path = tmp_path / "s"
    TransitionStore.create(path, OBS_DIM, ACT_DIM, flush_every=10).close()
    prog = tmp_path / "progress"
    np.zeros(2, np.int64).tofile(prog)
    proc = spawn(str(HELPER), str(path), "10", "row", str(prog), "35")
    wait_line(proc, "done")                    # wrote 35 rows, closed: now hold a fresh lock
    proc.wait(timeout=30)
    proc = spawn("-c", "import sys, time; from o2o_robot.data.store import TransitionStore\n"
                       "s = TransitionStore.open(sys.argv[1], 'a'); print('ready', flush=True); time.sleep(60)",
                 str(path))
    wait_line(proc, "ready")
    with pytest.raises(StoreLockedError, match=f"pid {proc.pid}"):
        TransitionStore.open(path, "a")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert json.loads((path / LOCK).read_text())["pid"] == proc.pid   # left behind
    with TransitionStore.open(path, "a") as w:
        assert len(w) == 35


def test_stale_lock_files_by_pid_and_start_time(tmp_path):
    path = tmp_path / "s"
    TransitionStore.create(path, OBS_DIM, ACT_DIM).close()
    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        start = _proc_start(sleeper.pid)
        cases = [({"pid": dead.pid, "host": host, "start": None, "time": 0}, True),
                 ({"pid": sleeper.pid, "host": host, "start": start + 1, "time": 0}, True),  # pid reused
                 ({"pid": sleeper.pid, "host": host, "start": start, "time": 0}, False)]     # alive
        for info, stale in cases:
            (path / LOCK).write_text(json.dumps(info))
            if stale:
                TransitionStore.open(path, "a").close()
                assert not (path / LOCK).exists()
            else:
                with pytest.raises(StoreLockedError, match=f"pid {sleeper.pid}"):
                    TransitionStore.open(path, "a")
    finally:
        sleeper.kill()
        sleeper.wait()


# ------------------------------------------------------------------------------ crash safety
def check_store(path: Path, flush_every: int, appended: int, reported: int, previous: int) -> int:
    """Reopen after a SIGKILL and check every committed row, episode, frame and the loss bound."""
    s = TransitionStore.open(path, "r")
    n = len(s)
    assert s.validate() == []
    assert n >= max(reported, previous), "a committed row was lost"
    assert appended - n < flush_every, f"lost {appended - n} rows, bound {flush_every - 1}"
    got, want = s.read(), expected_rows(0, n)
    for f in FIELDS:                           # every field of every row: no torn row
        np.testing.assert_array_equal(got[f], want[f], err_msg=f)
    eps = s.episodes()
    for c in s.cameras:                        # every frame and next frame: no torn frame
        np.testing.assert_array_equal(s.read_frames(c), expected_frames(0, n, c), err_msg=c)
        if n:
            open_row = n - 1 if s.open_episode_rows else -1
            np.testing.assert_array_equal(s.read_next_frames(c),
                                          expected_next_frames(0, n, c, open_row), err_msg=c)
    assert [e["end"] for e in eps] == [EP * (k + 1) for k in range(len(eps))]
    assert n - (eps[-1]["end"] if eps else 0) <= EP
    assert [e["success"] for e in eps] == [k % 2 == 0 for k in range(len(eps))]
    assert [e["source"] for e in eps] == ["demo" if k % 3 == 0 else "online" for k in range(len(eps))]
    return n


def kill_writers(tmp_path: Path, kills: int, cameras: dict | None, min_rows: int) -> None:
    """Start writers on one store and SIGKILL each at a random moment (sometimes during start-up
    or recovery), reading the store live meanwhile; check it after every kill."""
    flush_every, suffix = 64, "+frames" if cameras else ""
    path, prog = tmp_path / "s", tmp_path / "progress"
    TransitionStore.create(path, OBS_DIM, ACT_DIM, chunk_rows=256, durable=False,
                           cameras=cameras).close()
    reader = TransitionStore.open(path, "r")   # follows the live writers from this process
    rng, rows, mid_stream, live_reads = random.Random(0), 0, 0, 0
    for k in range(kills):
        np.zeros(2, np.int64).tofile(prog)
        proc = spawn(str(HELPER), str(path), str(flush_every), ("row", "block")[k % 2] + suffix,
                     str(prog))
        try:
            if k % 6 == 5:                          # sometimes while it starts up or recovers
                time.sleep(rng.uniform(0.0, 0.8))
            else:
                wait_line(proc, "ready")
                deadline = time.monotonic() + rng.uniform(0.02, 0.3)
                while time.monotonic() < deadline:
                    n = reader.refresh()
                    lo = max(n - 100, 0)
                    got, want = reader.read(start=lo), expected_rows(lo, n)
                    for f in FIELDS:
                        np.testing.assert_array_equal(got[f], want[f], err_msg=f)
                    for c in reader.cameras:
                        np.testing.assert_array_equal(reader.read_frames(c, lo),
                                                      expected_frames(lo, n, c), err_msg=c)
                    live_reads += 1
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        appended, reported = np.fromfile(prog, np.int64)
        new = check_store(path, flush_every, int(appended), int(reported), rows)
        mid_stream += appended > new            # killed with rows still buffered
        rows = new
    assert rows > min_rows and mid_stream >= kills // 3 and live_reads > kills, \
        (rows, mid_stream, live_reads)


def test_sigkill_never_loses_committed_rows_nor_tears_one(tmp_path):
    kill_writers(tmp_path, int(os.environ.get("O2O_STORE_KILLS", "25")), None, 20 * EP)


def test_sigkill_with_cameras_never_tears_a_frame(tmp_path):
    """The same with two cameras: frames and episode end frames are committed with their rows."""
    kill_writers(tmp_path, int(os.environ.get("O2O_STORE_KILLS", "25")) // 2 + 1, CAMERAS, 4 * EP)
