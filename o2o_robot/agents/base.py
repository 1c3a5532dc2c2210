"""The `Agent` protocol every algorithm implements, and the one registry of algorithms.

A caller (learning loop, batch plan, checkpoint) talks to an agent through `Agent` only: every
member exists on every algorithm, so nothing is probed with getattr/hasattr. Algorithms differ in
data, not in interface:

* `batch_plan` names how the agent is fed: "mixed" (RLPD, OBAC: the exact demo/online mix per
  minibatch) or "balanced_replay" (OEMA: priorities and the B_off/B_on/B_r keys); after each
  `update`, `feedback()` returns what that plan needs back ({} or {"priorities": [G*N]}).
* an agent without an offline pre-training phase has pretrain_steps = pretrain_steps_done = 0,
  pretrain_finished = True, a no-op `finish_pretraining` and a `pretrain_update` that raises.
* `state_dict()` has one shape for all (`pack_state` / `unpack_state` below).

This module imports neither torch nor the algorithms at import time, so `import o2o_robot.agents`
stays cheap; `registry()` imports the algorithm modules on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from o2o_robot.config import O2OConfig
    from o2o_robot.spaces import CameraSpec

BATCH_PLANS = ("mixed", "balanced_replay")
STATE_KEYS = ("algorithm", "obs_dim", "act_dim", "batch_size", "nets", "optimisers", "counters",
              "generators", "extra")


@runtime_checkable
class Agent(Protocol):
    """One learning algorithm, built by `build_agent` and driven one env step at a time."""

    name: str                   # registry key: "rlpd" | "obac" | "oema"
    obs_dim: int
    act_dim: int
    batch_size: int             # N, rows per minibatch; an update takes G*N rows
    device: "torch.device"
    batch_plan: str             # one of BATCH_PLANS
    pretrain_steps: int         # offline pre-training steps configured (0 without a phase)
    pretrain_steps_done: int    # 0 without a phase
    pretrain_finished: bool     # True without a phase
    cameras: tuple              # CameraSpecs of the image inputs (spaces.py); () = vectors only

    def act(self, obs: Any, deterministic: bool = False) -> "np.ndarray":
        """Unit action(s) in [-1, 1] for obs [obs_dim] or [B, obs_dim]; with cameras an
        observation dict {"state", camera name: uint8 [(B,) H, W, C*S]}."""

    def update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One env-step update on a big batch of G*N rows (G minibatches); returns metrics."""

    def feedback(self) -> dict[str, "np.ndarray"]:
        """What the batch plan needs from the last update: {} or {"priorities": [G*N]}."""

    def pretrain_update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One offline pre-training step; RuntimeError naming the algorithm without a phase."""

    def finish_pretraining(self) -> None:
        """End the offline phase (idempotent; a no-op without a phase)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything for identical next updates, in the shape of `pack_state`."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict()`; ValueError if it is another algorithm's or other dims."""

    def export_actor(self) -> "torch.nn.Module":
        """CPU module: forward(obs [B, obs_dim], noise [B, act_dim]) -> unit action; with
        cameras forward(state [B, obs_dim], *images (config order), noise)."""


# ------------------------------------------------------------------------------------ state
def pack_state(agent: Agent, nets: "torch.nn.Module", optimisers: Mapping[str, Any],
               counters: Mapping[str, int], generators: Mapping[str, "torch.Generator"],
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The one state_dict shape: {"algorithm", "obs_dim", "act_dim", "batch_size", "nets",
    "optimisers": {name: state}, "counters", "generators": {name: RNG state}, "extra"}.
    Tensors are the live ones (as nn.Module.state_dict): save or copy before updating again."""
    return {"algorithm": agent.name, "obs_dim": agent.obs_dim, "act_dim": agent.act_dim,
            "batch_size": agent.batch_size, "nets": nets.state_dict(),
            "optimisers": {k: opt.state_dict() for k, opt in optimisers.items()},
            "counters": {k: int(v) for k, v in counters.items()},
            "generators": {k: gen.get_state() for k, gen in generators.items()},
            "extra": dict(extra or {})}


def unpack_state(agent: Agent, state: Mapping[str, Any], nets: "torch.nn.Module",
                 optimisers: Mapping[str, Any], generators: Mapping[str, "torch.Generator"]
                 ) -> tuple[dict[str, int], dict[str, Any]]:
    """Check `state` fits `agent` (ValueError naming what does not), load nets, optimisers and
    generators into the given objects; return (counters, extra) for the agent to apply."""
    if not isinstance(state, Mapping):
        raise ValueError(f"{agent.name} state: expected a dict, got {type(state).__name__}")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise ValueError(f"{agent.name} state: missing key(s) {', '.join(missing)} (expected "
                         f"the state_dict of an agent: {', '.join(STATE_KEYS)})")
    if state["algorithm"] != agent.name:
        raise ValueError(f"{agent.name} state: it is the state of a {state['algorithm']!r} agent")
    dims = (state["obs_dim"], state["act_dim"])
    if dims != (agent.obs_dim, agent.act_dim):
        raise ValueError(f"{agent.name} state: obs/act dims {dims} do not match this agent's "
                         f"{(agent.obs_dim, agent.act_dim)}")
    for group, want in (("optimisers", optimisers), ("generators", generators)):
        if set(state[group]) != set(want):
            raise ValueError(f"{agent.name} state: {group} {sorted(state[group])}, expected "
                             f"{sorted(want)}")
    nets.load_state_dict(state["nets"])
    for k, opt in optimisers.items():
        opt.load_state_dict(state["optimisers"][k])
    for k, gen in generators.items():
        gen.set_state(state["generators"][k].cpu())
    return {k: int(v) for k, v in state["counters"].items()}, dict(state["extra"])


# --------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type] = {}


def registry() -> dict[str, type]:
    """The one registry: algorithm name -> agent class (imported on first call)."""
    if not _REGISTRY:
        from o2o_robot.agents.obac import OBAC
        from o2o_robot.agents.oema import OEMA
        from o2o_robot.agents.rlpd import RLPD
        _REGISTRY.update({"rlpd": RLPD, "obac": OBAC, "oema": OEMA})
    return dict(_REGISTRY)


def resolve_device(device: Any = "auto") -> str:
    """"auto" -> "cuda" when a GPU is available, else "cpu"; anything else is returned as given."""
    import torch
    if str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but torch sees no CUDA device")
    return str(device)


PIXEL_ALGORITHMS = ("rlpd",)   # the algorithms that take camera observations


def build_agent(cfg: "O2OConfig", obs_dim: int, act_dim: int, device: Any = "cpu",
                seed: int = 0, cameras: "Sequence[CameraSpec] | None" = None) -> Agent:
    """The agent named by `cfg.algorithm.name`, sized for obs_dim/act_dim (the state vector),
    on `device`. `cameras` None: those of `cfg.robot` (`spaces.camera_specs`). OBAC and OEMA
    refuse cameras (ValueError): only RLPD has the pixel variant (ALGORITHMS.md 1.10)."""
    from o2o_robot.spaces import camera_specs
    algorithms = registry()
    name = cfg.algorithm.name
    if name not in algorithms:
        raise ValueError(f"algorithm.name: expected one of {sorted(algorithms)}, got {name!r}")
    cameras = tuple(camera_specs(cfg.robot) if cameras is None else cameras)
    if cameras and name not in PIXEL_ALGORITHMS:
        raise ValueError(f"algorithm.name: {name} does not take camera observations "
                         f"(robot.cameras has {len(cameras)}); use one of {list(PIXEL_ALGORITHMS)}")
    extra = {"cameras": cameras} if cameras else {}
    return algorithms[name](obs_dim, act_dim, cfg.algorithm, batch_size=cfg.sampler.batch_size,
                            device=resolve_device(device), compile=cfg.learner.compile,
                            bf16=cfg.learner.bf16, seed=seed, **extra)
