"""Policy export, runtime, validation and hot swap (DESIGN.md "Policy contract").

No test asserts on time (STYLE rule 9): the concurrency test checks which policy produced each
tick, not how long ticks took; latency figures come from benchmarks/policy_latency.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from o2o_robot.agents.networks import TanhGaussianActor, TanhGaussianExport
from o2o_robot.agents.rlpd import RLPD
from o2o_robot.config import O2OConfig, RLPDConfig, RobotSpec
from o2o_robot.policy import tools
from o2o_robot.policy.export import (ExportError, PolicyGraph, UniformWarmupActor, export_policy,
                                     write_policy)
from o2o_robot.policy.runtime import (NoPolicy, OnnxPolicy, PolicyRejected, policy_from_file,
                                      probe_observations, validate_policy)
from o2o_robot.policy.slot import PolicySlot

torch.set_num_threads(1)  # two shared cores; the exporter's matmuls are tiny
OBS, ACT = 9, 3
LOW, HIGH = np.array([-2.0, -1.0, 0.0]), np.array([2.0, 1.0, 5.0])  # asymmetric on purpose
HALF = (HIGH - LOW) / 2


def rlpd_actor(obs_dim: int = OBS, act_dim: int = ACT, seed: int = 0) -> nn.Module:
    """RLPD's export module: tanh(mu + exp(log_std) * noise), in [-1, 1]."""
    torch.manual_seed(seed)
    return TanhGaussianExport(TanhGaussianActor(obs_dim, act_dim, [256, 256]))


class Scaled(nn.Module):
    """A broken actor whose actions leave [-1, 1] (exports fine, must not drive the robot)."""

    def __init__(self, inner: nn.Module, scale: float):
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, obs, noise):
        return self.scale * self.inner(obs, noise)


def export(actor=None, version=0, obs_dim=OBS, act_dim=ACT, low=LOW, high=HIGH, **kw) -> bytes:
    actor = actor if actor is not None else rlpd_actor(obs_dim, act_dim, seed=version)
    return export_policy(actor, obs_dim=obs_dim, act_dim=act_dim, action_low=low, action_high=high,
                         algorithm="rlpd", version=version, **kw)


def make_slot(**kw) -> PolicySlot:
    return PolicySlot(OBS, ACT, LOW, HIGH, provider="cpu", **kw)


def hand_graph(inputs=("obs", "noise"), opset=17) -> bytes:
    """A graph built without the exporter: low + (tanh(obs @ W + noise) + 1) * half_range."""
    w = numpy_helper.from_array(np.full((OBS, ACT), 0.1, np.float32), "W")
    low = numpy_helper.from_array(LOW.astype(np.float32), "low")
    half = numpy_helper.from_array(HALF.astype(np.float32), "half")
    one = numpy_helper.from_array(np.ones(ACT, np.float32), "one")
    nodes = [helper.make_node("MatMul", [inputs[0], "W"], ["z"]),
             helper.make_node("Add", ["z", inputs[1]], ["u"]), helper.make_node("Tanh", ["u"], ["t"]),
             helper.make_node("Add", ["t", "one"], ["t1"]), helper.make_node("Mul", ["t1", "half"], ["s"]),
             helper.make_node("Add", ["s", "low"], ["action"])]
    graph = helper.make_graph(
        nodes, "hand", [helper.make_tensor_value_info(inputs[0], TensorProto.FLOAT, ["batch", OBS]),
                        helper.make_tensor_value_info(inputs[1], TensorProto.FLOAT, ["batch", ACT])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", ACT])],
        [w, low, half, one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model.SerializeToString()


def with_nan_weight(data: bytes) -> bytes:
    """Fault injection: one NaN in the mean head's bias (as a diverged update would leave it)."""
    model = onnx.load_from_string(data)
    init = next(i for i in model.graph.initializer if i.name.endswith("mu_head.bias"))
    values = numpy_helper.to_array(init).copy()
    values[0] = np.nan
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    return model.SerializeToString()


@pytest.fixture(scope="module")
def good() -> bytes:
    return export(version=1)


# ------------------------------------------------------------------------------------- export
def test_parity_deterministic_and_noisy(good):
    policy, actor = OnnxPolicy(good, provider="cpu"), rlpd_actor(seed=1)
    graph = PolicyGraph(actor, LOW, HIGH).eval()
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(100, OBS)).astype(np.float32)
    for noise in (np.zeros((100, ACT), np.float32), rng.normal(size=(100, ACT)).astype(np.float32)):
        with torch.no_grad():
            expected = graph(torch.from_numpy(obs), torch.from_numpy(noise)).numpy()
        np.testing.assert_allclose(policy(obs, noise), expected, rtol=0, atol=1e-5 * HALF.max())
        single = np.stack([policy(o, n) for o, n in zip(obs[:5], noise[:5])])
        np.testing.assert_allclose(single, expected[:5], rtol=0, atol=1e-5 * HALF.max())
    with_noise = policy(obs, rng.normal(size=(100, ACT)).astype(np.float32))
    assert np.abs(with_noise - policy(obs)).max() > 0.01  # control: the noise input matters


def test_rlpd_agent_export_matches_agent_act():
    agent = RLPD(OBS, ACT, RLPDConfig(critic_ensemble_size=2), seed=4)
    policy = OnnxPolicy(export(agent.export_actor()), provider="cpu")
    obs = np.random.default_rng(4).normal(size=(16, OBS)).astype(np.float32)
    expected = LOW + (agent.act(obs, deterministic=True) + 1) * HALF   # the agent's own tanh(mu)
    np.testing.assert_allclose(policy(obs), expected, rtol=0, atol=1e-5 * HALF.max())


class NoiseOnly(nn.Module):
    """tanh(noise), with obs kept in the graph: known values for the scaling."""

    def forward(self, obs, noise):
        return torch.tanh(noise) + 0.0 * obs[:, :1]


class ObsOnly(nn.Module):
    def forward(self, obs, noise):
        return torch.tanh(obs[:, :ACT]) + 0.0 * noise


def test_scaling_inside_graph():
    policy = OnnxPolicy(export(NoiseOnly()), provider="cpu")
    np.testing.assert_allclose(policy(np.zeros(OBS)), (LOW + HIGH) / 2, atol=1e-6)   # a = 0 -> middle
    np.testing.assert_allclose(policy(np.zeros(OBS), np.full(ACT, 30.0)), HIGH, atol=1e-5)  # a -> 1
    policy = OnnxPolicy(export(ObsOnly()), provider="cpu")
    obs = np.linspace(-3, 3, OBS)
    expected = LOW + (np.tanh(obs)[:ACT] + 1) * HALF   # the observation reaches the actor as is
    np.testing.assert_allclose(policy(obs), expected, atol=1e-5)


class TraceMismatch(nn.Module):
    """Python control flow on data: the trace freezes one branch, eager takes both."""

    def forward(self, obs, noise):
        if float(obs.sum()) > 1e9:
            return torch.tanh(noise)
        return torch.tanh(obs[:, :ACT] + noise)


def test_export_refuses_parity_mismatch_and_writes_nothing(tmp_path):
    target = tmp_path / "p.onnx"
    with pytest.raises(ExportError, match=r"^parity: max abs error .* > 1e-05"):
        write_policy(export(TraceMismatch(), probe_obs=np.full((4, OBS), 1e9 / OBS * 2)), target)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_nan_actor_and_bad_spec():
    actor = rlpd_actor()
    with torch.no_grad():
        actor.actor.mu_head.bias[0] = float("nan")
    with pytest.raises(ExportError, match="^non-finite"):
        export(actor)
    with pytest.raises(ExportError, match="^spec: action bounds"):
        export(low=HIGH, high=LOW)
    with pytest.raises(ExportError, match="^spec: names has 2 entries"):
        export(names=["j1", "j2"])


def test_metadata_round_trip(tmp_path):
    info = {}
    data = export(version=7, config_hash="abc123", names=["j1", "j2", "gripper"], info=info)
    policy = policy_from_file(write_policy(data, tmp_path / "v7.onnx"))
    assert policy.version == 7 and policy.metadata["algorithm"] == "rlpd"
    assert policy.metadata["config_hash"] == "abc123"
    assert datetime.fromisoformat(policy.metadata["created"]).tzinfo is not None
    assert json.loads(policy.metadata["spec"]) == {
        "obs_dim": OBS, "act_dim": ACT, "low": LOW.tolist(), "high": HIGH.tolist(),
        "names": ["j1", "j2", "gripper"]}
    np.testing.assert_array_equal(policy.bounds[0], LOW)
    assert (policy.obs_dim, policy.act_dim, policy.opset) == (OBS, ACT, 17)
    assert info["exporter"] == "torchscript" and max(info["parity_max_abs_error"].values()) <= 1e-5


def test_write_policy_is_atomic_rename(tmp_path, good):
    path = write_policy(good, tmp_path / "sub" / "p.onnx")
    write_policy(b"new", path)  # overwrite goes through a temporary file too
    assert path.read_bytes() == b"new" and [p.name for p in path.parent.iterdir()] == ["p.onnx"]


def ks_uniform(actions: np.ndarray, low, high) -> np.ndarray:
    """Kolmogorov-Smirnov distance per dimension between `actions` [n, d] and uniform[low, high]."""
    u = np.sort((actions - low) / (high - low), axis=0)
    n = len(u)
    i = np.arange(1, n + 1)[:, None]
    return np.maximum((i / n - u).max(0), (u - (i - 1) / n).max(0))


def test_uniform_warmup_policy_is_uniform_over_the_bounds():
    data = export(UniformWarmupActor(OBS, ACT), version=3, info=(info := {}))
    assert max(info["parity_max_abs_error"].values()) <= 1e-5
    validate_policy(data, obs_dim=OBS, act_dim=ACT, action_low=LOW, action_high=HIGH)
    policy, n = OnnxPolicy(data, provider="cpu"), 20000
    assert (policy.obs_dim, policy.act_dim) == (OBS, ACT)   # obs stays a graph input
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, OBS)).astype(np.float32)
    noise = rng.standard_normal((n, ACT)).astype(np.float32)
    actions = policy(obs, noise)
    # KS critical value at p = 0.001 is 1.95 / sqrt(n) ~ 0.0138; the tanh-Gaussian gives ~0.05.
    threshold = 1.95 / np.sqrt(n)
    assert (ks_uniform(actions, LOW, HIGH) < threshold).all(), ks_uniform(actions, LOW, HIGH)
    assert (actions >= LOW).all() and (actions <= HIGH).all()
    tanh_gaussian = OnnxPolicy(export(NoiseOnly()), provider="cpu")(obs, noise)  # negative control
    assert (ks_uniform(tanh_gaussian, LOW, HIGH) > 2 * threshold).all()
    np.testing.assert_allclose(policy(obs[:4]), np.tile((LOW + HIGH) / 2, (4, 1)), atol=1e-6)
    np.testing.assert_allclose(policy(obs[0]), (LOW + HIGH) / 2, atol=1e-6)   # zero noise: middle


# ------------------------------------------------------------------------------------ runtime
def test_runtime_does_not_import_torch():
    code = ("import sys, o2o_robot.policy.runtime, o2o_robot.policy.slot; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_probe_observations_stored_then_random_in_the_box():
    rng = np.random.default_rng(0)
    stored = np.tile(np.arange(1000, dtype=np.float32)[:, None], (1, OBS))
    obs = probe_observations(OBS, stored, rng, n_random=50)
    assert obs.dtype == np.float32 and obs.shape == (256 + 50, OBS)
    np.testing.assert_array_equal(obs[[0, 255], 0], [0, 999])      # evenly spaced, ends kept
    centre, scale = obs[:256].mean(0), obs[:256].std(0) + 1e-3   # of the kept ones
    assert (np.abs(obs[256:] - centre) <= 3 * scale).all()
    assert (np.abs(obs[256:] - centre) > 2 * scale).any()           # the box is really used
    unit = probe_observations(OBS, None, rng, n_random=500)
    assert unit.shape == (500, OBS) and np.abs(unit).max() <= 3.0 and np.abs(unit).max() > 2.5


def test_call_shapes(good):
    policy = OnnxPolicy(good, provider="cpu")
    out = np.empty(ACT, np.float32)
    assert policy(np.zeros(OBS), out=out) is out
    assert policy(np.zeros((4, OBS))).shape == (4, ACT)
    with pytest.raises(ValueError, match="obs: expected shape"):
        policy(np.zeros(1))  # would broadcast silently into the buffer without the check
    with pytest.raises(ValueError, match="noise: expected shape"):
        policy(np.zeros(OBS), np.zeros(ACT + 1))


def test_providers(good):
    import onnxruntime as ort
    assert OnnxPolicy(good, provider="cpu").provider == "CPUExecutionProvider"
    auto = OnnxPolicy(good, provider="auto")
    cpu = OnnxPolicy(good, provider="cpu")
    np.testing.assert_allclose(auto(np.ones(OBS)), cpu(np.ones(OBS)), atol=1e-5)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert auto.provider == "CPUExecutionProvider"
        with pytest.raises(PolicyRejected, match="^cannot load: provider 'cuda' requested"):
            OnnxPolicy(good, provider="cuda")
    with pytest.raises(ValueError, match="provider"):
        OnnxPolicy(good, provider="tpu")


def test_sampled_actions_match_torch_distribution(good):
    slot = make_slot(seed=3)
    assert slot.propose(good).accepted
    obs, n = np.random.default_rng(0).normal(size=OBS).astype(np.float32), 20000
    ours = np.stack([slot.act(obs)[0] for _ in range(n)])
    graph = PolicyGraph(rlpd_actor(seed=1), LOW, HIGH).eval()
    with torch.no_grad():
        torch.manual_seed(0)
        theirs = graph(torch.from_numpy(obs).expand(n, OBS), torch.randn(n, ACT)).numpy()
    std = theirs.std(0)
    assert (std > 0.05 * HALF).all()  # the test has power: the policy really is stochastic
    np.testing.assert_allclose(ours.mean(0), theirs.mean(0), atol=(6 * std / np.sqrt(n)).max())
    np.testing.assert_allclose(ours.std(0), std, rtol=0.05)
    still = np.stack([slot.act(obs, deterministic=True)[0] for _ in range(10)])
    assert np.ptp(still, axis=0).max() == 0  # control: deterministic ignores the noise


# ------------------------------------------------------------------------------- rejections
def _bad(name: str, good: bytes):
    return {
        "corrupt bytes": lambda: good[: len(good) // 2],
        "random bytes": lambda: np.random.default_rng(0).bytes(5000),
        "wrong obs dim": lambda: export(obs_dim=OBS + 1),
        "wrong act dim": lambda: export(act_dim=ACT - 1, low=LOW[:-1], high=HIGH[:-1]),
        "other bounds": lambda: export(low=LOW - 1),
        "nan weight": lambda: with_nan_weight(good),
        "out of bounds": lambda: export(Scaled(rlpd_actor(seed=1), 3.0)),
        "input names": lambda: hand_graph(inputs=("observation", "noise")),
        "old opset": lambda: hand_graph(opset=11),
    }[name]()


@pytest.mark.parametrize("name, reason", [
    ("corrupt bytes", "cannot load: "), ("random bytes", "cannot load: "),
    ("wrong obs dim", f"obs dim: policy takes {OBS + 1}, robot gives {OBS}"),
    ("wrong act dim", f"act dim: policy gives {ACT - 1}, robot takes {ACT}"),
    ("other bounds", "spec: policy scales to low"),
    ("nan weight", "non-finite: NaN/inf actions on"),
    ("out of bounds", "out of bounds: action["),
    ("input names", "inputs: graph takes ['noise', 'observation']"),
    ("old opset", "opset: 11 < minimum 13"),
])
def test_rejected_with_reason_and_old_policy_keeps_serving(good, name, reason):
    slot = make_slot()
    assert slot.propose(good).accepted
    obs = np.linspace(-1, 1, OBS)
    before = slot.act(obs, deterministic=True)
    result = slot.propose(_bad(name, good))
    assert not result.accepted and result.reason.startswith(reason), result.reason
    assert slot.version == before[1] and slot.history[-1] == result
    action, version = slot.act(obs, deterministic=True)
    assert version == before[1]
    np.testing.assert_array_equal(action, before[0])


def test_hand_graph_control_is_accepted():
    """Negative control for the names/opset cases: the same graph, right names and opset, passes."""
    validate_policy(hand_graph(), obs_dim=OBS, act_dim=ACT, action_low=LOW, action_high=HIGH)


def test_latency_budget_rejects(good):
    with pytest.raises(PolicyRejected, match=r"^latency: p99 \d+ us > budget 0 us"):
        validate_policy(good, obs_dim=OBS, act_dim=ACT, action_low=LOW, action_high=HIGH,
                        latency_budget_s=1e-9)
    validate_policy(good, obs_dim=OBS, act_dim=ACT, action_low=LOW, action_high=HIGH,
                    latency_budget_s=10.0)


# ------------------------------------------------------------------------------- hot swap
def test_versions_rollback_and_no_policy(good):
    slot = make_slot()
    with pytest.raises(NoPolicy):
        slot.act(np.zeros(OBS))
    assert slot.rollback().reason == "rollback: no previous policy"
    v5, v2 = export(version=5), export(version=2)
    assert slot.propose(v5).version == 5          # follows the learner's numbering when ahead
    assert slot.propose(v2).version == 6          # ... and never goes backwards
    obs = np.ones(OBS)
    expected_v5 = OnnxPolicy(v5, provider="cpu")(obs)
    result = slot.rollback()
    assert result.accepted and result.version == 5 and result.kind == "rollback"
    action, version = slot.act(obs, deterministic=True)
    assert version == 5
    np.testing.assert_allclose(action, expected_v5, atol=1e-6)
    assert not slot.rollback().accepted           # one level only
    assert slot.propose(good).version == 7


def test_concurrent_swaps_never_mix_versions():
    """1 kHz tick loop on one thread, 20 proposals from another: every tick gets an action and
    a version, versions never go back, and each action is exactly what that version's policy
    gives for that tick's obs and noise (so no tick mixes two policies)."""
    candidates = [export(version=v) for v in range(1, 21)]
    slot, seed = make_slot(seed=11), 11
    assert slot.propose(export(version=0)).accepted
    policies = {0: slot.current[0]}
    obs_bank = np.random.default_rng(2).normal(size=(64, OBS)).astype(np.float32)
    ticks: list[tuple[int, np.ndarray, int]] = []
    swapper_done, errors = threading.Event(), []

    def swapper():
        try:
            for data in candidates:
                result = slot.propose(data)
                assert result.accepted, result.reason
                policies[result.version] = slot.current[0]
                time.sleep(0.02)
        except BaseException as err:  # surfaced in the main thread
            errors.append(err)
        finally:
            swapper_done.set()

    thread = threading.Thread(target=swapper)
    period, start, i, after = 1e-3, time.perf_counter(), 0, 0
    while i < 2000 or after < 100:
        if i == 50:
            thread.start()
        obs = obs_bank[i % len(obs_bank)]
        action, version = slot.act(obs)
        ticks.append((i, action, version))
        after += swapper_done.is_set()
        i += 1
        delay = start + i * period - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    thread.join()
    assert not errors, errors
    versions = [v for _, _, v in ticks]
    assert len(ticks) == i and all(a.shape == (ACT,) and np.isfinite(a).all() for _, a, _ in ticks)
    assert all(a <= b for a, b in zip(versions, versions[1:]))
    assert versions[0] == 0 and versions[-1] == 20
    rng = np.random.default_rng(seed)  # replay the slot's own noise stream
    for tick, action, version in ticks:
        noise = rng.standard_normal(ACT, dtype=np.float32)
        np.testing.assert_allclose(action, policies[version](obs_bank[tick % len(obs_bank)], noise),
                                   rtol=0, atol=1e-6)
    # Control: the policies differ enough that a tick served by another version would show.
    assert np.abs(policies[0](obs_bank[0]) - policies[20](obs_bank[0])).max() > 1e-3


# ------------------------------------------------------------------------------------ tools
def test_check_policy(tmp_path, good):
    path = write_policy(good, tmp_path / "p.onnx")
    report = tools.check_policy(path)
    assert report["checked_against"] == "policy metadata" and report["metadata"]["policy_version"] == "1"
    assert report["spec"]["act_dim"] == ACT and report["parity"] == {"skipped": "no checkpoint given"}
    assert 0 < report["latency_us"]["p50"] <= report["latency_us"]["p99"] <= report["latency_us"]["max"]
    (tmp_path / "bad.onnx").write_bytes(with_nan_weight(good))
    with pytest.raises(PolicyRejected, match="^non-finite"):
        tools.check_policy(tmp_path / "bad.onnx")


def test_check_policy_against_robot_config(tmp_path, good):
    path = write_policy(good, tmp_path / "p.onnx")
    robot = RobotSpec()  # the default robot
    assert robot.obs_dim != OBS
    with pytest.raises(PolicyRejected, match=f"^obs dim: policy takes {OBS}, robot gives {robot.obs_dim}"):
        tools.check_policy(path, robot=robot)
    fitting = export(obs_dim=robot.obs_dim, act_dim=robot.act_dim, low=robot.action.low,
                     high=robot.action.high)
    report = tools.check_policy(write_policy(fitting, tmp_path / "fits.onnx"), robot=robot)
    assert report["checked_against"].startswith("robot config (reach_arm: obs 12, action 3")
    assert report["obs_dim"] == robot.obs_dim


def test_export_checkpoint_and_parity_check(tmp_path, monkeypatch):
    """Against the described `load_checkpoint(path) -> (agent, cfg, extra)` API (stubbed here)."""
    cfg = O2OConfig()
    robot = cfg.robot
    agent = RLPD(robot.obs_dim, robot.act_dim, RLPDConfig(critic_ensemble_size=2), seed=5)
    extra = {"policy_version": 12}
    monkeypatch.setattr(tools, "_load_checkpoint", lambda path: (agent, cfg, extra))
    result = tools.export_checkpoint("ckpt.pt", tmp_path / "out.onnx")
    assert result["policy_version"] == 12 and result["config_hash"] == cfg.config_hash()
    policy = policy_from_file(tmp_path / "out.onnx")
    assert policy.version == 12 and policy.metadata["algorithm"] == cfg.algorithm.name
    assert policy.spec["low"] == robot.action.low
    obs = np.random.default_rng(5).normal(size=(8, robot.obs_dim)).astype(np.float32)
    low, high = np.array(robot.action.low), np.array(robot.action.high)
    expected = low + (agent.act(obs, deterministic=True) + 1) * (high - low) / 2
    np.testing.assert_allclose(policy(obs), expected, rtol=0, atol=1e-5 * (high - low).max())

    parity = tools.check_policy(tmp_path / "out.onnx", checkpoint="ckpt.pt")["parity"]
    assert parity["ok"] and max(parity["max_abs_error"].values()) <= 1e-5
    with torch.no_grad():  # control: a checkpoint whose actor moved on is caught
        agent.nets.actor.mu_head.bias += 0.1
    parity = tools.check_policy(tmp_path / "out.onnx", checkpoint="ckpt.pt")["parity"]
    assert not parity["ok"] and min(parity["max_abs_error"].values()) > 1e-3
