"""RLPD: Reinforcement Learning with Prior Data (Ball, Smith, Kostrikov, Levine, ICML 2023).

SAC from scratch plus symmetric offline/online sampling (done by the sampler), a LayerNorm critic
ensemble and a high update-to-data ratio G. Faithful to ikostrikov/rlpd (ALGORITHMS.md section 1).
One call of `RLPD.update` consumes a big batch of G*N rows, cut into G contiguous minibatches b_g:

  for g = 1..G (critic step, then target EMA):
      a' ~ pi(.|s') (current actor), Z ⊂ {1..E} fresh, |Z| = Z, without replacement
      y   = (r + reward_shift) + gamma * m * [ min_{j in Z} Qbar_j(s', a')
                                               - 1[backup_entropy] * alpha * log pi(a'|s') ]
      L_Q = mean_{i=1..E, batch} (Q_i(s, a) - sg(y))^2                  (Adam, all members)
      thetabar <- (1 - rho) thetabar + rho theta
  once, on b_G (actor, then temperature):
      a~ ~ pi(.|s) reparameterised
      L_pi    = mean_batch[ alpha * log pi(a~|s) - (1/E) sum_i Q_i(s, a~) ]   (mean, not min)
      H       = -mean_batch log pi(a~|s)                                        (detached)
      L_alpha = alpha * (H - Hbar),  alpha = exp(log alpha), gradient wrt log alpha,
                Hbar = -|A|/2 unless configured

m = 1 - terminated (truncation keeps m = 1). Actions in the batch are already scaled to [-1, 1].
The actor and alpha are fixed during the G critic steps, so a' and log pi(a'|s') are drawn for all
G minibatches in one actor pass before the loop (same distribution as drawing them per step).
`reward_shift` is applied here, in the critic loss: the sampler must not shift rewards as well.

Pixels (ALGORITHMS.md 1.10, `cameras` given): obs and next_obs are dicts {"state", camera...};
the critic's encoder (agents/encoders.py) is trained by L_Q, the target critic is its Polyak
copy encoder included (evaluated on the Z drawn members only, as for vectors), and the actor
has its own copy of the conv trunks, overwritten with the critic's at the start of every update
and cut from the gradient, so L_pi trains only the actor's projections and MLP. Each update
augments obs and next_obs with independent random shifts on the learner's device.
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from o2o_robot.agents.base import pack_state, resolve_device, unpack_state
from o2o_robot.agents.encoders import (ObsEncoder, PixelPolicyExport, build_trunks, copy_trunks,
                                       load_pretrained, observation_batch, pixel_actions)
from o2o_robot.agents.networks import EnsembleCritic, TanhGaussianActor, TanhGaussianExport
from o2o_robot.agents.ops import (batch_tensors, ensemble_mean, minibatch_slices, policy_actions,
                                  polyak_update, sample_subsets)
from o2o_robot.config import RLPDConfig
from o2o_robot.spaces import CameraSpec

BATCH_KEYS = ("obs", "action", "reward", "next_obs", "mask")
Batch = Mapping[str, torch.Tensor]
_COUNTERS = ("updates", "critic_steps", "ema_steps", "actor_steps", "temp_steps")


class RLPDNets(nn.Module):
    """Everything RLPD learns: actor, critic ensemble, its target copy and log alpha."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: RLPDConfig,
                 cameras: tuple[CameraSpec, ...] = (), pretrained: tuple | None = None):
        super().__init__()
        critic_enc = actor_enc = None
        features = obs_dim
        if cameras:   # one encoder per network, over all cameras and the state
            critic_enc, actor_enc = (
                ObsEncoder(obs_dim, cameras, build_trunks(cameras, cfg.encoder_features, pretrained),
                           cfg.latent_dim, detach_trunks=actor) for actor in (False, True))
            copy_trunks(actor_enc, critic_enc)
            features = critic_enc.out_dim
        self.actor = TanhGaussianActor(features, act_dim, cfg.hidden_dims,  # no LayerNorm
                                       encoder=actor_enc)
        self.critic = EnsembleCritic(features, act_dim, cfg.hidden_dims, cfg.critic_ensemble_size,
                                     cfg.critic_layer_norm, encoder=critic_enc)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.init_temperature)))


def _rows(value: Any, sl: slice) -> Any:
    """Rows `sl` of a batch entry: a tensor or an observation dict of tensors."""
    return {k: v[sl] for k, v in value.items()} if isinstance(value, dict) else value[sl]


def target_entropy(cfg: RLPDConfig, act_dim: int) -> float:
    """Hbar: the configured value, else RLPD's -|A|/2 (not SAC's -|A|)."""
    return float(cfg.target_entropy) if cfg.target_entropy is not None else -act_dim / 2.0


# ------------------------------------------------------------------------------ pure losses
def critic_loss(nets: RLPDNets, batch: Batch, cfg: RLPDConfig, *,
                members: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """L_Q on one minibatch; `members` (Z target indices) and `noise` (for a') drawn if None.

    The batch may carry "next_action" and "next_log_prob" (a' ~ pi(.|s') and log pi(a'|s')
    from the current actor); `RLPD.update` draws them for all G minibatches in one pass, since
    the actor does not change during the G critic steps.
    """
    critic = nets.critic
    if members is None:
        members = sample_subsets(1, critic.ensemble_size, cfg.critic_subset_size, generator,
                                 batch["reward"].device)[0]
    with torch.no_grad():
        if "next_action" in batch:
            next_action, next_log_prob = batch["next_action"], batch["next_log_prob"]
        else:
            next_action, next_log_prob = nets.actor.sample(batch["next_obs"], generator, noise)
        # Only the Z chosen target members are evaluated: same value as subset_min over all E.
        next_q = nets.target_critic(batch["next_obs"], next_action, members).min(dim=0).values
        if cfg.backup_entropy:
            next_q = next_q - nets.log_alpha.exp() * next_log_prob
        reward = batch["reward"] + cfg.reward_shift if cfg.reward_shift else batch["reward"]
        y = reward + cfg.discount * batch["mask"] * next_q
    q = critic(batch["obs"], batch["action"])                       # [E, B]
    loss = (q - y).square().mean()
    with torch.no_grad():
        info = {"critic_loss": loss.detach(), "q_mean": q.mean(), "q_std": q.std(dim=0).mean(),
                "q_max": q.max(), "target_q_mean": y.mean()}
    return loss, info


def actor_loss(nets: RLPDNets, batch: Batch, cfg: RLPDConfig, *,
               noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """L_pi with the mean over all E online critics; info["entropy"] is H (detached)."""
    alpha = nets.log_alpha.exp().detach()
    action, log_prob = nets.actor.sample(batch["obs"], generator, noise)
    q = ensemble_mean(nets.critic(batch["obs"], action))
    loss = (alpha * log_prob - q).mean()
    return loss, {"actor_loss": loss.detach(), "entropy": -log_prob.detach().mean(),
                  "q_pi": q.detach().mean()}


def temperature_loss(nets: RLPDNets, entropy: torch.Tensor,
                     target_entropy_value: float) -> tuple[torch.Tensor, dict]:
    """L_alpha = exp(log alpha) * (H - Hbar): alpha falls when H > Hbar."""
    alpha = nets.log_alpha.exp()
    loss = alpha * (entropy.detach() - target_entropy_value)
    return loss, {"temperature_loss": loss.detach(), "temperature": alpha.detach()}


_EAGER_LOSSES = {"critic": critic_loss, "actor": actor_loss}


# ------------------------------------------------------------------------------------ agent
class RLPD:
    """The RLPD learner (`Agent` protocol): `update(big_batch)` per environment step; see the
    module docstring. No offline pre-training phase; fed by the "mixed" batch plan."""

    name = "rlpd"
    batch_plan = "mixed"
    pretrain_steps = pretrain_steps_done = 0
    pretrain_finished = True

    def __init__(self, obs_dim: int, act_dim: int, cfg: RLPDConfig, *, batch_size: int = 256,
                 device: str | torch.device = "cpu", compile: bool = False, bf16: bool = False,
                 seed: int = 0, cameras: tuple[CameraSpec, ...] = ()):
        self.obs_dim, self.act_dim, self.cfg = int(obs_dim), int(act_dim), cfg
        self.batch_size, self.bf16 = int(batch_size), bool(bf16)
        self.cameras = tuple(cameras)
        self.device = torch.device(resolve_device(device))
        pretrained = None
        if cfg.pretrained_encoder is not None:
            if not self.cameras:
                raise ValueError("algorithm.pretrained_encoder: set, but robot.cameras is empty "
                                 "(an image encoder needs cameras)")
            pretrained = load_pretrained(cfg.pretrained_encoder, self.cameras)
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG untouched
            torch.manual_seed(seed)
            self.nets = RLPDNets(obs_dim, act_dim, cfg, self.cameras, pretrained).to(self.device)
        self.target_entropy = target_entropy(cfg, act_dim)
        # One generator for updates, one for act(): acting never shifts the update stream.
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.act_generator = torch.Generator(self.device).manual_seed(seed + 1)
        # Fused Adam (one kernel pass per tensor; CPU and CUDA): ~2.5x faster than foreach on
        # CPU here, and faster than torch.compile of the step (benchmarks/learner_throughput.py).
        opt = {"fused": True}
        trained = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
        # The actor's conv trunks are copies of the critic's: never stepped by the actor.
        actor_enc = self.nets.actor.encoder
        copied = {id(p) for p in actor_enc.trunks.parameters()} if self.cameras else set()
        self._actor_params = [p for p in trained(self.nets.actor) if id(p) not in copied]
        self.critic_opt = torch.optim.Adam(trained(self.nets.critic), cfg.critic_lr, **opt)
        self.actor_opt = torch.optim.Adam(self._actor_params, cfg.actor_lr, **opt)
        self.temp_opt = torch.optim.Adam([self.nets.log_alpha], cfg.temp_lr, **opt)
        self._online = list(self.nets.critic.parameters())
        self._target = list(self.nets.target_critic.parameters())
        self.compile_error: str | None = None
        self._losses = dict(_EAGER_LOSSES)
        if compile:  # the losses (forward and backward) are compiled; fused Adam already is one kernel
            self._losses = {k: torch.compile(f, dynamic=False) for k, f in _EAGER_LOSSES.items()}
        for name in _COUNTERS:
            setattr(self, name, 0)
        self.last_minibatch_slices: list[slice] = []  # what the last update's critic steps used
        self.last_actor_slice: slice | None = None

    # ---------------------------------------------------------------------------- update
    def _loss_backward(self, name: str, *args, inputs=None, **kwargs) -> dict:
        """Run loss `name` ("critic" or "actor") and backpropagate it; return its info.

        With compile on, a failure of the compiled path (forward or the lazily compiled
        backward) is reported once (warning + `compile_error`) and the step is redone eager.
        """
        fn = self._losses[name]
        try:
            with self._autocast():
                loss, info = fn(self.nets, *args, **kwargs)
            loss.backward(inputs=inputs)
            return info
        except Exception as exc:  # a broken compiler toolchain must not stop learning
            eager = _EAGER_LOSSES[name]
            if fn is eager:
                raise
            self.compile_error = f"{name} loss: {type(exc).__name__}: {exc}"
            warnings.warn(f"RLPD: torch.compile failed, running eager: {self.compile_error}")
            self._losses[name] = eager
            for p in self.nets.parameters():
                p.grad = None
            return self._loss_backward(name, *args, inputs=inputs, **kwargs)

    def _to_batch(self, big_batch: Mapping[str, Any]) -> dict[str, Any]:
        if self.cameras:   # obs/next_obs become dicts, images randomly shifted on the device
            return observation_batch(big_batch, BATCH_KEYS, self.cameras, self.obs_dim,
                                     self.act_dim, self.device, self.generator)
        return batch_tensors(big_batch, BATCH_KEYS, self.obs_dim, self.act_dim, self.device)

    def _autocast(self):
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16)

    def _critic_step(self, mb: Batch, members: torch.Tensor) -> dict:
        self.critic_opt.zero_grad(set_to_none=True)
        info = self._loss_backward("critic", mb, self.cfg, members=members)
        self.critic_opt.step()
        polyak_update(self._target, self._online, self.cfg.tau)  # EMA after every critic step
        self.critic_steps += 1
        self.ema_steps += 1
        return info

    def _actor_and_temperature_step(self, mb: Batch, noise: torch.Tensor) -> dict:
        self.actor_opt.zero_grad(set_to_none=True)
        # inputs=actor params: L_pi trains the actor only (no critic weight gradients computed)
        a_info = self._loss_backward("actor", mb, self.cfg, noise=noise, inputs=self._actor_params)
        self.actor_opt.step()
        t_loss, t_info = temperature_loss(self.nets, a_info["entropy"], self.target_entropy)
        self.temp_opt.zero_grad(set_to_none=True)
        t_loss.backward()
        self.temp_opt.step()
        self.actor_steps += 1
        self.temp_steps += 1
        return {**a_info, **t_info, "temperature": self.nets.log_alpha.detach().exp()}

    def update(self, big_batch: Mapping[str, Any]) -> dict[str, float]:
        """G critic steps (fresh Z and a target EMA each), then one actor and one alpha step on
        the last minibatch. `big_batch`: obs, action, reward, next_obs, mask with G*N rows
        (with cameras also pixels/<name>, next_pixels/<name>: uint8 [G*N, H, W, C*S])."""
        if self.cameras:   # the actor takes the critic's current conv weights (ALGORITHMS 1.10)
            copy_trunks(self.nets.actor.encoder, self.nets.critic.encoder)
        batch = self._to_batch(big_batch)
        gen, rows = self.generator, batch["reward"].shape[0]
        slices = minibatch_slices(rows, self.batch_size)
        # All randomness up front: G target subsets from one sort, and a' ~ pi(.|s') for all G
        # minibatches in one actor pass (the actor is fixed until after the critic steps).
        members = sample_subsets(len(slices), self.cfg.critic_ensemble_size,
                                 self.cfg.critic_subset_size, gen, self.device)
        noise = torch.randn(rows + self.batch_size, self.act_dim, generator=gen,
                            device=self.device)
        with torch.no_grad(), self._autocast():
            next_action, next_log_prob = self.nets.actor.sample(batch["next_obs"],
                                                                noise=noise[:rows])
        batch.update(next_action=next_action.float(), next_log_prob=next_log_prob.float())
        stats = []
        for g, sl in enumerate(slices):
            info = self._critic_step({k: _rows(v, sl) for k, v in batch.items()}, members[g])
            stats.append(torch.stack(list(info.values())))
        last = {k: _rows(v, slices[-1]) for k, v in batch.items()}
        tail = self._actor_and_temperature_step(last, noise[rows:])
        self.updates += 1
        self.last_minibatch_slices, self.last_actor_slice = slices, slices[-1]
        critic_keys = list(info)
        stacked = torch.stack(stats).float()       # [G, k]: means over G, but q_max is a max
        per_step = stacked.mean(0)
        q_max = critic_keys.index("q_max")
        per_step[q_max] = stacked[:, q_max].max()
        # One device sync for all metrics.
        values = torch.cat([per_step, torch.stack(list(tail.values())).float()]).tolist()
        metrics = dict(zip(critic_keys + list(tail), values))
        metrics.update(utd_ratio=float(len(slices)), target_entropy=self.target_entropy)
        return metrics

    # ---------------------------------------------------------------------------- acting
    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        """Action(s) in [-1, 1] for obs [obs_dim] or [B, obs_dim] (with cameras: the observation
        dict, one or a batch): tanh(mu) or a sample."""
        actor = self.nets.actor
        policy = actor.mode if deterministic else lambda o: actor.sample(o, self.act_generator)[0]
        if self.cameras:
            return pixel_actions(policy, obs, self.cameras, self.obs_dim, self.device)
        return policy_actions(policy, obs, self.obs_dim, self.device)

    def export_actor(self) -> nn.Module:
        """CPU copy in eval mode: forward(obs [B, obs_dim], noise [B, act_dim]) -> action; with
        cameras forward(state, *camera images (uint8, config order), noise)."""
        if self.cameras:
            return PixelPolicyExport(self.nets.actor, self.cameras)
        return TanhGaussianExport(self.nets.actor)

    # ------------------------------------------------------------------- protocol, no-ops
    def feedback(self) -> dict[str, np.ndarray]:
        """Nothing: the "mixed" batch plan needs nothing back from an update."""
        return {}

    def pretrain_update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        raise RuntimeError("RLPD has no offline pre-training phase")

    def finish_pretraining(self) -> None:
        """No offline phase: nothing to finish."""

    # ---------------------------------------------------------------------------- state
    def _optimisers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic": self.critic_opt, "actor": self.actor_opt, "temperature": self.temp_opt}

    def _generators(self) -> dict[str, torch.Generator]:
        return {"update": self.generator, "act": self.act_generator}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for identical next updates (`base.pack_state`'s shape)."""
        return pack_state(self, self.nets, self._optimisers(),
                          {k: getattr(self, k) for k in _COUNTERS}, self._generators(),
                          {"cameras": [c.as_dict() for c in self.cameras]})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # Before the nets: a state with other cameras has other modules, and torch's error
        # about their keys would not say why.
        extra = state.get("extra") if isinstance(state, Mapping) else None
        if isinstance(extra, Mapping) and state.get("algorithm") == self.name:
            theirs, ours = extra.get("cameras", []), [c.as_dict() for c in self.cameras]
            if theirs != ours:
                raise ValueError(f"{self.name} state: cameras {theirs} do not match this "
                                 f"agent's {ours}")
        counters, _ = unpack_state(self, state, self.nets, self._optimisers(), self._generators())
        for k in _COUNTERS:
            setattr(self, k, counters[k])
