"""OEMA (o2o_robot/agents/oema.py, BalancedReplayBatches, `o2o-robot pretrain`): the unit
invariants of ALGORITHMS.md 3.7 (a)-(h), TD3+BC pre-training, checkpoints and exact resume,
export parity of the behaviour policy. The learning check is tests/test_learning_oema.py."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from o2o_robot.agents import ALGORITHMS, build_agent
from o2o_robot.agents.checkpoint import load_checkpoint, save_checkpoint
from o2o_robot.agents.ops import q_upper_bound
from o2o_robot.agents.oema import (OEMA, behaviour_action, density_ratio_loss, meta_beta,
                                   meta_gradient, normalised_priorities, td3bc_actor_loss)
from o2o_robot.learning.batches import BalancedReplayBatches, batch_plan
from o2o_robot.config import O2OConfig, OEMAConfig, load_config
from o2o_robot.data.replay import ReplayMirror
from o2o_robot.data.schema import OFFLINE_SIDE_CODES, SOURCE_CODE

torch.set_num_threads(1)
OBS, ACT, N = 5, 3, 16
ROOT = Path(__file__).resolve().parents[1]
DEMO, ONLINE = SOURCE_CODE["demo"], SOURCE_CODE["online"]


def small_cfg(**kw) -> OEMAConfig:
    return OEMAConfig(hidden_dims=[32, 32], **kw)


def make_batch(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A fine-tuning batch: B_rl (obs ... mask), B_off, B_on and B_r states."""
    rng = np.random.default_rng(seed)
    obs = lambda: rng.standard_normal((rows, OBS)).astype(np.float32)  # noqa: E731
    act = lambda: rng.uniform(-1, 1, (rows, ACT)).astype(np.float32)  # noqa: E731
    return {"obs": obs(), "action": act(), "reward": rng.standard_normal(rows).astype(np.float32),
            "next_obs": obs(), "mask": (rng.random(rows) > 0.1).astype(np.float32),
            "off_obs": obs(), "off_action": act(), "on_obs": obs(), "on_action": act(),
            "recent_obs": obs()}


def tensors(batch: dict) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in batch.items()}


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, module.parameters()))


# ------------------------------------------------------------------------------------- (a)
def test_q_upper_bound_known_values():
    q = torch.tensor([[1.0, -2.0, 3.0], [1.0, -2.0, 3.0]])
    torch.testing.assert_close(q_upper_bound(q, 4.0), q[0])             # Q1 = Q2: Q_UB = Q
    twins = torch.tensor([[1.0, 0.0], [3.0, -4.0]])                     # mean (2, -2), std (1, 2)
    torch.testing.assert_close(q_upper_bound(twins, 4.0), torch.tensor([6.0, 6.0]))
    torch.testing.assert_close(q_upper_bound(twins, -1.0), torch.tensor([1.0, -4.0]))
    torch.testing.assert_close(q_upper_bound(twins, 0.0), twins.mean(0))
    three = torch.tensor([[0.0], [3.0], [6.0]])                         # population std sqrt(6)
    torch.testing.assert_close(q_upper_bound(three, 2.0), torch.tensor([3.0 + 2 * 6 ** 0.5]))
    equal = torch.zeros(2, 4, requires_grad=True)                       # finite grad at Q1 = Q2
    q_upper_bound(equal, 4.0).sum().backward()
    assert torch.isfinite(equal.grad).all()


# ------------------------------------------------------------------------------------- (b)
def test_behaviour_action_bounds():
    phi, sigma = 0.1, 0.1
    agent = OEMA(OBS, ACT, small_cfg(perturb_scale=phi, explore_noise=sigma), batch_size=N)
    obs = torch.randn(2000, OBS) * 3
    noise = torch.randn(2000, ACT)
    with torch.no_grad():
        pi = agent.nets.actor(obs)
        xi = agent.nets.perturb(obs, pi)
        a_e = behaviour_action(agent.nets.perturb, obs, pi, noise, sigma)
    assert xi.abs().max() <= phi and xi.abs().max() > 0.01            # Phi * tanh, not zero
    low = (pi - phi - sigma * noise.abs()).clamp(-1, 1)
    high = (pi + phi + sigma * noise.abs()).clamp(-1, 1)
    assert (a_e >= low - 1e-6).all() and (a_e <= high + 1e-6).all()
    torch.testing.assert_close(a_e, (pi + xi + sigma * noise).clamp(-1, 1))
    big = behaviour_action(agent.nets.perturb, obs, pi, 100 * noise, sigma)
    assert big.abs().max() == 1.0                                       # clipped to the box


def test_perturbation_step_trains_only_xi():
    agent = OEMA(OBS, ACT, small_cfg(), batch_size=N)
    nets = agent.nets
    before = {k: snapshot(getattr(nets, k)) for k in ("actor", "critic", "density", "perturb")}
    b = tensors(make_batch(N))
    info = agent._perturb_step(b)
    assert same(before["actor"], nets.actor) and same(before["critic"], nets.critic)
    assert same(before["density"], nets.density)
    assert not same(before["perturb"], nets.perturb)
    assert all(p.grad is None for p in nets.critic.parameters())      # no stray critic grads
    assert info["perturb_loss"] == -info["q_ub_mean"]


# ------------------------------------------------------------------------------------- (c)
def quadratic_case():
    theta = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    a = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    b = torch.tensor([-2.0, 1.0, 0.5], dtype=torch.float64)
    trn = lambda p: 0.5 * (p["theta"] - a).square().sum()  # noqa: E731
    tst = lambda p: 0.5 * (p["theta"] - b).square().sum()  # noqa: E731
    return theta, a, b, trn, tst


@pytest.mark.parametrize("form", ["first_order", "second_order"])
def test_meta_gradient_on_quadratics_matches_its_formula(form):
    theta, a, b, trn, tst = quadratic_case()
    beta, eta = 0.7, 0.3
    (grad,), info = meta_gradient({"theta": theta}, trn, tst, beta=beta, eta=eta, form=form)
    with torch.no_grad():
        adapted = theta - eta * (theta - a)
        l_trn, l_tst = 0.5 * (theta - a).square().sum(), 0.5 * (adapted - b).square().sum()
        first = (theta - a) + beta * l_trn / l_tst * (adapted - b)        # the code's form
        maml = (theta - a) + beta * (1 - eta) * (adapted - b)             # second order
    expected, other = (first, maml) if form == "first_order" else (maml, first)
    torch.testing.assert_close(grad, expected)
    assert (grad - other).abs().max() > 0.1                             # the forms differ
    torch.testing.assert_close(info["meta_loss"], l_tst)
    weight = beta * l_trn / l_tst if form == "first_order" else torch.tensor(beta).double()
    torch.testing.assert_close(info["meta_weight"].double(), weight)
    with pytest.raises(ValueError, match="meta_form"):
        meta_gradient({"theta": theta}, trn, tst, beta=beta, eta=eta, form="third")


def plain_q1(agent: OEMA) -> torch.nn.Module:
    """Q1 of the twin critic rebuilt as a plain torch MLP (nn.Linear + ReLU): the references
    below share nothing with the agent's ensemble code."""
    layers: list[torch.nn.Module] = []
    net = agent.nets.critic.net
    for linear in [*net.linears, net.head]:
        w, bias = linear.weight[0].detach(), linear.bias[0, 0].detach()
        plain = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            plain.weight.copy_(w.T)
            plain.bias.copy_(bias)
        layers += [plain, torch.nn.ReLU()]
    mlp = torch.nn.Sequential(*layers[:-1])
    return lambda s, a: mlp(torch.cat([s, a], -1)).squeeze(-1)


def hot_plug_reference(agent: OEMA, b: dict, beta: float) -> list[torch.Tensor]:
    """The official code's hot-plug, literally, on a copy: backward L_trn, swap each parameter
    for theta - eta * grad in `_parameters`, backward w * L_tst into theta.grad, restore."""
    actor, critic = copy.deepcopy(agent.nets.actor), plain_q1(agent)
    params = dict(actor.named_parameters())
    actor_loss = -critic(b["obs"], actor(b["obs"])).mean()
    actor_loss.backward()
    for name, p in params.items():
        module_name, _, leaf = name.rpartition(".")
        actor.get_submodule(module_name)._parameters[leaf] = p - agent.cfg.meta_lr * p.grad
    meta_loss = -critic(b["recent_obs"], actor(b["recent_obs"])).mean()
    (beta * actor_loss.detach() / meta_loss.detach() * meta_loss).backward()
    return [p.grad for p in params.values()]


def maml_reference(agent: OEMA, b: dict, beta: float) -> list[torch.Tensor]:
    """grad of L_trn(theta) + beta * L_tst(theta - eta * grad L_trn(theta)), by torch.func."""
    from torch.func import functional_call, grad

    actor, critic, eta = agent.nets.actor, plain_q1(agent), agent.cfg.meta_lr
    loss = lambda p, s: -critic(s, functional_call(actor, p, (s,))).mean()  # noqa: E731

    def objective(p):
        g = grad(loss)(p, b["obs"])
        return loss(p, b["obs"]) + beta * loss({k: p[k] - eta * g[k] for k in p}, b["recent_obs"])

    params = {k: v.detach() for k, v in actor.named_parameters()}
    return list(grad(objective)(params).values())


@pytest.mark.parametrize("form", ["first_order", "second_order"])
def test_agent_meta_step_matches_the_selected_reference(form):
    agent = OEMA(OBS, ACT, small_cfg(meta_form=form, meta_beta=0.5), batch_size=N, seed=3)
    b = tensors(make_batch(N, seed=2))
    with torch.no_grad():   # a critic with structure, so the two forms differ clearly
        for p in agent.nets.critic.parameters():
            p.mul_(3.0)
    expected = (hot_plug_reference if form == "first_order" else maml_reference)(agent, b, 0.5)
    other = (maml_reference if form == "first_order" else hot_plug_reference)(agent, b, 0.5)
    agent._meta_actor_step(b)
    got = [p.grad for p in agent.nets.actor.parameters()]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    assert max((g - o).abs().max() for g, o in zip(got, other)) > 1e-6


# ------------------------------------------------------------------------------------- (d)
def test_hot_plug_keeps_parameter_identity_and_optimizer_state():
    agent = OEMA(OBS, ACT, small_cfg(), batch_size=N)
    actor = agent.nets.actor
    params = list(actor.parameters())
    names = dict(actor.named_parameters())
    values = snapshot(actor)
    for k in range(2):                                    # iteration 2 is a meta step
        agent.update(make_batch(N, seed=k))
    assert agent.actor_steps == 1
    assert all(x is y for x, y in zip(params, actor.parameters()))
    assert all(names[n] is p for n, p in actor.named_parameters())
    assert all(isinstance(p, torch.nn.Parameter) for p in actor.parameters())
    assert list(agent.actor_opt.state) == params           # Adam's state keys: the same leaves
    assert agent.actor_opt.param_groups[0]["params"] == params
    assert not same(values, actor)                         # the step did move them


# ------------------------------------------------------------------------------------- (e)
def test_beta_schedule():
    cfg = small_cfg(meta_beta=0.01, meta_anneal=True)
    assert [meta_beta(cfg, k) for k in (0, 70_000, 140_000, 200_000)] == \
        pytest.approx([0.01, 0.005, 0.0, 0.0])
    assert meta_beta(small_cfg(meta_beta=0.01), 140_000) == 0.01      # anneal off: constant
    agent = OEMA(OBS, ACT, small_cfg(meta_beta=1.0, meta_anneal=True, meta_anneal_steps=4),
                 batch_size=N)
    betas = [agent.update(make_batch(N, seed=k))["meta_beta"] for k in range(4)]
    assert np.isnan(betas[0])                               # no meta step yet (policy_freq 2)
    assert betas[1:] == pytest.approx([0.75, 0.75, 0.5])    # k counts this actor step


# ------------------------------------------------------------------------------------- (f)
def test_density_ratio_on_two_gaussians_and_normalised_priorities():
    """s ~ N(0, 1) offline, N(1, 1) online, same actions: d_on/d_off = exp(s - 1/2)."""
    torch.manual_seed(0)
    agent = OEMA(1, 1, OEMAConfig(hidden_dims=[32, 32]), batch_size=256, seed=0)
    opt = torch.optim.Adam(agent.nets.density.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)

    def draw(shift):
        return torch.randn(512, 1, generator=gen) + shift, torch.rand(512, 1, generator=gen) * 2 - 1

    for _ in range(1500):
        (off_s, off_a), (on_s, on_a) = draw(0.0), draw(1.0)
        loss, _ = density_ratio_loss(agent.nets, {"off_obs": off_s, "off_action": off_a,
                                                  "on_obs": on_s, "on_action": on_a})
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        s = torch.linspace(-1.0, 2.0, 31)[:, None]
        w = agent.nets.density(s, torch.zeros_like(s)).squeeze(-1)
        truth = torch.exp(s.squeeze(-1) - 0.5)
        assert ((w - truth).abs() / truth).max() < 0.35, (w, truth)
        assert torch.corrcoef(torch.stack([w, truth]))[0, 1] > 0.97
        (off_s, off_a), (off2_s, off2_a), (on_s, on_a) = draw(0.0), draw(0.0), draw(1.0)
        net = lambda s, a: agent.nets.density(s, a).squeeze(-1)  # noqa: E731
        w_off = net(off_s, off_a)
        p_off = normalised_priorities(net(off2_s, off2_a), w_off, 5.0, 1e-3, 1e3)
        p_on = normalised_priorities(net(on_s, on_a), w_off, 5.0, 1e-3, 1e3)
    assert p_off.mean().item() == pytest.approx(1.0, abs=0.03)      # ~1 over B_off
    assert p_on.mean() > 1.05                                         # online-like rows favoured
    assert normalised_priorities(torch.tensor([1e9, 0.0]), torch.ones(4), 1.0, 1e-3, 1e3).tolist() \
        == pytest.approx([1e3, 1e-3])                                 # clipped


# ------------------------------------------------------------------------------------- (g)
def id_rows(ids, source):
    ids = np.asarray(ids, np.float32)
    n = len(ids)
    return dict(obs=np.tile(ids[:, None], (1, OBS)), action=np.zeros((n, ACT), np.float32),
                reward=np.zeros(n, np.float32), next_obs=np.tile(ids[:, None], (1, OBS)),
                terminated=np.zeros(n, bool), truncated=np.zeros(n, bool),
                source=np.full(n, source, np.uint8), policy_version=np.zeros(n, np.int64))


def oema_config(**algo) -> O2OConfig:
    return O2OConfig(algorithm=small_cfg(**algo), sampler={"batch_size": N},
                     learner={"utd_ratio": 3})


def plan_for(cfg: O2OConfig, mirror: ReplayMirror):
    """The batch plan an OEMA agent built from `cfg` declares (`agent.batch_plan`)."""
    return batch_plan(OEMA(OBS, ACT, cfg.algorithm, batch_size=N), cfg, mirror)


def test_balanced_replay_batches_and_recent_window():
    mirror = ReplayMirror(OBS, ACT)
    cfg = oema_config(recent_window=40)
    plan = plan_for(cfg, mirror)
    assert isinstance(plan, BalancedReplayBatches) and not plan.ready()
    mirror.add_rows(id_rows(range(1000, 1100), DEMO))
    assert not plan.ready()
    for start in range(0, 300, 30):                        # online rows arrive in blocks
        mirror.add_rows(id_rows(range(start, start + 30), ONLINE))
    assert plan.ready()
    batch = plan.draw(np.random.default_rng(0))
    assert all(len(v) == 3 * N for v in batch.values())
    recent = batch["recent_obs"][:, 0]
    assert set(recent) <= set(range(260, 300))             # B_r: the newest 40 online rows
    assert set(batch["off_obs"][:, 0]) <= set(range(1000, 1100))
    assert set(batch["on_obs"][:, 0]) <= set(range(300))
    many = np.concatenate([plan.draw(np.random.default_rng(k))["recent_obs"][:, 0]
                           for k in range(40)])
    assert set(many) == set(range(260, 300))               # all of the window, nothing else
    assert np.isin(batch["source"], OFFLINE_SIDE_CODES).any() and (batch["source"] == ONLINE).any()


def test_after_update_writes_priorities_and_state_round_trips():
    mirror = ReplayMirror(OBS, ACT)
    mirror.add_rows(id_rows(range(50), DEMO))
    mirror.add_rows(id_rows(range(50, 100), ONLINE))
    plan = plan_for(oema_config(), mirror)
    batch = plan.draw(np.random.default_rng(1))

    class Agent:
        priorities = np.linspace(0.5, 5.0, 3 * N)

        def feedback(self) -> dict:
            return {"priorities": self.priorities}

    plan.after_update(Agent(), batch)
    idx, counts = np.unique(batch["index"], return_counts=True)
    last = {slot: p for slot, p in zip(batch["index"], Agent.priorities)}
    np.testing.assert_allclose(plan.sampler.priorities(idx), [last[i] for i in idx])
    assert plan.sampler.max_priority == pytest.approx(5.0)
    mirror.add_rows(id_rows([100], ONLINE))                 # a new row enters at the max
    assert plan.sampler.priorities([100])[0] == pytest.approx(5.0)
    state = plan.state_dict()
    rebuilt = ReplayMirror(OBS, ACT)
    rebuilt.add_rows(id_rows(range(50), DEMO))
    rebuilt.add_rows(id_rows(range(50, 101), ONLINE))
    twin = plan_for(oema_config(), rebuilt)
    twin.load_state_dict(state)
    a, b = plan.draw(np.random.default_rng(7)), twin.draw(np.random.default_rng(7))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    fresh = plan_for(oema_config(), rebuilt)               # negative control: no priorities
    assert not np.array_equal(fresh.draw(np.random.default_rng(7))["index"], a["index"])
    with pytest.raises(ValueError, match="rows"):
        plan_for(oema_config(), mirror).load_state_dict(
            {"priorities": {**state["priorities"], "rows": 3}})


# ------------------------------------------------------------------------------ pre-training
def demo_rows(rows: int = 512, seed: int = 0) -> tuple[dict, np.ndarray]:
    """Noisy demonstrations of the expert a = tanh(W s), rewarded -|a - expert(s)|^2."""
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((rows, OBS)).astype(np.float32)
    expert = np.tanh(obs @ rng.standard_normal((OBS, ACT))).astype(np.float32)
    action = np.clip(expert + 0.3 * rng.standard_normal(expert.shape), -1, 1).astype(np.float32)
    return {"obs": obs, "action": action, "reward": -np.square(action - expert).sum(1),
            "next_obs": rng.standard_normal((rows, OBS)).astype(np.float32),
            "mask": np.ones(rows, np.float32)}, expert


def test_td3bc_actor_loss_known_value():
    agent = OEMA(OBS, ACT, small_cfg(bc_alpha=2.5), batch_size=N)
    b = tensors({k: v[:N] for k, v in demo_rows()[0].items()})
    loss, info = td3bc_actor_loss(agent.nets, b, agent.cfg)
    with torch.no_grad():
        pi = agent.nets.actor(b["obs"])
        q = agent.nets.critic(b["obs"], pi)[0]                   # Q1 only
        lmbda = 2.5 / q.abs().mean()
        expected = -lmbda * q.mean() + (pi - b["action"]).square().mean()
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(info["bc_lambda"], lmbda)


def test_td3bc_pretraining_reduces_bc_error_and_counts_steps():
    demos, expert = demo_rows()
    rng = np.random.default_rng(1)
    # alpha 0.5: with a few hundred steps the critic is young and alpha 2.5 lets its noisy
    # action gradient dominate (the same reason config/ci_reach_oema.yaml lowers it).
    agent = OEMA(OBS, ACT, small_cfg(bc_alpha=0.5), batch_size=64)

    def bc_error():
        with torch.no_grad():
            return float((agent.nets.actor(torch.as_tensor(demos["obs"])) - torch.as_tensor(expert))
                         .square().mean())

    start = bc_error()
    for _ in range(400):
        idx = rng.integers(0, 512, 64)
        agent.pretrain_update({key: v[idx] for key, v in demos.items()})
    assert bc_error() < 0.5 * start
    assert (agent.pretrain_steps_done, agent.pretrain_actor_steps, agent.target_steps) == \
        (400, 200, 200)
    assert int(next(iter(agent.actor_opt.state.values()))["step"]) == 200
    assert not same(snapshot(agent.nets.actor), agent.nets.actor_target)   # Polyak, not copies
    agent.update(make_batch(64))
    assert agent.pretrain_finished
    with pytest.raises(RuntimeError, match="pre-training is over"):
        agent.pretrain_update({key: v[:64] for key, v in demos.items()})


def test_finish_pretraining_copies_targets():
    agent = OEMA(OBS, ACT, small_cfg(), batch_size=N)
    with torch.no_grad():
        for p in agent.nets.actor.parameters():
            p.add_(1.0)
    agent.finish_pretraining()
    assert same(snapshot(agent.nets.actor), agent.nets.actor_target)
    assert same(snapshot(agent.nets.critic), agent.nets.critic_target)


# ------------------------------------------------------------------------------ update, state
def test_counters_and_metrics_per_update():
    agent = OEMA(OBS, ACT, small_cfg(), batch_size=N)
    assert agent.feedback() == {}                               # no update, no priorities yet
    for k in (1, 2):
        metrics = agent.update(make_batch(3 * N, seed=k))
        assert (agent.iterations, agent.critic_steps, agent.density_steps, agent.perturb_steps,
                agent.actor_steps, agent.target_steps, agent.updates) == \
            (3 * k, 3 * k, 3 * k, 3 * k, 3 * k // 2, 3 * k // 2, k)
    priorities = agent.feedback()["priorities"]
    assert len(priorities) == 3 * N and (priorities > 0).all()
    assert {"critic_loss", "density_loss", "actor_loss", "meta_loss", "meta_weight", "meta_beta",
            "perturb_loss", "q_ub_mean", "priority_mean", "negative_meta_weights"} <= set(metrics)
    assert all(np.isfinite(v) for v in metrics.values())
    with pytest.raises(ValueError, match="multiple"):
        agent.update(make_batch(N + 3))
    with pytest.raises(KeyError, match="recent_obs"):
        agent.update({k: v for k, v in make_batch(N).items() if k != "recent_obs"})
    with pytest.raises(ValueError, match="off_action has shape"):
        agent.update({**make_batch(N), "off_action": np.zeros((N, ACT + 1), np.float32)})


def test_checkpoint_round_trip_gives_identical_next_updates(tmp_path):
    cfg = O2OConfig(algorithm=small_cfg(meta_form="second_order"), sampler={"batch_size": N})
    agent = build_agent(cfg, OBS, ACT, seed=4)
    for k in range(3):
        agent.pretrain_update({key: v[:N] for key, v in make_batch(N, seed=10 + k).items()})
    for k in range(3):
        agent.update(make_batch(2 * N, seed=k))
    agent.act(np.zeros(OBS))
    path = save_checkpoint(tmp_path / "ckpt.pt", agent, cfg)
    restored, cfg2, _ = load_checkpoint(path)
    assert isinstance(restored, OEMA) and cfg2 == cfg and restored.pretrain_finished
    nxt = make_batch(2 * N, seed=9)
    assert agent.update(nxt) == restored.update(nxt)        # same metrics, bit for bit
    np.testing.assert_array_equal(agent.feedback()["priorities"],
                                  restored.feedback()["priorities"])
    for a, b in zip(agent.nets.state_dict().values(), restored.nets.state_dict().values()):
        assert torch.equal(a, b)
    assert np.array_equal(agent.act(np.ones(OBS)), restored.act(np.ones(OBS)))


# ---------------------------------------------------------------------------- act / export
def test_act_and_behaviour_policy_export_parity():
    from o2o_robot.policy.export import export_policy
    from o2o_robot.policy.runtime import OnnxPolicy

    low, high = np.array([-2.0, -1.0, 0.0]), np.array([2.0, 1.0, 5.0])
    half = (high - low) / 2
    agent = OEMA(OBS, ACT, small_cfg(), batch_size=N, seed=2)
    obs = np.random.default_rng(5).standard_normal((32, OBS)).astype(np.float32)
    noise = np.random.default_rng(6).standard_normal((32, ACT)).astype(np.float32)

    def onnx(module):
        return OnnxPolicy(export_policy(module, obs_dim=OBS, act_dim=ACT, action_low=low,
                                        action_high=high, algorithm="oema", version=1),
                          provider="cpu")

    warmup = onnx(agent.export_actor())                      # before fine-tuning: pi(s)
    det = agent.act(obs, deterministic=True)
    for n in (np.zeros_like(noise), noise):
        np.testing.assert_allclose(warmup(obs, n), low + (det + 1) * half, atol=1e-5 * half.max())
    np.testing.assert_array_equal(agent.act(obs), det)        # act agrees: warm-up acts with pi(s)
    agent.update(make_batch(N))
    policy = onnx(agent.export_actor())
    with torch.no_grad():
        o, n = torch.as_tensor(obs), torch.as_tensor(noise)
        pi = agent.nets.actor(o)
        expected = behaviour_action(agent.nets.perturb, o, pi, n, 0.1).numpy()
        xi_only = behaviour_action(agent.nets.perturb, o, pi, 0 * n, 0.1).numpy()
    tol = 1e-5 * half.max()
    np.testing.assert_allclose(policy(obs, noise), low + (expected + 1) * half, atol=tol)
    # Zero noise is the deterministic action of the policy contract: pi(s), without xi.
    np.testing.assert_allclose(policy(obs), low + (pi.numpy() + 1) * half, atol=tol)
    assert np.abs(xi_only - pi.numpy()).max() > 1e-3          # xi is there to leave out
    mixed = noise.copy()
    mixed[::2] = 0.0                                          # per row: even rows evaluate
    np.testing.assert_allclose(policy(obs, mixed)[1::2], low + (expected[1::2] + 1) * half,
                               atol=tol)
    np.testing.assert_allclose(policy(obs, mixed)[::2], low + (pi.numpy()[::2] + 1) * half,
                               atol=tol)
    sampled = agent.act(obs)
    assert sampled.shape == (32, ACT) and np.abs(sampled).max() <= 1
    assert np.abs(sampled - agent.act(obs, deterministic=True)).max() > 1e-3
    with pytest.raises(ValueError, match="obs must be"):
        agent.act(np.zeros(OBS + 1))


# --------------------------------------------------------------------------- registry, presets
def test_registry_and_preset():
    assert ALGORITHMS["oema"] is OEMA
    cfg = load_config(ROOT / "config" / "presets" / "oema.yaml")
    algo = cfg.algorithm
    assert (algo.pretrain_steps, algo.optimism, algo.meta_beta, algo.perturb_scale) == \
        (1_000_000, 4.0, 0.01, 1.0)
    assert (cfg.sampler.batch_size, cfg.learner.utd_ratio, cfg.learner.warmup_steps) == \
        (256, 1, 25_000)
    assert algo.meta_form == "first_order" and not algo.meta_anneal
    assert load_config(ROOT / "config" / "ci_reach_oema.yaml").algorithm.name == "oema"


# ---------------------------------------------------------- harness: warm-up, resume, pretrain
def tiny_config(run_dir: Path, total: int, warmup: int = 60):
    """A few seconds of real OEMA training on the reach task."""
    return load_config(ROOT / "config" / "sim_reach.yaml", overrides={
        "store": {"path": str(run_dir / "store.zarr"), "flush_every": 64},
        "algorithm": {"name": "oema", "hidden_dims": [32, 32], "pretrain_steps": 40,
                      "bc_alpha": 0.5, "recent_window": 100},
        "learner": {"utd_ratio": 1, "warmup_steps": warmup, "warmup_actions": "policy",
                    "checkpoint_every_steps": 100, "torch_threads": 1},
        "sampler": {"batch_size": 32},
        "train": {"total_env_steps": total, "eval_every": 100, "eval_episodes": 2,
                  "demo_episodes": 3, "run_dir": str(run_dir)},
    })


def test_warmup_acts_with_the_pretrained_actor_and_steps_no_optimizer(tmp_path):
    from o2o_robot.data.store import TransitionStore
    from o2o_robot.spaces import ActionScaler
    from o2o_robot.learning.harness import train

    summary = train(tiny_config(tmp_path, 60, warmup=1000), progress=False)
    assert summary["env_steps"] >= 60 and summary["updates"] == 0
    agent, cfg, _ = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert (agent.pretrain_steps_done, agent.iterations, agent.updates) == (40, 0, 0)
    assert agent.pretrain_finished
    assert not agent.density_opt.state and not agent.perturb_opt.state     # never stepped
    steps = [int(next(iter(o.state.values()))["step"]) for o in (agent.critic_opt, agent.actor_opt)]
    assert steps == [40, 20]                                               # pre-training only
    with TransitionStore.open(tmp_path / "store.zarr") as store:
        rows = store.read(["obs", "action", "source"])
    online = rows["source"] == ONLINE
    scaler = ActionScaler(cfg.robot.action.low, cfg.robot.action.high)
    expected = scaler.to_physical(agent.act(rows["obs"][online], deterministic=True))
    np.testing.assert_allclose(rows["action"][online], expected, atol=1e-5)   # pi(s), no noise


def _final(run_dir: Path):
    from o2o_robot.runlog import read_metrics

    agent, _, extra = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    evals = [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(run_dir, "eval")]
    return agent, extra, evals


def assert_same_run(a: Path, b: Path) -> None:
    agent_a, extra_a, evals_a = _final(a)
    agent_b, extra_b, evals_b = _final(b)
    assert (extra_a["env_steps"], extra_a["updates"]) == (extra_b["env_steps"], extra_b["updates"])
    for (k, x), y in zip(agent_a.nets.state_dict().items(), agent_b.nets.state_dict().values()):
        assert torch.equal(x, y), k
    assert extra_a["plan_state"] == extra_b["plan_state"]          # the replay priorities too
    assert evals_a == evals_b


def test_resume_and_pretrain_command_continue_exactly(tmp_path):
    from o2o_robot.learning.pretrain import run_pretrain
    from o2o_robot.learning.harness import train

    whole, split, staged = tmp_path / "whole", tmp_path / "split", tmp_path / "staged"
    summary = train(tiny_config(whole, 300), progress=False)
    assert summary["updates"] == summary["env_steps"] - 60                 # 1 update per step
    train(tiny_config(split, 140), progress=False)
    train(tiny_config(split, 300), resume=True, progress=False)
    assert_same_run(whole, split)
    _, extra, _ = _final(whole)
    priorities = np.frombuffer(extra["plan_state"]["priorities"]["priorities"])
    assert len(priorities) > 300 and len(np.unique(priorities)) > 100      # learned, not all max
    # `o2o-robot pretrain` then `train --resume` is the same run as `train` alone.
    result = run_pretrain(tiny_config(staged, 300), progress=False)
    assert result["pretrain_steps"] == 40
    train(tiny_config(staged, 300), resume=True, progress=False)
    assert_same_run(whole, staged)


def test_pretrain_cli(tmp_path, capsys):
    import yaml

    from o2o_robot.cli import main

    def config(name: str, algorithm: dict) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "base": str(ROOT / "config" / "sim_reach.yaml"), "algorithm": algorithm,
            "store": {"path": str(tmp_path / "store.zarr")}, "sampler": {"batch_size": 32},
            "train": {"run_dir": str(tmp_path / name), "demo_episodes": 2}}))
        return str(path)

    oema = config("oema", {"name": "oema", "hidden_dims": [32, 32]})
    assert main(["pretrain", "--config", oema, "--steps", "30"]) == 0
    agent, cfg, extra = load_checkpoint(tmp_path / "oema" / "checkpoints" / "latest.pt")
    assert (agent.pretrain_steps_done, agent.pretrain_finished, extra["env_steps"]) == (30, True, 0)
    assert cfg.algorithm.pretrain_steps == 30
    assert "--resume" in capsys.readouterr().err
    assert main(["pretrain", "--config", oema, "--steps", "30"]) == 2    # never overwritten
    assert "exists already" in capsys.readouterr().err
    assert main(["pretrain", "--config", oema, "--steps", "0", "--run-dir",
                 str(tmp_path / "other")]) == 2
    assert "--steps: must be >= 1" in capsys.readouterr().err
    rlpd = config("rlpd", {"name": "rlpd"})
    assert main(["pretrain", "--config", rlpd]) == 2
    assert "has no offline pre-training" in capsys.readouterr().err
    assert not (tmp_path / "rlpd").exists() and not (tmp_path / "other").exists()


def test_pretrain_reads_a_robot_store_with_the_robots_bounds(tmp_path):
    from o2o_robot.data.store import TransitionStore
    from o2o_robot.learning.pretrain import PretrainError, run_pretrain
    from o2o_robot.sim.demos import generate_demos

    def cfg(name: str, **robot):
        return load_config(ROOT / "config" / "ci_reach_oema.yaml", overrides={
            "store": {"path": str(tmp_path / "store.zarr")}, "robot": robot,
            "algorithm": {"hidden_dims": [32, 32]}, "train": {"run_dir": str(tmp_path / name)}})

    with TransitionStore.create(tmp_path / "store.zarr", 12, 3) as store:   # no task: a robot's
        generate_demos(store, cfg("x").sim, episodes=2, noise=0.1, seed=0, progress=False)
        rows = len(store)
    result = run_pretrain(cfg("run"), steps=20, progress=False)
    assert (result["pretrain_steps"], result["demo_side_rows"]) == (20, rows)
    with TransitionStore.open(tmp_path / "store.zarr") as store:
        assert len(store) == rows                                  # no scripted demos added
    with pytest.raises(PretrainError, match="act_dim 3; the config's robot has 12, 2"):
        run_pretrain(cfg("bad", action={"low": [-1, -1], "high": [1, 1], "names": []}), steps=5,
                     progress=False)
    assert not (tmp_path / "bad" / "checkpoints").exists()
