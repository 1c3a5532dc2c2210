"""A camera policy (contract v2) driving the actor node over real rclpy / Fast DDS: the node
loads a pixel RLPD policy from `policy_path`, hands it the state and the stacked camera frames
it assembled, and acts with exactly what the policy computes on them (checked against
onnxruntime on the rows the node handed to the learner)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray

from o2o_robot.agents.rlpd import RLPD
from o2o_robot.config import RLPDConfig, load_config, resolve_config_path
from o2o_robot.data.schema import SOURCE_CODE
from o2o_robot.policy.export import export_policy
from o2o_robot.policy.runtime import OnnxPolicy
from o2o_robot.ros import qos
from o2o_robot.ros.actor_node import ActorNode
from o2o_robot.ros.camera import image_to_msg
from o2o_robot.spaces import camera_specs
from ros_helpers import RosGraph, Rows, domain_id, namespace, wait_for

JOINTS = ["joint1", "joint2", "joint3"]
FRONT = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
STACK = 2


@pytest.fixture(scope="module")
def a(tmp_path_factory):
    cfg = load_config(resolve_config_path("sim_reach.yaml"), overrides={
        "control": {"max_episode_steps": 100000, "obs_timeout_ms": 2000.0},
        "safety": {"max_delta_per_tick": 10.0},     # no rate limit: an action is the policy's
        "robot": {"cameras": [{"name": "front", "topic": "cam/front", "type": "image",
                               "width": 8, "height": 8, "frame_stack": STACK}]}})
    robot, cams = cfg.robot, camera_specs(cfg.robot)
    agent = RLPD(robot.obs_dim, robot.act_dim, RLPDConfig(
        hidden_dims=[16, 16], encoder_features=[4, 4], latent_dim=6, critic_ensemble_size=2,
        critic_subset_size=1), seed=4, cameras=cams)
    path = tmp_path_factory.mktemp("policy") / "pixels.onnx"
    path.write_bytes(export_policy(agent.export_actor(), obs_dim=robot.obs_dim,
                                   act_dim=robot.act_dim, action_low=robot.action.low,
                                   action_high=robot.action.high, algorithm="rlpd", version=3,
                                   cameras=cams))
    ns = namespace("campolicy")
    graph = RosGraph(domain_id(2))
    rows = Rows()
    actor = graph.add(ActorNode(cfg, learner=rows, latency_budget_share=None,
                                context=graph.context, namespace=ns,
                                parameter_overrides=[Parameter("policy_path", value=str(path)),
                                                     Parameter("deterministic", value=True)]))
    tester = graph.node("tester", ns)
    joints = tester.create_publisher(JointState, "joint_states", qos.STREAM)
    task = tester.create_publisher(Float64MultiArray, "task_obs", qos.STREAM)
    front = tester.create_publisher(Image, "cam/front", qos.STREAM)
    front_msg = image_to_msg(FRONT)

    def feed():   # the robot at 20 Hz: fixed joints, task and image
        joints.publish(JointState(name=JOINTS, position=[0.1, -0.2, 0.3], velocity=[0.0] * 3))
        task.publish(Float64MultiArray(data=[0.05 * k for k in range(robot.obs_dim - 6)]))
        front.publish(front_msg)

    tester.create_timer(0.05, feed)
    yield SimpleNamespace(actor=actor, rows=rows, path=path, robot=robot)
    graph.close()


def test_the_node_acts_with_the_camera_policy_on_the_frames_it_assembled(a):
    wait_for(lambda: a.actor.core.counts["online"] >= 8, 30.0, "the camera policy acting")
    assert a.actor.slot.current[0].camera_inputs == ("front",) and a.actor.slot.version == 3
    rows = [r for r in list(a.rows.items) if getattr(r, "frames", None) is not None]
    policy = OnnxPolicy(a.path, provider="cpu")
    # From the second tick on, the stack holds two copies of the (fixed) image.
    later = [r for r in rows[STACK:] if r.source == SOURCE_CODE["online"]]
    assert len(later) >= 4
    for row in later:
        np.testing.assert_array_equal(row.frames["front"], FRONT)
        obs = {"state": row.obs, "front": np.concatenate([FRONT] * STACK, axis=-1)}
        np.testing.assert_allclose(row.action, policy(obs), rtol=0, atol=1e-5)
    # the image matters: a black one gives another action (so the check above can fail)
    black = {"state": later[0].obs, "front": np.zeros((8, 8, 3 * STACK), np.uint8)}
    assert np.abs(policy(black) - later[0].action).max() > 1e-4
