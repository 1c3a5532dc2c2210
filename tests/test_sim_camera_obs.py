"""The camera observation without ROS (`CameraObservation`: `o2o-robot train`, finetune's
evaluations): each observation is the state plus the stack the actor would build from the
episode's row frames, and `sim.blank_cameras` (the pixel learning check's negative control)
blanks every image the learner and the policy see: demos, rows, observations."""
from __future__ import annotations

import numpy as np
import pytest

from o2o_robot.config import load_config, resolve_config_path
from o2o_robot.data.store import TransitionStore
from o2o_robot.sim.camera import CameraObservation, camera_env
from o2o_robot.sim.demos import generate_demos
from o2o_robot.sim.envs import env_spec, make_env

PIXELS = resolve_config_path("sim_reach_pixels.yaml")


def pixel_env(blank: bool = False):
    cfg = load_config(PIXELS, overrides={"sim": {"blank_cameras": blank}})
    return cfg, camera_env(make_env(cfg.sim, max_episode_steps=4), cfg.robot.cameras, cfg.sim)


def test_observations_stack_the_row_frames_as_the_actor_does():
    cfg, env = pixel_env()
    try:
        assert isinstance(env, CameraObservation) and env_spec(env)["obs_dim"] == 9
        obs, _ = env.reset(seed=3)
        first = env.frames["front"].copy()
        assert set(obs) == {"state", "front"} and obs["front"].shape == (48, 48, 9)
        assert obs["state"].shape == (9,) and obs["state"].dtype == np.float32
        for k in range(3):                          # the episode's first frame, repeated
            np.testing.assert_array_equal(obs["front"][..., 3 * k:3 * k + 3], first)
        seen, done = [first], False
        while not done:
            obs, _, terminated, truncated, _ = env.step(np.full(3, 1.5))
            seen.append(env.frames["front"].copy())
            want = [seen[max(len(seen) - 3 + k, 0)] for k in range(3)]   # oldest first
            np.testing.assert_array_equal(obs["front"], np.concatenate(want, axis=-1))
            done = terminated or truncated
        assert len(seen) == 5 and not np.array_equal(seen[0], seen[-1])   # the arm moved
        obs, _ = env.reset(seed=4)                  # a new episode forgets the old frames
        np.testing.assert_array_equal(obs["front"][..., :3], env.frames["front"])
    finally:
        env.close()


def test_a_vector_robot_keeps_its_plain_env():
    cfg = load_config(resolve_config_path("sim_reach.yaml"))
    env = make_env(cfg.sim)
    assert camera_env(env, cfg.robot.cameras, cfg.sim) is env
    env.close()


@pytest.mark.parametrize("blank", [False, True])
def test_blank_cameras_blanks_observations_and_demo_frames(tmp_path, blank):
    cfg, env = pixel_env(blank)
    try:
        obs, _ = env.reset(seed=0)
        obs, *_ = env.step(np.zeros(3))
        assert (obs["front"].max() == 0) == blank and np.any(obs["state"] != 0)
    finally:
        env.close()
    spec = env_spec(make_env(cfg.sim))
    with TransitionStore.open_or_create(tmp_path / "s.zarr", 9, 3, spec=spec,
                                        cameras={"front": (48, 48, 3)}) as store:
        generate_demos(store, cfg.sim, episodes=1, noise=0.0, seed=0, max_episode_steps=5,
                       progress=False, cameras=cfg.robot.cameras)
        frames = store.read_frames("front")
    assert len(frames) >= 1 and frames.shape[1:] == (48, 48, 3)
    assert (frames.max() == 0) == blank


def test_a_new_renderer_gives_a_state_the_same_frame_as_later_renders():
    """MuJoCo's first image from a new renderer differs from its later ones of the same state;
    SimCameras discards it, so a resumed run (a new renderer) sees what an unbroken one saw."""
    from o2o_robot.sim.camera import SimCameras

    cfg = load_config(PIXELS)
    env = make_env(cfg.sim)
    env.reset(seed=5)
    cams = SimCameras(env.unwrapped.model, cfg.robot.cameras)
    try:
        first = cams.render(env.unwrapped.data, "front").copy()
        np.testing.assert_array_equal(first, cams.render(env.unwrapped.data, "front"))
    finally:
        cams.close()
        env.close()
