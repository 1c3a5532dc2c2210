"""Imports are whole-episode and resumable: `append_episode` + provenance notes in the commit
marker; an import killed (SIGKILL) at any point and re-run leaves no torn or duplicate episode."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from o2o_robot.data.importers.common import ImportInputError, run_import
from o2o_robot.data.importers.hdf5 import Hdf5Source
from o2o_robot.data.store import StoreError, TransitionStore
from test_importers_hdf5 import d4rl_file  # tests/ is on sys.path (rootdir conftest)

ROOT = Path(__file__).resolve().parents[1]
EPISODES, LENGTH = 12, 20


def block(n, obs_dim=3, act_dim=2, start=0.0, source="offline"):
    obs = (start + np.arange(n + 1, dtype=np.float32))[:, None].repeat(obs_dim, 1)
    return {"obs": obs[:-1], "next_obs": obs[1:], "action": np.zeros((n, act_dim), np.float32),
            "reward": np.ones(n, np.float32), "terminated": np.eye(n, dtype=bool)[-1],
            "truncated": np.zeros(n, bool), "source": np.full(n, source),
            "policy_version": np.zeros(n, np.int64), "timestamp": np.zeros(n)}


def test_append_episode_commits_only_at_episode_ends_with_its_notes(tmp_path):
    st = TransitionStore.create(tmp_path / "s.zarr", 3, 2, flush_every=25)
    st.append_episode(block(20), notes={"k": {"done": 1}})
    assert len(st) == 0 and st.num_buffered == 20 and st.notes == {}     # below flush_every
    st.append_episode(block(40, start=100), success=True, notes={"k": {"done": 2}})
    assert len(st) == 60 and st.num_episodes == 2 and st.notes == {"k": {"done": 2}}
    reader = TransitionStore.open(tmp_path / "s.zarr")
    assert reader.notes == {"k": {"done": 2}} and reader.episodes()[1]["success"] is True
    st.append_episode(block(5), notes={"other": [1, 2]})
    st.close()
    reader.refresh()
    assert reader.notes == {"k": {"done": 2}, "other": [1, 2]} and reader.num_episodes == 3
    # the notes survive commits made by ordinary appends (another writer, the learner)
    with TransitionStore.open(tmp_path / "s.zarr", "a") as st:
        st.append(obs=np.zeros(3), action=np.zeros(2), reward=0.0, next_obs=np.zeros(3),
                  terminated=False, truncated=True, source="online")
        st.end_episode()
    with TransitionStore.open(tmp_path / "s.zarr") as r:
        assert r.notes["k"] == {"done": 2} and r.num_episodes == 4 and r.validate() == []


def test_append_episode_refusals_buffer_nothing(tmp_path):
    with TransitionStore.create(tmp_path / "s.zarr", 3, 2) as st:
        bad = block(4)
        bad["obs"] = bad["obs"].copy()
        bad["obs"][2, 1] = np.nan
        with pytest.raises(StoreError, match="obs: contains NaN"):
            st.append_episode(bad, notes={"k": 1})
        with pytest.raises(StoreError, match="notes: must be JSON"):
            st.append_episode(block(4), notes={"k": object()})
        st.append_rows(block(3))                      # an open episode
        with pytest.raises(StoreError, match="an episode is open \\(3 rows\\)"):
            st.append_episode(block(4))
        assert st.num_buffered == 3 and st.num_episodes == 0
        st.end_episode()
    with TransitionStore.open(tmp_path / "s.zarr") as r:
        assert len(r) == 3 and r.num_episodes == 1 and r.notes == {}


CHILD = """
import os, signal, sys
from o2o_robot.data.importers.common import run_import
from o2o_robot.data.importers.hdf5 import Hdf5Source
src, store, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
def on_episode(i):
    print(i, flush=True)
    if i == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
run_import(Hdf5Source(src), store, flush_every=50, on_episode=on_episode)
"""


def _child(src, store, kill_at):
    return subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(store), str(kill_at)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _episodes_file(path):
    ends = [((i + 1) * LENGTH, "timeout" if i % 2 else "terminal") for i in range(EPISODES)]
    return d4rl_file(path, ends=ends, obs_dim=3, act_dim=2, seed=5)


def _check_whole(store, data, offset_rows, skip_eps):
    """Every imported episode in the store is complete and equal to its source rows."""
    with TransitionStore.open(store) as r:
        assert r.validate() == [] and r.open_episode_rows == 0
        rows, eps = r.read(), r.episodes()[skip_eps:]
        note = next((v for k, v in r.notes.items() if k.startswith("import:")),
                    {"episodes_done": 0, "rows_done": 0})   # none before the first commit
    assert note["episodes_done"] == len(eps) and note["rows_done"] == len(eps) * LENGTH
    for i, e in enumerate(eps):
        assert e["length"] == LENGTH
        src = slice(i * LENGTH, (i + 1) * LENGTH)
        assert np.array_equal(rows["obs"][e["start"]:e["end"]], data["observations"][src])
        assert np.array_equal(rows["truncated"][e["start"]:e["end"]], data["timeouts"][src])
    assert len(rows["obs"]) == offset_rows + len(eps) * LENGTH
    return len(eps)


@pytest.mark.parametrize("kill_at", [0, 4, 6, EPISODES - 1])
def test_import_killed_midway_and_rerun_has_no_torn_or_duplicate_episode(tmp_path, kill_at):
    data = _episodes_file(tmp_path / "d.hdf5")
    store = tmp_path / "s.zarr"
    with TransitionStore.create(store, 3, 2) as st:   # someone else's episode came first
        st.append_episode(block(7, start=-50.0, source="demo"))
    proc = _child(tmp_path / "d.hdf5", store, kill_at)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    assert out.split()[-1] == str(kill_at)
    # flush_every=50 with 20-row episodes commits after episodes 2, 5, 8, 11 (0-based)
    committed = _check_whole(store, data, 7, 1)
    assert committed == 3 * ((kill_at + 1) // 3)
    if committed < EPISODES:
        summary = run_import(Hdf5Source(tmp_path / "d.hdf5"), store)   # the re-run resumes
        assert summary["resumed_after"] == committed
        assert summary["episodes"] == EPISODES - committed
    assert _check_whole(store, data, 7, 1) == EPISODES
    with pytest.raises(ImportInputError, match="already imported .* pass --force"):
        run_import(Hdf5Source(tmp_path / "d.hdf5"), store)


def test_interrupt_inside_an_episode_commits_none_of_it(tmp_path, monkeypatch):
    """Ctrl-C between an episode's rows and its end (fault injected into end_episode): the
    import aborts without committing the part-staged episode, and the re-run resumes cleanly."""
    data = _episodes_file(tmp_path / "d.hdf5")
    store = tmp_path / "s.zarr"
    real, calls = TransitionStore.end_episode, []

    def end_episode(self, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(self, **kw)

    monkeypatch.setattr(TransitionStore, "end_episode", end_episode)
    with pytest.raises(KeyboardInterrupt):
        run_import(Hdf5Source(tmp_path / "d.hdf5"), store, flush_every=50)
    monkeypatch.undo()
    assert _check_whole(store, data, 0, 0) == 3          # committed after episode 2; 3 dropped
    assert run_import(Hdf5Source(tmp_path / "d.hdf5"), store)["resumed_after"] == 3
    assert _check_whole(store, data, 0, 0) == EPISODES


def test_external_sigkill_at_an_arbitrary_moment(tmp_path):
    """Killed from outside while it writes (timing not chosen by the importer), then re-run."""
    data = _episodes_file(tmp_path / "d.hdf5")
    store = tmp_path / "s.zarr"
    proc = _child(tmp_path / "d.hdf5", store, -1)
    assert proc.stdout.readline().strip() == "0"      # writing has begun
    time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    if (store / "commit.json").exists():
        _check_whole(store, data, 0, 0)
    run_import(Hdf5Source(tmp_path / "d.hdf5"), store)
    assert _check_whole(store, data, 0, 0) == EPISODES


def test_force_imports_a_second_copy_under_its_own_key(tmp_path):
    d4rl_file(tmp_path / "d.hdf5")
    store = tmp_path / "s.zarr"
    first = run_import(Hdf5Source(tmp_path / "d.hdf5"), store)
    second = run_import(Hdf5Source(tmp_path / "d.hdf5"), store, force=True, source="demo")
    assert second["note_key"] == first["note_key"] + "#2" and second["episodes"] == 4
    with TransitionStore.open(store) as r:
        assert r.num_episodes == 8
        assert r.counts()["demo"]["episodes"] == 4 == r.counts()["offline"]["episodes"]
        assert json.loads(json.dumps(r.notes))[second["note_key"]]["source"] == "demo"


def test_an_open_episode_left_by_another_writer_is_closed_not_merged(tmp_path):
    d4rl_file(tmp_path / "d.hdf5")
    store = tmp_path / "s.zarr"
    with TransitionStore.create(store, 4, 2) as st:
        st.append_rows(block(3, obs_dim=4))   # never ended: e.g. a learner killed mid-episode
    summary = run_import(Hdf5Source(tmp_path / "d.hdf5"), store)
    assert summary["closed_open_episode_rows"] == 3
    with TransitionStore.open(store) as r:
        assert [e["length"] for e in r.episodes()] == [3, 5, 7, 8, 6]


def test_abort_drops_the_buffer_keeps_commits_and_frees_the_lock(tmp_path):
    st = TransitionStore.create(tmp_path / "s.zarr", 3, 2, flush_every=1000)
    st.append_episode(block(4))
    st.flush()
    st.append_episode(block(6))
    st.abort()
    st.abort()                                   # idempotent
    with TransitionStore.open(tmp_path / "s.zarr", "a") as again:   # the lock is free
        assert len(again) == 4 and again.num_episodes == 1
