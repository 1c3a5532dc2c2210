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
from ros_helpers import (Recorder, RosGraph, Rows, call_service, domain_id, namespace, status_json,
                         wait_for)

JOINTS = ["joint1", "joint2", "joint3"]
OBS_TIMEOUT_MS = 500.0


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


def test_lockstep_pixel_rows_pair_each_frame_with_its_own_state(tmp_path):
    """Lock-step through ROS 2 topics (the sim bridge steps once per action and publishes the
    image before the state): every stored row's frame is the render of that row's own state
    (joints from its obs, the target of its episode), and an episode's last next frame that of
    its last next_obs: no frame is a step early or late."""
    from rclpy.parameter import Parameter

    from o2o_robot.ros.scripted_teleop_node import ScriptedTeleopNode
    from o2o_robot.teleop.recorder import DemoRecorder

    cfg = load_config(resolve_config_path("sim_reach_pixels.yaml"), overrides={
        "store": {"path": str(tmp_path / "lock.zarr")}, "control": {"max_episode_steps": 10},
        "sim": {"lockstep": True, "seed": 50}})
    recorder = DemoRecorder.for_config(cfg)
    graph = RosGraph(domain_id(0))
    try:
        ns, kw = namespace("lockpix"), {"context": graph.context}
        graph.add(SimBridgeNode(cfg, namespace=ns, **kw))
        graph.add(ScriptedTeleopNode(cfg, namespace=ns, **kw,
                                     parameter_overrides=[Parameter("mode", value="demo")]))
        graph.add(ActorNode(cfg, learner=recorder, latency_budget_share=None, namespace=ns, **kw,
                            parameter_overrides=[Parameter("mode", value="collect")]))
        wait_for(lambda: recorder.stats()["stored_episodes"] >= 2, 120.0, "two demo episodes")
    finally:
        graph.close()
        recorder.close()
    assert check_frames_pair_with_states(cfg, cfg.store.path) >= 2


def check_frames_pair_with_states(cfg, path, source: str | None = None) -> int:
    """Assert that every stored row (of `source`) has the frame of its own state: the render
    of its obs joints with its episode's target (found among the sim's reset seeds by the
    episode's first frame), and each episode's last next frame that of its last next_obs.
    Returns the rows checked."""
    from o2o_robot.data.store import TransitionStore

    with TransitionStore.open(path) as store:
        rows, episodes = store.read(["obs", "next_obs"]), store.episodes()
        frames, nexts = store.read_frames("front"), store.read_next_frames("front")
    env = make_env(cfg.sim)
    base = env.unwrapped
    renderer = SimCameras(base.model, cfg.robot.cameras)

    def render(obs, target) -> np.ndarray:
        base.set_state(obs[0:6:2], obs[1:6:2], target)
        return renderer.render(base.data, "front").astype(int)

    try:
        targets = []
        for k in range(12):                  # the sim's episodes: seed sim.seed + index
            base.reset(seed=cfg.sim.seed + k)
            targets.append(base.target_position())
        checked = 0
        for ep in episodes:
            if source is not None and ep["source"] != source:
                continue
            first = rows["obs"][ep["start"]]
            target = min(targets, key=lambda t: np.abs(render(first, t) - frames[ep["start"]])
                         .max())
            for i in range(ep["start"], ep["end"]):
                assert np.abs(render(rows["obs"][i], target) - frames[i]).max() <= 3, i
                checked += 1
            last = ep["end"] - 1
            assert np.abs(render(rows["next_obs"][last], target) - nexts[last]).max() <= 3
        return checked
    finally:
        renderer.close()
        env.close()


def test_lockstep_pixel_finetune_stores_online_rows_with_their_frames(tmp_path):
    """`o2o-robot finetune --lockstep` on the pixel task: scripted demos with frames, then the
    actor acting through ROS 2 topics on the rendered camera, its online rows stored by the
    learner with the frame of each row's own state."""
    import subprocess
    import sys

    from o2o_robot.data.store import TransitionStore

    config = tmp_path / "px.yaml"
    config.write_text(f"base: {resolve_config_path('sim_reach_pixels.yaml')}\n"
                      "learner: {warmup_steps: 30, utd_ratio: 1, mode: thread}\n"
                      "train: {demo_episodes: 2}\nsampler: {batch_size: 16}\n")
    out = subprocess.run([sys.executable, "-m", "o2o_robot.cli", "finetune", "--config",
                          str(config), "--run-dir", str(tmp_path / "run"), "--steps", "60",
                          "--lockstep"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    store = tmp_path / "run" / "store.zarr"
    with TransitionStore.open(store) as reader:
        counts = reader.counts()
        assert reader.cameras == {"front": (48, 48, 3)}
    assert counts["online"]["transitions"] == 60 and counts["demo"]["episodes"] == 2
    cfg = load_config(config)
    assert check_frames_pair_with_states(cfg, store, source="online") == 60
