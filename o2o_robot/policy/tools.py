"""Back ends of the policy CLI commands (`o2o-robot policy check|export`), as plain functions.

`check_policy` needs only numpy + onnxruntime unless a checkpoint is given (then torch), so it
runs on the robot computer; `export_checkpoint` is the learner-side path (torch).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import O2OConfig, RobotSpec, load_config
from ..spaces import camera_specs
from .runtime import (PolicyRejected, measure_latency, policy_from_file, probe_inputs,
                      validate_policy)


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


def _probe(value: Any) -> Any:
    """A checkpoint's probe observations: an array of states, or a dict (states and images)."""
    if isinstance(value, dict):
        return {k: (_as_array(v) if k == "state" else np.asarray(v, np.uint8))
                for k, v in value.items()}
    return _as_array(value)


def _load_checkpoint(path: str | Path):
    """(agent, cfg, extra) via `o2o_robot.agents.checkpoint.load_checkpoint`, imported lazily so
    that `check_policy` without a checkpoint needs no torch."""
    from ..agents.checkpoint import load_checkpoint  # noqa: PLC0415
    return load_checkpoint(path)


def check_policy(path: str | Path, *, checkpoint: str | Path | None = None,
                 robot: RobotSpec | O2OConfig | str | Path | None = None,
                 latency_budget_s: float | None = None) -> dict:
    """Validate an `.onnx` policy file and describe it.

    Checked against `robot` (a RobotSpec, a config or a config file) when given, else against
    the spec in the file's own metadata; with `latency_budget_s`, its p99 single-call latency
    too (what the actor node demands: `LATENCY_BUDGET_SHARE` of a control period). Returns
    spec, metadata, opset, provider, single-call latency (p50/p99/max, microseconds) and, with
    `checkpoint`, the max abs error against that checkpoint's torch actor. Raises
    `PolicyRejected` for a file that must not drive the robot.
    """
    policy = policy_from_file(path, provider="cpu")
    if robot is not None:
        spec = _robot_spec(robot)
        obs_dim, act_dim = spec.obs_dim, spec.act_dim
        low, high = spec.action.low, spec.action.high
        cameras = camera_specs(spec)
        against = (f"robot config ({spec.name}: obs {obs_dim}, action {act_dim}, "
                   f"{len(cameras)} camera(s), its bounds)")
    else:
        obs_dim, act_dim, cameras = policy.obs_dim, policy.act_dim, policy.cameras
        low, high = policy.bounds or (None, None)
        against = ("policy metadata" if policy.bounds is not None
                   else "graph only (no spec in the metadata: bounds unchecked)")
    validate_policy(policy, obs_dim=obs_dim, act_dim=act_dim, action_low=low, action_high=high,
                    latency_budget_s=latency_budget_s, cameras=cameras)
    latency_us = measure_latency(policy, n=2000) * 1e6
    report = {
        "path": str(path), "checked_against": against, "opset": policy.opset,
        "latency_budget_us": None if latency_budget_s is None else latency_budget_s * 1e6,
        "provider": policy.provider, "obs_dim": policy.obs_dim, "act_dim": policy.act_dim,
        "inputs": {policy.state_input: f"float32 [B, {policy.obs_dim}]",
                   **{name: f"uint8 [B, {', '.join(map(str, shape))}] (camera)"
                      for name, shape in policy.cameras.items()},
                   "noise": f"float32 [B, {policy.act_dim}]"},
        "spec": policy.spec, "metadata": dict(policy.metadata),
        "latency_us": {"p50": float(np.percentile(latency_us, 50)),
                       "p99": float(np.percentile(latency_us, 99)), "max": float(latency_us.max())},
    }
    report["parity"] = ({"skipped": "no checkpoint given"} if checkpoint is None
                        else _parity_vs_checkpoint(policy, checkpoint))
    return report


def _parity_vs_checkpoint(policy, checkpoint: str | Path) -> dict:
    """`export.parity_errors` of the file against the checkpoint's actor, on the probe
    observations (the checkpoint's `extra["probe_obs"]` when present), as a report."""
    try:
        agent, cfg, extra = _load_checkpoint(checkpoint)
    except ImportError as err:
        return {"skipped": f"cannot load checkpoints here ({err})"}
    from .export import PARITY_TOL, ExportError, PolicyGraph, parity_errors  # noqa: PLC0415

    if (policy.obs_dim, policy.act_dim) != (cfg.robot.obs_dim, cfg.robot.act_dim):
        raise PolicyRejected(f"obs dim: policy is {policy.obs_dim}->{policy.act_dim}, checkpoint "
                             f"is {cfg.robot.obs_dim}->{cfg.robot.act_dim}")
    action = cfg.robot.action
    graph = PolicyGraph(agent.export_actor().to("cpu").eval(), action.low, action.high).eval()
    rng = np.random.default_rng(0)
    obs = probe_inputs(policy.obs_dim, policy.cameras, _probe(extra.get("probe_obs")), rng)
    versions = {"checkpoint_policy_version": extra.get("policy_version"),
                "file_policy_version": policy.version}
    try:
        errors = parity_errors(policy, graph, obs, rng)
    except ExportError as err:  # the checkpoint's actor itself is unusable
        return {"error": err.reason, "tolerance": PARITY_TOL, "ok": False, **versions}
    return {"max_abs_error": errors, "tolerance": PARITY_TOL,
            "ok": all(e <= PARITY_TOL for e in errors.values()), **versions}


def export_checkpoint(checkpoint_path: str | Path, out_path: str | Path) -> dict:
    """Export a checkpoint's actor to a validated `.onnx` file (written atomically).

    Bounds from `cfg.robot.action`, algorithm from `cfg.algorithm.name`, version from
    `extra["policy_version"]` (0 if absent), config hash from `cfg.config_hash()`, parity probes
    from `extra["probe_obs"]` when present. Raises `ExportError`.
    """
    from .export import export_policy, write_policy  # noqa: PLC0415 - torch only on this path

    agent, cfg, extra = _load_checkpoint(checkpoint_path)
    robot, info = cfg.robot, {}
    version = int(extra.get("policy_version", 0))
    data = export_policy(
        agent.export_actor(), obs_dim=robot.obs_dim, act_dim=robot.act_dim,
        action_low=robot.action.low, action_high=robot.action.high, algorithm=cfg.algorithm.name,
        version=version, config_hash=cfg.config_hash(),
        probe_obs=_probe(extra.get("probe_obs")), names=robot.action.names or None, info=info,
        cameras=agent.cameras)
    path = write_policy(data, out_path)
    return {"path": str(path), "checkpoint": str(checkpoint_path), "algorithm": cfg.algorithm.name,
            "policy_version": version, "config_hash": cfg.config_hash(), **info}
