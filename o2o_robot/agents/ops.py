"""Pure functions shared by the algorithms (ALGORITHMS.md section 4). torch only, no modules.

* targets: `polyak_update` (theta_bar <- (1 - tau) theta_bar + tau theta);
* ensemble reducers over the member axis of q [E, B]: `subset_min` (RLPD's min over a random
  subset of Z members, `sample_subsets`), `ensemble_mean`, `ensemble_min`, `q_upper_bound`
  (OEMA's mean + k std);
* losses and densities: `expectile_loss` (IQL), `tanh_log_det`, `log_density_pretanh` (OBAC);
* behaviour: `behaviour_action` (OEMA's a_E, shared by its loss and its export module);
* where data enters an agent: `batch_tensors` (shapes checked), `minibatch_slices` (the G
  contiguous minibatches of one update), `policy_actions` (the body of every `act`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_LOG2 = math.log(2.0)
LOG_DENSITY_MIN, LOG_DENSITY_MAX = -20.0, 2.0   # OBAC's clamp of the behaviour log-density


# ------------------------------------------------------------------------------------ targets
@torch.no_grad()
def polyak_update(target: nn.Module | Iterable[torch.Tensor],
                  online: nn.Module | Iterable[torch.Tensor], tau: float) -> None:
    """theta_bar <- (1 - tau) theta_bar + tau theta, in place, one fused foreach op."""
    t = list(target.parameters()) if isinstance(target, nn.Module) else list(target)
    o = list(online.parameters()) if isinstance(online, nn.Module) else list(online)
    if len(t) != len(o):
        raise ValueError(f"polyak_update: {len(t)} target vs {len(o)} online tensors")
    torch._foreach_lerp_(t, o, float(tau))


# ----------------------------------------------------------------------------------- reducers
def sample_subsets(num: int, ensemble_size: int, subset_size: int,
                   generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """`num` independent random subsets of {0..E-1} of size Z, without replacement: [num, Z].

    argsort of i.i.d. uniforms is a uniform random permutation per row, so all `num` subsets
    (one per critic step) come from one random draw and one sort.
    """
    if not 1 <= subset_size <= ensemble_size:
        raise ValueError(f"subset_size: expected 1..{ensemble_size}, got {subset_size}")
    keys = torch.rand(num, ensemble_size, generator=generator, device=device)
    return keys.argsort(dim=1)[:, :subset_size]


def subset_min(q: torch.Tensor, z: int, generator: torch.Generator | None = None,
               members: torch.Tensor | None = None) -> torch.Tensor:
    """min over a fresh random subset of Z members of q [E, B] -> [B] (or over given `members`)."""
    if members is None:
        members = sample_subsets(1, q.shape[0], z, generator, q.device)[0]
    return q.index_select(0, members).min(dim=0).values


def ensemble_mean(q: torch.Tensor) -> torch.Tensor:
    """mean over members of q [E, B] -> [B] (RLPD's actor objective)."""
    return q.mean(dim=0)


def ensemble_min(q: torch.Tensor) -> torch.Tensor:
    """min over all members of q [E, B] -> [B] (clipped double Q for E = 2)."""
    return q.min(dim=0).values


def q_upper_bound(q: torch.Tensor, k: float) -> torch.Tensor:
    """Optimistic value mean_i Q_i + k * std_i Q_i of q [E, B] -> [B] (OEMA's Q_UB, k = beta_UB).

    The std is the population one; for the twin critic it is |Q1 - Q2| / 2, computed so (as the
    official code does) because its gradient stays finite where Q1 = Q2."""
    if q.shape[0] == 2:
        spread = (q[0] - q[1]).abs() / 2.0
    else:
        spread = q.std(dim=0, correction=0)
    return q.mean(dim=0) + k * spread


# ------------------------------------------------------------------------ losses and densities
def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean(|tau - 1[u < 0]| * u^2) of u = target - prediction (IQL); tau = 0.5 is MSE / 2."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.square()).mean()


def tanh_log_det(u: torch.Tensor) -> torch.Tensor:
    """sum_j log(1 - tanh(u_j)^2) = sum_j 2 (log 2 - u_j - softplus(-2 u_j)); exact and stable."""
    return (2.0 * (_LOG2 - u - F.softplus(-2.0 * u))).sum(-1)


def log_density_pretanh(actor: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                        obs: torch.Tensor, action: torch.Tensor, low: float = LOG_DENSITY_MIN,
                        high: float = LOG_DENSITY_MAX) -> torch.Tensor:
    """Per-dimension log N(a_j; mu_j(s), sigma_j(s)^2) of a unit action a under the pre-tanh
    Gaussian of `actor(obs) -> (mu, log_std)` (no atanh, no tanh Jacobian), clamped to
    [low, high]: [B, act_dim].

    OBAC's behaviour term (official `get_log_density` + clamp). The clamp passes no gradient
    where it is active: once a dimension's log-density exceeds `high`, the term stops shrinking
    that dimension's sigma."""
    mu, log_std = actor(obs)
    z = (action - mu) * torch.exp(-log_std)
    log_density = -0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)
    return log_density.clamp(low, high)


def behaviour_action(perturb: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     obs: torch.Tensor, action: torch.Tensor, noise: torch.Tensor,
                     explore_noise: float) -> torch.Tensor:
    """a_E = clip(a + xi(s, a) + explore_noise * noise, -1, 1) with a = pi(s) (OEMA)."""
    return (action + perturb(obs, action) + explore_noise * noise).clamp(-1.0, 1.0)


# ------------------------------------------------------------------ where data enters an agent
def batch_tensors(big_batch: Mapping[str, Any], keys: Sequence[str], obs_dim: int, act_dim: int,
                  device: torch.device | str) -> dict[str, torch.Tensor]:
    """`keys` of a batch (numpy arrays or tensors) as float32 tensors on `device`, with shapes
    checked where data enters an agent: a key ending in "obs" (obs, next_obs, off_obs, ...)
    [B, obs_dim], one ending in "action" [B, act_dim], any other [B]."""
    missing = [k for k in keys if k not in big_batch]
    if missing:
        raise KeyError(f"big batch: missing key(s) {', '.join(missing)}")
    out = {k: torch.as_tensor(big_batch[k] if torch.is_tensor(big_batch[k])
                              else np.asarray(big_batch[k]), dtype=torch.float32, device=device)
           for k in keys}
    rows = out[keys[0]].shape[0] if out[keys[0]].dim() else 0
    for k, v in out.items():
        want = ((rows, obs_dim) if k.endswith("obs") else
                (rows, act_dim) if k.endswith("action") else (rows,))
        if tuple(v.shape) != want:
            raise ValueError(f"big batch: {k} has shape {list(v.shape)}, expected {list(want)}")
    return out


def minibatch_slices(rows: int, batch_size: int) -> list[slice]:
    """The G contiguous minibatches [g*N, (g+1)*N) of a big batch of G*N rows."""
    if batch_size <= 0 or rows <= 0 or rows % batch_size:
        raise ValueError(f"big batch: {rows} rows is not a positive multiple of batch_size "
                         f"{batch_size}")
    return [slice(g * batch_size, (g + 1) * batch_size) for g in range(rows // batch_size)]


@torch.no_grad()
def policy_actions(policy: Callable[[torch.Tensor], torch.Tensor], obs: Any, obs_dim: int,
                   device: torch.device | str) -> np.ndarray:
    """`policy` applied to obs [obs_dim] or [B, obs_dim] (array-like), as a numpy array of the
    same leading shape: the `act` of every agent."""
    o = torch.as_tensor(np.asarray(obs, np.float32), device=device)
    single = o.dim() == 1
    o = o[None] if single else o
    if o.dim() != 2 or o.shape[1] != obs_dim:
        raise ValueError(f"act: obs must be [{obs_dim}] or [B, {obs_dim}], "
                         f"got {list(np.shape(obs))}")
    a = policy(o).cpu().numpy()
    return a[0] if single else a
