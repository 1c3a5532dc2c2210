"""Scripted demonstrations of the pixel reach task write camera frames: each row's frame is the
render of its observation as the actor would assemble it, the episode's last next frame is the
final state's, and `o2o-robot demos generate --config sim_reach_pixels.yaml` creates a store
with the configured cameras."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from o2o_robot.config import camera_shapes, load_config, resolve_config_path
from o2o_robot.data.store import TransitionStore
from o2o_robot.sim.camera import SimFrames
from o2o_robot.sim.demos import generate_demos
from o2o_robot.sim.envs import env_spec, make_env

PIXELS = resolve_config_path("sim_reach_pixels.yaml")
TOLERANCE = 3   # two GL contexts may shade a few values 1 or 2 levels apart


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return int(np.abs(a.astype(int) - b.astype(int)).max()) <= TOLERANCE


def test_demo_rows_carry_the_frames_of_their_observations(tmp_path):
    cfg = load_config(PIXELS, overrides={"control": {"max_episode_steps": 12}})
    env = make_env(cfg.sim)
    store = TransitionStore.create(tmp_path / "px.zarr", 9, 3, spec=env_spec(env),
                                   cameras=camera_shapes(cfg))
    with store:
        summary = generate_demos(store, cfg.sim, episodes=2, noise=0.0, seed=4,
                                 max_episode_steps=12, progress=False, cameras=cfg.robot.cameras)
    assert summary["episodes"] == 2
    reader = TransitionStore.open(tmp_path / "px.zarr")
    rows, frames = reader.read(), reader.read_frames("front")
    nexts = reader.read_next_frames("front")
    assert frames.shape == (len(rows["obs"]), 48, 48, 3) and frames.dtype == np.uint8
    observer = SimFrames(env.unwrapped.model, cfg.robot.cameras)
    try:
        for k, episode in enumerate(reader.episodes()):
            start, end = episode["start"], episode["end"]
            env.reset(seed=4 + k)                           # episode k of the generation
            expected = [observer.frames(env.unwrapped.data)["front"]]
            for i in range(start, end):
                env.step(rows["action"][i])
                expected.append(observer.frames(env.unwrapped.data)["front"])
            for k, i in enumerate(range(start, end)):
                assert close(frames[i], expected[k]), f"row {i}"
            assert not close(frames[start], expected[-1])    # the arm moved: frames differ
            assert close(nexts[end - 1], expected[-1])       # the last next frame, kept apart
    finally:
        observer.close()
        reader.close()
        env.close()


def test_demos_generate_cli_creates_a_store_with_the_cameras(tmp_path):
    store = tmp_path / "cli.zarr"
    out = subprocess.run([sys.executable, "-m", "o2o_robot.cli", "demos", "generate", "--config",
                          str(PIXELS), "--episodes", "1", "--store", str(store), "--seed", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    with TransitionStore.open(store) as reader:
        assert reader.cameras == {"front": (48, 48, 3)} and reader.obs_dim == 9
        assert reader.read_frames("front").shape[0] == len(reader) > 0


def test_a_camera_the_sim_cannot_render_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {PIXELS}\nrobot:\n  cameras:\n    - name: wrist\n      topic: w\n"
                   f"      type: image\n      width: 8\n      height: 8\n")
    out = subprocess.run([sys.executable, "-m", "o2o_robot.cli", "demos", "generate", "--config",
                          str(bad), "--episodes", "1", "--store", str(tmp_path / "x.zarr")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "robot.cameras.0.name: the sim model has no camera 'wrist'" in out.stderr
    assert not (tmp_path / "x.zarr").exists()
