"""Network modules shared by RLPD, OBAC and OEMA (ALGORITHMS.md section 4). torch only.

Modules only; the pure functions they and the algorithms share live in `agents/ops.py`.

* `EnsembleMLP`: E independent MLPs stored as batched weights [E, in, out], so a layer is one
  batched matmul for all members (no Python loop over members). Per-member LayerNorm.
* `EnsembleCritic`: Q_i(s, a) for i = 1..E, returned as [E, B].
* `TanhGaussianActor`: a = tanh(u), u ~ N(mu(s), sigma(s)^2), log sigma clipped to [-20, 2],
  log pi(a|s) = log N(u; mu, sigma) - sum_j log(1 - tanh(u_j)^2) (`ops.tanh_log_det`).
* `DeterministicActor`: a = tanh(f(s)) (TD3).
* `StateValue` (OBAC's V_mu), `ConcatMLP` (OEMA's w_psi and xi_omega).
* export modules, forward(obs [B, obs_dim], noise [B, act_dim]) -> unit action:
  `TanhGaussianExport` (RLPD, OBAC), `BehaviourPolicyExport` (OEMA).

Initialisation everywhere (hidden layers and output heads): Xavier-uniform weights, zero biases,
as the official RLPD code (`default_init`).
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from o2o_robot.agents.ops import behaviour_action, tanh_log_det

Norm = Literal["none", "ln_all", "ln_first_tanh"]
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
LN_EPS = 1e-6  # Flax's LayerNorm epsilon, as in the official RLPD critic
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu, "elu": F.elu, "tanh": torch.tanh, "gelu": F.gelu, "silu": F.silu}


def _activation(act: str | Callable[[torch.Tensor], torch.Tensor]):
    if callable(act):
        return act
    if act not in _ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(_ACTIVATIONS)}, got {act!r}")
    return _ACTIVATIONS[act]


def _xavier_linear(in_dim: int, out_dim: int) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _mlp(in_dim: int, hidden_dims: Sequence[int], layer_norm: bool | Norm = False,
         ln_eps: float = LN_EPS) -> nn.Sequential:
    """Single-member trunk, final activation included:
    False/"none": [Linear -> ReLU] x L;  True/"ln_all": [Linear -> LayerNorm -> ReLU] x L;
    "ln_first_tanh": Linear -> LayerNorm -> tanh -> [Linear -> ELU] x (L-1)  (OBAC's actor)."""
    norm = layer_norm if isinstance(layer_norm, str) else ("ln_all" if layer_norm else "none")
    if norm not in ("none", "ln_all", "ln_first_tanh"):
        raise ValueError(f"layer_norm: expected a bool, 'ln_all' or 'ln_first_tanh', got {norm!r}")
    layers: list[nn.Module] = []
    for i, h in enumerate(hidden_dims):
        layers.append(_xavier_linear(in_dim, h))
        if norm == "ln_all" or (norm == "ln_first_tanh" and i == 0):
            layers.append(nn.LayerNorm(h, eps=ln_eps))
        if norm == "ln_first_tanh":
            layers.append(nn.Tanh() if i == 0 else nn.ELU())
        else:
            layers.append(nn.ReLU())
        in_dim = h
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------ ensembles
class _EnsembleMatVec(torch.autograd.Function):
    """y[e] = x[e] @ w[e] + b[e] for a single output unit (w [E, in, 1]).

    Written as x @ w it is E matrix-vector products, which CPU BLAS runs far below speed; as
    w^T @ x^T (one row times a matrix) and a hand-written backward it is about 3x faster.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        return torch.baddbmm(b, w.transpose(1, 2), x.transpose(1, 2)).transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w = ctx.saved_tensors
        g = grad.to(x.dtype)  # under bf16 autocast the output (and grad) is bf16, x is fp32
        grad_x = g * w.transpose(1, 2).to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(g.transpose(1, 2), x).transpose(1, 2).to(w.dtype)
        return grad_x, grad_w, g.sum(dim=1, keepdim=True).to(w.dtype)


class EnsembleLinear(nn.Module):
    """E independent affine maps: y[e] = x[e] @ W[e] + b[e], W [E, in, out], b [E, 1, out]."""

    def __init__(self, in_dim: int, out_dim: int, ensemble_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, out_dim))
        # Xavier-uniform per member (nn.init's fan rule would count E into the fans of a 3-D tensor).
        bound = math.sqrt(6.0 / (in_dim + out_dim))
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        w, b = self.weight, self.bias
        if members is not None:
            w, b = w.index_select(0, members), b.index_select(0, members)
        if x.dim() == 2:  # shared input: one stride-0 view, no copy per member
            x = x.unsqueeze(0).expand(w.shape[0], -1, -1)
        elif w.shape[-1] == 1:
            return _EnsembleMatVec.apply(x, w, b)
        # bmm + add rather than baddbmm: baddbmm first copies the broadcast bias into the
        # output; under torch.compile the add fuses into the next (LayerNorm) kernel instead.
        return torch.bmm(x, w) + b


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the feature axis with a separate affine (scale, shift) [E, 1, h] per member."""

    def __init__(self, dim: int, ensemble_size: int, eps: float = LN_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, dim))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, dim))
        # Constant unit affine for F.layer_norm: its CPU kernel is ~2x faster with an affine
        # than without one. The per-member affine is applied after it.
        self.register_buffer("_one", torch.ones(dim), persistent=False)
        self.register_buffer("_zero", torch.zeros(dim), persistent=False)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        w, b = self.weight, self.bias
        if members is not None:
            w, b = w.index_select(0, members), b.index_select(0, members)
        normed = F.layer_norm(x, x.shape[-1:], self._one, self._zero, self.eps)
        return torch.addcmul(b, normed, w)


class EnsembleMLP(nn.Module):
    """E independent MLPs evaluated together. Input [B, in] (shared) or [E, B, in]; output [E, B, out].

    norm:
      "none":          [Linear -> act] x L -> Linear
      "ln_all":        [Linear -> LayerNorm -> act] x L -> Linear          (RLPD critic)
      "ln_first_tanh": Linear -> LayerNorm -> tanh -> [Linear -> act] x (L-1) -> Linear  (OBAC)
    `members` (a LongTensor of member indices) evaluates only that subset, output [len(members), B, out].
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, ensemble_size: int,
                 norm: Norm = "none", activation: str | Callable = "relu", ln_eps: float = LN_EPS):
        super().__init__()
        if norm not in ("none", "ln_all", "ln_first_tanh"):
            raise ValueError(f"norm: expected 'none', 'ln_all' or 'ln_first_tanh', got {norm!r}")
        if not hidden_dims:
            raise ValueError("hidden_dims: expected at least one hidden layer")
        self.ensemble_size, self.norm = int(ensemble_size), norm
        act = _activation(activation)
        dims = [in_dim, *hidden_dims]
        self.linears = nn.ModuleList(EnsembleLinear(i, o, ensemble_size)
                                     for i, o in zip(dims[:-1], dims[1:]))
        n_ln = {"none": 0, "ln_all": len(hidden_dims), "ln_first_tanh": 1}[norm]
        self.norms = nn.ModuleList(EnsembleLayerNorm(h, ensemble_size, ln_eps)
                                   for h in hidden_dims[:n_ln])
        self._acts = [torch.tanh if norm == "ln_first_tanh" and i == 0 else act
                      for i in range(len(hidden_dims))]
        self.head = EnsembleLinear(dims[-1], out_dim, ensemble_size)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        for i, (linear, act) in enumerate(zip(self.linears, self._acts)):
            x = linear(x, members)
            if i < len(self.norms):
                x = self.norms[i](x, members)
            # In place for ReLU: its input is always a fresh temporary here, and this saves a
            # [E, B, h] allocation per layer.
            x = x.relu_() if act is F.relu else act(x)
        return self.head(x, members)


class EnsembleCritic(nn.Module):
    """Q_i(s, a), i = 1..E, from concat(s, a); returns [E, B] (or [len(members), B])."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: Sequence[int], ensemble_size: int,
                 layer_norm: bool | Norm = True, activation: str | Callable = "relu",
                 ln_eps: float = LN_EPS, encoder: nn.Module | None = None):
        super().__init__()
        norm = layer_norm if isinstance(layer_norm, str) else ("ln_all" if layer_norm else "none")
        self.obs_dim, self.act_dim, self.ensemble_size = obs_dim, act_dim, int(ensemble_size)
        # `encoder` (pixels: agents/encoders.py ObsEncoder) maps the observation to obs_dim
        # features first; it is one for all members, trained by the critic loss.
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.net = EnsembleMLP(obs_dim + act_dim, hidden_dims, 1, ensemble_size, norm, activation,
                               ln_eps)

    def forward(self, obs, action: torch.Tensor,
                members: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(torch.cat([self.encoder(obs), action], dim=-1), members).squeeze(-1)


# ---------------------------------------------------------------------------------------- actors
class TanhGaussianActor(nn.Module):
    """pi(a|s): a = tanh(u), u ~ N(mu(s), exp(log_std(s))^2); log_std clipped to [-20, 2].

    Two linear heads (mean, log std) on a trunk (`_mlp`): RLPD uses the plain ReLU trunk
    (layer_norm=False), as the official `TanhNormal`; OBAC uses "ln_first_tanh".
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: Sequence[int],
                 layer_norm: bool | Norm = False, ln_eps: float = LN_EPS,
                 encoder: nn.Module | None = None):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        # `encoder` (pixels): observation dict -> obs_dim features, before the trunk.
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.trunk = _mlp(obs_dim, hidden_dims, layer_norm, ln_eps)
        self.mu_head = _xavier_linear(hidden_dims[-1], act_dim)
        self.log_std_head = _xavier_linear(hidden_dims[-1], act_dim)

    def forward(self, obs) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log_std), each [B, act_dim], log_std clipped to [-20, 2]."""
        h = self.trunk(self.encoder(obs))
        return self.mu_head(h), self.log_std_head(h).clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised (action, log pi(action|obs)); `noise` (standard normal) may be given."""
        mu, log_std = self(obs)
        if noise is None:
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        u = mu + log_std.exp() * noise
        # log N(u; mu, sigma) written with the standard-normal draw: no division by sigma.
        log_normal = (-0.5 * noise.square() - log_std).sum(-1) - 0.5 * math.log(2 * math.pi) * self.act_dim
        return torch.tanh(u), log_normal - tanh_log_det(u)

    def mode(self, obs) -> torch.Tensor:
        """The evaluation action tanh(mu(s))."""
        return torch.tanh(self(obs)[0])

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor | None = None, *,
                 pre_tanh: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
        """log pi(a|s) of a given action in (-1, 1) (clipped to +-(1-eps)) or pre-tanh value u."""
        if (action is None) == (pre_tanh is None):
            raise ValueError("log_prob: give exactly one of action or pre_tanh")
        u = pre_tanh if pre_tanh is not None else torch.atanh(action.clamp(-1 + eps, 1 - eps))
        mu, log_std = self(obs)
        z = (u - mu) * torch.exp(-log_std)
        log_normal = (-0.5 * z.square() - log_std).sum(-1) - 0.5 * math.log(2 * math.pi) * self.act_dim
        return log_normal - tanh_log_det(u)


class DeterministicActor(nn.Module):
    """a = tanh(f(s)), f a ReLU MLP (TD3's actor)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dims: Sequence[int],
                 layer_norm: bool | Norm = False, ln_eps: float = LN_EPS):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.trunk = _mlp(obs_dim, hidden_dims, layer_norm, ln_eps)
        self.head = _xavier_linear(hidden_dims[-1], act_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.trunk(obs)))


# ----------------------------------------------------------------------- value, concat MLP
class StateValue(nn.Module):
    """V(s) as an ensemble of one EnsembleMLP member: [B, obs_dim] -> [B] (OBAC's V_mu)."""

    def __init__(self, obs_dim: int, hidden_dims: Sequence[int], norm: Norm = "none",
                 activation: str | Callable = "relu", ln_eps: float = LN_EPS):
        super().__init__()
        self.obs_dim = obs_dim
        self.net = EnsembleMLP(obs_dim, hidden_dims, 1, 1, norm, activation, ln_eps)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)[0, :, 0]


_OUTPUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x, "relu": F.relu, "tanh": torch.tanh}


class ConcatMLP(nn.Module):
    """y = out_scale * out(head(trunk(concat(inputs)))): one ReLU MLP on concatenated inputs.

    OEMA's density-ratio net w_psi(s, a) >= 0 (out="relu") and its perturbation net
    xi_omega(s, a) = Phi * tanh(f_omega(s, a)) (out="tanh", out_scale=Phi, a_max = 1).
    Xavier-uniform weights and zero biases, as every shared piece here.
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, out: str = "none",
                 out_scale: float = 1.0):
        super().__init__()
        if out not in _OUTPUTS:
            raise ValueError(f"out: expected one of {sorted(_OUTPUTS)}, got {out!r}")
        if not hidden_dims:
            raise ValueError("hidden_dims: expected at least one hidden layer")
        self.in_dim, self.out_dim, self.out, self.out_scale = in_dim, out_dim, out, float(out_scale)
        self.trunk = _mlp(in_dim, hidden_dims)
        self.head = _xavier_linear(hidden_dims[-1], out_dim)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        x = torch.cat(inputs, dim=-1) if len(inputs) > 1 else inputs[0]
        y = _OUTPUTS[self.out](self.head(self.trunk(x)))
        return y * self.out_scale if self.out_scale != 1.0 else y


# -------------------------------------------------------------------------------- export
def _frozen(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).cpu().eval().requires_grad_(False)


class TanhGaussianExport(nn.Module):
    """Exportable sampler: forward(obs [B, obs_dim], noise [B, act_dim]) = tanh(mu + sigma * noise).

    A CPU deep copy in eval mode with gradients off; only ONNX-friendly ops (Linear, ReLU, clamp,
    exp, tanh). noise = 0 gives the evaluation action tanh(mu).
    """

    def __init__(self, actor: TanhGaussianActor):
        super().__init__()
        self.actor = _frozen(actor)
        self.obs_dim, self.act_dim = actor.obs_dim, actor.act_dim
        self.eval()

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        mu, log_std = self.actor(obs)
        return torch.tanh(mu + log_std.exp() * noise)


class BehaviourPolicyExport(nn.Module):
    """Exportable OEMA behaviour policy: forward(obs, noise) = clip(pi(s) + xi(s, pi(s)) +
    explore_noise * noise, -1, 1) for a row whose noise is not all zeros; a row of zero noise
    gives the deterministic pi(s), OEMA's evaluation policy, as the policy contract says of zero
    noise (DESIGN.md). Standard-normal draws are never all zero, so exploring rows always carry
    xi. With `perturb=None` it is pi(s) for every row (the noise input stays in the graph,
    multiplied by 0): OEMA's warm-up policy. CPU deep copies in eval mode, gradients off."""

    def __init__(self, actor: DeterministicActor, perturb: ConcatMLP | None, explore_noise: float):
        super().__init__()
        self.actor = _frozen(actor)
        self.perturb = _frozen(perturb) if perturb is not None else None
        self.explore_noise = float(explore_noise)
        self.obs_dim, self.act_dim = actor.obs_dim, actor.act_dim
        self.eval()

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        action = self.actor(obs)
        if self.perturb is None:
            return action + 0.0 * noise
        exploring = (noise.abs().amax(dim=-1, keepdim=True) > 0).to(action.dtype)   # [B, 1]
        return torch.lerp(action, behaviour_action(self.perturb, obs, action, noise,
                                                   self.explore_noise), exploring)
