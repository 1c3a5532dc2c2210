"""OBAC: Offline-Boosted Actor-Critic (Luo, Ji, Sun, Zhang, Xu, Zhan, ICML 2024, arXiv 2405.18520).

A SAC learner (actor pi, twin critic Q^pi) beside an in-sample "offline optimal" value learned
IQL-style on the same batches (twin Q^mu, V^mu). When the offline value beats the online one, the
actor also gets a small likelihood term towards the batch actions; otherwise it is plain SAC.
Faithful to Roythuly/OBAC (ALGORITHMS.md section 2). One OBAC update on a minibatch b:

  alpha   = init_temperature until the first temperature step, exp(log alpha) after it
  a' ~ pi(.|s'), a~ ~ pi(.|s) (reparameterised); a = the batch (demo or online) action
  y       = r + gamma m [ min_i Qbar^pi_i(s', a') - alpha log pi(a'|s') ]
  L_Q     = sum_{i=1,2} mean_b (Q^pi_i(s, a) - sg(y))^2
  y_mu    = r + gamma m V^mu(s')                          in-sample: no policy, V not a target
  L_Qmu   = sum_{i=1,2} mean_b (Q^mu_i(s, a) - sg(y_mu))^2
  u       = min_i Qbar^mu_i(s, a) - V^mu(s)
  L_V     = mean_b |tau - 1[u < 0]| u^2                   expectile tau = 0.9, target Q^mu
  q_pi    = mean_b min_i Q^pi_i(s, a~),   q_mu = mean_b min_i Q^mu_i(s, a)   (not V^mu)
  gate    = 1[q_pi < q_mu]                                one decision for the whole minibatch
  L_pi    = mean_b [ alpha log pi(a~|s) - min_i Q^pi_i(s, a~) ]
            - gate * lambda * mean_{b,j} clip(log N(a_j; mu_j(s), sigma_j(s)^2), -20, 2)
  L_alpha = -mean_b log alpha * sg(log pi(a~|s) + Hbar),  Hbar = -|A| unless configured
  then Polyak (tau_p = 0.005) of both Qbar^pi and Qbar^mu.

m = 1 - terminated (truncation keeps m = 1). The behaviour term is the raw per-dimension pre-tanh
Gaussian density of the buffer action (no atanh, no Jacobian, averaged over dimensions), as the
official code; lambda = `bc_weight` = 0.001. log alpha starts at 0, so alpha jumps from 0.2 to
about 1 after the first temperature step: the official code's behaviour, kept on purpose.

Update order. The official code computes every loss, then steps Q^pi, Q^mu, V, pi and alpha in
turn, so the actor's backward runs through critic weights the critic optimiser has already
changed in place. On current PyTorch that raises "modified by an inplace operation" (checked on
2.13 with foreach Adam); with fused Adam it does not raise and silently mixes pre-step
activations with post-step weights. Here all five losses are computed on the pre-update
networks, each is back-propagated into its own parameters only (the actor's with `inputs=`, so
no critic gradient), and only then are the five optimisers stepped and both Polyak targets
updated: the official losses, every one of them on the pre-update networks.

Data, o2o_robot's adaptation (not the paper's): OBAC is published as an online method with one
replay buffer. o2o_robot feeds it the RLPD-style symmetric mix of demonstrations (and imported
offline data) and online transitions (`sampler.offline_ratio`), so Q^mu/V^mu are learned on
demos plus online data and the gate pulls the actor towards the better of the two. One call of
`OBAC.update` takes `learner.utd_ratio` minibatches of `sampler.batch_size` rows and runs one full
OBAC update per minibatch (the official UTD is 1).
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from o2o_robot.agents.base import pack_state, resolve_device, unpack_state
from o2o_robot.agents.networks import (EnsembleCritic, StateValue, TanhGaussianActor,
                                       TanhGaussianExport)
from o2o_robot.agents.ops import (batch_tensors, ensemble_min, expectile_loss,
                                  log_density_pretanh, minibatch_slices, policy_actions,
                                  polyak_update)
from o2o_robot.config import OBACConfig

BATCH_KEYS = ("obs", "action", "reward", "next_obs", "mask")
Batch = Mapping[str, torch.Tensor]
LN_EPS = 1e-5  # the official PyTorch code's nn.LayerNorm default
_COUNTERS = ("updates", "grad_steps", "temp_steps", "gate_on_steps")


class OBACNets(nn.Module):
    """Everything OBAC learns; every MLP is Linear-LayerNorm-tanh, then Linear-ELU (BAC style)."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: OBACConfig):
        super().__init__()
        trunk = {"layer_norm": "ln_first_tanh", "ln_eps": LN_EPS}
        self.actor = TanhGaussianActor(obs_dim, act_dim, cfg.hidden_dims, **trunk)
        self.critic = EnsembleCritic(obs_dim, act_dim, cfg.hidden_dims, 2, activation="elu",
                                     **trunk)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.critic_mu = copy.deepcopy(self.critic)             # Q^mu starts as a copy of Q^pi
        self.target_critic_mu = copy.deepcopy(self.critic_mu).requires_grad_(False)
        self.value = StateValue(obs_dim, cfg.hidden_dims, "ln_first_tanh", "elu", LN_EPS)
        self.log_alpha = nn.Parameter(torch.zeros(()))


def target_entropy(cfg: OBACConfig, act_dim: int) -> float:
    """Hbar: the configured value, else SAC's -|A| (OBAC's choice; RLPD uses -|A|/2)."""
    return float(cfg.target_entropy) if cfg.target_entropy is not None else -float(act_dim)


# ------------------------------------------------------------------------------ pure losses
def online_critic_loss(nets: OBACNets, batch: Batch, cfg: OBACConfig, alpha: torch.Tensor, *,
                       noise: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """L_Q of the SAC critic Q^pi (entropy backup with `alpha`)."""
    with torch.no_grad():
        next_action, next_log_prob = nets.actor.sample(batch["next_obs"], generator, noise)
        next_q = ensemble_min(nets.target_critic(batch["next_obs"], next_action))
        y = batch["reward"] + cfg.reward_shift + cfg.discount * batch["mask"] * (
            next_q - alpha * next_log_prob)
    q = nets.critic(batch["obs"], batch["action"])                   # [2, B]
    loss = (q - y).square().mean(dim=1).sum()                        # MSE(Q1, y) + MSE(Q2, y)
    return loss, {"critic_loss": loss.detach(), "q_mean": q.detach().mean(),
                  "target_q_mean": y.mean()}


def offline_critic_loss(nets: OBACNets, batch: Batch,
                        cfg: OBACConfig) -> tuple[torch.Tensor, dict]:
    """L_Qmu, in-sample: y_mu bootstraps from V^mu(s'), never from a policy action.

    info["q_mu_data"] = mean_b min_i Q^mu_i(s, a) at the batch actions: the gate's q_mu."""
    with torch.no_grad():
        y = batch["reward"] + cfg.reward_shift + cfg.discount * batch["mask"] * \
            nets.value(batch["next_obs"])
    q = nets.critic_mu(batch["obs"], batch["action"])
    loss = (q - y).square().mean(dim=1).sum()
    return loss, {"critic_mu_loss": loss.detach(), "q_mu_data": ensemble_min(q.detach()).mean()}


def value_loss(nets: OBACNets, batch: Batch, cfg: OBACConfig) -> tuple[torch.Tensor, dict]:
    """L_V: expectile regression of V^mu(s) onto min_i Qbar^mu_i(s, a) (target nets, as IQL)."""
    with torch.no_grad():
        q = ensemble_min(nets.target_critic_mu(batch["obs"], batch["action"]))
    v = nets.value(batch["obs"])
    loss = expectile_loss(q - v, cfg.expectile)
    return loss, {"value_loss": loss.detach(), "v_mean": v.detach().mean()}


def behaviour_gate(q_pi: torch.Tensor, q_mu: torch.Tensor) -> torch.Tensor:
    """1.0 when the batch-mean online value is below the batch-mean offline one, else 0.0."""
    return (q_pi.mean() < q_mu.mean()).float()


def actor_loss(nets: OBACNets, batch: Batch, cfg: OBACConfig, alpha: torch.Tensor,
               q_mu: torch.Tensor, *, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None,
               gate: bool | None = None) -> tuple[torch.Tensor, dict]:
    """L_pi: SAC's loss, minus lambda times the clamped behaviour log-density when the gate is on.

    `q_mu` is the offline critic's batch value at the data actions (`offline_critic_loss`);
    `gate` forces the gate on or off (None: the adaptive batch-level decision). The behaviour
    term is always computed and multiplied by the gate, so no device sync is needed; with the gate
    off it adds exactly zero to the loss and to every gradient."""
    action, log_prob = nets.actor.sample(batch["obs"], generator, noise)
    q_pi = ensemble_min(nets.critic(batch["obs"], action))
    on = behaviour_gate(q_pi.detach(), q_mu) if gate is None else q_pi.new_tensor(float(gate))
    density = log_density_pretanh(nets.actor, batch["obs"], batch["action"]).mean()
    sac = (alpha * log_prob - q_pi).mean()
    loss = sac - on * cfg.bc_weight * density
    return loss, {"actor_loss": loss.detach(), "entropy": -log_prob.detach().mean(),
                  "q_pi": q_pi.detach().mean(), "gate_on": on,
                  "behaviour_log_density": density.detach(), "log_prob": log_prob.detach()}


def temperature_loss(nets: OBACNets, log_prob: torch.Tensor,
                     target_entropy_value: float) -> tuple[torch.Tensor, dict]:
    """L_alpha = -mean(log alpha * sg(log pi + Hbar)); gradient H - Hbar (not alpha-scaled)."""
    loss = -(nets.log_alpha * (log_prob.detach() + target_entropy_value)).mean()
    return loss, {"temperature_loss": loss.detach()}


# ------------------------------------------------------------------------------------ agent
class OBAC:
    """The OBAC learner (`Agent` protocol): `update(big_batch)` per environment step; see the
    module docstring. No offline pre-training phase; fed by the "mixed" batch plan.

    `compile` and `bf16` are accepted for a uniform constructor and not used (a warning says so):
    OBAC runs eager fp32."""

    name = "obac"
    batch_plan = "mixed"
    cameras: tuple = ()          # vectors only: build_agent refuses a camera config
    pretrain_steps = pretrain_steps_done = 0
    pretrain_finished = True

    def __init__(self, obs_dim: int, act_dim: int, cfg: OBACConfig, *, batch_size: int = 512,
                 device: str | torch.device = "cpu", compile: bool = False, bf16: bool = False,
                 seed: int = 0):
        if compile or bf16:
            warnings.warn("OBAC: learner.compile and learner.bf16 are not supported; running "
                          "eager fp32")
        self.obs_dim, self.act_dim, self.cfg = int(obs_dim), int(act_dim), cfg
        self.batch_size = int(batch_size)
        self.device = torch.device(resolve_device(device))
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG untouched
            torch.manual_seed(seed)
            self.nets = OBACNets(obs_dim, act_dim, cfg).to(self.device)
        self.target_entropy = target_entropy(cfg, act_dim)
        # One generator for updates, one for act(): acting never shifts the update stream.
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.act_generator = torch.Generator(self.device).manual_seed(seed + 1)
        nets, adam = self.nets, (lambda params, lr: torch.optim.Adam(params, lr, fused=True))
        self.critic_opt = adam(nets.critic.parameters(), cfg.critic_lr)
        self.critic_mu_opt = adam(nets.critic_mu.parameters(), cfg.critic_lr)
        self.value_opt = adam(nets.value.parameters(), cfg.value_lr)
        self.actor_opt = adam(nets.actor.parameters(), cfg.actor_lr)
        self.temp_opt = adam([nets.log_alpha], cfg.temp_lr)
        self._actor_params = list(nets.actor.parameters())
        for name in _COUNTERS:
            setattr(self, name, 0)

    @property
    def alpha(self) -> torch.Tensor:
        """The temperature in use: `init_temperature` before the first alpha step, then
        exp(log alpha) (the official code's `self.alpha`)."""
        if self.temp_steps == 0:
            return torch.tensor(self.cfg.init_temperature, device=self.device)
        return self.nets.log_alpha.detach().exp()

    # ---------------------------------------------------------------------------- update
    def _step(self, mb: Batch, next_noise: torch.Tensor, noise: torch.Tensor) -> dict:
        """One OBAC update on one minibatch: all losses on the pre-update networks, then the
        optimiser steps, then both Polyak updates (module docstring, "Update order")."""
        nets, cfg, alpha = self.nets, self.cfg, self.alpha
        l_q, i_q = online_critic_loss(nets, mb, cfg, alpha, noise=next_noise)
        l_mu, i_mu = offline_critic_loss(nets, mb, cfg)
        l_v, i_v = value_loss(nets, mb, cfg)
        l_pi, i_pi = actor_loss(nets, mb, cfg, alpha, i_mu["q_mu_data"], noise=noise)
        l_t, i_t = temperature_loss(nets, i_pi.pop("log_prob"), self.target_entropy)
        opts = list(self._optimisers().values())
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        (l_q + l_mu + l_v + l_t).backward()      # disjoint parameter sets, targets detached
        l_pi.backward(inputs=self._actor_params)  # the actor only: no critic gradients
        for opt in opts:
            opt.step()
        polyak_update(nets.target_critic, nets.critic, cfg.tau)
        polyak_update(nets.target_critic_mu, nets.critic_mu, cfg.tau)
        self.grad_steps += 1
        self.temp_steps += 1
        return {**i_q, **i_mu, **i_v, **i_pi, **i_t, "alpha_used": alpha}

    def update(self, big_batch: Mapping[str, Any]) -> dict[str, float]:
        """One OBAC update per minibatch of `batch_size` rows in `big_batch` (obs, action in
        [-1, 1], reward, next_obs, mask); returns the means over those updates, with `gate_on`
        the fraction of them whose gate was on."""
        batch = batch_tensors(big_batch, BATCH_KEYS, self.obs_dim, self.act_dim, self.device)
        rows = batch["obs"].shape[0]
        slices = minibatch_slices(rows, self.batch_size)
        noise = torch.randn(2, rows, self.act_dim, generator=self.generator, device=self.device)
        stats = []
        for sl in slices:
            info = self._step({k: v[sl] for k, v in batch.items()}, noise[0, sl], noise[1, sl])
            stats.append(torch.stack([v.float() for v in info.values()]))
        keys = list(info)
        # One device sync for all metrics.
        metrics = dict(zip(keys, torch.stack(stats).mean(0).tolist()))
        self.updates += 1
        self.gate_on_steps += round(metrics["gate_on"] * len(slices))
        metrics.update(q_pi_minus_q_mu=metrics["q_pi"] - metrics["q_mu_data"],
                       temperature=float(self.alpha), utd_ratio=float(len(slices)),
                       target_entropy=self.target_entropy)
        return metrics

    # ---------------------------------------------------------------------------- acting
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Action(s) in [-1, 1] for obs [obs_dim] or [B, obs_dim]: tanh(mu) or a sample."""
        actor = self.nets.actor
        return policy_actions(
            actor.mode if deterministic else lambda o: actor.sample(o, self.act_generator)[0],
            obs, self.obs_dim, self.device)

    def export_actor(self) -> nn.Module:
        """CPU copy in eval mode: forward(obs, noise) = tanh(mu + sigma * noise), the sampler
        the learner assumes (noise = 0: the evaluation action tanh(mu))."""
        return TanhGaussianExport(self.nets.actor)

    # ------------------------------------------------------------------- protocol, no-ops
    def feedback(self) -> dict[str, np.ndarray]:
        """Nothing: the "mixed" batch plan needs nothing back from an update."""
        return {}

    def pretrain_update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        raise RuntimeError("OBAC has no offline pre-training phase")

    def finish_pretraining(self) -> None:
        """No offline phase: nothing to finish."""

    # ---------------------------------------------------------------------------- state
    def _optimisers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic": self.critic_opt, "critic_mu": self.critic_mu_opt,
                "value": self.value_opt, "actor": self.actor_opt, "temperature": self.temp_opt}

    def _generators(self) -> dict[str, torch.Generator]:
        return {"update": self.generator, "act": self.act_generator}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for identical next updates (`base.pack_state`'s shape)."""
        return pack_state(self, self.nets, self._optimisers(),
                          {k: getattr(self, k) for k in _COUNTERS}, self._generators())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        counters, _ = unpack_state(self, state, self.nets, self._optimisers(), self._generators())
        for k in _COUNTERS:
            setattr(self, k, counters[k])
