"""The sim camera (MuJoCo, headless EGL): the pixel reach task's camera shows the target where
the camera model projects it, renders per thread, and configs it cannot render are refused."""
from __future__ import annotations

import math
import threading

import mujoco
import numpy as np
import pytest

from o2o_robot.config import CameraSource, load_config, resolve_config_path
from o2o_robot.sim.camera import SimCameras, check_cameras
from o2o_robot.sim.envs import make_env, observation_topics
from o2o_robot.sim.experts import expert_for
from o2o_robot.sim.rollout import run_episodes

PIXELS = resolve_config_path("sim_reach_pixels.yaml")


@pytest.fixture(scope="module")
def pix():
    cfg = load_config(PIXELS)
    env = make_env(cfg.sim, max_episode_steps=cfg.control.max_episode_steps)
    cams = SimCameras(env.unwrapped.model, cfg.robot.cameras, cfg.sim.render_size)
    yield cfg, env, cams
    cams.close()
    env.close()


def project(model: mujoco.MjModel, data: mujoco.MjData, name: str, point, height: int,
            width: int) -> tuple[int, int]:
    """(row, col) of world `point` in camera `name`'s image (pinhole, fovy, looking along -z)."""
    cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
    rel = data.cam_xmat[cam].reshape(3, 3).T @ (np.asarray(point) - data.cam_xpos[cam])
    focal = (height / 2) / math.tan(math.radians(model.cam_fovy[cam]) / 2)
    col = width / 2 + focal * rel[0] / -rel[2]
    row = height / 2 - focal * rel[1] / -rel[2]
    return int(row), int(col)


def greenness(img: np.ndarray, row: int, col: int) -> float:
    """Mean of G - max(R, B) over the 3 x 3 pixels around (row, col)."""
    patch = img[row - 1:row + 2, col - 1:col + 2].astype(int)
    return float((patch[..., 1] - np.maximum(patch[..., 0], patch[..., 2])).mean())


def test_the_camera_shows_the_target_where_it_is(pix):
    cfg, env, cams = pix
    base = env.unwrapped
    env.reset(seed=0)
    qpos = np.array([0.0, 0.4, 1.2])
    places = [np.array([0.30, -0.20, 0.10]), np.array([0.35, 0.25, 0.45])]
    images, spots = [], []
    for target in places:
        base.set_state(qpos, np.zeros(3), target)
        images.append(cams.render(base.data, "front").copy())
        spots.append(project(base.model, base.data, "front", target, 48, 48))
    assert images[0].shape == (48, 48, 3) and images[0].dtype == np.uint8
    for k, (row, col) in enumerate(spots):
        assert 2 <= row < 46 and 2 <= col < 46, "the target is in view"
        here, other = greenness(images[k], row, col), greenness(images[1 - k], row, col)
        assert here > 40 > other, (k, here, other)      # green where the target is, only then
    # Only the target moved: the images differ around its two places, their reflections in the
    # floor (z mirrored) and their shadows (the light shines straight down), nowhere else.
    mirrored = [project(base.model, base.data, "front", p * [1, 1, k], 48, 48)
                for p in places for k in (-1, 0)]
    diff = np.abs(images[0].astype(int) - images[1].astype(int)).sum(axis=2) > 30
    rows, cols = np.nonzero(diff)
    near = [min(math.dist((r, c), s) for s in spots + mirrored) for r, c in zip(rows, cols)]
    assert diff.sum() > 0 and max(near) < 8


def test_rendering_from_another_thread_gives_the_same_image_and_close_ends_it(pix):
    cfg, env, cams = pix
    env.reset(seed=5)
    here = cams.render(env.unwrapped.data, "front").copy()
    there = {}
    worker = threading.Thread(target=lambda: there.update(
        img=cams.render(env.unwrapped.data, "front").copy()))
    worker.start()
    worker.join(30)
    np.testing.assert_array_equal(there["img"], here)       # one GL context, whoever asks
    spare = SimCameras(env.unwrapped.model, cfg.robot.cameras)
    spare.render(env.unwrapped.data, "front")
    spare.close()
    spare.close()
    assert not spare._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        spare.render(env.unwrapped.data, "front")


def test_the_pixel_state_has_no_target_and_the_expert_still_reaches(pix):
    cfg, env, _ = pix
    obs, _ = env.reset(seed=1)
    assert obs.shape == (9,) and cfg.robot.obs_dim == 9
    np.testing.assert_allclose(obs[6:9], env.unwrapped.ee_position(), atol=1e-6)
    assert observation_topics(cfg.robot, env, cfg.sim) == (["joint_states"], "task_obs")
    result = run_episodes(env, expert_for(env, 0.0, 0).act, episodes=3, seed=100)
    assert result["success_rate"] == 1.0


@pytest.mark.parametrize("change, message", [
    ({"name": "wrist"}, "robot.cameras.0.name: the sim model has no camera 'wrist'"),
    ({"crop": [40, 0, 20, 20]}, "robot.cameras.0.crop: [40, 0, 20, 20] lies outside the 48x48"),
    ({"width": 1000}, "robot.cameras.0: renders at 1000x48, beyond the model's offscreen"),
])
def test_cameras_the_sim_cannot_render_are_refused(pix, change, message):
    cfg, env, _ = pix
    src = CameraSource(**{**cfg.robot.cameras[0].model_dump(), **change})
    with pytest.raises(ValueError) as info:
        check_cameras(env.unwrapped.model, [src], None)
    assert message in str(info.value)
