"""OBAC (o2o_robot/agents/obac.py): the unit checks of ALGORITHMS.md 2.7 (a)-(e) as known-value
tests, the exact reduction to SAC (gate off, lambda = 0), the batch-level gate on Q^mu at data
actions, in-sample bootstrapping from V^mu, the update order and targets, checkpoints, export."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from o2o_robot.agents import ALGORITHMS, build_agent
from o2o_robot.agents.checkpoint import load_checkpoint, save_checkpoint
from o2o_robot.agents.ops import expectile_loss, log_density_pretanh
from o2o_robot.agents.obac import (OBAC, actor_loss, behaviour_gate, offline_critic_loss,
                                   online_critic_loss, target_entropy, temperature_loss,
                                   value_loss)
from o2o_robot.config import O2OConfig, OBACConfig, load_config

import agent_batches
from agent_batches import tensors

torch.set_num_threads(1)
OBS, ACT = 5, 3
ROOT = Path(__file__).resolve().parents[1]


def small_cfg(**kw) -> OBACConfig:
    return OBACConfig(hidden_dims=[32, 32], **kw)


def make_batch(rows: int, seed: int = 0, mask: float | None = None) -> dict[str, np.ndarray]:
    return agent_batches.make_batch(rows, OBS, ACT, seed, mask, action_bound=0.9)


def head_bias(critic) -> torch.Tensor:
    return critic.net.head.bias                               # [E, 1, 1]: shifts Q_i everywhere


def clone(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


# ------------------------------------------------------------------------------------- (a)
def test_expectile_loss_known_values():
    diff = torch.tensor([-1.0, 2.0])
    # (0.1 * 1 + 0.9 * 4) / 2: residuals below zero weigh 1 - tau, above zero tau
    torch.testing.assert_close(expectile_loss(diff, 0.9), torch.tensor(1.85))
    torch.testing.assert_close(expectile_loss(diff, 0.5), 0.5 * diff.square().mean())


def empirical_expectile(x: np.ndarray, tau: float) -> float:
    """Root of tau * sum (x - e)_+ = (1 - tau) * sum (e - x)_+ (monotone in e), by bisection."""
    lo, hi = float(x.min()), float(x.max())
    for _ in range(100):
        e = (lo + hi) / 2
        lo, hi = (e, hi) if tau * np.clip(x - e, 0, None).sum() > \
            (1 - tau) * np.clip(e - x, 0, None).sum() else (lo, e)
    return (lo + hi) / 2


@pytest.mark.parametrize("tau", [0.5, 0.9, 0.99])
def test_minimising_the_expectile_loss_gives_the_expectile(tau):
    x = torch.as_tensor(np.random.default_rng(0).exponential(1.0, 200).astype(np.float64))
    v = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([v], lr=1, max_iter=200, tolerance_grad=1e-12,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = expectile_loss(x - v, tau)
        loss.backward()
        return loss
    opt.step(closure)
    assert v.item() == pytest.approx(empirical_expectile(x.numpy(), tau), abs=1e-6)
    if tau == 0.5:
        assert v.item() == pytest.approx(x.mean().item(), abs=1e-6)      # the mean
    if tau == 0.99:                                                       # towards the max
        assert empirical_expectile(x.numpy(), 0.9) < v.item() < x.max().item()


def test_value_loss_regresses_v_on_the_target_offline_critic():
    cfg = small_cfg(expectile=0.9)
    agent = OBAC(OBS, ACT, cfg, batch_size=16, seed=1)
    nets, batch = agent.nets, tensors(make_batch(16))
    with torch.no_grad():
        q = torch.minimum(*nets.target_critic_mu(batch["obs"], batch["action"]))
        expected = expectile_loss(q - nets.value(batch["obs"]), 0.9)
    torch.testing.assert_close(value_loss(nets, batch, cfg)[0], expected)
    with torch.no_grad():
        head_bias(nets.critic_mu).add_(5.0)                  # the online Q^mu does not enter
    torch.testing.assert_close(value_loss(nets, batch, cfg)[0], expected)
    with torch.no_grad():
        head_bias(nets.target_critic_mu).add_(5.0)           # the target does (control)
    assert value_loss(nets, batch, cfg)[0] > expected + 1.0


# ------------------------------------------------------------------------------------- (b)
def test_offline_losses_give_the_actor_and_online_critic_no_gradient():
    cfg = small_cfg()
    agent = OBAC(OBS, ACT, cfg, batch_size=16, seed=2)
    nets, batch = agent.nets, tensors(make_batch(16))
    loss = offline_critic_loss(nets, batch, cfg)[0] + value_loss(nets, batch, cfg)[0]
    others = [*nets.actor.parameters(), *nets.critic.parameters(), nets.log_alpha]
    assert all(g is None for g in torch.autograd.grad(loss, others, allow_unused=True))
    own = torch.autograd.grad(loss, [*nets.critic_mu.parameters(), *nets.value.parameters()])
    assert all(g.abs().sum() > 0 for g in own)                # the offline nets do learn


def test_offline_critic_bootstraps_from_v_of_next_state_not_from_pi():
    cfg = small_cfg(discount=0.9, reward_shift=-1.0)
    agent = OBAC(OBS, ACT, cfg, batch_size=16, seed=3)
    nets, batch = agent.nets, tensors(make_batch(16))
    with torch.no_grad():                                     # V(s) = 2 everywhere
        nets.value.net.head.weight.zero_()
        nets.value.net.head.bias.fill_(2.0)
    loss, info = offline_critic_loss(nets, batch, cfg)
    y = batch["reward"] - 1.0 + 0.9 * batch["mask"] * 2.0
    with torch.no_grad():
        q = nets.critic_mu(batch["obs"], batch["action"])
    torch.testing.assert_close(loss, (q - y).square().mean(1).sum())   # MSE(Q1,y) + MSE(Q2,y)
    torch.testing.assert_close(info["q_mu_data"], q.min(0).values.mean())
    with torch.no_grad():                                     # the policy plays no part
        for p in nets.actor.parameters():
            p.add_(torch.randn_like(p))
    torch.testing.assert_close(offline_critic_loss(nets, batch, cfg)[0], loss, rtol=0, atol=0)


# ------------------------------------------------------------------------------------- (c)
def test_gate_is_one_batch_level_decision_on_batch_means():
    assert behaviour_gate(torch.tensor([0.0, 10.0]), torch.tensor([1.0, 1.0])) == 0.0
    assert behaviour_gate(torch.tensor([0.0, 0.0]), torch.tensor([1.0, -0.5])) == 1.0
    assert behaviour_gate(torch.tensor([1.0]), torch.tensor([1.0])) == 0.0   # tie: SAC


def test_gate_uses_q_mu_at_data_actions_not_v():
    cfg = small_cfg()
    agent = OBAC(OBS, ACT, cfg, batch_size=16, seed=4)
    nets, batch, noise = agent.nets, tensors(make_batch(16)), torch.randn(16, ACT)

    def gate() -> float:
        q_mu = offline_critic_loss(nets, batch, cfg)[1]["q_mu_data"]
        return actor_loss(nets, batch, cfg, torch.tensor(0.2), q_mu, noise=noise)[1]["gate_on"]
    with torch.no_grad():
        head_bias(nets.critic_mu).add_(10.0)                  # q_mu >> q_pi
    assert gate() == 1.0
    with torch.no_grad():
        head_bias(nets.critic_mu).sub_(20.0)                  # q_mu << q_pi
        nets.value.net.head.bias.fill_(100.0)                 # a huge V must not turn it on
    assert gate() == 0.0


def sac_step_by_hand(agent: OBAC, batch: dict, noise: torch.Tensor):
    """SAC's actor gradient and the actor after one step, written out:
    L = mean(0.2 log pi(a~|s) - min_i Q_i(s, a~)), then Adam's first step
    p - lr * g / (|g| + eps) (m_hat = g, v_hat = g^2)."""
    actor, critic = agent.nets.actor, agent.nets.critic
    params = list(actor.parameters())
    mu, log_std = actor(batch["obs"])
    u = mu + log_std.exp() * noise
    a = torch.tanh(u)
    log_pi = (torch.distributions.Normal(mu, log_std.exp()).log_prob(u)
              - torch.log1p(-a.square())).sum(-1)
    loss = (0.2 * log_pi - critic(batch["obs"], a).min(0).values).mean()
    grads = torch.autograd.grad(loss, params)
    lr = agent.cfg.actor_lr
    return grads, [(p - lr * g / (g.abs() + 1e-8)).detach() for p, g in zip(params, grads)]


@pytest.mark.parametrize("case", ["gate_off", "lambda_zero", "gate_on"])
def test_gate_off_or_lambda_zero_is_exactly_sac(case):
    cfg = small_cfg(bc_weight=0.0 if case == "lambda_zero" else 0.5)
    agent = OBAC(OBS, ACT, cfg, batch_size=16, seed=5)
    with torch.no_grad():                                     # pick the gate by the Q^mu level
        head_bias(agent.nets.critic_mu).add_(-50.0 if case == "gate_off" else 50.0)
    batch = make_batch(16, seed=5)
    noise = torch.randn(2, 16, ACT, generator=torch.Generator().manual_seed(5))  # agent's draw
    grads, expected = sac_step_by_hand(agent, tensors(batch), noise[1])
    metrics = agent.update(batch)
    assert metrics["gate_on"] == (0.0 if case == "gate_off" else 1.0)
    assert metrics["alpha_used"] == pytest.approx(0.2)       # init_temperature before alpha steps
    actor = list(agent.nets.actor.parameters())
    # float32 vs the log1p form written here: ~1e-5 relative; the BC term moves it by ~1e-1
    same_grad = [torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6) for p, g in zip(actor, grads)]
    same_step = [torch.allclose(p, e, rtol=0, atol=1e-6) for p, e in zip(actor, expected)]
    if case == "gate_on":                                     # negative control: the BC term acts
        assert not all(same_grad) and not all(same_step)
    else:
        assert all(same_grad) and all(same_step)


def test_gate_on_adds_exactly_the_clamped_behaviour_gradient():
    cfg = small_cfg(bc_weight=0.3)
    agent = OBAC(OBS, ACT, cfg, batch_size=16, seed=6)
    nets, batch, noise = agent.nets, tensors(make_batch(16)), torch.randn(16, ACT)
    params, alpha = list(nets.actor.parameters()), torch.tensor(0.2)
    q_mu = torch.tensor(1e6)                                  # gate on
    on = torch.autograd.grad(actor_loss(nets, batch, cfg, alpha, q_mu, noise=noise)[0], params)
    off = torch.autograd.grad(actor_loss(nets, batch, cfg, alpha, q_mu, noise=noise,
                                         gate=False)[0], params)
    bc = torch.autograd.grad(log_density_pretanh(nets.actor, batch["obs"], batch["action"])
                             .mean(), params)
    for g_on, g_off, g_bc in zip(on, off, bc):
        torch.testing.assert_close(g_on, g_off - 0.3 * g_bc, rtol=1e-5, atol=1e-7)
    assert any(g.abs().max() > 1e-4 for g in bc)
    zero = small_cfg(bc_weight=0.0)                           # lambda = 0 with the gate on ...
    loss, info = actor_loss(nets, batch, zero, alpha, q_mu, noise=noise)
    assert info["gate_on"] == 1.0
    for g_zero, g_off in zip(torch.autograd.grad(loss, params), off):
        assert torch.equal(g_zero, g_off)                     # ... is SAC bit for bit


# ------------------------------------------------------------------------------------- (d)
def test_log_density_pretanh_shape_values_clamp_and_gradient():
    torch.manual_seed(7)
    agent = OBAC(OBS, ACT, small_cfg(), batch_size=8)
    actor, obs = agent.nets.actor, torch.randn(8, OBS)
    with torch.no_grad():                                     # log sigma = (-5, 0, 0) everywhere
        actor.log_std_head.weight.zero_()
        actor.log_std_head.bias.copy_(torch.tensor([-5.0, 0.0, 0.0]))
        mu = actor(obs)[0]
    # dim 0 at the mean with sigma = e^-5: log N = 5 - log(2 pi)/2 = 4.08 -> clamped to 2;
    # dim 1 ten sigmas away: -50.9 -> clamped to -20; dim 2 half a sigma away: -1.044, kept.
    action = mu + torch.tensor([0.0, 10.0, 0.5])
    density = log_density_pretanh(actor, obs, action)
    assert density.shape == (8, ACT)
    torch.testing.assert_close(density[:, 0], torch.full((8,), 2.0))
    torch.testing.assert_close(density[:, 1], torch.full((8,), -20.0))
    official = torch.distributions.Normal(mu, actor(obs)[1].exp()).log_prob(action)  # official
    torch.testing.assert_close(density[:, 2], official[:, 2])
    torch.testing.assert_close(density[:, 2],
                               torch.full((8,), -0.125 - 0.5 * math.log(2 * math.pi)))
    params = list(actor.parameters())
    clamped = torch.autograd.grad(density[:, :2].sum(), params, allow_unused=True,
                                  retain_graph=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in clamped)
    free = torch.autograd.grad(density[:, 2].sum(), params, allow_unused=True)
    assert any(g is not None and g.abs().max() > 1e-3 for g in free)


# ------------------------------------------------------------------------------------- (e)
def test_v_sits_above_the_mean_q_mu_after_fitting_a_static_buffer():
    """Four states that loop on themselves (never terminal), reward r = a_0 with a_0 ~ U(-1, 1)
    over the buffer. In-sample fixed point: Q^mu(s, a) = r + gamma V(s) and V(s) = the
    tau-expectile of Q^mu(s, .) = e_tau(r) / (1 - gamma): above the mean Q^mu for tau = 0.9 by
    e_0.9(r) - mean(r) (about 0.5), equal to it for tau = 0.5. Checks the bootstrap from V too."""
    rng = np.random.default_rng(8)
    states = rng.standard_normal((4, OBS)).astype(np.float32)
    rows, gamma = 128, 0.5
    which = np.arange(rows) % 4
    obs = states[which]
    action = rng.uniform(-1, 1, (rows, ACT)).astype(np.float32)
    batch = {"obs": obs, "action": action, "reward": action[:, 0].copy(), "next_obs": obs,
             "mask": np.ones(rows, np.float32)}
    gap = {}
    for tau in (0.9, 0.5):
        cfg = small_cfg(expectile=tau, discount=gamma, tau=0.05, critic_lr=3e-3, value_lr=3e-3)
        agent = OBAC(OBS, ACT, cfg, batch_size=rows, seed=8)
        for _ in range(300):
            agent.update(batch)
        with torch.no_grad():
            v = agent.nets.value(torch.as_tensor(states)).numpy()
            q = agent.nets.critic_mu(torch.as_tensor(obs), torch.as_tensor(action)).min(0).values
        gap[tau] = v - np.array([q.numpy()[which == s].mean() for s in range(4)])
        fixed_point = np.array([empirical_expectile(action[which == s, 0], tau)
                                for s in range(4)]) / (1 - gamma)
        np.testing.assert_allclose(v, fixed_point, atol=0.08)
    assert np.all(gap[0.9] > 0.3)                             # V >= mean Q^mu on the data
    assert np.all(np.abs(gap[0.5]) < 0.05)                    # control: tau = 0.5 is the mean


# --------------------------------------------------------------------- critic, temperature
def test_online_critic_target_formula():
    cfg = small_cfg(discount=0.9, reward_shift=-1.0)
    agent = OBAC(OBS, ACT, cfg, batch_size=16, seed=9)
    nets, batch, noise = agent.nets, tensors(make_batch(16)), torch.randn(16, ACT)
    with torch.no_grad():
        head_bias(nets.target_critic)[1].add_(-3.0)           # the two targets differ: min matters
    alpha = torch.tensor(0.7)
    _, info = online_critic_loss(nets, batch, cfg, alpha, noise=noise)
    with torch.no_grad():
        a2, lp2 = nets.actor.sample(batch["next_obs"], noise=noise)
        q2 = nets.target_critic(batch["next_obs"], a2)
        y = batch["reward"] - 1.0 + 0.9 * batch["mask"] * (torch.minimum(q2[0], q2[1]) - 0.7 * lp2)
    torch.testing.assert_close(info["target_q_mean"], y.mean())
    terminal = tensors(make_batch(16, mask=0.0))
    _, info = online_critic_loss(nets, terminal, cfg, alpha, noise=noise)
    torch.testing.assert_close(info["target_q_mean"], terminal["reward"].mean() - 1.0)


def test_temperature_rule():
    agent = OBAC(OBS, ACT, small_cfg(), batch_size=8, seed=10)
    assert target_entropy(agent.cfg, ACT) == -ACT             # SAC's -|A| (RLPD: -|A|/2)
    assert agent.alpha.item() == pytest.approx(0.2)           # init_temperature ...
    log_prob = torch.tensor([1.0, 2.0])                       # H = -1.5
    loss, _ = temperature_loss(agent.nets, log_prob, -ACT)
    loss.backward()
    # d/dlog(alpha) -mean(log alpha (log pi + Hbar)) = H - Hbar = -1.5 + 3, not alpha-scaled
    torch.testing.assert_close(agent.nets.log_alpha.grad, torch.tensor(1.5))
    agent.nets.log_alpha.grad = None
    agent.update(make_batch(8))
    assert agent.alpha.item() == pytest.approx(1.0, abs=1e-3)  # ... then exp(log alpha) ~ 1
    assert agent.temp_steps == 1


# --------------------------------------------------------------------------- update order
def test_counters_optimiser_steps_and_both_targets_per_minibatch():
    g, rho = 3, 0.005
    agent = OBAC(OBS, ACT, small_cfg(tau=rho), batch_size=8, seed=11)
    nets = agent.nets
    assert all(torch.equal(a, b) for a, b in zip(nets.critic.parameters(),
                                                 nets.critic_mu.parameters()))  # Q^mu = copy
    for opt in (agent.critic_opt, agent.critic_mu_opt):
        opt.param_groups[0]["lr"] = 0.0                       # frozen critics
    with torch.no_grad():
        for t in [*nets.target_critic.parameters(), *nets.target_critic_mu.parameters()]:
            t.add_(torch.randn_like(t))
    bar0 = [clone(nets.target_critic.parameters()), clone(nets.target_critic_mu.parameters())]
    for k in (1, 2):
        agent.update(make_batch(g * 8, seed=k))
        assert (agent.updates, agent.grad_steps, agent.temp_steps) == (k, g * k, g * k)
        steps = [int(next(iter(getattr(agent, o).state.values()))["step"])
                 for o in ("critic_opt", "critic_mu_opt", "value_opt", "actor_opt", "temp_opt")]
        assert steps == [g * k] * 5
    for online, target, t0 in [(nets.critic, nets.target_critic, bar0[0]),
                               (nets.critic_mu, nets.target_critic_mu, bar0[1])]:
        for p, t, t_0 in zip(online.parameters(), target.parameters(), t0):
            torch.testing.assert_close(t, p + (1 - rho) ** (2 * g) * (t_0 - p), rtol=1e-5,
                                       atol=1e-6)


def test_each_loss_trains_only_its_own_network_on_pre_update_weights():
    """After one step the critic's gradient is exactly grad L_Q of the pre-update networks (no
    actor contribution), and the actor's is grad L_pi of the pre-update critic."""
    cfg = small_cfg()
    agent = OBAC(OBS, ACT, cfg, batch_size=16, seed=12)
    nets, batch = agent.nets, tensors(make_batch(16))
    noise = torch.randn(2, 16, ACT, generator=torch.Generator().manual_seed(12))
    alpha = torch.tensor(0.2)
    q_mu = offline_critic_loss(nets, batch, cfg)[1]["q_mu_data"]
    want_q = torch.autograd.grad(online_critic_loss(nets, batch, cfg, alpha, noise=noise[0])[0],
                                 list(nets.critic.parameters()))
    want_pi = torch.autograd.grad(actor_loss(nets, batch, cfg, alpha, q_mu, noise=noise[1])[0],
                                  list(nets.actor.parameters()))
    agent.update(make_batch(16))
    for p, w in zip(nets.critic.parameters(), want_q):
        torch.testing.assert_close(p.grad, w)
    for p, w in zip(nets.actor.parameters(), want_pi):
        torch.testing.assert_close(p.grad, w)


def test_metrics_and_bad_batches():
    agent = OBAC(OBS, ACT, small_cfg(), batch_size=8, seed=13)
    metrics = agent.update(make_batch(4 * 8))
    assert {"critic_loss", "critic_mu_loss", "value_loss", "actor_loss", "temperature",
            "entropy", "gate_on", "q_pi_minus_q_mu"} <= set(metrics)
    assert metrics["utd_ratio"] == 4 and metrics["gate_on"] in (0, 0.25, 0.5, 0.75, 1)
    assert agent.gate_on_steps == round(4 * metrics["gate_on"])
    assert metrics["q_pi_minus_q_mu"] == pytest.approx(metrics["q_pi"] - metrics["q_mu_data"])
    assert all(math.isfinite(v) for v in metrics.values())
    with pytest.raises(ValueError, match="multiple"):
        agent.update(make_batch(20))
    with pytest.raises(KeyError, match="mask"):
        agent.update({k: v for k, v in make_batch(16).items() if k != "mask"})
    with pytest.raises(ValueError, match="action has shape"):
        agent.update({**make_batch(16), "action": np.zeros((16, ACT + 1), np.float32)})
    with pytest.raises(ValueError, match="obs must be"):
        agent.act(np.zeros(OBS + 1))


# ------------------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_gives_identical_next_updates(tmp_path):
    cfg = O2OConfig(algorithm=small_cfg(), sampler={"batch_size": 16})
    agent = build_agent(cfg, OBS, ACT, seed=14)
    for k in range(2):
        agent.update(make_batch(2 * 16, seed=k))
    agent.act(np.zeros(OBS))
    restored, cfg2, _ = load_checkpoint(save_checkpoint(tmp_path / "ckpt.pt", agent, cfg))
    assert cfg2 == cfg and (restored.grad_steps, restored.temp_steps) == (4, 4)
    nxt = make_batch(2 * 16, seed=9)
    assert agent.update(nxt) == restored.update(nxt)         # same metrics, bit for bit
    for a, b in zip(agent.nets.state_dict().values(), restored.nets.state_dict().values()):
        assert torch.equal(a, b)
    assert np.array_equal(agent.act(np.ones(OBS)), restored.act(np.ones(OBS)))
    with pytest.raises(ValueError, match="obs/act dims"):
        OBAC(OBS + 1, ACT, small_cfg()).load_state_dict(agent.state_dict())


# ---------------------------------------------------------------------------- act / export
def test_export_parity_through_onnx():
    from o2o_robot.policy.export import export_policy
    from o2o_robot.policy.runtime import OnnxPolicy

    agent = OBAC(OBS, ACT, small_cfg(), batch_size=16, seed=15)
    agent.update(make_batch(16))
    low, high = np.array([-2.0, -1.0, 0.0]), np.array([2.0, 1.0, 5.0])
    module = agent.export_actor()
    assert not module.training and next(module.parameters()).device.type == "cpu"
    info: dict = {}
    data = export_policy(module, obs_dim=OBS, act_dim=ACT, action_low=low, action_high=high,
                         algorithm="obac", version=1, info=info)
    assert max(info["parity_max_abs_error"].values()) <= 1e-5
    policy = OnnxPolicy(data, provider="cpu")
    rng = np.random.default_rng(15)
    obs = rng.standard_normal((32, OBS)).astype(np.float32)
    half = (high - low) / 2
    np.testing.assert_allclose(policy(obs), low + (agent.act(obs, deterministic=True) + 1) * half,
                               rtol=0, atol=1e-5 * half.max())
    noise = rng.standard_normal((32, ACT)).astype(np.float32)
    with torch.no_grad():                                     # the learner's own sampler
        mu, log_std = agent.nets.actor(torch.as_tensor(obs))
        sampled = torch.tanh(mu + log_std.exp() * torch.as_tensor(noise)).numpy()
    np.testing.assert_allclose(policy(obs, noise), low + (sampled + 1) * half, rtol=0,
                               atol=1e-5 * half.max())
    assert np.abs(policy(obs, noise) - policy(obs)).max() > 0.01     # noise input matters


# --------------------------------------------------------------------------- registry, presets
def test_registry_preset_and_architecture():
    assert ALGORITHMS["obac"] is OBAC
    cfg = load_config(ROOT / "config" / "presets" / "obac.yaml")
    agent = build_agent(cfg, OBS, ACT)
    assert agent.batch_size == 512 and cfg.learner.utd_ratio == 1
    # Uniform warm-up (a config key now) and no offline phase to act with (protocol fields).
    assert cfg.learner.warmup_actions == "uniform"
    assert (agent.pretrain_steps, agent.pretrain_finished, agent.batch_plan) == (0, True, "mixed")
    assert (cfg.learner.warmup_steps, cfg.sampler.offline_ratio) == (5000, 0.5)
    assert (agent.cfg.expectile, agent.cfg.bc_weight, agent.cfg.init_temperature) == \
        (0.9, 1e-3, 0.2)
    nets = agent.nets
    for critic in (nets.critic, nets.critic_mu):              # twin, LN + tanh then ELU, 512
        assert critic.ensemble_size == 2 and critic.net.norm == "ln_first_tanh"
        assert [lin.weight.shape[-1] for lin in critic.net.linears] == [512, 512]
    assert nets.value.net.ensemble_size == 1 and nets.value.net.norm == "ln_first_tanh"
    layers = [type(m).__name__ for m in nets.actor.trunk]
    assert layers == ["Linear", "LayerNorm", "Tanh", "Linear", "ELU"]   # the actor has LN
    with pytest.warns(UserWarning, match="not supported"):
        OBAC(OBS, ACT, small_cfg(), bf16=True)
    with pytest.raises(ValueError, match="hidden_dims"):
        load_config(overrides={"algorithm": {"name": "obac", "hidden_dims": [64]}})
