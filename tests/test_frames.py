"""Camera frames without ROS: crop/resize/encodings give known pixels, bad images hold and are
counted, frame stacks follow the rows of an episode, and the ControlCore holds on a stale camera."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from o2o_robot.config import CameraSource, ControlConfig, RobotSpec, SafetyConfig
from o2o_robot.control.core import ControlCore
from o2o_robot.control.frame_stack import FrameStacks, policy_input, policy_observation
from o2o_robot.control.frames import FrameAssembler

JOINTS = ["joint1", "joint2", "joint3"]


def cam(**kw) -> CameraSource:
    base = dict(name="front", topic="camera/image", type="image", width=4, height=2)
    return CameraSource(**{**base, **kw})


def ramp(h: int, w: int) -> np.ndarray:
    """rgb8 test image: R = 10 * row + col, G = 100 + col, B = 200 + row (unique, exact)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([10 * y + x, 100 + x, 200 + y], axis=-1).astype(np.uint8)


def frame_of(src: CameraSource, encoding: str, pixels: np.ndarray, step: int | None = None):
    asm = FrameAssembler([src], strict=True)
    h, w, c = pixels.shape
    rows = pixels.reshape(h, w * c)
    step = step or w * c
    padded = np.zeros((h, step), np.uint8)
    padded[:, :w * c] = rows
    assert asm.update_image(src.name, encoding, h, w, step, padded.tobytes(), stamp_s=1.0)
    return asm.newest()[src.name]


def test_nearest_resize_picks_the_source_pixel_centres():
    img = ramp(6, 9)                       # 9 x 6 -> 4 x 2: no whole factor, nearest
    out = frame_of(cam(), "rgb8", img)
    rows = ((np.arange(2) + 0.5) * 6 / 2).astype(int)       # 1, 4
    cols = ((np.arange(4) + 0.5) * 9 / 4).astype(int)       # 1, 3, 5, 7
    np.testing.assert_array_equal(out, img[rows][:, cols])
    assert out.dtype == np.uint8 and out.shape == (2, 4, 3)
    assert out[0, 0].tolist() == [11, 101, 201]


def test_whole_factor_shrinks_by_the_rounded_area_mean():
    img = ramp(4, 8)                       # 8 x 4 -> 4 x 2: 2 x 2 blocks
    out = frame_of(cam(), "rgb8", img)
    block = img.astype(float).reshape(2, 2, 4, 2, 3).mean(axis=(1, 3))
    np.testing.assert_array_equal(out, np.floor(block + 0.5).astype(np.uint8))
    assert out[0, 0].tolist() == [6, 101, 201]    # means 5.5, 100.5, 200.5 round up


def test_crop_is_applied_before_the_resize_and_row_padding_is_skipped():
    img = ramp(10, 12)
    out = frame_of(cam(crop=[3, 2, 4, 2]), "rgb8", img, step=12 * 3 + 5)   # 1:1 after the crop
    np.testing.assert_array_equal(out, img[2:4, 3:7])


def test_bgr8_and_mono8_are_converted_to_rgb():
    img = ramp(2, 4)
    np.testing.assert_array_equal(frame_of(cam(), "bgr8", img[..., ::-1].copy()), img)
    grey = img[..., :1].copy()
    np.testing.assert_array_equal(frame_of(cam(), "mono8", grey), np.repeat(grey, 3, axis=2))


def test_one_channel_output_is_the_integer_luma():
    img = ramp(2, 4)
    out = frame_of(cam(channels=1), "rgb8", img)
    r, g, b = (img[..., c].astype(int) for c in range(3))
    np.testing.assert_array_equal(out[..., 0], (77 * r + 150 * g + 29 * b) >> 8)
    assert out.shape == (2, 4, 1)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed_images_are_decoded(fmt):
    img = np.zeros((2, 4, 3), np.uint8)
    img[:, :2] = (250, 10, 10)             # flat halves survive jpeg within a few levels
    img[:, 2:] = (10, 10, 250)
    data = io.BytesIO()
    Image.fromarray(img).save(data, format=fmt.upper(), quality=95)
    asm = FrameAssembler([cam(type="compressed_image")], strict=True)
    assert asm.update_compressed("front", f"rgb8; {fmt} compressed bgr8", data.getvalue(), 0.0)
    out = asm.newest()["front"].astype(int)
    tolerance = 0 if fmt == "png" else 12
    assert np.abs(out - img).max() <= tolerance


@pytest.mark.parametrize("send, reason", [
    (lambda a: a.update_image("front", "rgb16", 2, 4, 24, bytes(48), 1.0), "encoding 'rgb16'"),
    (lambda a: a.update_image("front", "rgb8", 2, 4, 12, bytes(23), 1.0), "needs 24 bytes"),
    (lambda a: a.update_image("front", "rgb8", 2, 4, 6, bytes(24), 1.0), "step 6"),
    (lambda a: a.update_image("back", "rgb8", 2, 4, 12, bytes(24), 1.0), "not a configured"),
    (lambda a: a.update_compressed("front", "jpeg", b"\xff\xd8garbage", 1.0), "cannot decode"),
    (lambda a: a.update_compressed("front", "tiff", b"II*\x00", 1.0), "expected jpeg or png"),
])
def test_bad_images_are_counted_and_keep_the_previous_frame(send, reason):
    src = cam(type="compressed_image") if "compressed" in reason or "jpeg or" in reason \
        or "decode" in reason else cam()
    asm = FrameAssembler([src])
    if src.type == "image":
        assert asm.update_image("front", "rgb8", 2, 4, 12, ramp(2, 4).tobytes(), 0.5)
    else:
        png = io.BytesIO()
        Image.fromarray(ramp(2, 4)).save(png, format="PNG")
        assert asm.update_compressed("front", "png", png.getvalue(), 0.5)
    assert not send(asm)
    key = "back" if "configured" in reason else "front"
    assert asm.dropped == {key: 1} and reason in asm.drop_reasons[key]
    np.testing.assert_array_equal(asm.newest()["front"], ramp(2, 4))
    assert asm.ages_ms(1.0)["front"] == pytest.approx(500.0)     # the old frame's age


def test_an_image_too_small_for_the_crop_is_refused():
    asm = FrameAssembler([cam(crop=[4, 0, 4, 2])])
    assert not asm.update_image("front", "rgb8", 2, 6, 18, bytes(36), 0.0)
    assert "too small for crop" in asm.drop_reasons["front"] and not asm.ready


def test_stacks_repeat_the_episode_start_and_follow_committed_rows():
    stacks = FrameStacks([cam(width=1, height=1, frame_stack=3)])
    f = [np.full((1, 1, 3), v, np.uint8) for v in range(6)]
    seen = []
    for t, first in [(0, True), (1, False), (2, False), (3, False)]:
        seen.append(stacks.build({"front": f[t]}, first=first)["front"][0, 0, ::3].tolist())
        stacks.commit({"front": f[t]})
    assert seen == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3]]
    # A new episode forgets the old frames; an uncommitted tick (a hold) is not in the history.
    assert stacks.build({"front": f[5]}, first=True)["front"][0, 0, ::3].tolist() == [5, 5, 5]
    stacks.build({"front": f[4]}, first=True)
    stacks.commit({"front": f[4]})
    stacks.build({"front": f[0]}, first=False)          # held tick: not committed
    assert stacks.build({"front": f[5]}, first=False)["front"][0, 0, ::3].tolist() == [4, 4, 5]


def test_policy_observation_and_input():
    state = np.arange(3, dtype=np.float32)
    assert policy_observation(state, {}) is state
    obs = policy_observation(state, {"front": np.zeros((2, 2, 9), np.uint8)})
    assert set(obs) == {"state", "front"}
    assert policy_input(obs, ()) is state and policy_input(obs, ("front",)) is obs


# -------------------------------------------------------------------------------- the tick
def feed_state(core: ControlCore, t: float) -> None:
    obs = core.observations
    assert obs.update_joint_state("joint_states", JOINTS, [0.1] * 3, [0.0] * 3, stamp_s=t)
    assert obs.update_array("task_obs", [0.0] * 6, stamp_s=t)


def test_core_holds_on_a_stale_or_missing_camera_and_rows_carry_the_newest_frames():
    robot = RobotSpec(cameras=[cam(width=2, height=1, frame_stack=2)])
    seen = []

    def policy(obs):
        seen.append(obs["front"].copy())
        return np.zeros(3), 1

    core = ControlCore(robot, ControlConfig(obs_timeout_ms=100), SafetyConfig(), policy)
    feed_state(core, 0.0)
    assert core.tick(0.01).hold_reason == "not_ready"           # no image yet
    frames = [ramp(1, 2) + k for k in range(3)]
    rows = []
    for k, t in enumerate([0.05, 0.10, 0.15]):
        feed_state(core, t)
        core.cameras.update_image("front", "rgb8", 1, 2, 6, frames[k].tobytes(), t)
        result = core.tick(t + 0.01)
        assert result.source == "online"
        rows.append(result.transition)
    assert rows[0] is None
    np.testing.assert_array_equal(rows[1]["frames"]["front"], frames[0])
    np.testing.assert_array_equal(rows[1]["next_frames"]["front"], frames[1])
    assert rows[2]["frames"]["front"] is rows[1]["next_frames"]["front"]   # one copy per frame
    np.testing.assert_array_equal(seen[2], np.concatenate([frames[1], frames[2]], axis=-1))
    feed_state(core, 0.30)                                      # state fresh, camera 150 ms old
    result = core.tick(0.30)
    assert (result.source, result.hold_reason) == ("hold", "stale")
    assert core.stats(0.30)["cameras"]["ages_ms"]["front"] == pytest.approx(150.0)


def test_a_robot_without_cameras_ticks_as_before():
    core = ControlCore(RobotSpec(), ControlConfig(), SafetyConfig(),
                       lambda obs: (np.asarray(obs[:3], float), 1))
    for t in (0.0, 0.05):
        feed_state(core, t)
        result = core.tick(t)
    assert "frames" not in result.transition and isinstance(result.transition["obs"], np.ndarray)


def test_a_silent_camera_is_named_in_the_missing_observations_warning():
    from o2o_robot.control.observation import ObservationAssembler
    from o2o_robot.control.status import OBS_WAIT_WARN_S, MissingObservations

    robot = RobotSpec(cameras=[cam(), cam(name="wrist", topic="wrist/jpeg",
                                          type="compressed_image")])
    obs, frames = ObservationAssembler(robot), FrameAssembler(robot.cameras)
    assert obs.update_joint_state("joint_states", JOINTS, [0.0] * 3, [0.0] * 3, stamp_s=0.0)
    assert obs.update_array("task_obs", [0.0] * 6, stamp_s=0.0)
    assert frames.update_image("front", "rgb8", 2, 4, 12, bytes(24), 0.0)
    frames.update_compressed("wrist", "jpeg", b"junk", 0.0)
    missing = MissingObservations(0.0, lambda t: f"/ns/{t}")
    level, text = missing.check(obs, robot.observations, OBS_WAIT_WARN_S + 1, frames,
                                robot.cameras)
    assert level == "warning" and "waiting for /ns/wrist/jpeg (compressed_image; 1 dropped: " \
        "cannot decode the jpeg image" in text and "camera/image" not in text
    assert frames.update_image("wrist", "rgb8", 2, 4, 12, bytes(24), 1.0) is False   # jpeg cam
    png = io.BytesIO()
    Image.fromarray(ramp(2, 4)).save(png, format="PNG")
    assert frames.update_compressed("wrist", "png", png.getvalue(), 1.0)
    assert missing.check(obs, robot.observations, OBS_WAIT_WARN_S + 2, frames, robot.cameras) \
        == ("info", "observations arriving on all 4 topics")
