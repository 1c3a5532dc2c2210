"""Back ends of the policy CLI commands (`o2o-robot policy check|export`), as plain functions.

`check_policy` needs only numpy + onnxruntime unless a checkpoint is given (then torch), so it
runs on the robot computer; `export_checkpoint` is the learner-side path (torch).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import O2OConfig, RobotSpec, load_config
from .runtime import PolicyRejected, measure_latency, policy_from_file, validate_policy

N_PARITY_OBS = 256


def _robot_spec(robot: RobotSpec | O2OConfig | str | Path) -> RobotSpec:
    if isinstance(robot, RobotSpec):
        return robot
    if isinstance(robot, O2OConfig):
        return robot.robot
    return load_config(robot).robot


def _as_array(value: Any) -> np.ndarray | None:
    """Checkpoint extras may hold numpy arrays, lists or torch tensors."""
    if value is None:
        return None
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, np.float64)


def _load_checkpoint(path: str | Path):
    """(agent, cfg, extra) via `o2o_robot.agents.checkpoint.load_checkpoint`, imported lazily so
    that `check_policy` without a checkpoint needs no torch."""
    from ..agents.checkpoint import load_checkpoint  # noqa: PLC0415
    return load_checkpoint(path)


def check_policy(path: str | Path, *, checkpoint: str | Path | None = None,
                 robot: RobotSpec | O2OConfig | str | Path | None = None) -> dict:
    """Validate an `.onnx` policy file and describe it.

    Checked against `robot` (a RobotSpec, a config or a config file) when given, else against
    the spec in the file's own metadata. Returns spec, metadata, opset, provider, single-call
    latency (p50/p99/max, microseconds) and, with `checkpoint`, the max abs error against that
    checkpoint's torch actor. Raises `PolicyRejected` for a file that must not drive the robot.
    """
    policy = policy_from_file(path, provider="cpu")
    if robot is not None:
        spec = _robot_spec(robot)
        obs_dim, act_dim = spec.obs_dim, spec.act_dim
        low, high, against = spec.action.low, spec.action.high, "robot config"
    else:
        obs_dim, act_dim = policy.obs_dim, policy.act_dim
        low, high = policy.bounds or (None, None)
        against = ("policy metadata" if policy.bounds is not None
                   else "graph only (no spec in the metadata: bounds unchecked)")
    validate_policy(policy, obs_dim=obs_dim, act_dim=act_dim, action_low=low, action_high=high)
    latency_us = measure_latency(policy, n=2000) * 1e6
    report = {
        "path": str(path), "checked_against": against, "opset": policy.opset,
        "provider": policy.provider, "obs_dim": policy.obs_dim, "act_dim": policy.act_dim,
        "spec": policy.spec, "metadata": dict(policy.metadata),
        "latency_us": {"p50": float(np.percentile(latency_us, 50)),
                       "p99": float(np.percentile(latency_us, 99)), "max": float(latency_us.max())},
    }
    report["parity"] = ({"skipped": "no checkpoint given"} if checkpoint is None
                        else _parity_vs_checkpoint(policy, checkpoint))
    return report


def _parity_vs_checkpoint(policy, checkpoint: str | Path) -> dict:
    try:
        agent, cfg, extra = _load_checkpoint(checkpoint)
    except ImportError as err:
        return {"skipped": f"cannot load checkpoints here ({err})"}
    from .export import PARITY_TOL, PolicyGraph, parity_error, parity_observations  # noqa: PLC0415

    action = cfg.robot.action
    low, high = np.asarray(action.low, np.float64), np.asarray(action.high, np.float64)
    if (policy.obs_dim, policy.act_dim) != (cfg.robot.obs_dim, cfg.robot.act_dim):
        raise PolicyRejected(f"obs dim: policy is {policy.obs_dim}->{policy.act_dim}, checkpoint "
                             f"is {cfg.robot.obs_dim}->{cfg.robot.act_dim}")
    mean, std = _as_array(extra.get("obs_mean")), _as_array(extra.get("obs_std"))
    graph = PolicyGraph(agent.export_actor().to("cpu").eval(), low, high, mean, std).eval()
    rng = np.random.default_rng(0)
    obs = parity_observations(policy.obs_dim, None, mean, std, rng)
    errors = {}
    for label, noise in (("deterministic", np.zeros((len(obs), policy.act_dim), np.float32)),
                         ("noisy", rng.standard_normal((len(obs), policy.act_dim)).astype(np.float32))):
        errors[label] = parity_error(policy, graph, obs, noise, (high - low) / 2.0)
    return {"max_abs_error": errors, "tolerance": PARITY_TOL,
            "ok": all(e <= PARITY_TOL for e in errors.values()),
            "checkpoint_policy_version": extra.get("policy_version"),
            "file_policy_version": policy.version}


def export_checkpoint(checkpoint_path: str | Path, out_path: str | Path) -> dict:
    """Export a checkpoint's actor to a validated `.onnx` file (written atomically).

    Bounds from `cfg.robot.action`, algorithm from `cfg.algorithm.name`, version from
    `extra["policy_version"]` (0 if absent), config hash from `cfg.config_hash()`, observation
    normalisation from `extra["obs_mean"]/["obs_std"]` when present. Raises `ExportError`.
    """
    from .export import export_policy, write_policy  # noqa: PLC0415 - torch only on this path

    agent, cfg, extra = _load_checkpoint(checkpoint_path)
    robot, info = cfg.robot, {}
    version = int(extra.get("policy_version", 0))
    data = export_policy(
        agent.export_actor(), obs_dim=robot.obs_dim, act_dim=robot.act_dim,
        action_low=robot.action.low, action_high=robot.action.high, algorithm=cfg.algorithm.name,
        version=version, obs_mean=_as_array(extra.get("obs_mean")),
        obs_std=_as_array(extra.get("obs_std")), config_hash=cfg.config_hash(),
        probe_obs=_as_array(extra.get("probe_obs")), names=robot.action.names or None, info=info)
    path = write_policy(data, out_path)
    return {"path": str(path), "checkpoint": str(checkpoint_path), "algorithm": cfg.algorithm.name,
            "policy_version": version, "config_hash": cfg.config_hash(), **info}
