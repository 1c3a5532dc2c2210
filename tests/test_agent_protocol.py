"""The `Agent` protocol (agents/base.py), one conformance test for every algorithm of the
registry: members, counters of an update, the one state_dict shape, exact round trips and the
errors of a state that does not fit, export parity, the batch plan's feedback, and the
pre-training members of agents with and without an offline phase.

A new algorithm in `registry()` is picked up here; it must also document its per-update
counter increments in `COUNTER_DELTAS` (the test says so when it is missing). Each algorithm
that takes cameras (`base.PIXEL_ALGORITHMS`) runs every test a second time as "<name>+pixels",
with two small cameras (observation dicts, `pixels/<name>` batch keys, v2 export inputs).
"""
from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch

from o2o_robot.agents.base import (BATCH_PLANS, PIXEL_ALGORITHMS, STATE_KEYS, Agent, build_agent,
                                   registry)
from o2o_robot.config import O2OConfig
from o2o_robot.spaces import CameraSpec

torch.set_num_threads(1)
OBS, ACT, N, G = 5, 3, 8, 2          # G minibatches of N rows per update
NAMES = sorted(registry())
CAMS = (CameraSpec("front", 16, 16, 3, 2), CameraSpec("wrist", 15, 17, 1, 3))
KINDS = NAMES + [f"{n}+pixels" for n in PIXEL_ALGORITHMS]   # kind = algorithm (+ cameras)

# Per-update increments of each algorithm's counters at G minibatches (ALGORITHMS.md 1.9 (b),
# the OBAC and OEMA module docstrings); None: data-dependent, only checked to be in [0, G].
# OEMA runs its meta actor step and both target updates every policy_freq (2) iterations.
COUNTER_DELTAS = {
    "rlpd": {"updates": 1, "critic_steps": G, "ema_steps": G, "actor_steps": 1, "temp_steps": 1},
    "obac": {"updates": 1, "grad_steps": G, "temp_steps": G, "gate_on_steps": None},
    "oema": {"updates": 1, "iterations": G, "critic_steps": G, "density_steps": G,
             "perturb_steps": G, "actor_steps": G // 2, "target_steps": G // 2,
             "negative_meta_weights": None, "pretrain_steps_done": 0, "pretrain_actor_steps": 0},
}
MEMBERS = ("name", "obs_dim", "act_dim", "batch_size", "device", "batch_plan", "pretrain_steps",
           "pretrain_steps_done", "pretrain_finished", "act", "update", "feedback",
           "pretrain_update", "finish_pretraining", "state_dict", "load_state_dict",
           "export_actor", "cameras")


def config(kind: str) -> O2OConfig:
    algorithm = {"name": kind.split("+")[0], "hidden_dims": [16, 16]}
    if kind.endswith("+pixels"):   # two stride-2 layers: the smallest encoder a 15 px side takes
        algorithm.update(encoder_features=[4, 8], latent_dim=6)
    return O2OConfig.model_validate({"algorithm": algorithm, "sampler": {"batch_size": N},
                                     "learner": {"utd_ratio": G, "device": "cpu"}})


def make_agent(kind: str, seed: int = 0, obs_dim: int = OBS, act_dim: int = ACT) -> Agent:
    cameras = CAMS if kind.endswith("+pixels") else ()
    return build_agent(config(kind), obs_dim, act_dim, device="cpu", seed=seed, cameras=cameras)


def observations(agent: Agent, n: int, seed: int = 0):
    """n observations for `agent.act`: [n, obs_dim], or with cameras the observation dict."""
    rng = np.random.default_rng(seed)
    state = rng.standard_normal((n, agent.obs_dim)).astype(np.float32)
    if not agent.cameras:
        return state
    return {"state": state, **{c.name: rng.integers(0, 256, (n, *c.shape), dtype=np.uint8)
                               for c in agent.cameras}}


def export_inputs(agent: Agent, obs) -> list[torch.Tensor]:
    """The exported actor's observation inputs for `observations(...)`, in graph order."""
    if not agent.cameras:
        return [torch.as_tensor(obs)]
    return [torch.as_tensor(obs["state"]), *(torch.as_tensor(obs[c.name]) for c in agent.cameras)]


def make_batch(agent: Agent, seed: int = 0) -> dict[str, np.ndarray]:
    """A big batch of G*N rows with the keys the agent's batch plan draws."""
    rng = np.random.default_rng(seed)
    rows = G * N
    obs = lambda: rng.standard_normal((rows, agent.obs_dim)).astype(np.float32)  # noqa: E731
    act = lambda: rng.uniform(-1, 1, (rows, agent.act_dim)).astype(np.float32)  # noqa: E731
    batch = {"obs": obs(), "action": act(), "reward": rng.standard_normal(rows).astype(np.float32),
             "next_obs": obs(), "mask": (rng.random(rows) > 0.1).astype(np.float32)}
    for cam in agent.cameras:
        for prefix in ("pixels/", "next_pixels/"):
            batch[prefix + cam.name] = rng.integers(0, 256, (rows, *cam.shape), dtype=np.uint8)
    if agent.batch_plan == "balanced_replay":
        batch.update(off_obs=obs(), off_action=act(), on_obs=obs(), on_action=act(),
                     recent_obs=obs(), index=np.arange(rows))
    return batch


def differences(a, b, path: str = "") -> list[str]:
    """Paths where two nested states differ (tensors by torch.equal, exact values otherwise)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        ok = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and \
            a.dtype == b.dtype and torch.equal(a, b)
        return [] if ok else [path]
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return [] if np.array_equal(a, b) else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path} keys differ"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path} length"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def has_phase(agent: Agent) -> bool:
    """An offline pre-training phase: configured steps and not finished at construction."""
    return agent.pretrain_steps > 0 or not agent.pretrain_finished


# ------------------------------------------------------------------------------------ tests
def test_the_registry_names_each_algorithm_once_and_every_one_documents_its_counters():
    assert set(NAMES) >= {"rlpd", "obac", "oema"}
    for name, cls in registry().items():
        assert cls.name == name
        assert name in COUNTER_DELTAS, f"{name}: add its per-update counters to COUNTER_DELTAS"


@pytest.mark.parametrize("name", KINDS)
def test_the_agent_has_every_protocol_member(name):
    agent = make_agent(name)
    assert isinstance(agent, Agent)
    missing = [m for m in MEMBERS if not hasattr(agent, m)]
    assert missing == []
    assert (agent.name, agent.obs_dim, agent.act_dim, agent.batch_size) == \
        (name.split("+")[0], OBS, ACT, N)
    assert agent.device == torch.device("cpu") and agent.batch_plan in BATCH_PLANS
    assert agent.cameras == (CAMS if name.endswith("+pixels") else ())
    many_obs = observations(agent, 4)
    first = {k: v[0] for k, v in many_obs.items()} if agent.cameras else many_obs[0]
    one, many = agent.act(first), agent.act(many_obs)
    assert one.shape == (ACT,) and many.shape == (4, ACT)
    assert np.all(np.abs(many) <= 1.0) and np.all(np.abs(one) <= 1.0)
    too_long = np.zeros(OBS + 1, np.float32)
    with pytest.raises(ValueError, match=f"\\[{OBS}\\]"):
        agent.act({**first, "state": too_long} if agent.cameras else too_long)


@pytest.mark.parametrize("name", KINDS)
def test_an_update_increments_the_documented_counters_and_returns_float_metrics(name):
    agent = make_agent(name)
    expected = COUNTER_DELTAS[name.split("+")[0]]
    for k in range(2):
        before = agent.state_dict()["counters"].copy()
        metrics = agent.update(make_batch(agent, seed=k))
        after = agent.state_dict()["counters"]
        assert set(after) == set(expected), f"{name}: counters {sorted(after)}"
        for counter, delta in expected.items():
            got = after[counter] - before[counter]
            if delta is None:
                assert 0 <= got <= G, (counter, got)
            else:
                assert got == delta, (counter, got, delta)
        assert getattr(agent, "updates") == after["updates"] == k + 1
    # plain numbers (dict[str, float] admits int, e.g. OEMA's negative_meta_weights), no tensors
    assert metrics and all(type(v) in (float, int) for v in metrics.values()), metrics
    assert metrics["utd_ratio"] == G
    assert agent.pretrain_finished                      # fine-tuning has started (or no phase)


@pytest.mark.parametrize("name", KINDS)
def test_state_dict_has_the_one_shape_and_survives_a_weights_only_save(name):
    agent = make_agent(name)
    agent.update(make_batch(agent))
    state = agent.state_dict()
    assert tuple(state) == STATE_KEYS
    assert (state["algorithm"], state["obs_dim"], state["act_dim"], state["batch_size"]) == \
        (name.split("+")[0], OBS, ACT, N)
    assert state["nets"] and all(isinstance(v, torch.Tensor) for v in state["nets"].values())
    assert state["optimisers"] and all(set(o) == {"state", "param_groups"} and o["state"]
                                       for o in state["optimisers"].values())   # Adam moments
    assert all(type(v) is int for v in state["counters"].values())
    assert set(state["generators"]) >= {"update", "act"}
    assert all(isinstance(g, torch.Tensor) and g.dtype == torch.uint8
               for g in state["generators"].values())
    assert isinstance(state["extra"], dict)
    buffer = io.BytesIO()                               # what a checkpoint file must hold
    torch.save(state, buffer)
    buffer.seek(0)
    assert differences(torch.load(buffer, weights_only=True), state) == []


@pytest.mark.parametrize("name", KINDS)
def test_a_state_dict_round_trip_gives_bit_identical_next_updates(name):
    agent = make_agent(name, seed=0)
    agent.update(make_batch(agent, seed=1))             # optimiser moments, counters, RNG moved
    state = copy.deepcopy(agent.state_dict())
    fresh = make_agent(name, seed=7)                    # other initial weights and generators
    assert differences(fresh.state_dict()["nets"], state["nets"])      # they did differ
    fresh.load_state_dict(state)
    assert differences(fresh.state_dict(), agent.state_dict()) == []
    batch = make_batch(agent, seed=2)
    m_a, m_b = agent.update(batch), fresh.update(batch)
    assert differences(m_a, m_b) == [], name
    assert differences(agent.state_dict(), fresh.state_dict()) == []
    assert differences(agent.feedback(), fresh.feedback()) == []
    obs = observations(agent, 4, seed=3)
    assert np.array_equal(agent.act(obs), fresh.act(obs))             # the act generator too
    # and the loaded copy is a copy: updating the agent did not move the saved state
    assert differences(state["nets"], agent.state_dict()["nets"])


@pytest.mark.parametrize("name", KINDS)
def test_loading_a_state_that_does_not_fit_raises_value_error_naming_the_problem(name):
    agent = make_agent(name)
    for other in (n for n in KINDS if n.split("+")[0] != name.split("+")[0]):
        with pytest.raises(ValueError, match=f"'{other.split('+')[0]}'"):
            agent.load_state_dict(make_agent(other).state_dict())
    for other in (n for n in KINDS if n != name and n.split("+")[0] == name.split("+")[0]):
        with pytest.raises(ValueError, match="cameras"):   # the same algorithm, other inputs
            agent.load_state_dict(make_agent(other).state_dict())
    with pytest.raises(ValueError, match=r"dims \(6, 3\)"):
        agent.load_state_dict(make_agent(name, obs_dim=OBS + 1).state_dict())
    with pytest.raises(ValueError, match=r"dims \(5, 4\)"):
        agent.load_state_dict(make_agent(name, act_dim=ACT + 1).state_dict())
    state = agent.state_dict()
    with pytest.raises(ValueError, match="missing key.*optimisers"):
        agent.load_state_dict({k: v for k, v in state.items() if k != "optimisers"})
    with pytest.raises(ValueError, match="expected a dict"):
        agent.load_state_dict([("nets", state["nets"])])
    with pytest.raises(ValueError, match="generators"):
        agent.load_state_dict({**state, "generators": {"update": state["generators"]["update"]}})


@pytest.mark.parametrize("name", KINDS)
def test_the_exported_actor_with_zero_noise_is_the_deterministic_action(name):
    agent = make_agent(name)
    obs = observations(agent, 16, seed=4)
    o, zero = export_inputs(agent, obs), torch.zeros(16, ACT)
    for k in range(2):                                  # before any update and after one
        module = agent.export_actor()
        assert not module.training
        assert all(p.device.type == "cpu" and not p.requires_grad for p in module.parameters())
        with torch.no_grad():
            exported = module(*o, zero)
        torch.testing.assert_close(exported, torch.as_tensor(agent.act(obs, deterministic=True)),
                                   rtol=0, atol=1e-6)
        agent.update(make_batch(agent, seed=k))
        with torch.no_grad():                           # a copy: the update did not move it
            assert torch.equal(module(*o, zero), exported)
    noise = torch.randn(16, ACT, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():                               # the noise input is the exploration
        explored = agent.export_actor()(*o, noise)
    assert not torch.allclose(explored, exported, atol=1e-4)
    assert explored.abs().max() <= 1.0


@pytest.mark.parametrize("name", KINDS)
def test_feedback_is_what_the_batch_plan_needs(name):
    agent = make_agent(name)
    if agent.batch_plan == "mixed":
        agent.update(make_batch(agent))
        assert agent.feedback() == {}
        return
    assert agent.batch_plan == "balanced_replay"
    assert agent.feedback() == {}                       # nothing before the first update
    agent.update(make_batch(agent))
    feedback = agent.feedback()
    assert set(feedback) == {"priorities"}
    p = feedback["priorities"]
    assert isinstance(p, np.ndarray) and p.shape == (G * N,) and p.dtype == np.float32
    algo = config(name).algorithm
    assert np.all(np.isfinite(p)) and p.min() >= algo.priority_min and p.max() <= algo.priority_max


@pytest.mark.parametrize("name", KINDS)
def test_pretraining_members_with_and_without_an_offline_phase(name):
    agent = make_agent(name)
    batch = {k: v[:N] for k, v in make_batch(agent).items()
             if k in ("obs", "action", "reward", "next_obs", "mask")}
    if not has_phase(agent):
        assert (agent.pretrain_steps, agent.pretrain_steps_done, agent.pretrain_finished) == \
            (0, 0, True)
        with pytest.raises(RuntimeError, match=agent.name.upper()):
            agent.pretrain_update(batch)
        before = agent.state_dict()
        agent.finish_pretraining()                      # a no-op
        assert differences(before, agent.state_dict()) == []
        return
    assert agent.pretrain_steps == config(name).algorithm.pretrain_steps
    assert (agent.pretrain_steps_done, agent.pretrain_finished) == (0, False)
    metrics = agent.pretrain_update(batch)
    assert agent.pretrain_steps_done == 1 and all(type(v) is float for v in metrics.values())
    assert agent.state_dict()["counters"]["updates"] == 0
    fresh = make_agent(name, seed=7)                    # a round trip mid-phase continues exactly
    fresh.load_state_dict(copy.deepcopy(agent.state_dict()))
    for _ in range(2):                                  # the second one steps the actor too
        assert differences(agent.pretrain_update(batch), fresh.pretrain_update(batch)) == []
    assert differences(agent.state_dict(), fresh.state_dict()) == []
    agent.finish_pretraining()
    agent.finish_pretraining()                          # idempotent
    assert agent.pretrain_finished and agent.state_dict()["extra"]["pretrain_finished"] is True
    with pytest.raises(RuntimeError, match=name.upper()):
        agent.pretrain_update(batch)
