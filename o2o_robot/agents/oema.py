"""OEMA: optimistic exploration + meta adaptation (Guo et al., IEEE TKDE 36(3), 2024).

Offline-to-online TD3, faithful to the official code (guosyjlu/OEMA, `TD3_OEMA`; ALGORITHMS.md
section 3). Actions are in [-1, 1] (a_max = 1); m = 1 - terminated.

Offline phase, `pretrain_update` (TD3+BC, alpha = `bc_alpha`, no state normalisation):
    critic: TD3 loss below on demo-side rows;  every `policy_freq`-th step:
    L_pi = -lambda * mean Q1(s, pi(s)) + mean (pi(s) - a)^2,
    lambda = alpha / sg(mean |Q1(s, pi(s))|),
    and the Polyak updates of both targets. Fine-tuning starts from deep copies of the online
    nets as targets (`finish_pretraining`), with the Adam states carried over (the code loads them).

One fine-tuning iteration k, `update` (G = utd_ratio iterations per call, one per minibatch):
  (i) balanced replay, on B_off (offline side) and B_on (online side):
      L_w = mean_{B_off}[ -log(2 / (w+1)) ] - mean_{B_on}[ log(2w / (w+1)) ]   (JS f-GAN; w >= 0)
  critic (TD3) on B_rl (prioritised draw over demo-side + online rows, no IS weights):
      a' = clip(pibar(s') + clip(N(0, policy_noise^2), +-noise_clip), +-1)
      y  = r + reward_shift + gamma * m * min(Q1bar, Q2bar)(s', a')
      L_Q = MSE(Q1, y) + MSE(Q2, y)        (critic grads zeroed right before: pitfall 9)
  (iii) every `policy_freq`-th iteration, meta adaptation of the actor theta, then Polyak of the
      critic and actor targets:
      L_trn(theta) = -mean_{B_rl} Q1(s, pi_theta(s)),  L_tst(theta) = -mean_{B_r} Q1(s, pi_theta(s))
      (B_r: states of the newest `recent_window` online rows)
      first_order (default, the code's hot-plug):
          theta' = theta - eta * sg(grad L_trn(theta))
          g = grad L_trn(theta) + w * grad_{theta'} L_tst(theta'),  w = sg(beta * L_trn / L_tst)
      second_order (`meta_form`, MAML):  g = grad_theta [ L_trn(theta) + beta * L_tst(theta') ]
          with theta' = theta - eta * grad L_trn(theta) differentiated through
      then Adam on theta. beta_k = max(0, beta0 - k * beta0 / meta_anneal_steps) with
      `meta_anneal`, k = actor steps including this one; else beta0.
  (ii) optimistic exploration, on B_rl states, pi(s) detached, only omega stepped:
      a_E = clip(pi(s) + xi_omega(s, pi(s)) + eps, +-1),  xi = Phi * tanh(f_omega),
      eps ~ N(0, sigma^2)
      L_xi = -mean Q_UB(s, a_E),  Q_UB = (Q1 + Q2)/2 + beta_UB * |Q1 - Q2|/2
  priorities of the B_rl rows: clip(w(s,a)^(1/T) / (mean_{B_off} w^(1/T) + 1e-10), min, max),
      with w after its step on the rows and the B_off values from before it (as the code).

Where code and paper differ (the code is what produced the published curves):
* meta step: the paper writes the MAML objective (second order); the code's hot-plug is first
  order with the loss-ratio weight w, which flips sign when L_trn and L_tst do (pitfall 3): w and
  the count of negative-w steps are logged. `meta_form: second_order` gives the paper's form.
* beta annealing exists in the code but is off by default (`meta_anneal: false`).
* the perturbation bound Phi is 1 (main.py never passes the class default 0.1).
Ours: G > 1 iterations per env step share one draw, so priorities written by iteration k are
seen from the next env step on (the code runs UTD 1). Nets use Xavier init (shared pieces).
`compile` and `bf16` are accepted for the common agent signature and ignored: OEMA's nets are
small TD3 MLPs and the meta step's functional_call/double backward gains nothing from them.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from o2o_robot.agents.base import pack_state, resolve_device, unpack_state
from o2o_robot.agents.networks import (BehaviourPolicyExport, ConcatMLP, DeterministicActor,
                                       EnsembleCritic)
from o2o_robot.agents.ops import (batch_tensors, behaviour_action, ensemble_min,
                                  minibatch_slices, policy_actions, polyak_update, q_upper_bound)
from o2o_robot.config import OEMAConfig

Batch = Mapping[str, torch.Tensor]
TD_KEYS = ("obs", "action", "reward", "next_obs", "mask")
REPLAY_KEYS = ("off_obs", "off_action", "on_obs", "on_action", "recent_obs")
LOG_EPS = 1e-10          # inside the f-GAN logs and the priority normaliser, as the code
_COUNTERS = ("pretrain_steps_done", "pretrain_actor_steps", "updates", "iterations",
             "critic_steps", "actor_steps", "target_steps", "density_steps", "perturb_steps",
             "negative_meta_weights")
_META_KEYS = ("actor_loss", "meta_loss", "meta_weight", "meta_beta")


class OEMANets(nn.Module):
    """Everything OEMA learns: TD3 actor and twin critic (+ targets), w_psi and xi_omega."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: OEMAConfig):
        super().__init__()
        hidden = cfg.hidden_dims
        self.actor = DeterministicActor(obs_dim, act_dim, hidden)
        self.critic = EnsembleCritic(obs_dim, act_dim, hidden, 2, layer_norm=False)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.density = ConcatMLP(obs_dim + act_dim, hidden, 1, out="relu")
        self.perturb = ConcatMLP(obs_dim + act_dim, hidden, act_dim, out="tanh",
                                 out_scale=cfg.perturb_scale)


# ------------------------------------------------------------------------------ pure losses
def q1(critic: EnsembleCritic, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Q1(s, a) [B], the first twin only (TD3's actor objective)."""
    first = torch.zeros(1, dtype=torch.long, device=obs.device)
    return critic(obs, action, first)[0]


def critic_loss(nets: OEMANets, batch: Batch, cfg: OEMAConfig, *,
                noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """TD3's L_Q = MSE(Q1, y) + MSE(Q2, y); `noise` (standard normal [B, act_dim]) drawn if None."""
    with torch.no_grad():
        action = batch["action"]
        if noise is None:
            noise = torch.randn(action.shape, generator=generator, device=action.device)
        smoothing = (noise * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
        next_action = (nets.actor_target(batch["next_obs"]) + smoothing).clamp(-1.0, 1.0)
        next_q = ensemble_min(nets.critic_target(batch["next_obs"], next_action))
        y = batch["reward"] + cfg.reward_shift + cfg.discount * batch["mask"] * next_q
    q = nets.critic(batch["obs"], action)                              # [2, B]
    loss = (q - y).square().mean(dim=1).sum()
    return loss, {"critic_loss": loss.detach(), "q_mean": q.detach().mean(),
                  "target_q_mean": y.mean()}


def td3bc_actor_loss(nets: OEMANets, batch: Batch, cfg: OEMAConfig) -> tuple[torch.Tensor, dict]:
    """TD3+BC: -lambda * mean Q1(s, pi(s)) + mean (pi(s) - a)^2, lambda = alpha / sg(mean |Q1|)."""
    pi = nets.actor(batch["obs"])
    q = q1(nets.critic, batch["obs"], pi)
    lmbda = cfg.bc_alpha / q.abs().mean().detach()
    bc = (pi - batch["action"]).square().mean()
    loss = -lmbda * q.mean() + bc
    return loss, {"actor_loss": loss.detach(), "bc_mse": bc.detach(), "bc_lambda": lmbda}


def density_ratio_loss(nets: OEMANets, batch: Batch) -> tuple[torch.Tensor, dict]:
    """Jensen-Shannon f-GAN loss of w_psi on B_off/B_on; info["w_off"] is w on B_off [B]."""
    w_off = nets.density(batch["off_obs"], batch["off_action"]).squeeze(-1)
    w_on = nets.density(batch["on_obs"], batch["on_action"]).squeeze(-1)
    loss = -torch.log(2.0 / (w_off + 1.0) + LOG_EPS).mean() \
        - torch.log(2.0 * w_on / (w_on + 1.0) + LOG_EPS).mean()
    return loss, {"density_loss": loss.detach(), "w_off_mean": w_off.detach().mean(),
                  "w_on_mean": w_on.detach().mean(), "w_off": w_off.detach()}


def normalised_priorities(w_rows: torch.Tensor, w_off: torch.Tensor, temperature: float,
                          low: float, high: float) -> torch.Tensor:
    """clip(w^(1/T) / (mean_{B_off} w^(1/T) + 1e-10), low, high): ~1 on average over B_off."""
    inv_t = 1.0 / temperature
    return (w_rows.pow(inv_t) / (w_off.pow(inv_t).mean() + LOG_EPS)).clamp(low, high)


def perturbation_loss(nets: OEMANets, batch: Batch, cfg: OEMAConfig, *,
                      noise: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """L_xi = -mean Q_UB(s, a_E) on B_rl states, pi(s) detached, the noise inside a_E."""
    obs = batch["obs"]
    with torch.no_grad():
        action = nets.actor(obs)
        if noise is None:
            noise = torch.randn(action.shape, generator=generator, device=action.device)
    a_e = behaviour_action(nets.perturb, obs, action, noise, cfg.explore_noise)
    q_ub = q_upper_bound(nets.critic(obs, a_e), cfg.optimism)
    loss = -q_ub.mean()
    return loss, {"perturb_loss": loss.detach(), "q_ub_mean": q_ub.detach().mean(),
                  "xi_abs_mean": (a_e - action).detach().abs().mean()}


def meta_gradient(params: Mapping[str, torch.Tensor],
                  train_loss: Callable[[Mapping[str, torch.Tensor]], torch.Tensor],
                  test_loss: Callable[[Mapping[str, torch.Tensor]], torch.Tensor], *,
                  beta: float, eta: float, form: str = "first_order"
                  ) -> tuple[list[torch.Tensor], dict]:
    """Meta gradient of the actor parameters `params` (the module docstring's two forms).

    `train_loss(p)` / `test_loss(p)` evaluate L_trn / L_tst at parameters p (e.g. through
    `torch.func.functional_call`), so the adapted theta' never replaces the module's parameters:
    the hot-plug without its bookkeeping (pitfall 2). Returns (gradients in `params` order,
    info with train_loss, test_loss (at theta') and meta_weight)."""
    if form not in ("first_order", "second_order"):
        raise ValueError(f"meta_form: expected 'first_order' or 'second_order', got {form!r}")
    names, leaves = list(params), list(params.values())
    second = form == "second_order"
    l_trn = train_loss(params)
    g_trn = torch.autograd.grad(l_trn, leaves, create_graph=second)
    adapted = {n: p - eta * g for n, p, g in zip(names, leaves, g_trn)}
    l_tst = test_loss(adapted)
    if second:
        grads = list(torch.autograd.grad(l_trn + beta * l_tst, leaves))
        weight = torch.as_tensor(float(beta), device=l_trn.device)
    else:   # g_trn carries no graph: d theta' / d theta = I, so this is grad at theta'
        weight = beta * l_trn.detach() / l_tst.detach()
        g_tst = torch.autograd.grad(weight * l_tst, leaves)
        grads = [a + b for a, b in zip(g_trn, g_tst)]
    return grads, {"actor_loss": l_trn.detach(), "meta_loss": l_tst.detach(),
                   "meta_weight": weight.detach()}


def meta_beta(cfg: OEMAConfig, k: int) -> float:
    """beta at the k-th actor step: beta0, or max(0, beta0 - k * beta0 / anneal_steps) annealed."""
    if not cfg.meta_anneal:
        return float(cfg.meta_beta)
    return max(0.0, cfg.meta_beta - k * cfg.meta_beta / cfg.meta_anneal_steps)


# ------------------------------------------------------------------------------------ agent
class OEMA:
    """The OEMA learner (`Agent` protocol): `pretrain_update(batch)` per TD3+BC step, then
    `update(batch)` per env step on a "balanced_replay" batch; after each update `feedback()`
    gives the new priorities of its B_rl rows (the batch plan's sampler owns the priorities)."""

    name = "oema"
    batch_plan = "balanced_replay"
    cameras: tuple = ()          # vectors only: build_agent refuses a camera config

    def __init__(self, obs_dim: int, act_dim: int, cfg: OEMAConfig, *, batch_size: int = 256,
                 device: str | torch.device = "cpu", compile: bool = False, bf16: bool = False,
                 seed: int = 0):
        self.obs_dim, self.act_dim, self.cfg = int(obs_dim), int(act_dim), cfg
        self.batch_size, self.pretrain_steps = int(batch_size), int(cfg.pretrain_steps)
        self.device = torch.device(resolve_device(device))
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG untouched
            torch.manual_seed(seed)
            self.nets = OEMANets(obs_dim, act_dim, cfg).to(self.device)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.act_generator = torch.Generator(self.device).manual_seed(seed + 1)
        nets, adam = self.nets, lambda params, lr: torch.optim.Adam(params, lr, fused=True)
        self.critic_opt = adam(nets.critic.parameters(), cfg.critic_lr)
        self.actor_opt = adam(nets.actor.parameters(), cfg.actor_lr)
        self.density_opt = adam(nets.density.parameters(), cfg.density_lr)
        self.perturb_opt = adam(nets.perturb.parameters(), cfg.perturb_lr)
        self._actor_params = dict(nets.actor.named_parameters())
        self._perturb_params = list(nets.perturb.parameters())
        for name in _COUNTERS:
            setattr(self, name, 0)
        self.pretrain_finished = False
        self._priorities: np.ndarray | None = None    # of the last update's B_rl rows
        # Latest meta-step values, reported by every iteration (NaN before the first one).
        self._last_meta = {k: torch.tensor(float("nan"), device=self.device) for k in _META_KEYS}
        self._negative_w = torch.zeros((), device=self.device)   # synced once per update

    # ---------------------------------------------------------------------------- batches
    def _to_batch(self, batch: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
        return batch_tensors(batch, keys, self.obs_dim, self.act_dim, self.device)

    # --------------------------------------------------------------------------- pre-training
    def pretrain_update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One TD3+BC step on demo-side rows (obs, action, reward, next_obs, mask)."""
        if self.pretrain_finished:
            raise RuntimeError("OEMA: pre-training is over (fine-tuning has started)")
        b = self._to_batch(batch, TD_KEYS)
        info = self._critic_step(b)
        self.pretrain_steps_done += 1
        if self.pretrain_steps_done % self.cfg.policy_freq == 0:
            self.actor_opt.zero_grad(set_to_none=True)
            loss, a_info = td3bc_actor_loss(self.nets, b, self.cfg)
            loss.backward(inputs=list(self._actor_params.values()))
            self.actor_opt.step()
            self._polyak()
            self.pretrain_actor_steps += 1
            info.update(a_info)
        values = torch.stack(list(info.values())).float().tolist()
        return dict(zip(info, values))

    def finish_pretraining(self) -> None:
        """Start of fine-tuning: targets become copies of the online nets (the code deep-copies
        the loaded actor and critic); Adam states carry over. Idempotent."""
        if self.pretrain_finished:
            return
        with torch.no_grad():
            for target, online in ((self.nets.actor_target, self.nets.actor),
                                   (self.nets.critic_target, self.nets.critic)):
                for t, o in zip(target.parameters(), online.parameters()):
                    t.copy_(o)
        self.pretrain_finished = True

    # ---------------------------------------------------------------------------- fine-tuning
    def _critic_step(self, b: Batch) -> dict:
        self.critic_opt.zero_grad(set_to_none=True)   # drops stray grads of other losses
        loss, info = critic_loss(self.nets, b, self.cfg, generator=self.generator)
        loss.backward()
        self.critic_opt.step()
        self.critic_steps += 1
        return info

    def _polyak(self) -> None:
        polyak_update(self.nets.critic_target, self.nets.critic, self.cfg.tau)
        polyak_update(self.nets.actor_target, self.nets.actor, self.cfg.tau)
        self.target_steps += 1

    def _meta_actor_step(self, b: Batch) -> dict:
        actor, critic = self.nets.actor, self.nets.critic
        s_rl, s_r = b["obs"], b["recent_obs"]
        beta = meta_beta(self.cfg, self.actor_steps + 1)
        grads, info = meta_gradient(
            self._actor_params,
            lambda p: -q1(critic, s_rl, functional_call(actor, dict(p), (s_rl,))).mean(),
            lambda p: -q1(critic, s_r, functional_call(actor, dict(p), (s_r,))).mean(),
            beta=beta, eta=self.cfg.meta_lr, form=self.cfg.meta_form)
        for p, g in zip(self._actor_params.values(), grads):
            p.grad = g
        self.actor_opt.step()
        self.actor_steps += 1
        self._negative_w += info["meta_weight"] < 0
        return {**info, "meta_beta": torch.tensor(beta, device=self.device)}

    def _perturb_step(self, b: Batch) -> dict:
        self.perturb_opt.zero_grad(set_to_none=True)
        loss, info = perturbation_loss(self.nets, b, self.cfg, generator=self.generator)
        loss.backward(inputs=self._perturb_params)   # only omega: actor and critic untouched
        self.perturb_opt.step()
        self.perturb_steps += 1
        return info

    def _iteration(self, b: Batch) -> tuple[dict, torch.Tensor]:
        """One fine-tuning iteration (module docstring); returns (info, B_rl priorities)."""
        self.density_opt.zero_grad(set_to_none=True)
        d_loss, d_info = density_ratio_loss(self.nets, b)
        d_loss.backward()
        self.density_opt.step()
        self.density_steps += 1
        w_off = d_info.pop("w_off")
        info = {**d_info, **self._critic_step(b)}
        self.iterations += 1
        if self.iterations % self.cfg.policy_freq == 0:
            self._last_meta = self._meta_actor_step(b)
            self._polyak()
        info.update(self._last_meta)
        info.update(self._perturb_step(b))
        with torch.no_grad():
            w_rows = self.nets.density(b["obs"], b["action"]).squeeze(-1)
            cfg = self.cfg
            priorities = normalised_priorities(w_rows, w_off, cfg.priority_temperature,
                                               cfg.priority_min, cfg.priority_max)
        info["priority_mean"] = priorities.mean()
        return info, priorities

    def update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """G = rows / batch_size fine-tuning iterations, each on its contiguous minibatch of the
        B_rl rows (obs, action, reward, next_obs, mask) and of off_obs/off_action (B_off),
        on_obs/on_action (B_on) and recent_obs (B_r). `feedback()` then has their priorities."""
        b = self._to_batch(batch, TD_KEYS + REPLAY_KEYS)
        slices = minibatch_slices(b["obs"].shape[0], self.batch_size)
        self.finish_pretraining()
        stats, priorities = [], []
        for sl in slices:
            info, prio = self._iteration({k: v[sl] for k, v in b.items()})
            stats.append(torch.stack([torch.as_tensor(v, device=self.device).float()
                                      for v in info.values()]))
            priorities.append(prio)
        self.updates += 1
        # One device sync for the metrics and the sign-flip count of the meta weight.
        values = torch.cat([torch.stack(stats).nanmean(0), self._negative_w.reshape(1)]).tolist()
        self.negative_meta_weights = int(values.pop())
        self._priorities = torch.cat(priorities).cpu().numpy()
        metrics = dict(zip(info, values))
        metrics.update(utd_ratio=float(len(slices)),
                       negative_meta_weights=self.negative_meta_weights)
        return metrics

    def feedback(self) -> dict[str, np.ndarray]:
        """{"priorities": float32 [G*N]} of the last update's B_rl rows, in row order; {} before
        the first update (of this process: priorities live in the batch plan's state)."""
        return {} if self._priorities is None else {"priorities": self._priorities}

    # ---------------------------------------------------------------------------- acting
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Action(s) in [-1, 1] for obs [obs_dim] or [B, obs_dim], as `export_actor()` acts:
        pi(s) when deterministic or before the first fine-tuning iteration (the warm-up policy,
        pitfall 5), else the behaviour action a_E (with the agent's own noise generator)."""
        def policy(o: torch.Tensor) -> torch.Tensor:
            a = self.nets.actor(o)
            if deterministic or self.iterations == 0:
                return a
            noise = torch.randn(a.shape, generator=self.act_generator, device=self.device)
            return behaviour_action(self.nets.perturb, o, a, noise, self.cfg.explore_noise)
        return policy_actions(policy, obs, self.obs_dim, self.device)

    def export_actor(self) -> nn.Module:
        """forward(obs, noise) -> unit action: the behaviour policy once fine-tuning has run an
        iteration; before that (pre-training, warm-up) the deterministic pi(s), as `act`."""
        perturb = self.nets.perturb if self.iterations > 0 else None
        return BehaviourPolicyExport(self.nets.actor, perturb, self.cfg.explore_noise)

    # ---------------------------------------------------------------------------- state
    def _optimisers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic": self.critic_opt, "actor": self.actor_opt,
                "density": self.density_opt, "perturb": self.perturb_opt}

    def _generators(self) -> dict[str, torch.Generator]:
        return {"update": self.generator, "act": self.act_generator}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for identical next updates (`base.pack_state`'s shape); extra holds
        pretrain_finished and the latest meta-step values. (The replay priorities belong to the
        batch plan: `BalancedReplayBatches.state_dict`.)"""
        extra = {"pretrain_finished": self.pretrain_finished,
                 "last_meta": {k: float(v) for k, v in self._last_meta.items()}}
        return pack_state(self, self.nets, self._optimisers(),
                          {k: getattr(self, k) for k in _COUNTERS}, self._generators(), extra)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        counters, extra = unpack_state(self, state, self.nets, self._optimisers(),
                                       self._generators())
        for k in _COUNTERS:
            setattr(self, k, counters[k])
        self._negative_w.fill_(self.negative_meta_weights)
        self.pretrain_finished = bool(extra["pretrain_finished"])
        # float32 -> Python float -> float32 is exact, so resumed metrics match bit for bit.
        self._last_meta = {k: torch.tensor(float(extra["last_meta"][k]), device=self.device)
                           for k in _META_KEYS}
