"""Cameras over real rclpy / Fast DDS: the actor assembles sensor_msgs/Image and CompressedImage
frames, acts while they are fresh, holds on a stale camera, drops and counts bad images without
dying and states each camera's age in ~/status; the sim bridge publishes the rendered camera."""
from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image as PilImage
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger

from o2o_robot.config import load_config, resolve_config_path
from o2o_robot.ros import qos
from o2o_robot.ros.actor_node import ActorNode
from o2o_robot.ros.camera import image_to_msg
from o2o_robot.ros.sim_bridge_node import SimBridgeNode
from o2o_robot.sim.camera import SimCameras
from o2o_robot.sim.envs import make_env
from ros_helpers import Recorder, RosGraph, call_service, domain_id, namespace, status_json, wait_for

JOINTS = ["joint1", "joint2", "joint3"]
OBS_TIMEOUT_MS = 500.0


class Rows:
    """A learner that keeps what the actor hands over (the node's Learner interface)."""

    def __init__(self):
        self.items = []

    def submit(self, item) -> bool:
        self.items.append(item)
        return True

    def poll_policy(self):
        return None

    def stats(self) -> dict:
        return {}


def png(pixels: np.ndarray) -> bytes:
    data = io.BytesIO()
    PilImage.fromarray(pixels).save(data, format="PNG")
    return data.getvalue()


FRONT = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)      # cropped to [2:6, 4:8]
WRIST = np.full((8, 8), 77, np.uint8)                               # mono png, shrunk 2x


@pytest.fixture(scope="module")
def a():
    cfg = load_config(resolve_config_path("sim_reach.yaml"), overrides={
        "control": {"max_episode_steps": 100000, "obs_timeout_ms": OBS_TIMEOUT_MS},
        "robot": {"cameras": [
            {"name": "front", "topic": "cam/front", "type": "image", "width": 4, "height": 4,
             "crop": [4, 2, 4, 4], "frame_stack": 2},
            {"name": "wrist", "topic": "cam/wrist", "type": "compressed_image", "width": 4,
             "height": 4, "channels": 1}]}})
    ns = namespace("camera")
    graph = RosGraph(domain_id(1))
    rows = Rows()
    actor = graph.add(ActorNode(cfg, learner=rows, latency_budget_share=None,
                                context=graph.context, namespace=ns))
    tester = graph.node("tester", ns)
    state = SimpleNamespace(front=True, wrist=True)
    pubs = {"joints": tester.create_publisher(JointState, "joint_states", qos.STREAM),
            "task": tester.create_publisher(Float64MultiArray, "task_obs", qos.STREAM),
            "teleop": tester.create_publisher(Float64MultiArray, "teleop/action", qos.STREAM),
            "engaged": tester.create_publisher(Bool, "teleop/engaged", qos.STREAM),
            "front": tester.create_publisher(Image, "cam/front", qos.STREAM),
            "wrist": tester.create_publisher(CompressedImage, "cam/wrist", qos.STREAM)}
    front_msg = image_to_msg(FRONT)
    wrist_msg = CompressedImage(format="png", data=png(WRIST))

    def feed():   # the robot and the operator, at 20 Hz
        pubs["joints"].publish(JointState(name=JOINTS, position=[0.1] * 3, velocity=[0.0] * 3))
        pubs["task"].publish(Float64MultiArray(data=[0.0] * 6))
        pubs["teleop"].publish(Float64MultiArray(data=[0.5, 0.0, 0.0]))
        pubs["engaged"].publish(Bool(data=True))
        if state.front:
            pubs["front"].publish(front_msg)
        if state.wrist:
            pubs["wrist"].publish(wrist_msg)

    tester.create_timer(0.05, feed)
    a = SimpleNamespace(graph=graph, actor=actor, state=state, pubs=pubs, ns=ns, rows=rows,
                        status=Recorder(tester, String, f"{ns}/o2o_actor/status", status_json,
                                        qos.STATUS))
    yield a
    graph.close()


def cams(a) -> dict:
    return a.actor.core.stats(None)["cameras"]


def acting(a) -> int:
    return a.actor.core.counts["intervention"]


def test_fresh_images_are_assembled_and_the_actor_acts(a):
    wait_for(lambda: acting(a) >= 5, 20.0, "the actor acting on fresh images")
    frames = a.actor.core.cameras.newest()
    np.testing.assert_array_equal(frames["front"], FRONT[2:6, 4:8])
    np.testing.assert_array_equal(frames["wrist"], np.full((4, 4, 1), 77, np.uint8))
    status = wait_for(lambda: a.status.last() and a.status.last()["core"]["cameras"]["received"]
                      ["front"] and a.status.last(), 10.0, "a status with camera counts")
    ages = status["core"]["cameras"]["ages_ms"]
    assert set(ages) == {"front", "wrist"} and all(0 <= v < 60_000 for v in ages.values())
    # The rows handed to the learner carry each camera's newest single frame, once.
    rows = [r for r in list(a.rows.items) if getattr(r, "frames", None)]
    assert len(rows) >= 2
    np.testing.assert_array_equal(rows[0].frames["front"], FRONT[2:6, 4:8])
    assert rows[0].frames["wrist"].shape == (4, 4, 1)
    assert any(r.next_frames is n.frames for r, n in zip(rows, rows[1:]))


def test_bad_images_are_dropped_counted_and_the_node_lives(a):
    before = dict(cams(a)["dropped"])
    tester_pub = a.pubs["front"]
    wrong_encoding = image_to_msg(FRONT)
    wrong_encoding.encoding = "rgb16"
    too_small = image_to_msg(FRONT[:4, :6])                 # crop [4, 2, 4, 4] needs 8 x 6
    short = image_to_msg(FRONT)
    short.data = bytes(10)
    for msg in (wrong_encoding, too_small, short):
        tester_pub.publish(msg)
    a.pubs["wrist"].publish(CompressedImage(format="jpeg", data=b"\xff\xd8 not a jpeg"))
    wait_for(lambda: cams(a)["dropped"].get("front", 0) >= before.get("front", 0) + 3
             and cams(a)["dropped"].get("wrist", 0) >= before.get("wrist", 0) + 1,
             10.0, "the bad images counted")
    reasons = cams(a)["drop_reasons"]
    assert "cannot decode the jpeg image" in reasons["wrist"]
    assert a.actor.malformed.get("cam/front", 0) >= 3     # the node's per-topic count too
    ticks = a.actor.core.counts["ticks"]
    wait_for(lambda: a.actor.core.counts["ticks"] > ticks + 5, 10.0, "the tick going on")
    np.testing.assert_array_equal(a.actor.core.cameras.newest()["front"], FRONT[2:6, 4:8])


def test_a_stale_camera_holds_and_its_age_grows(a):
    wait_for(lambda: acting(a) >= 1, 20.0, "acting")
    stale_before = a.actor.core.hold_reasons.get("stale", 0)
    a.state.wrist = False
    try:
        wait_for(lambda: a.actor.core.hold_reasons.get("stale", 0) >= stale_before + 3, 20.0,
                 "holds on the stale wrist camera")
        ages = a.actor.core.cameras.ages_ms(a.actor.core.cameras._stamps["front"] + 0.0)
        assert ages["wrist"] > OBS_TIMEOUT_MS        # when front last arrived, wrist was stale
    finally:
        a.state.wrist = True
    acted = acting(a)
    wait_for(lambda: acting(a) > acted, 20.0, "acting again once the camera is back")


def test_the_sim_bridge_publishes_the_rendered_camera():
    cfg = load_config(resolve_config_path("sim_reach_pixels.yaml"),
                      overrides={"sim": {"lockstep": True, "seed": 7}})
    graph = RosGraph(domain_id(3))
    try:
        ns = namespace("simcam")
        graph.add(SimBridgeNode(cfg, context=graph.context, namespace=ns))
        tester = graph.node("tester", ns)
        images = Recorder(tester, Image, "camera/front/image_raw")
        targets = Recorder(tester, Float64MultiArray, "sim/target", lambda m: np.array(m.data))
        task = Recorder(tester, Float64MultiArray, "task_obs", lambda m: np.array(m.data))
        reply = call_service(tester.create_client(Trigger, "reset"), Trigger.Request())
        assert reply.success
        wait_for(lambda: len(images) and len(targets) and len(task), 10.0, "an observation")
        msg = images.last()
        assert (msg.height, msg.width, msg.encoding, msg.step) == (48, 48, "rgb8", 144)
        got = np.frombuffer(bytes(msg.data), np.uint8).reshape(48, 48, 3)
        ref = make_env(cfg.sim)
        ref.reset(seed=7 + 1)                                   # episode 1 after one reset
        renderer = SimCameras(ref.unwrapped.model, cfg.robot.cameras)
        try:
            expected = renderer.render(ref.unwrapped.data, "front")
            assert np.abs(got.astype(int) - expected).max() <= 3
        finally:
            renderer.close()
        np.testing.assert_array_equal(targets.last(), ref.unwrapped.target_position())
        assert task.last().shape == (3,)                        # ee xyz only
    finally:
        graph.close()


def test_pixel_demos_collected_through_ros_land_in_the_store_with_frames(tmp_path):
    """`demos collect` in sim: the sim bridge (rendering in real time, as collection runs it),
    the scripted operator and the actor in collect mode over ROS 2: every stored row has the
    camera frame, and each episode's first frame is the render of a sim episode's reset state
    (seed sim.seed + its index; the arm rests until the first action)."""
    from o2o_robot.data.store import TransitionStore
    from o2o_robot.ros.collect import run_collect

    cfg = load_config(resolve_config_path("sim_reach_pixels.yaml"), overrides={
        "store": {"path": str(tmp_path / "px.zarr")}, "control": {"max_episode_steps": 8},
        "sim": {"seed": 40}})
    summary = run_collect(cfg, teleop="scripted", episodes=2, domain_id=domain_id(2),
                          namespace=namespace("pixcollect"), max_wall_s=120.0, progress=False)
    assert summary["stored_episodes"] == 2, summary
    with TransitionStore.open(cfg.store.path) as store:
        assert store.cameras == {"front": (48, 48, 3)}
        frames, episodes = store.read_frames("front"), store.episodes()
        assert frames.shape == (len(store), 48, 48, 3) and len(episodes) == 2
    env = make_env(cfg.sim)
    renderer = SimCameras(env.unwrapped.model, cfg.robot.cameras)
    try:
        resets = []
        for k in range(6):
            env.reset(seed=40 + k)
            resets.append(renderer.render(env.unwrapped.data, "front").astype(int))
        for ep in episodes:
            first = frames[ep["start"]].astype(int)
            assert min(np.abs(first - r).max() for r in resets) <= 3, ep
            moved = frames[ep["end"] - 1].astype(int)
            assert np.abs(moved - first).max() > 30          # the arm moved in the episode
    finally:
        renderer.close()
        env.close()
