"""Minari import and export round trips on datasets the tests record themselves (no downloads:
MINARI_DATASETS_PATH points into tmp_path)."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer

from o2o_robot.data.importers.common import ImportInputError, run_import
from o2o_robot.data.importers.minari_io import MinariSource, export_minari
from o2o_robot.data.store import TransitionStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    warnings.filterwarnings("ignore", category=UserWarning, module="minari")
    return tmp_path / "minari"


def rollouts(env_id="InvertedPendulum-v5", episodes=6, max_steps=15, seed=0):
    """Episodes of a real gymnasium env as Minari episode buffers: random actions in the even
    ones (InvertedPendulum falls: terminated), zero actions in the odd ones (it stays up until
    the time limit: truncated)."""
    env = gym.make(env_id, max_episode_steps=max_steps)
    env.action_space.seed(seed)
    out = []
    for i in range(episodes):
        o, _ = env.reset(seed=seed + i)
        obs, act, rew, term, trunc = [o], [], [], [], []
        while not (term and (term[-1] or trunc[-1])):
            a = env.action_space.sample()
            if i % 2 and isinstance(env.action_space, gym.spaces.Box):
                a = np.zeros_like(a)
            o, r, te, tr, _ = env.step(a)
            obs.append(o), act.append(a), rew.append(r), term.append(te), trunc.append(tr)
        out.append(EpisodeBuffer(id=i, observations=np.array(obs), actions=np.array(act),
                                 rewards=rew, terminations=term, truncations=trunc, infos={}))
    return env, out


def make_dataset(dataset_id, **kw):
    env, buffers = rollouts(**kw)
    minari.create_dataset_from_buffers(dataset_id, buffers, env=env, data_format="hdf5")
    return buffers


def test_import_gives_the_same_transitions_with_the_terminal_split(tmp_path):
    buffers = make_dataset("test/pend-v0")
    ends = [(b.terminations[-1], b.truncations[-1]) for b in buffers]
    assert (True, False) in ends and (False, True) in ends     # both kinds of episode end
    src = MinariSource("test/pend-v0")
    assert src.spec["task"] == "InvertedPendulum-v5" and src.spec["action_low"] == [-3.0]
    summary = run_import(src, tmp_path / "s.zarr", source="demo")
    assert summary["episodes"] == len(buffers)
    with TransitionStore.open(tmp_path / "s.zarr") as st:
        rows, eps = st.read(), st.episodes()
        assert st.spec["obs_dim"] == 4 and st.spec["action_high"] == [3.0]
    assert [e["length"] for e in eps] == [len(b.rewards) for b in buffers]
    for e, b in zip(eps, buffers):
        sl = slice(e["start"], e["end"])
        obs = np.asarray(b.observations, np.float32)
        assert np.array_equal(rows["obs"][sl], obs[:-1]) and np.array_equal(rows["next_obs"][sl], obs[1:])
        assert np.array_equal(rows["action"][sl], np.asarray(b.actions, np.float32))
        assert np.array_equal(rows["reward"][sl], np.asarray(b.rewards, np.float32))
        assert rows["terminated"][sl].tolist() == list(b.terminations)
        assert rows["truncated"][sl].tolist() == list(b.truncations)
        assert e["source"] == "demo"
    # the same dataset by path, into the same store: recognised as already imported
    with pytest.raises(ImportInputError, match="already imported"):
        run_import(MinariSource(str(Path(src.path).parent)), tmp_path / "s.zarr")


def test_data_collector_recording_imports(tmp_path):
    # minari.DataCollector needs jax (minari[create]); it is pinned in requirements/lock.txt
    env = minari.DataCollector(gym.make("InvertedPendulum-v5", max_episode_steps=15))
    steps = 0
    for i in range(3):
        env.reset(seed=i)
        done = False
        while not done:
            _, _, te, tr, _ = env.step(env.action_space.sample())
            done, steps = te or tr, steps + 1
    env.create_dataset(dataset_id="test/collected-v0")
    summary = run_import(MinariSource("test/collected-v0"), tmp_path / "s.zarr")
    assert summary["episodes"] == 3 and summary["transitions"] == steps


def test_dict_observations_are_flattened_in_space_order(tmp_path):
    space = gym.spaces.Dict({"b": gym.spaces.Box(-1, 1, (2,), np.float32),
                             "a": gym.spaces.Box(-5, 5, (3,), np.float32)})
    act = gym.spaces.Box(-1, 1, (1,), np.float32)
    rng = np.random.default_rng(0)
    obs = {"b": rng.uniform(-1, 1, (6, 2)).astype(np.float32),
           "a": rng.uniform(-5, 5, (6, 3)).astype(np.float32)}
    buf = EpisodeBuffer(id=0, observations=obs, actions=rng.uniform(-1, 1, (5, 1)).astype(np.float32),
                        rewards=[0.0] * 5, terminations=[False] * 4 + [True],
                        truncations=[False] * 5, infos={})
    minari.create_dataset_from_buffers("test/dict-v0", [buf], observation_space=space,
                                       action_space=act, data_format="hdf5")
    run_import(MinariSource("test/dict-v0"), tmp_path / "s.zarr")
    with TransitionStore.open(tmp_path / "s.zarr") as st:
        got = st.read(["obs"])["obs"]
    want = np.stack([gym.spaces.flatten(space, {"b": obs["b"][i], "a": obs["a"][i]}) for i in range(5)])
    assert got.shape == (5, 5) and np.array_equal(got, want)


def test_unsupported_spaces_and_unknown_datasets_are_refused(tmp_path):
    env, buffers = rollouts("CartPole-v1", episodes=1)
    minari.create_dataset_from_buffers("test/discrete-v0", buffers, env=env, data_format="hdf5")
    with pytest.raises(ImportInputError, match="action_space: Discrete"):
        MinariSource("test/discrete-v0")
    with pytest.raises(ImportInputError, match="no Minari dataset"):
        MinariSource("test/nothing-v0")


def _store_with_a_dropped_row(path):
    """Two demo episodes (the second misses a row in the middle) and one online episode."""
    env, buffers = rollouts(episodes=3, max_steps=12, seed=3)
    with TransitionStore.create(path, 4, 1, spec={"task": "InvertedPendulum-v5",
                                                  "action_low": [-3.0], "action_high": [3.0]}) as st:
        for i, (b, source) in enumerate(zip(buffers, ("demo", "demo", "online"))):
            o = np.asarray(b.observations, np.float32)
            n = len(b.rewards)
            keep = [k for k in range(n) if not (i == 1 and k == n // 2)]
            st.append_episode({"obs": o[:-1][keep], "next_obs": o[1:][keep],
                               "action": np.asarray(b.actions)[keep], "reward": np.asarray(b.rewards)[keep],
                               "terminated": np.asarray(b.terminations)[keep],
                               "truncated": np.asarray(b.truncations)[keep], "source": [source] * len(keep),
                               "policy_version": np.zeros(len(keep), np.int64), "timestamp": np.zeros(len(keep))})
    return buffers


def test_export_round_trip_with_spaces_and_a_split_at_a_dropped_row(tmp_path):
    buffers = _store_with_a_dropped_row(tmp_path / "s.zarr")
    out = export_minari(tmp_path / "s.zarr", "o2o/demos-v0", sources=["demo"])
    assert out["split"] == 1 and out["episodes"] == 3
    ds = minari.load_dataset("o2o/demos-v0")
    assert ds.action_space == gym.spaces.Box(-3.0, 3.0, (1,), np.float32)
    assert ds.observation_space == gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    got = list(ds.iterate_episodes())
    first = buffers[0]
    assert np.array_equal(got[0].observations, np.asarray(first.observations, np.float32))
    assert np.array_equal(got[0].actions, np.asarray(first.actions, np.float32))
    assert got[0].terminations.tolist() == list(first.terminations)
    assert got[0].truncations.tolist() == list(first.truncations)
    n, cut = len(buffers[1].rewards), len(buffers[1].rewards) // 2
    assert len(got[1].rewards) == cut and got[1].truncations[-1] and not got[1].terminations[-1]
    assert len(got[2].rewards) == n - cut - 1
    assert np.array_equal(got[2].observations, np.asarray(buffers[1].observations, np.float32)[cut + 1:])
    # exported -> imported again: the same transitions as the store's demo rows
    run_import(MinariSource("o2o/demos-v0"), tmp_path / "back.zarr", source="demo")
    with TransitionStore.open(tmp_path / "s.zarr") as a, TransitionStore.open(tmp_path / "back.zarr") as b:
        demo_rows = a.episodes()[1]["end"]
        for f in ("obs", "action", "reward", "next_obs", "terminated"):
            assert np.array_equal(a.read([f], 0, demo_rows)[f], b.read([f])[f]), f


def test_export_refusals_leave_no_dataset_behind(tmp_path, minari_root):
    _store_with_a_dropped_row(tmp_path / "s.zarr")
    with pytest.raises(ImportInputError, match="--minari: Malformed dataset ID"):
        export_minari(tmp_path / "s.zarr", "no version")
    with pytest.raises(ImportInputError, match="no completed episodes of source.*intervention"):
        export_minari(tmp_path / "s.zarr", "o2o/x-v0", sources=["intervention"])
    assert not (minari_root / "o2o").exists() and not (minari_root / "no version").exists()
    export_minari(tmp_path / "s.zarr", "o2o/x-v0")
    with pytest.raises(ImportInputError, match="already exists"):
        export_minari(tmp_path / "s.zarr", "o2o/x-v0")


def cli(*args, env_root):
    import os

    env = {**os.environ, "MINARI_DATASETS_PATH": str(env_root)}
    return subprocess.run([sys.executable, "-m", "o2o_robot.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)


def test_cli_import_export_summary_and_exit_codes(tmp_path, minari_root):
    make_dataset("test/cli-v0", episodes=4)
    store = tmp_path / "s.zarr"
    ok = cli("data", "import", "minari", "test/cli-v0", "--store", store, "--source", "demo",
             env_root=minari_root)
    assert ok.returncode == 0, ok.stderr
    assert "imported 4 episodes" in ok.stdout and "as demo" in ok.stdout and "return mean" in ok.stdout
    again = cli("data", "import", "minari", "test/cli-v0", "--store", store, env_root=minari_root)
    assert again.returncode == 2 and "already imported" in again.stderr
    forced = cli("data", "import", "minari", "test/cli-v0", "--store", store, "--force", "--json",
                 env_root=minari_root)
    assert forced.returncode == 0 and json.loads(forced.stdout)["source"] == "offline"
    out = cli("data", "export", store, "--minari", "o2o/cli-out-v0", "--source", "demo",
              env_root=minari_root)
    assert out.returncode == 0 and "4 episodes" in out.stdout, out.stderr
    assert minari.load_dataset("o2o/cli-out-v0").total_episodes == 4
    missing = cli("data", "import", "minari", "test/none-v0", "--store", store, env_root=minari_root)
    assert missing.returncode == 2 and "no Minari dataset" in missing.stderr
    broken = tmp_path / "broken"
    (broken / "data").mkdir(parents=True)
    (broken / "data" / "metadata.json").write_text("{not json")
    bad = cli("data", "import", "minari", broken, "--store", store, env_root=minari_root)
    assert bad.returncode == 1 and "cannot read the Minari dataset" in bad.stderr


def test_action_bounds_differing_from_the_store_are_refused(tmp_path):
    make_dataset("test/bounds-v0", episodes=2)
    TransitionStore.create(tmp_path / "s.zarr", 4, 1, spec={"action_low": [-1.0],
                                                            "action_high": [1.0]}).close()
    with pytest.raises(ImportInputError, match=r"action_low: the store has \[-1.0\], .* has \[-3.0\]"):
        run_import(MinariSource("test/bounds-v0"), tmp_path / "s.zarr")
    with TransitionStore.open(tmp_path / "s.zarr") as st:
        assert len(st) == 0


def test_export_and_import_round_trip_with_camera_images(tmp_path):
    """A store with two cameras -> a Minari dataset with a Dict observation space holding the
    images -> a store again: the same rows, frames and next frames."""
    rng = np.random.default_rng(5)
    cams = {"front": (6, 8, 3), "wrist": (4, 4, 1)}
    with TransitionStore.create(tmp_path / "s.zarr", 3, 1, cameras=cams,
                                spec={"action_low": [-1.0], "action_high": [1.0]}) as s:
        for n, terminal in ((5, True), (4, False), (6, True)):
            obs = rng.normal(size=(n + 1, 3)).astype(np.float32)
            images = {c: rng.integers(0, 256, (n + 1,) + sh, dtype=np.uint8) for c, sh in cams.items()}
            end = np.arange(n) == n - 1
            s.append_episode({"obs": obs[:-1], "next_obs": obs[1:],
                              "action": rng.uniform(-1, 1, (n, 1)).astype(np.float32),
                              "reward": rng.normal(size=n).astype(np.float32),
                              "terminated": end & terminal, "truncated": end & (not terminal),
                              "source": np.zeros(n, np.uint8), "policy_version": np.zeros(n, np.int64),
                              "timestamp": np.zeros(n)},
                             frames={c: v[:-1] for c, v in images.items()},
                             next_frames={c: v[1:] for c, v in images.items()})
    out = export_minari(tmp_path / "s.zarr", "o2o/cams-v0")
    assert out["episodes"] == 3 and out["steps"] == 15
    ds = minari.load_dataset("o2o/cams-v0")
    assert ds.observation_space["front"] == gym.spaces.Box(0, 255, (6, 8, 3), np.uint8)
    assert ds.observation_space["state"] == gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    first = next(iter(ds.iterate_episodes()))
    with TransitionStore.open(tmp_path / "s.zarr") as a:
        want = np.concatenate([a.read_frames("front", 0, 5), a.read_next_frames("front", 4, 5)])
    np.testing.assert_array_equal(first.observations["front"], want)
    src = MinariSource("o2o/cams-v0")
    assert src.cameras == cams and src.spec["obs_dim"] == 3
    run_import(src, tmp_path / "back.zarr", source="demo")
    with TransitionStore.open(tmp_path / "s.zarr") as a, TransitionStore.open(tmp_path / "back.zarr") as b:
        assert b.cameras == cams and b.validate() == []
        for f in ("obs", "action", "reward", "next_obs", "terminated", "truncated"):
            np.testing.assert_array_equal(a.read([f])[f], b.read([f])[f], err_msg=f)
        for c in cams:
            np.testing.assert_array_equal(a.read_frames(c), b.read_frames(c), err_msg=c)
            np.testing.assert_array_equal(a.read_next_frames(c), b.read_next_frames(c), err_msg=c)
