"""Learning algorithms (torch only: no rclpy, zarr, onnxruntime or mujoco).

`ALGORITHMS` is the one explicit registry from a config's `algorithm.name` to its agent class;
`build_agent` builds the configured agent. torch is imported only when an agent is built.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from o2o_robot.config import O2OConfig


def resolve_device(device: Any = "auto") -> str:
    """"auto" -> "cuda" when a GPU is available, else "cpu"; anything else is returned as given."""
    import torch
    if str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but torch sees no CUDA device")
    return str(device)


def _registry() -> dict[str, type]:
    from o2o_robot.agents.obac import OBAC
    from o2o_robot.agents.oema import OEMA
    from o2o_robot.agents.rlpd import RLPD
    return {"rlpd": RLPD, "obac": OBAC, "oema": OEMA}


def __getattr__(name: str):
    # Lazy `ALGORITHMS`: `import o2o_robot.agents` stays cheap (no torch) until it is used.
    if name == "ALGORITHMS":
        return _registry()
    raise AttributeError(f"module 'o2o_robot.agents' has no attribute {name!r}")


def build_agent(cfg: "O2OConfig", obs_dim: int, act_dim: int, device: Any = "cpu", seed: int = 0):
    """The agent named by `cfg.algorithm.name`, sized for obs_dim/act_dim, on `device`."""
    algorithms = _registry()
    name = cfg.algorithm.name
    if name not in algorithms:
        raise ValueError(f"algorithm.name: expected one of {sorted(algorithms)}, got {name!r}")
    return algorithms[name](obs_dim, act_dim, cfg.algorithm, batch_size=cfg.sampler.batch_size,
                            device=resolve_device(device), compile=cfg.learner.compile,
                            bf16=cfg.learner.bf16, seed=seed)
