"""Policy contract v2 (DESIGN.md "Policy contract"): `state`, one uint8 input per camera and
`noise` in, the image encoder inside the ONNX graph. Parity with torch on uint8 images,
validation (camera shapes, probes with images), hot-swap and rollback of camera policies,
`policy check`'s report, and v1 (vector) policies unchanged beside them. Real onnxruntime.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch

from o2o_robot.agents.rlpd import RLPD
from o2o_robot.config import RLPDConfig
from o2o_robot.policy.export import (PARITY_TOL, ExportError, PolicyGraph, UniformWarmupActor,
                                     export_policy, reference_actions)
from o2o_robot.policy.probes import probe_inputs
from o2o_robot.policy.runtime import (OnnxPolicy, PolicyRejected, measure_latency,
                                      validate_policy)
from o2o_robot.policy.slot import PolicySlot
from o2o_robot.policy.tools import check_policy
from o2o_robot.spaces import CameraSpec

torch.set_num_threads(1)
OBS, ACT = 3, 2
LOW, HIGH = np.array([-1.0, 0.0]), np.array([1.0, 2.0])
CAMS = (CameraSpec("front", 24, 24, 3, 2), CameraSpec("wrist", 20, 22, 1, 3))
CFG = RLPDConfig(hidden_dims=[16, 16], encoder_features=[4, 8, 8], latent_dim=6,
                 critic_ensemble_size=2, critic_subset_size=1)


def pixel_agent(seed: int = 0, cameras=CAMS) -> RLPD:
    return RLPD(OBS, ACT, CFG, batch_size=4, seed=seed, cameras=cameras)


def export(agent: RLPD | None = None, version: int = 1, cameras=CAMS, info=None, **kw) -> bytes:
    agent = agent if agent is not None else pixel_agent(version, cameras)
    return export_policy(agent.export_actor(), obs_dim=OBS, act_dim=ACT, action_low=LOW,
                         action_high=HIGH, algorithm="rlpd", version=version, cameras=cameras,
                         info=info, **kw)


def observation(seed: int = 0, cameras=CAMS, batch: int | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lead = () if batch is None else (batch,)
    return {"state": rng.standard_normal((*lead, OBS)).astype(np.float32),
            **{c.name: rng.integers(0, 256, (*lead, *c.shape), dtype=np.uint8) for c in cameras}}


def make_slot(cameras=CAMS) -> PolicySlot:
    return PolicySlot(OBS, ACT, LOW, HIGH, provider="cpu", cameras=cameras)


@pytest.fixture(scope="module")
def good() -> bytes:
    return export()


# ----------------------------------------------------------------------------------- export
def test_the_graph_takes_state_one_uint8_input_per_camera_and_noise(good):
    model = onnx.load_from_string(good)
    inputs = [(i.name, i.type.tensor_type.elem_type,
               [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim])
              for i in model.graph.input]
    u8, f32 = onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT
    assert inputs == [("state", f32, ["batch", OBS]), ("front", u8, ["batch", 24, 24, 6]),
                      ("wrist", u8, ["batch", 20, 22, 3]), ("noise", f32, ["batch", ACT])]
    policy = OnnxPolicy(good, provider="cpu")
    assert policy.cameras == {"front": (24, 24, 6), "wrist": (20, 22, 3)}
    assert json.loads(policy.metadata["spec"])["cameras"] == [c.as_dict() for c in CAMS]
    assert any(n.op_type == "Conv" for n in model.graph.node)      # the encoder is in the graph


def test_onnx_matches_torch_within_1e_5_on_uint8_images_batch_and_single():
    agent, info = pixel_agent(3), {}
    data = export(agent, info=info)
    assert max(info["parity_max_abs_error"].values()) <= PARITY_TOL
    policy = OnnxPolicy(data, provider="cpu")
    graph = PolicyGraph(agent.export_actor(), LOW, HIGH).eval()
    obs = observation(seed=9, batch=32)
    noise = np.random.default_rng(1).standard_normal((32, ACT)).astype(np.float32)
    expected = reference_actions(graph, obs, noise, ["front", "wrist"])
    np.testing.assert_allclose(policy(obs, noise), expected, rtol=0, atol=PARITY_TOL)
    single = policy({k: v[5] for k, v in obs.items()}, noise[5])
    np.testing.assert_allclose(single, expected[5], rtol=0, atol=PARITY_TOL)
    # the images matter: other pixels, same state and noise, give other actions
    blank = {**obs, "front": np.zeros_like(obs["front"]), "wrist": np.zeros_like(obs["wrist"])}
    assert np.abs(policy(blank, noise) - expected).max() > 1e-3
    # and the zero-noise action is the agent's deterministic action, scaled
    zero = policy(obs, np.zeros((32, ACT), np.float32))
    unit = agent.act(obs, deterministic=True)
    np.testing.assert_allclose(zero, LOW + (unit + 1) * (HIGH - LOW) / 2, rtol=0, atol=1e-5)


def test_export_probes_use_stored_images_and_refuse_ones_of_another_shape():
    stored = observation(seed=2, batch=5)
    info = {}
    export(info=info, probe_obs=stored)
    assert info["parity_observations"] == 5 + 64
    probes = probe_inputs(OBS, {c.name: c.shape for c in CAMS}, stored, np.random.default_rng(0))
    np.testing.assert_array_equal(probes["front"][:5], stored["front"])
    assert (probes["front"][5] == 0).all() and (probes["front"][6] == 255).all()
    with pytest.raises(ExportError, match=r"probe observations: front is uint8 \[5, 24, 24, 5\]"):
        export(probe_obs={**stored, "front": stored["front"][..., 1:]})
    with pytest.raises(ExportError, match=r"^spec: a policy with cameras needs a state vector"):
        export_policy(pixel_agent().export_actor(), obs_dim=0, act_dim=ACT, action_low=LOW,
                      action_high=HIGH, algorithm="rlpd", version=1, cameras=CAMS)


def test_the_warmup_policy_keeps_every_camera_input():
    data = export_policy(UniformWarmupActor(OBS, ACT), obs_dim=OBS, act_dim=ACT, action_low=LOW,
                         action_high=HIGH, algorithm="warmup", version=0, cameras=CAMS)
    policy = OnnxPolicy(data, provider="cpu")
    assert policy.cameras == {"front": (24, 24, 6), "wrist": (20, 22, 3)}
    np.testing.assert_allclose(policy(observation()), (LOW + HIGH) / 2, atol=1e-6)


# ------------------------------------------------------------------------------- validation
def test_validation_rejects_a_policy_whose_cameras_do_not_match_the_robot(good):
    validate_policy(good, obs_dim=OBS, act_dim=ACT, action_low=LOW, action_high=HIGH,
                    cameras=CAMS)
    with pytest.raises(PolicyRejected, match=r"^cameras: policy takes front 24x24x6, wrist "
                                             r"20x22x3, robot gives no cameras"):
        validate_policy(good, obs_dim=OBS, act_dim=ACT, action_low=LOW, action_high=HIGH)
    other = (CAMS[0], CameraSpec("wrist", 20, 22, 3, 3))
    with pytest.raises(PolicyRejected, match=r"^cameras: .* robot gives front 24x24x6, wrist "
                                             r"20x22x9"):
        validate_policy(good, obs_dim=OBS, act_dim=ACT, action_low=LOW, action_high=HIGH,
                        cameras=other)


def test_validation_probes_the_images_a_broken_encoder_fails_on(good):
    model = onnx.load_from_string(good)
    biases = {n.input[2] for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2}
    tensor = next(t for t in model.graph.initializer if t.name in biases)
    values = onnx.numpy_helper.to_array(tensor).copy()
    values[0] = np.nan                   # one conv channel: only the image path meets it
    tensor.CopyFrom(onnx.numpy_helper.from_array(values, tensor.name))
    slot = make_slot()
    assert slot.propose(good).accepted                       # control: the intact graph passes
    result = slot.propose(model.SerializeToString())
    assert not result.accepted and result.reason.startswith("non-finite: NaN/inf actions on")
    with pytest.raises(ExportError, match="^non-finite: the torch actor"):  # and at export
        agent = pixel_agent(4)
        with torch.no_grad():
            agent.nets.actor.encoder.trunks["wrist"].net[0].bias[0] = float("nan")
        export(agent)


def test_hot_swap_and_rollback_of_camera_policies(good):
    slot = make_slot()
    obs = observation(seed=5)
    assert slot.propose(good).accepted
    first = slot.act(obs, deterministic=True)
    second_data = export(version=2)
    result = slot.propose(second_data)
    assert result.accepted and slot.version == first[1] + 1
    second = slot.act(obs, deterministic=True)
    assert not np.allclose(second[0], first[0])
    assert slot.rollback().accepted
    back = slot.act(obs, deterministic=True)
    assert back[1] == first[1]
    np.testing.assert_array_equal(back[0], first[0])
    # a policy with a camera the robot lacks is refused, the camera policy keeps serving
    front = export(version=9, cameras=CAMS[:1])
    refused = make_slot(cameras=CAMS[1:]).propose(front)
    assert not refused.accepted and refused.reason.startswith("cameras: policy takes front")
    # one camera of the robot's two (or none: a state-only policy) is allowed
    assert slot.propose(front).accepted and slot.current[0].camera_inputs == ("front",)
    partial = slot.act(obs, deterministic=True)
    assert partial[1] == 9 and np.isfinite(partial[0]).all()   # the metadata version


def test_vector_policies_keep_contract_v1_and_take_a_dict_with_state():
    data = export_policy(pixel_agent(cameras=()).export_actor(), obs_dim=OBS, act_dim=ACT,
                         action_low=LOW, action_high=HIGH, algorithm="rlpd", version=1)
    assert [i.name for i in onnx.load_from_string(data).graph.input] == ["obs", "noise"]
    policy = OnnxPolicy(data, provider="cpu")
    assert policy.cameras == {} and policy.state_input == "obs"
    state = np.linspace(-1, 1, OBS).astype(np.float32)
    np.testing.assert_array_equal(policy({"state": state}), policy(state))
    slot = make_slot(cameras=())
    assert slot.propose(data).accepted
    assert np.array_equal(slot.act({"state": state}, True)[0], slot.act(state, True)[0])


def test_a_camera_policy_needs_its_images(good):
    policy = OnnxPolicy(good, provider="cpu")
    with pytest.raises(ValueError, match="this policy takes cameras"):
        policy(np.zeros(OBS, np.float32))
    obs = observation()
    with pytest.raises(ValueError, match=r"front: expected uint8 \(24, 24, 6\)"):
        policy({**obs, "front": obs["front"].astype(np.float32)})
    assert np.all(np.percentile(measure_latency(policy, n=20), 50) > 0)


def test_policy_check_shows_the_camera_inputs(tmp_path, good):
    path = tmp_path / "p.onnx"
    path.write_bytes(good)
    report = check_policy(path)
    assert report["inputs"] == {"state": f"float32 [B, {OBS}]",
                                "front": "uint8 [B, 24, 24, 6] (camera)",
                                "wrist": "uint8 [B, 20, 22, 3] (camera)",
                                "noise": f"float32 [B, {ACT}]"}
    assert report["spec"]["cameras"] == [c.as_dict() for c in CAMS]


def test_a_policy_with_a_pretrained_encoder_file_exports_with_parity(tmp_path):
    from test_pixels import save_encoder   # the same stand-in backbone, a torch.export file
    cams = (CameraSpec("front", 16, 16, 3, 2),)
    cfg = CFG.model_copy(update={"pretrained_encoder": save_encoder(tmp_path / "b.pt2")})
    agent, info = RLPD(OBS, ACT, cfg, batch_size=4, seed=0, cameras=cams), {}
    data = export(agent, cameras=cams, info=info)
    assert max(info["parity_max_abs_error"].values()) <= PARITY_TOL
    policy = OnnxPolicy(data, provider="cpu")
    obs = observation(seed=1, cameras=cams, batch=4)
    expected = reference_actions(PolicyGraph(agent.export_actor(), LOW, HIGH).eval(), obs,
                                 np.zeros((4, ACT), np.float32), ["front"])
    np.testing.assert_allclose(policy(obs), expected, rtol=0, atol=PARITY_TOL)
