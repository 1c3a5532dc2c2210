"""torch actor -> validated ONNX policy (DESIGN.md "Policy contract").

The graph takes `obs` [B, obs_dim] and `noise` [B, act_dim] (float32, dynamic B) and returns
`action` [B, act_dim] in physical units:

    action = low + (actor((obs - obs_mean) / obs_std, noise) + 1) / 2 * (high - low)

so observation normalisation, the algorithm's exploration rule (inside `actor`) and the scaling to
the robot's bounds all travel with the weights. Every export is run back through onnxruntime and
compared with the same computation in torch on stored and random observations, with zero and
random noise; a mismatch above 1e-5 (in the actor's [-1, 1] units, i.e. divided by the half range,
so the tolerance does not depend on the robot's units) raises `ExportError` and returns nothing.

Exporter: the TorchScript one (`dynamo=False`) takes ~10 ms for a 2x256 MLP against ~1 s for the
torch.export one, and the learner exports every K updates; the torch.export exporter is the fallback
for torch builds without the legacy one.
"""
from __future__ import annotations

import copy
import io
import json
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
from torch import nn

from o2o_robot.fsutil import atomic_write_bytes

from .runtime import (INPUT_NAMES, META_ALGORITHM, META_CONFIG_HASH, META_CREATED, META_SPEC,
                      META_VERSION, OUTPUT_NAME, OnnxPolicy, PolicyRejected)

OPSET = 17
PARITY_TOL = 1e-5
N_RANDOM_OBS = 64
MAX_STORED_OBS = 256


class ExportError(Exception):
    """An export refused; `reason` says why (nothing was returned or written)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class PolicyGraph(nn.Module):
    """What the ONNX graph computes, as a torch module: normalise -> actor(obs, noise) -> scale.

    `actor(obs, noise)` must return actions in [-1, 1] (e.g. tanh(mu + exp(log_std) * noise)).
    """

    def __init__(self, actor: nn.Module, action_low: np.ndarray, action_high: np.ndarray,
                 obs_mean: np.ndarray | None = None, obs_std: np.ndarray | None = None):
        super().__init__()
        self.actor = actor
        self.normalise = obs_mean is not None
        f32 = lambda x: torch.as_tensor(np.asarray(x, np.float32))  # noqa: E731
        if self.normalise:
            self.register_buffer("obs_mean", f32(obs_mean))
            self.register_buffer("obs_std", f32(obs_std))
        self.register_buffer("low", f32(action_low))
        self.register_buffer("half_range", f32((np.asarray(action_high) - np.asarray(action_low)) / 2.0))

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            obs = (obs - self.obs_mean) / self.obs_std
        return self.low + (self.actor(obs, noise) + 1.0) * self.half_range


def _check_inputs(obs_dim: int, act_dim: int, low, high, obs_mean, obs_std, names):
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    if low.shape != (act_dim,) or high.shape != (act_dim,):
        raise ExportError(f"spec: action_low/high need {act_dim} values, got {low.shape} and {high.shape}")
    if not (np.isfinite(low).all() and np.isfinite(high).all() and (low < high).all()):
        raise ExportError("spec: action bounds must be finite with low < high")
    if (obs_mean is None) != (obs_std is None):
        raise ExportError("spec: give both obs_mean and obs_std, or neither")
    if obs_mean is not None:
        obs_mean, obs_std = np.asarray(obs_mean, np.float64), np.asarray(obs_std, np.float64)
        if obs_mean.shape != (obs_dim,) or obs_std.shape != (obs_dim,):
            raise ExportError(f"spec: obs_mean/obs_std need {obs_dim} values")
        if not (np.isfinite(obs_mean).all() and np.isfinite(obs_std).all() and (obs_std > 0).all()):
            raise ExportError("spec: obs_mean must be finite and obs_std finite and > 0")
    if names is not None and len(names) != act_dim:
        raise ExportError(f"spec: names has {len(names)} entries, act_dim is {act_dim}")
    return low, high, obs_mean, obs_std


def _to_onnx(graph: PolicyGraph, obs_dim: int, act_dim: int) -> tuple[bytes, str]:
    """(model bytes, exporter used). Batch 2 in the example: torch.export specialises sizes 0 and 1."""
    example = (torch.zeros(2, obs_dim), torch.zeros(2, act_dim))
    names = dict(input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME])
    with warnings.catch_warnings():
        # The legacy exporter warns about its own deprecation and about traced constants; the
        # parity check below is what catches a trace that does not match the module.
        warnings.simplefilter("ignore")
        try:
            buf = io.BytesIO()
            torch.onnx.export(graph, example, buf, dynamo=False, opset_version=OPSET,
                              dynamic_axes={n: {0: "batch"} for n in (*INPUT_NAMES, OUTPUT_NAME)},
                              do_constant_folding=True, **names)
            return buf.getvalue(), "torchscript"
        except Exception as legacy:  # noqa: BLE001 - reported below with the fallback's error
            try:
                batch = torch.export.Dim("batch")
                program = torch.onnx.export(graph, example, dynamo=True, opset_version=max(OPSET, 18),
                                            dynamic_shapes=({0: batch}, {0: batch}), verbose=False,
                                            **names)
                return program.model_proto.SerializeToString(), "dynamo"
            except Exception as err:
                raise ExportError(f"export: torchscript exporter failed ({legacy}); "
                                  f"dynamo exporter failed ({err})") from err


def parity_observations(obs_dim: int, probe_obs, obs_mean, obs_std, rng) -> np.ndarray:
    """Stored observations (at most MAX_STORED_OBS, evenly spaced) plus random ones spread over
    twice the data's (or the normaliser's) scale."""
    parts = []
    if probe_obs is not None and len(probe_obs):
        stored = np.asarray(probe_obs, np.float32).reshape(-1, obs_dim)
        parts.append(stored[np.linspace(0, len(stored) - 1, min(len(stored), MAX_STORED_OBS)).astype(int)])
        centre, scale = stored.mean(0), stored.std(0) + 1e-3
    elif obs_mean is not None:
        centre, scale = obs_mean, obs_std
    else:
        centre, scale = np.zeros(obs_dim), np.ones(obs_dim)
    parts.append(centre + 2.0 * scale * rng.standard_normal((N_RANDOM_OBS, obs_dim)))
    return np.concatenate(parts).astype(np.float32)


def reference_actions(graph: PolicyGraph, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """What the ONNX graph must compute, computed by torch (float32, CPU)."""
    with torch.no_grad():
        return graph(torch.from_numpy(np.asarray(obs, np.float32)),
                     torch.from_numpy(np.asarray(noise, np.float32))).numpy()


def parity_error(policy: OnnxPolicy, graph: PolicyGraph, obs: np.ndarray, noise: np.ndarray,
                 half_range: np.ndarray) -> float:
    """Max |onnx - torch| in the actor's [-1, 1] units over the batch path and the B=1 path."""
    expected = reference_actions(graph, obs, noise)
    got = np.concatenate([policy(obs, noise), policy(obs[0], noise[0])[None]])
    return float(np.max(np.abs(got - np.concatenate([expected, expected[:1]])) / half_range))


def _check_parity(data: bytes, graph: PolicyGraph, obs: np.ndarray, act_dim: int,
                  half_range: np.ndarray, rng) -> dict[str, float]:
    try:
        policy = OnnxPolicy(data, provider="cpu")
    except PolicyRejected as err:
        raise ExportError(f"export produced an unusable graph: {err.reason}") from err
    errors = {}
    for label, noise in (("deterministic", np.zeros((len(obs), act_dim), np.float32)),
                         ("noisy", rng.standard_normal((len(obs), act_dim)).astype(np.float32))):
        expected = reference_actions(graph, obs, noise)
        if expected.shape != (len(obs), act_dim):
            raise ExportError(f"actor: returned shape {expected.shape}, expected {(len(obs), act_dim)}")
        if not np.isfinite(expected).all():
            raise ExportError(f"non-finite: the torch actor gives NaN/inf on {label} actions")
        error = parity_error(policy, graph, obs, noise, half_range)
        if not error <= PARITY_TOL:  # `not <=` so that NaN fails too
            raise ExportError(f"parity: max abs error {error:.3g} > {PARITY_TOL:g} on {label} actions")
        errors[label] = error
    return errors


def export_policy(actor: nn.Module, *, obs_dim: int, act_dim: int, action_low: Sequence[float],
                  action_high: Sequence[float], algorithm: str, version: int,
                  obs_mean: np.ndarray | None = None, obs_std: np.ndarray | None = None,
                  config_hash: str = "", probe_obs: np.ndarray | None = None,
                  names: Sequence[str] | None = None, info: dict | None = None) -> bytes:
    """Serialized, parity-checked ONNX policy for `actor(obs [B, obs_dim], noise [B, act_dim]) ->
    action in [-1, 1]`. Raises `ExportError` (returning nothing) on a bad spec, an export failure,
    non-finite actions or a parity error. `info`, if given, receives timings and parity errors."""
    start = time.perf_counter()
    low, high, obs_mean, obs_std = _check_inputs(obs_dim, act_dim, action_low, action_high,
                                                 obs_mean, obs_std, names)
    # A private float32 CPU copy: the learner may keep training the original (on any device)
    # while this runs, and the trace must see one fixed set of weights.
    actor = getattr(actor, "_orig_mod", actor)  # torch.compile wrappers cannot be traced
    frozen = copy.deepcopy(actor).to("cpu", torch.float32).eval().requires_grad_(False)
    graph = PolicyGraph(frozen, low, high, obs_mean, obs_std).eval()
    with torch.no_grad():
        data, exporter = _to_onnx(graph, obs_dim, act_dim)
    model = onnx.load_from_string(data)
    spec = {"obs_dim": obs_dim, "act_dim": act_dim, "low": low.tolist(), "high": high.tolist(),
            "names": list(names or []), "obs_normalisation": obs_mean is not None}
    meta = {META_VERSION: str(int(version)), META_ALGORITHM: algorithm, META_SPEC: json.dumps(spec),
            META_CONFIG_HASH: config_hash,
            META_CREATED: datetime.now(timezone.utc).isoformat(timespec="seconds")}
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "o2o_robot"
    data = model.SerializeToString()
    rng = np.random.default_rng(int(version))
    obs = parity_observations(obs_dim, probe_obs, obs_mean, obs_std, rng)
    errors = _check_parity(data, graph, obs, act_dim, (high - low) / 2.0, rng)
    if info is not None:
        info.update(exporter=exporter, export_s=time.perf_counter() - start, bytes=len(data),
                    parity_max_abs_error=errors, parity_observations=len(obs))
    return data


def write_policy(data: bytes, path: str | Path) -> Path:
    """Write `data` to `path` atomically (see `o2o_robot.fsutil.atomic_write_bytes`): watchers
    of `*.onnx` never see a partial file, readers see the old policy or the new one."""
    return atomic_write_bytes(path, data)
