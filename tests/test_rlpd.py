"""RLPD (o2o_robot/agents/rlpd.py): the unit invariants of ALGORITHMS.md 1.9 (a), (b), (c), (d)
as used by the update, (f), (h), (i), plus checkpoints, export parity, acting, presets."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from o2o_robot.agents import ALGORITHMS, build_agent, resolve_device
from o2o_robot.agents.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from o2o_robot.agents.ops import minibatch_slices, subset_min
from o2o_robot.agents.rlpd import RLPD, actor_loss, critic_loss, target_entropy, temperature_loss
from o2o_robot.config import O2OConfig, RLPDConfig, load_config

import agent_batches
from agent_batches import tensors

torch.set_num_threads(1)
OBS, ACT = 5, 3
PRESETS = Path(__file__).resolve().parents[1] / "config" / "presets"


def small_cfg(**kw) -> RLPDConfig:
    return RLPDConfig(hidden_dims=[32, 32], **kw)


def make_batch(rows: int, seed: int = 0, mask: float | None = None) -> dict[str, np.ndarray]:
    return agent_batches.make_batch(rows, OBS, ACT, seed, mask)


# ------------------------------------------------------------------------------------- (a)
def test_every_minibatch_the_update_consumes_is_half_offline():
    replay = pytest.importorskip("o2o_robot.data.replay")
    from o2o_robot.data.schema import OFFLINE_SIDE_CODES, SOURCE_CODE
    n, g = 256, 4
    mirror = replay.ReplayMirror(OBS, ACT)
    rng = np.random.default_rng(0)
    for source, rows in [("demo", 300), ("offline", 200), ("online", 500)]:
        b = make_batch(rows, seed=rows)
        mirror.add_rows({"obs": b["obs"], "action": b["action"], "reward": b["reward"],
                         "next_obs": b["next_obs"], "terminated": b["mask"] == 0,
                         "truncated": np.zeros(rows, bool),
                         "source": np.full(rows, SOURCE_CODE[source], np.uint8),
                         "policy_version": np.zeros(rows, np.int64)})
    big = mirror.sample_big_batch(n, g, 0.5, rng)
    agent = RLPD(OBS, ACT, small_cfg(), batch_size=n)
    seen = []
    critic_step, actor_step = agent._critic_step, agent._actor_and_temperature_step
    agent._critic_step = lambda mb, *a: (seen.append(mb["obs"].clone()), critic_step(mb, *a))[1]
    agent._actor_and_temperature_step = lambda mb, *a: (seen.append(mb["obs"].clone()),
                                                        actor_step(mb, *a))[1]
    agent.update(big)
    assert len(seen) == g + 1
    offline = np.isin(big["source"], OFFLINE_SIDE_CODES)
    for i, obs in enumerate(seen):
        rows = slice(min(i, g - 1) * n, (min(i, g - 1) + 1) * n)    # the actor uses the last one
        assert torch.equal(obs, torch.as_tensor(big["obs"][rows]))  # exactly that minibatch
        assert offline[rows].sum() == 128 and (~offline[rows]).sum() == 128
    assert agent.last_minibatch_slices == minibatch_slices(g * n, n)
    assert agent.last_actor_slice == slice((g - 1) * n, g * n)


def test_minibatch_slices_contiguous_and_checked():
    assert minibatch_slices(1024, 256) == [slice(0, 256), slice(256, 512), slice(512, 768),
                                           slice(768, 1024)]
    with pytest.raises(ValueError, match="multiple"):
        minibatch_slices(1000, 256)
    agent = RLPD(OBS, ACT, small_cfg(), batch_size=8)
    with pytest.raises(ValueError, match="multiple"):
        agent.update(make_batch(20))
    with pytest.raises(KeyError, match="mask"):
        agent.update({k: v for k, v in make_batch(16).items() if k != "mask"})
    with pytest.raises(ValueError, match="action has shape"):
        agent.update({**make_batch(16), "action": np.zeros((16, ACT + 1), np.float32)})


# ------------------------------------------------------------------------------------- (b)
def test_counters_per_update():
    g = 5
    agent = RLPD(OBS, ACT, small_cfg(), batch_size=16)
    for k in (1, 2):
        agent.update(make_batch(g * 16, seed=k))
        assert (agent.critic_steps, agent.ema_steps, agent.actor_steps, agent.temp_steps,
                agent.updates) == (g * k, g * k, k, k, k)
        # The optimisers agree with the counters: Adam's own step counts.
        steps = [int(next(iter(opt.state.values()))["step"])
                 for opt in (agent.critic_opt, agent.actor_opt, agent.temp_opt)]
        assert steps == [g * k, k, k]


# ------------------------------------------------------------------------------------- (c)
def test_target_ema_closed_form_after_g_steps():
    g, rho = 7, 0.005
    agent = RLPD(OBS, ACT, small_cfg(tau=rho), batch_size=16)
    agent.critic_opt.param_groups[0]["lr"] = 0.0        # frozen critic
    with torch.no_grad():
        for t in agent.nets.target_critic.parameters():
            t.add_(torch.randn_like(t))                 # theta_bar_0 != theta
    theta = [p.detach().clone() for p in agent.nets.critic.parameters()]
    bar0 = [t.detach().clone() for t in agent.nets.target_critic.parameters()]
    agent.update(make_batch(g * 16))
    for p, t0, t in zip(theta, bar0, agent.nets.target_critic.parameters()):
        torch.testing.assert_close(t, p + (1 - rho) ** g * (t0 - p), rtol=1e-5, atol=1e-6)
    for p, p_now in zip(theta, agent.nets.critic.parameters()):
        assert torch.equal(p, p_now)


# ------------------------------------------------------------------------------------- (d)
def test_update_draws_a_fresh_distinct_subset_per_critic_step():
    g = 20
    agent = RLPD(OBS, ACT, small_cfg(), batch_size=8)
    used = []
    loss_fn = agent._losses["critic"]
    agent._losses["critic"] = lambda *a, members, **kw: (used.append(members.tolist()),
                                                         loss_fn(*a, members=members, **kw))[1]
    agent.update(make_batch(g * 8))
    assert len(used) == g
    assert all(len(set(m)) == 2 and all(0 <= i < 10 for i in m) for m in used)
    assert len({tuple(sorted(m)) for m in used}) > 1     # not one subset reused for all G


def test_target_uses_only_the_subset_min():
    torch.manual_seed(0)
    cfg = small_cfg(discount=0.9)
    agent = RLPD(OBS, ACT, cfg, batch_size=16)
    batch, nets = tensors(make_batch(16)), agent.nets
    with torch.no_grad():
        for t in nets.target_critic.parameters():
            t.add_(0.3 * torch.randn_like(t))           # members differ, so the subset matters
        nets.log_alpha.fill_(math.log(0.5))
    noise, members = torch.randn(16, ACT), torch.tensor([3, 8])
    _, info = critic_loss(nets, batch, cfg, members=members, noise=noise)
    with torch.no_grad():
        a2, lp2 = nets.actor.sample(batch["next_obs"], noise=noise)
        q_all = nets.target_critic(batch["next_obs"], a2)
        y = batch["reward"] + 0.9 * batch["mask"] * (subset_min(q_all, 2, members=members) - 0.5 * lp2)
    torch.testing.assert_close(info["target_q_mean"], y.mean(), rtol=1e-5, atol=1e-5)
    _, other = critic_loss(nets, batch, cfg, members=torch.tensor([0, 1]), noise=noise)
    assert not torch.allclose(other["target_q_mean"], info["target_q_mean"])


def test_a_failing_compiled_loss_falls_back_to_eager():
    agent = RLPD(OBS, ACT, small_cfg(), batch_size=8)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")
    agent._losses["critic"] = broken                      # what a failed torch.compile does
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        metrics = agent.update(make_batch(3 * 8))
    assert "critic loss: RuntimeError" in agent.compile_error
    assert agent.critic_steps == 3 and math.isfinite(metrics["critic_loss"])
    assert agent._losses["critic"] is critic_loss


# ------------------------------------------------------------------------------------- (f)
def test_actor_loss_uses_the_mean_over_all_members():
    torch.manual_seed(1)
    cfg = small_cfg()
    agent = RLPD(OBS, ACT, cfg, batch_size=16)
    batch, nets, noise = tensors(make_batch(16)), agent.nets, torch.randn(16, ACT)
    base, _ = actor_loss(nets, batch, cfg, noise=noise)
    delta = 2.0
    for member in (0, 6):
        with torch.no_grad():
            nets.critic.net.head.bias[member] += delta  # Q_member + delta everywhere
        moved, _ = actor_loss(nets, batch, cfg, noise=noise)
        with torch.no_grad():
            nets.critic.net.head.bias[member] -= delta
        # L = mean(alpha log pi - (1/E) sum_i Q_i): one member up by delta -> L down by delta / E
        torch.testing.assert_close(moved - base, torch.tensor(-delta / 10), atol=1e-5, rtol=0)
    # The actor gradient is the gradient of the ensemble mean (vs an explicit mean of members).
    params = list(nets.actor.parameters())
    loss, _ = actor_loss(nets, batch, cfg, noise=noise)
    grads = torch.autograd.grad(loss, params)
    action, log_prob = nets.actor.sample(batch["obs"], noise=noise)
    qs = [nets.critic(batch["obs"], action)[i] for i in range(10)]
    manual = (nets.log_alpha.exp().detach() * log_prob - sum(qs) / 10).mean()
    for a, b in zip(grads, torch.autograd.grad(manual, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_actor_step_does_not_train_the_critic():
    agent = RLPD(OBS, ACT, small_cfg(), batch_size=8)
    batch = tensors(make_batch(8))
    before = [p.detach().clone() for p in agent.nets.critic.parameters()]
    actor_before = [p.detach().clone() for p in agent.nets.actor.parameters()]
    agent._actor_and_temperature_step(batch, torch.randn(8, ACT))
    assert all(torch.equal(a, b) for a, b in zip(before, agent.nets.critic.parameters()))
    assert all(p.grad is None for p in agent.nets.critic.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(actor_before, agent.nets.actor.parameters()))


# ------------------------------------------------------------------------------------- (h)
@pytest.mark.parametrize("entropy,direction", [(5.0, -1), (-5.0, +1)])
def test_temperature_step_sign(entropy, direction):
    agent = RLPD(OBS, ACT, small_cfg(), batch_size=8)
    h_bar = target_entropy(agent.cfg, ACT)
    assert h_bar == -ACT / 2                            # RLPD's -|A|/2, not SAC's -|A|
    alpha0 = agent.nets.log_alpha.exp().item()
    loss, _ = temperature_loss(agent.nets, torch.tensor(entropy), h_bar)
    agent.temp_opt.zero_grad()
    loss.backward()
    # d/dlog(alpha) [alpha (H - Hbar)] = alpha (H - Hbar)
    torch.testing.assert_close(agent.nets.log_alpha.grad, torch.tensor(alpha0 * (entropy - h_bar)))
    agent.temp_opt.step()
    assert np.sign(agent.nets.log_alpha.exp().item() - alpha0) == direction


# ------------------------------------------------------------------------------------- (i)
def test_backup_entropy_switch_and_target_formula():
    batch = tensors(make_batch(16))
    noise, members = torch.randn(16, ACT), torch.tensor([1, 2])

    def y_mean(cfg, log_alpha):
        torch.manual_seed(2)
        agent = RLPD(OBS, ACT, cfg, batch_size=16)
        with torch.no_grad():
            agent.nets.log_alpha.fill_(log_alpha)
        return critic_loss(agent.nets, batch, cfg, members=members, noise=noise)[1]["target_q_mean"]

    off = small_cfg(backup_entropy=False)
    torch.testing.assert_close(y_mean(off, 0.0), y_mean(off, 3.0))           # no alpha term
    on = small_cfg(backup_entropy=True)
    assert abs(y_mean(on, 0.0) - y_mean(on, 3.0)) > 1e-3                    # negative control
    shifted = small_cfg(backup_entropy=False, reward_shift=-1.0)
    torch.testing.assert_close(y_mean(shifted, 0.0), y_mean(off, 0.0) - 1.0)  # AntMaze r - 1
    terminal = tensors(make_batch(16, mask=0.0))
    torch.manual_seed(2)
    agent = RLPD(OBS, ACT, on, batch_size=16)
    _, info = critic_loss(agent.nets, terminal, on, members=members, noise=noise)
    torch.testing.assert_close(info["target_q_mean"], terminal["reward"].mean())  # y = r


# -------------------------------------------------------------------------------- learning
def test_critic_loss_decreases_on_a_fixed_regression_target():
    torch.manual_seed(3)
    agent = RLPD(OBS, ACT, small_cfg(critic_lr=1e-3), batch_size=64, seed=3)
    batch = make_batch(4 * 64, mask=0.0)            # terminal: y = r, a plain regression
    batch["reward"] = np.tanh(batch["obs"][:, 0] + batch["action"][:, 1]).astype(np.float32)
    first = agent.update(batch)["critic_loss"]
    for _ in range(40):
        last = agent.update(batch)
    assert last["critic_loss"] < 0.2 * first
    assert all(math.isfinite(v) for v in last.values())
    assert {"critic_loss", "actor_loss", "temperature", "entropy", "q_mean", "q_std", "q_max",
            "target_q_mean"} <= set(last)


# ------------------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_gives_identical_next_updates(tmp_path):
    cfg = O2OConfig(algorithm=small_cfg(), sampler={"batch_size": 16})
    agent = build_agent(cfg, OBS, ACT, seed=4)
    for k in range(2):
        agent.update(make_batch(3 * 16, seed=k))
    agent.act(np.zeros(OBS))
    path = save_checkpoint(tmp_path / "ckpt.pt", agent, cfg, env_steps=1234)
    restored, cfg2, extra = load_checkpoint(path)
    assert extra == {"env_steps": 1234} and cfg2 == cfg
    assert restored.critic_steps == agent.critic_steps == 6 and restored.updates == 2
    nxt = make_batch(3 * 16, seed=9)
    assert agent.update(nxt) == restored.update(nxt)   # same metrics, bit for bit
    for a, b in zip(agent.nets.state_dict().values(), restored.nets.state_dict().values()):
        assert torch.equal(a, b)
    assert np.array_equal(agent.act(np.ones(OBS)), restored.act(np.ones(OBS)))
    assert not list(tmp_path.glob(".*.tmp"))            # the temporary file is gone


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    cfg = O2OConfig(algorithm=small_cfg(), sampler={"batch_size": 8})
    agent = build_agent(cfg, OBS, ACT)
    path = save_checkpoint(tmp_path / "ok.pt", agent, cfg)
    blob = torch.load(path, weights_only=True)
    torch.save({**blob, "format": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({**blob, "format": 1}, tmp_path / "old.pt")          # the per-algorithm layout
    with pytest.raises(CheckpointError, match=r"old\.pt: checkpoint format 1.*reads format 2"):
        load_checkpoint(tmp_path / "old.pt")
    torch.save({**blob, "agent": {**blob["agent"], "algorithm": "obac"}}, tmp_path / "algo.pt")
    with pytest.raises(CheckpointError, match="state of a 'obac' agent"):
        load_checkpoint(tmp_path / "algo.pt")
    torch.save({**blob, "act_dim": ACT + 1}, tmp_path / "dims.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(tmp_path / "dims.pt")
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "x.pt", agent, cfg, config={})


# ---------------------------------------------------------------------------- act / export
def test_act_and_export_parity():
    agent = RLPD(OBS, ACT, small_cfg(), batch_size=8)
    obs = np.random.default_rng(5).standard_normal((7, OBS)).astype(np.float32)
    assert agent.act(obs[0]).shape == (ACT,)
    sampled = agent.act(obs)
    assert sampled.shape == (7, ACT) and np.abs(sampled).max() <= 1
    policy = agent.export_actor()
    assert not policy.training and next(policy.parameters()).device.type == "cpu"
    with torch.no_grad():
        det = policy(torch.as_tensor(obs), torch.zeros(7, ACT)).numpy()
        mu, _ = agent.nets.actor(torch.as_tensor(obs))
    np.testing.assert_allclose(det, agent.act(obs, deterministic=True), atol=1e-6)
    np.testing.assert_allclose(det, torch.tanh(mu).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="obs must be"):
        agent.act(np.zeros(OBS + 1))
    agent.update(make_batch(16))                        # the export is a copy, not a view
    assert not np.allclose(policy(torch.as_tensor(obs), torch.zeros(7, ACT)).numpy(),
                           agent.act(obs, deterministic=True))


# --------------------------------------------------------------------------- registry, presets
def test_registry_and_device():
    from o2o_robot.agents.obac import OBAC
    from o2o_robot.agents.oema import OEMA

    assert ALGORITHMS == {"rlpd": RLPD, "obac": OBAC, "oema": OEMA}
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    agent = build_agent(load_config(PRESETS / "rlpd_antmaze.yaml"), OBS, ACT)
    assert agent.cfg.critic_subset_size == 1 and agent.cfg.reward_shift == -1.0
    assert len(agent.nets.critic.net.linears) == 3


@pytest.mark.parametrize("preset", sorted(PRESETS.glob("*.yaml")), ids=lambda p: p.name)
def test_presets_load(preset):
    import yaml
    assert set(yaml.safe_load(preset.read_text())) <= {"algorithm", "sampler", "learner"}
    cfg = load_config(preset)
    assert cfg.algorithm.name in ALGORITHMS


def test_preset_values():
    loco, adroit, ant, sac = (load_config(PRESETS / f"{n}.yaml").algorithm
                              for n in ("rlpd_locomotion", "rlpd_adroit", "rlpd_antmaze", "sac"))
    assert (loco.critic_ensemble_size, loco.critic_subset_size, loco.backup_entropy) == (10, 2, True)
    assert adroit.hidden_dims == [256] * 3 and not adroit.backup_entropy
    assert ant.hidden_dims == [256] * 3 and ant.critic_subset_size == 1 and not ant.backup_entropy
    sac_cfg = load_config(PRESETS / "sac.yaml")
    assert (sac.critic_ensemble_size, sac.critic_subset_size, sac.critic_layer_norm) == (2, 2, False)
    assert sac_cfg.sampler.offline_ratio == 0.0 and sac_cfg.learner.utd_ratio == 1
