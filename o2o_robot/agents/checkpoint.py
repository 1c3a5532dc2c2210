"""Agent checkpoints: one torch file holding the agent's full state and the config that built it.

Contents (format 2): {"format": 2, "algorithm": cfg.algorithm.name, "config": the resolved config
as JSON-able data, "obs_dim", "act_dim", "agent": agent.state_dict(), **extra}, the agent state
in the one shape every `Agent` uses (`agents/base.py`, `pack_state`). Format 1 held each
algorithm's own state layout; it is refused with a message, not converted. Writing is atomic
(a temporary file in the same directory, fsync, then os.replace), so a crash mid-save leaves the
previous checkpoint intact and never a torn one.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from o2o_robot.agents.base import Agent
from o2o_robot.config import O2OConfig
from o2o_robot.fsutil import atomic_write_bytes

FORMAT = 2
_RESERVED = ("format", "algorithm", "config", "obs_dim", "act_dim", "agent")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit; the message names the file."""


def save_checkpoint(path: str | Path, agent: Agent, cfg: O2OConfig, /, **extra: Any) -> Path:
    """Write `agent`'s state and `cfg` to `path` atomically; `extra` entries are stored beside.

    `extra` values must be plain data (numbers, strings, lists, dicts) or tensors: the loader
    uses `torch.load(weights_only=True)`, which refuses arbitrary pickled objects.
    """
    clash = [k for k in extra if k in _RESERVED]
    if clash:
        raise ValueError(f"save_checkpoint: extra key(s) {clash} are reserved")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": FORMAT, "algorithm": cfg.algorithm.name, "config": cfg.model_dump(mode="json"),
            "obs_dim": agent.obs_dim, "act_dim": agent.act_dim, "agent": agent.state_dict(), **extra}
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[Agent, O2OConfig, dict]:
    """(agent, cfg, extra) from a file written by `save_checkpoint`; CheckpointError if unusable."""
    from o2o_robot.agents import build_agent, resolve_device  # lazy: registry imports all algorithms

    path, device = Path(path), resolve_device(device)
    try:
        # weights_only: the file holds tensors and plain data only, so nothing is executed.
        blob = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                              f"{exc})") from None
    if not isinstance(blob, dict) or "format" not in blob:
        raise CheckpointError(f"{path}: not an o2o_robot checkpoint (no 'format' key)")
    if blob["format"] == 1:
        raise CheckpointError(f"{path}: checkpoint format 1 (per-algorithm agent state); this "
                              f"version reads format {FORMAT} only (the common Agent state_dict): "
                              f"re-run training or pre-training to write a format-{FORMAT} file")
    if blob["format"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {blob['format']!r}, this version reads "
                              f"format {FORMAT}")
    missing = [k for k in _RESERVED if k not in blob]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    try:
        cfg = O2OConfig.model_validate(blob["config"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: stored config no longer validates: {exc}") from None
    if cfg.algorithm.name != blob["algorithm"]:
        raise CheckpointError(f"{path}: algorithm {blob['algorithm']!r} does not match its config "
                              f"({cfg.algorithm.name!r})")
    agent = build_agent(cfg, int(blob["obs_dim"]), int(blob["act_dim"]), device=device)
    try:
        agent.load_state_dict(blob["agent"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: agent state does not fit a {blob['algorithm']} agent with "
                              f"obs_dim={blob['obs_dim']}, act_dim={blob['act_dim']}: {exc}") from None
    extra = {k: v for k, v in blob.items() if k not in _RESERVED}
    return agent, cfg, extra
