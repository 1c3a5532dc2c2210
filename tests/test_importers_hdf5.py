"""HDF5 import (D4RL and robomimic layouts), written with h5py by the tests themselves."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from o2o_robot.data.importers.common import ImportInputError, SourceFileError, run_import
from o2o_robot.data.importers.hdf5 import Hdf5Source
from o2o_robot.data.store import TransitionStore


def d4rl_file(path, ends=((5, "terminal"), (12, "timeout"), (20, "terminal"), (26, None)),
              obs_dim=4, act_dim=2, next_obs=True, seed=0, **override):
    """Episodes ending at the given exclusive row ends: a terminal, a timeout, or the file end."""
    rng = np.random.default_rng(seed)
    n = ends[-1][0]
    obs = rng.normal(size=(n + 1, obs_dim)).astype(np.float32)
    data = {"observations": obs[:-1], "next_observations": obs[1:],
            "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32),
            "terminals": np.zeros(n, bool), "timeouts": np.zeros(n, bool)}
    for end, kind in ends:
        if kind:
            data[kind + "s"][end - 1] = True
    if not next_obs:
        del data["next_observations"]
    data.update(override)
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            if v is not None:
                f[k] = v
    return data


def read(path):
    with TransitionStore.open(path) as st:
        return st.read(), st.episodes()


def test_d4rl_timeouts_are_truncated_not_terminated(tmp_path):
    data = d4rl_file(tmp_path / "d.hdf5")
    summary = run_import(Hdf5Source(tmp_path / "d.hdf5"), tmp_path / "s.zarr", source="demo")
    rows, eps = read(tmp_path / "s.zarr")
    assert [(e["start"], e["end"]) for e in eps] == [(0, 5), (5, 12), (12, 20), (20, 26)]
    assert summary["episodes"] == 4 and summary["transitions"] == 26
    assert np.flatnonzero(rows["terminated"]).tolist() == [4, 19]
    assert np.flatnonzero(rows["truncated"]).tolist() == [11, 25]   # the timeout, the file end
    for f, key in (("obs", "observations"), ("next_obs", "next_observations"),
                   ("action", "actions"), ("reward", "rewards")):
        assert np.array_equal(rows[f], data[key])
    assert (rows["source"] == 0).all()
    assert np.allclose([e["return"] for e in eps],
                       [data["rewards"][s:e].sum() for s, e in ((0, 5), (5, 12), (12, 20), (20, 26))])


def test_d4rl_without_next_observations_drops_rows_without_a_successor(tmp_path):
    data = d4rl_file(tmp_path / "d.hdf5", next_obs=False)
    summary = run_import(Hdf5Source(tmp_path / "d.hdf5"), tmp_path / "s.zarr")
    rows, eps = read(tmp_path / "s.zarr")
    # timeout row 11 and the file's last row 25 have no true next observation: dropped
    assert [e["length"] for e in eps] == [5, 6, 8, 5] and summary["details"]["rows_dropped"] == 2
    obs = data["observations"]
    kept = [i for i in range(26) if i not in (11, 25)]
    assert np.array_equal(rows["obs"], obs[kept])
    assert np.array_equal(rows["next_obs"][:4], obs[1:5])
    assert np.array_equal(rows["next_obs"][4], obs[4])            # terminal: its own obs
    assert np.flatnonzero(rows["truncated"]).tolist() == [10, 23]  # the rows before the dropped
    assert np.flatnonzero(rows["terminated"]).tolist() == [4, 18]


def test_robomimic_layout_with_chosen_obs_keys(tmp_path):
    rng = np.random.default_rng(1)
    with h5py.File(tmp_path / "r.hdf5", "w") as f:
        f.create_group("data").attrs["env_args"] = '{"env_name": "Lift"}'
        for k, n in ((0, 6), (1, 4), (10, 5)):   # numeric order: demo_0, demo_1, demo_10
            g = f.create_group(f"data/demo_{k}")
            g["actions"] = rng.uniform(-1, 1, (n, 7))
            g["rewards"] = np.r_[np.zeros(n - 1), 1.0 if k != 1 else 0.0]
            g["dones"] = np.r_[np.zeros(n - 1), 1 if k != 1 else 0].astype(np.int64)
            for key, dim in (("eef_pos", 3), ("gripper", 2), ("image", 12)):
                full = rng.normal(size=(n + 1, dim))
                g[f"obs/{key}"], g[f"next_obs/{key}"] = full[:-1], full[1:]
    with pytest.raises(ImportInputError, match="--obs-keys.*eef_pos, gripper, image"):
        Hdf5Source(tmp_path / "r.hdf5")
    src = Hdf5Source(tmp_path / "r.hdf5", obs_keys=["gripper", "eef_pos"])
    assert src.spec["obs_dim"] == 5 and src.spec["task"] == "Lift"
    run_import(src, tmp_path / "s.zarr")
    rows, eps = read(tmp_path / "s.zarr")
    assert [e["length"] for e in eps] == [6, 4, 5]
    with h5py.File(tmp_path / "r.hdf5") as f:
        want = np.concatenate([f["data/demo_1/obs/gripper"][:], f["data/demo_1/obs/eef_pos"][:]], 1)
    assert np.allclose(rows["obs"][6:10], want)
    assert rows["terminated"][5] and rows["truncated"][9] and not rows["terminated"][9]
    with h5py.File(tmp_path / "r.hdf5", "a") as f:           # an empty demo: a clear refusal
        g = f.create_group("data/demo_11")
        g["actions"], g["rewards"], g["dones"] = np.zeros((0, 7)), np.zeros(0), np.zeros(0)
        for key, dim in (("eef_pos", 3), ("gripper", 2), ("image", 12)):
            g[f"obs/{key}"], g[f"next_obs/{key}"] = np.zeros((0, dim)), np.zeros((0, dim))
    with pytest.raises(SourceFileError, match="demo_11: an empty demo"):
        run_import(Hdf5Source(tmp_path / "r.hdf5", obs_keys=["gripper", "eef_pos"]),
                   tmp_path / "s2.zarr")


def test_mismatched_dims_refused_naming_the_key_and_store_unchanged(tmp_path):
    d4rl_file(tmp_path / "a.hdf5")
    run_import(Hdf5Source(tmp_path / "a.hdf5"), tmp_path / "s.zarr")
    before = {p: p.read_bytes() for p in (tmp_path / "s.zarr").rglob("*") if p.is_file()}
    d4rl_file(tmp_path / "wide.hdf5", obs_dim=5)
    with pytest.raises(ImportInputError, match="obs_dim: the store has 4, .* has 5"):
        run_import(Hdf5Source(tmp_path / "wide.hdf5"), tmp_path / "s.zarr")
    d4rl_file(tmp_path / "act.hdf5", act_dim=3)
    with pytest.raises(ImportInputError, match="act_dim: the store has 2"):
        run_import(Hdf5Source(tmp_path / "act.hdf5"), tmp_path / "s.zarr")
    after = {p: p.read_bytes() for p in (tmp_path / "s.zarr").rglob("*") if p.is_file()}
    assert after == before


def test_bad_values_and_out_of_bounds_actions_leave_nothing_behind(tmp_path):
    rewards = np.zeros(26, np.float32)
    rewards[22] = np.nan                      # in the last episode: found before any write
    d4rl_file(tmp_path / "nan.hdf5", rewards=rewards)
    with pytest.raises(SourceFileError, match="episode 3: reward: contains NaN"):
        run_import(Hdf5Source(tmp_path / "nan.hdf5"), tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()
    # bounds come from the store's spec: a store created with [-0.5, 0.5] refuses [-1, 1] data
    TransitionStore.create(tmp_path / "b.zarr", 4, 2, spec={"action_low": [-0.5, -0.5],
                                                            "action_high": [0.5, 0.5]}).close()
    d4rl_file(tmp_path / "ok.hdf5")
    with pytest.raises(ImportInputError, match="action: .* episode 0 row 0 dim .* outside"):
        run_import(Hdf5Source(tmp_path / "ok.hdf5"), tmp_path / "b.zarr")
    with TransitionStore.open(tmp_path / "b.zarr") as st:
        assert len(st) == 0 and st.notes == {}


def test_unreadable_and_malformed_files_are_refused(tmp_path):
    (tmp_path / "junk.hdf5").write_bytes(b"not hdf5 at all")
    with pytest.raises(SourceFileError, match="cannot read as HDF5"):
        Hdf5Source(tmp_path / "junk.hdf5")
    d4rl_file(tmp_path / "short.hdf5", rewards=np.zeros(7, np.float32))
    with pytest.raises(SourceFileError, match="'rewards' has 7 rows, 'observations' has 26"):
        Hdf5Source(tmp_path / "short.hdf5")
    d4rl_file(tmp_path / "noterm.hdf5", terminals=None)
    with pytest.raises(SourceFileError, match="missing dataset 'terminals'"):
        Hdf5Source(tmp_path / "noterm.hdf5")
    with pytest.raises(ImportInputError, match="no such file"):
        Hdf5Source(tmp_path / "absent.hdf5")


def test_cli_exit_codes_for_a_bad_file_and_a_mismatched_store(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "o2o_robot.cli", "data", "import", "hdf5",
                               *map(str, args)], cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True, timeout=300)

    d4rl_file(tmp_path / "a.hdf5")
    ok = cli(tmp_path / "a.hdf5", "--store", tmp_path / "s.zarr")
    assert ok.returncode == 0 and "imported 4 episodes (26 transitions)" in ok.stdout, ok.stderr
    d4rl_file(tmp_path / "wide.hdf5", obs_dim=6)
    wide = cli(tmp_path / "wide.hdf5", "--store", tmp_path / "s.zarr")
    assert wide.returncode == 2 and "obs_dim: the store has 4" in wide.stderr
    (tmp_path / "junk.hdf5").write_bytes(b"junk")
    junk = cli(tmp_path / "junk.hdf5", "--store", tmp_path / "s.zarr")
    assert junk.returncode == 1 and "cannot read as HDF5" in junk.stderr


def robomimic_images(path, lengths=(5, 4), next_obs=True, dones=(1, 0), seed=2):
    """robomimic layout with an image key (uint8 [N, 12, 10, 3]) and two low-dim keys; returns
    the full image sequence of each demo (length n + 1: the last is the final next image)."""
    rng = np.random.default_rng(seed)
    seqs = []
    with h5py.File(path, "w") as f:
        f.create_group("data")
        for k, n in enumerate(lengths):
            g = f.create_group(f"data/demo_{k}")
            g["actions"] = rng.uniform(-1, 1, (n, 7))
            g["rewards"] = np.r_[np.zeros(n - 1), float(dones[k])]
            g["dones"] = np.r_[np.zeros(n - 1), dones[k]].astype(np.int64)
            img = rng.integers(0, 256, (n + 1, 12, 10, 3), dtype=np.uint8)
            seqs.append(img)
            for key, full in (("agentview_image", img), ("robot0_eef_pos", rng.normal(size=(n + 1, 3)))):
                g[f"obs/{key}"] = full[:-1]
                if next_obs:
                    g[f"next_obs/{key}"] = full[1:]
    return seqs


def test_robomimic_image_keys_become_cameras_stored_once(tmp_path):
    seqs = robomimic_images(tmp_path / "r.hdf5")
    src = Hdf5Source(tmp_path / "r.hdf5", obs_keys=["agentview_image", "robot0_eef_pos"])
    assert src.cameras == {"agentview_image": (12, 10, 3)} and src.spec["obs_dim"] == 3
    run_import(src, tmp_path / "s.zarr", source="demo")
    with TransitionStore.open(tmp_path / "s.zarr") as st:
        assert st.cameras == {"agentview_image": (12, 10, 3)} and st.validate() == []
        frames, nxt = st.read_frames("agentview_image"), st.read_next_frames("agentview_image")
        assert [e["length"] for e in st.episodes()] == [5, 4]
    np.testing.assert_array_equal(frames, np.concatenate([seqs[0][:-1], seqs[1][:-1]]))
    # every next frame, the last of each demo included (kept in the episode's end frame)
    np.testing.assert_array_equal(nxt, np.concatenate([seqs[0][1:], seqs[1][1:]]))
    with pytest.raises(ImportInputError, match="are all images"):
        Hdf5Source(tmp_path / "r.hdf5", obs_keys=["agentview_image"])
    robomimic_images(tmp_path / "r2.hdf5", seed=3)   # into a store without that camera: refused
    TransitionStore.create(tmp_path / "v.zarr", 3, 7).close()
    with pytest.raises(ImportInputError, match="cameras: the store has none"):
        run_import(Hdf5Source(tmp_path / "r2.hdf5", obs_keys=["agentview_image", "robot0_eef_pos"]),
                   tmp_path / "v.zarr")


def test_robomimic_images_without_next_obs_and_inconsistent_next_images(tmp_path):
    seqs = robomimic_images(tmp_path / "r.hdf5", next_obs=False)
    src = Hdf5Source(tmp_path / "r.hdf5", obs_keys=["robot0_eef_pos", "agentview_image"])
    run_import(src, tmp_path / "s.zarr")
    with TransitionStore.open(tmp_path / "s.zarr") as st:
        nxt = st.read_next_frames("agentview_image")
        assert [e["length"] for e in st.episodes()] == [5, 3]   # demo 1's cut last row dropped
    want0 = np.concatenate([seqs[0][1:5], seqs[0][4:5]])        # terminal: its own image
    np.testing.assert_array_equal(nxt[:5], want0)
    np.testing.assert_array_equal(nxt[5:], seqs[1][1:4])        # the dropped row's image
    robomimic_images(tmp_path / "bad.hdf5")
    with h5py.File(tmp_path / "bad.hdf5", "a") as f:   # next images that are not the next obs'
        d = f["data/demo_0/next_obs/agentview_image"]
        d[1] = 255 - d[1]
    with pytest.raises(SourceFileError, match="episode 0: next_frames/agentview_image: row 1"):
        run_import(Hdf5Source(tmp_path / "bad.hdf5", obs_keys=["agentview_image", "robot0_eef_pos"]),
                   tmp_path / "b.zarr")
    assert not (tmp_path / "b.zarr").exists()
