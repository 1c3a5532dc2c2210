"""Shared networks (o2o_robot/agents/networks.py): ALGORITHMS.md 1.9 (d), (e), (g), the
EMA closed form behind (c), initialisation, LayerNorm placement and export parity."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from o2o_robot.agents.networks import (LN_EPS, DeterministicActor, EnsembleCritic, EnsembleMLP,
                                       TanhGaussianActor, TanhGaussianExport)
from o2o_robot.agents.ops import (ensemble_mean, ensemble_min, polyak_update, sample_subsets,
                                  subset_min, tanh_log_det)

torch.set_num_threads(1)


def reference_member(net: EnsembleMLP, e: int, x: torch.Tensor) -> torch.Tensor:
    """Member e of an EnsembleMLP, written out layer by layer with plain ops (the spec)."""
    for i, lin in enumerate(net.linears):
        x = x @ lin.weight[e] + lin.bias[e, 0]
        if i < len(net.norms):
            x = F.layer_norm(x, x.shape[-1:], net.norms[i].weight[e, 0], net.norms[i].bias[e, 0],
                             LN_EPS)
        x = torch.tanh(x) if (net.norm == "ln_first_tanh" and i == 0) else net._acts[i](x)
    return x @ net.head.weight[e] + net.head.bias[e, 0]


@pytest.mark.parametrize("norm,act", [("none", "relu"), ("ln_all", "relu"), ("ln_first_tanh", "elu")])
def test_ensemble_mlp_matches_per_member_reference(norm, act):
    torch.manual_seed(0)
    net = EnsembleMLP(5, [16, 16, 8], 3, ensemble_size=4, norm=norm, activation=act)
    with torch.no_grad():  # non-trivial LayerNorm affine, so a wrong member index would show
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(7, 5)
    shared = net(x)
    assert shared.shape == (4, 7, 3)
    per_member = net(x.expand(4, 7, 5).contiguous())
    torch.testing.assert_close(shared, per_member)
    for e in range(4):
        torch.testing.assert_close(shared[e], reference_member(net, e, x), rtol=1e-5, atol=1e-5)
    members = torch.tensor([2, 0])
    torch.testing.assert_close(net(x, members), shared[members])


def test_layer_norm_placement():
    ln_all = EnsembleMLP(4, [8, 8, 8], 1, 3, norm="ln_all")
    assert len(ln_all.norms) == 3           # after every hidden Linear, the last one included
    assert len(EnsembleMLP(4, [8, 8], 1, 3, norm="ln_first_tanh").norms) == 1
    assert len(EnsembleMLP(4, [8, 8], 1, 3, norm="none").norms) == 0
    actor = TanhGaussianActor(4, 2, [8, 8])
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in actor.modules())
    with pytest.raises(ValueError, match="norm"):
        EnsembleMLP(4, [8], 1, 2, norm="ln_last")


def test_members_are_independent():
    torch.manual_seed(1)
    critic = EnsembleCritic(3, 2, [16, 16], ensemble_size=5, layer_norm=True)
    obs, act = torch.randn(6, 3), torch.randn(6, 2)
    before = critic(obs, act)
    with torch.no_grad():
        critic.net.linears[1].weight[3].mul_(2.0)
    after = critic(obs, act)
    assert before.shape == (5, 6)
    changed = (after - before).abs().amax(dim=1) > 1e-6
    assert changed.tolist() == [False, False, False, True, False]


def test_xavier_uniform_init_and_zero_bias_everywhere():
    torch.manual_seed(2)
    critic = EnsembleCritic(20, 6, [256, 256], ensemble_size=10)
    for lin in [*critic.net.linears, critic.net.head]:
        e, fan_in, fan_out = lin.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert lin.weight.abs().max() <= bound
        assert abs(lin.weight.std().item() - bound / math.sqrt(3)) < 0.05 * bound
        assert torch.all(lin.bias == 0)
    actor = TanhGaussianActor(20, 6, [256, 256])
    for lin in [m for m in actor.modules() if isinstance(m, torch.nn.Linear)]:
        bound = math.sqrt(6.0 / sum(lin.weight.shape))
        assert lin.weight.abs().max() <= bound and torch.all(lin.bias == 0)
        assert abs(lin.weight.std().item() - bound / math.sqrt(3)) < 0.1 * bound


def test_single_output_head_gradients():
    """The hand-written backward of the E x (in -> 1) head against finite differences."""
    from o2o_robot.agents.networks import _EnsembleMatVec
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_EnsembleMatVec.apply, (x, w, b))
    torch.testing.assert_close(_EnsembleMatVec.apply(x, w, b), torch.baddbmm(b, x, w))


# ------------------------------------------------------------------------------------- (d)
def test_subsets_are_distinct_and_uniform():
    gen = torch.Generator().manual_seed(0)
    subsets = sample_subsets(20000, 10, 2, gen)
    assert subsets.shape == (20000, 2)
    assert torch.all(subsets[:, 0] != subsets[:, 1])           # without replacement
    freq = torch.bincount(subsets.flatten(), minlength=10).double() / 20000
    torch.testing.assert_close(freq, torch.full((10,), 2 / 10, dtype=torch.double), atol=0.01, rtol=0)
    three = sample_subsets(5000, 10, 3, gen)
    assert all(len(set(row)) == 3 for row in three.tolist())


def test_subset_min_edge_cases():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(10, 32)
    torch.testing.assert_close(subset_min(q, 10, gen), q.min(dim=0).values)   # Z = E: full min
    torch.testing.assert_close(subset_min(q, 10, gen), ensemble_min(q))
    for _ in range(20):                                                    # Z = 1: one member
        one = subset_min(q, 1, gen)
        assert any(torch.equal(one, q[i]) for i in range(10))
    members = torch.tensor([4, 7])
    torch.testing.assert_close(subset_min(q, 2, members=members), torch.minimum(q[4], q[7]))
    torch.testing.assert_close(ensemble_mean(q), q.sum(0) / 10)
    with pytest.raises(ValueError, match="subset_size"):
        sample_subsets(1, 10, 11)


# ---------------------------------------------------------------------------- target EMA
def test_polyak_closed_form():
    torch.manual_seed(3)
    online = EnsembleCritic(3, 2, [8], 4)
    target = EnsembleCritic(3, 2, [8], 4)
    start = [p.detach().clone() for p in target.parameters()]
    rho, steps = 0.005, 20
    for _ in range(steps):
        polyak_update(target, online, rho)
    for p0, p, t in zip(start, online.parameters(), target.parameters()):
        torch.testing.assert_close(t, p + (1 - rho) ** steps * (p0 - p), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- (e)
def test_layer_norm_bounds_q_for_huge_actions():
    torch.manual_seed(4)
    obs = torch.randn(64, 5)
    act = torch.randn(64, 3) * 1e6
    ln = EnsembleCritic(5, 3, [64, 64], ensemble_size=4, layer_norm=True)
    with torch.no_grad():  # a generic (non-unit) affine so the bound is not trivially met
        for p in ln.parameters():
            p.add_(0.1 * torch.randn_like(p))
        q = ln(obs, act)
    # |Q_e| <= sum_k |w_k| (|gamma_k| |n_k| + |beta_k|) + |b| with ||n||_2 = sqrt(h) after LN:
    # Cauchy-Schwarz gives ||w * gamma||_2 sqrt(h) + ||w||_1 max|beta| + |b|.
    w, b = ln.net.head.weight[..., 0], ln.net.head.bias[:, 0, 0]
    norm = ln.net.norms[-1]
    gamma, beta = norm.weight[:, 0], norm.bias[:, 0]
    h = w.shape[1]
    bound = ((w * gamma).norm(dim=1) * math.sqrt(h) + w.abs().sum(1) * beta.abs().amax(1) + b.abs())
    assert torch.all(q.abs().amax(dim=1) <= bound.detach() * (1 + 1e-4))
    plain = EnsembleCritic(5, 3, [64, 64], ensemble_size=4, layer_norm=False)
    with torch.no_grad():
        blown = plain(obs, act)
    assert blown.abs().max() > 1e3 * bound.max()  # negative control: without LN it explodes


# ------------------------------------------------------------------------------------- (g)
def _one_d_actor(mu: float, log_std: float) -> TanhGaussianActor:
    actor = TanhGaussianActor(2, 1, [8])
    with torch.no_grad():
        actor.mu_head.weight.zero_()
        actor.mu_head.bias.fill_(mu)
        actor.log_std_head.weight.zero_()
        actor.log_std_head.bias.fill_(log_std)
    return actor


@pytest.mark.parametrize("mu,log_std", [(0.0, 0.0), (0.7, -0.5), (-1.5, 0.3)])
def test_tanh_gaussian_density_integrates_to_one(mu, log_std):
    actor = _one_d_actor(mu, log_std)
    a = torch.linspace(-1, 1, 400001, dtype=torch.float64)[1:-1]
    actor = actor.double()
    with torch.no_grad():
        dens = actor.log_prob(torch.zeros(len(a), 2, dtype=torch.float64), a[:, None]).exp()
    assert abs(torch.trapezoid(dens, a).item() - 1.0) < 2e-3
    obs = torch.zeros(3, 2, dtype=torch.float64)
    torch.testing.assert_close(actor.mode(obs), torch.full((3, 1), math.tanh(mu), dtype=torch.float64))


def test_tanh_gaussian_sample_log_prob_and_clipping():
    torch.manual_seed(5)
    actor = TanhGaussianActor(4, 3, [16])
    obs, noise = torch.randn(50, 4), torch.randn(50, 3)
    action, log_prob = actor.sample(obs, noise=noise)
    mu, log_std = actor(obs)
    torch.testing.assert_close(action, torch.tanh(mu + log_std.exp() * noise))
    u = mu + log_std.exp() * noise
    torch.testing.assert_close(log_prob, actor.log_prob(obs, pre_tanh=u), rtol=1e-4, atol=1e-4)
    u64 = u.double()  # the textbook form, in float64 where it is still accurate
    naive = torch.distributions.Normal(mu.double(), log_std.double().exp()).log_prob(u64).sum(-1) \
        - torch.log(1 - torch.tanh(u64) ** 2).sum(-1)
    torch.testing.assert_close(log_prob.double(), naive, rtol=1e-4, atol=1e-4)
    big = torch.tensor([[30.0, -30.0]])  # tanh saturates: the stable form stays finite
    assert torch.isfinite(tanh_log_det(big)).all()
    # log(1 - tanh(u)^2) ~ 2 (log 2 - |u|) for large |u|, on both sides
    torch.testing.assert_close(tanh_log_det(big), torch.tensor([4 * (math.log(2) - 30.0)]))
    for bias, expected in [(50.0, 2.0), (-50.0, -20.0)]:
        with torch.no_grad():
            actor.log_std_head.bias.fill_(bias)
            actor.log_std_head.weight.zero_()
        assert torch.all(actor(obs)[1] == expected)


def test_export_parity_and_deterministic_actor():
    torch.manual_seed(6)
    actor = TanhGaussianActor(5, 2, [32, 32])
    exported = TanhGaussianExport(actor)
    assert not exported.training and not any(p.requires_grad for p in exported.parameters())
    obs, noise = torch.randn(9, 5), torch.randn(9, 2)
    with torch.no_grad():
        torch.testing.assert_close(exported(obs, torch.zeros(9, 2)), actor.mode(obs), atol=1e-6, rtol=0)
        torch.testing.assert_close(exported(obs, noise), actor.sample(obs, noise=noise)[0],
                                   atol=1e-6, rtol=0)
    td3 = DeterministicActor(5, 2, [16])
    out = td3(torch.randn(4, 5) * 100)
    assert out.shape == (4, 2) and out.abs().max() <= 1


def test_obac_actor_trunk():
    actor = TanhGaussianActor(4, 2, [16, 16], layer_norm="ln_first_tanh", ln_eps=1e-5)
    kinds = [type(m).__name__ for m in actor.trunk]
    assert kinds == ["Linear", "LayerNorm", "Tanh", "Linear", "ELU"]
    assert actor.trunk[1].eps == 1e-5
    kinds = [type(m).__name__ for m in TanhGaussianActor(4, 2, [8, 8], layer_norm=True).trunk]
    assert kinds == ["Linear", "LayerNorm", "ReLU"] * 2
