"""torch actor -> validated ONNX policy (DESIGN.md "Policy contract").

The graph takes `obs` [B, obs_dim] and `noise` [B, act_dim] (float32, dynamic B) and returns
`action` [B, act_dim] in physical units:

    action = low + (actor(obs, noise) + 1) / 2 * (high - low)

so the algorithm's exploration rule (inside `actor`, which returns unit actions in [-1, 1]) and
the scaling to the robot's bounds travel with the weights. With cameras (contract v2) the graph
takes `state` [B, obs_dim], one uint8 input per camera named as the camera [B, H, W, C*S] (config
order) and `noise`, and `actor(state, *images, noise)` holds the image encoder; the metadata
spec lists the cameras. Vector-only exports keep the v1 input name `obs`, so a robot running an
older runtime still loads them. Every export is run back through
onnxruntime and compared with the same computation in torch (`parity_errors`) on the probe
observations of `runtime.probe_observations`, with zero and random noise; a mismatch above 1e-5
(in the actor's [-1, 1] units, i.e. divided by the half range, so the tolerance does not depend on
the robot's units) raises `ExportError` and returns nothing.

`UniformWarmupActor` is the learner's warm-up as a policy: uniform random actions over the bounds.

Exporter: the TorchScript one (`dynamo=False`) takes ~10 ms for a 2x256 MLP against ~1 s for the
torch.export one, and the learner exports every K updates; the torch.export exporter is the fallback
for torch builds without the legacy one.
"""
from __future__ import annotations

import copy
import io
import json
import math
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

from o2o_robot.spaces import CameraSpec

from .probes import count, probe_inputs, rows
from .runtime import (INPUT_NAMES, META_ALGORITHM, META_CONFIG_HASH, META_CREATED, META_SPEC,
                      META_VERSION, NOISE_INPUT, OUTPUT_NAME, STATE_INPUT, OnnxPolicy,
                      PolicyRejected)

OPSET = 17
PARITY_TOL = 1e-5


class ExportError(Exception):
    """An export refused; `reason` says why (nothing was returned or written)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class PolicyGraph(nn.Module):
    """What the ONNX graph computes, as a torch module: actor(obs, noise) -> scale to [low, high].

    `actor(obs, noise)` (with cameras `actor(state, *images, noise)`) must return actions in
    [-1, 1] (e.g. tanh(mu + exp(log_std) * noise)).
    """

    def __init__(self, actor: nn.Module, action_low: np.ndarray, action_high: np.ndarray):
        super().__init__()
        self.actor = actor
        f32 = lambda x: torch.as_tensor(np.asarray(x, np.float32))  # noqa: E731
        self.register_buffer("low", f32(action_low))
        self.register_buffer("half_range", f32((np.asarray(action_high) - np.asarray(action_low)) / 2.0))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.low + (self.actor(*inputs) + 1.0) * self.half_range


class UniformWarmupActor(nn.Module):
    """Uniform random actions, as the learner's warm-up takes them, for the robot to run.

    forward(obs, noise) = erf(noise / sqrt(2)) = 2 * Phi(noise) - 1: uniform on [-1, 1] when the
    noise is standard normal (the probability integral transform), 0 (the middle of the bounds)
    for zero noise, the deterministic action. `obs` enters multiplied by zero so that the graph
    keeps its `obs` input (the policy contract); a NaN observation still gives a NaN action, which
    validation and the control loop's checks catch rather than acting on it. With cameras
    (forward(state, *images, noise)) each image enters multiplied by zero too, so the graph
    keeps one input per camera.
    """

    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        if obs_dim <= 0 or act_dim <= 0:
            raise ValueError(f"obs_dim/act_dim: expected positive sizes, got {obs_dim}, {act_dim}")
        self.obs_dim, self.act_dim = obs_dim, act_dim

    def forward(self, obs: torch.Tensor, *images_and_noise: torch.Tensor) -> torch.Tensor:
        *images, noise = images_and_noise
        out = torch.special.erf(noise / math.sqrt(2.0)) + 0.0 * obs[:, :1]
        for image in images:   # one pixel of each, times zero: the input stays in the graph
            out = out + 0.0 * image[:, 0, 0, :1].float()
        return out


def _check_inputs(act_dim: int, low, high, names) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    if low.shape != (act_dim,) or high.shape != (act_dim,):
        raise ExportError(f"spec: action_low/high need {act_dim} values, got {low.shape} and {high.shape}")
    if not (np.isfinite(low).all() and np.isfinite(high).all() and (low < high).all()):
        raise ExportError("spec: action bounds must be finite with low < high")
    if names is not None and len(names) != act_dim:
        raise ExportError(f"spec: names has {len(names)} entries, act_dim is {act_dim}")
    return low, high


def input_names(cameras: Sequence[CameraSpec] = ()) -> list[str]:
    """Graph input names: v1 ["obs", "noise"], with cameras ["state", *camera names, "noise"]."""
    if not cameras:
        return list(INPUT_NAMES)
    return [STATE_INPUT, *(c.name for c in cameras), NOISE_INPUT]


def _to_onnx(graph: PolicyGraph, obs_dim: int, act_dim: int,
             cameras: Sequence[CameraSpec] = ()) -> tuple[bytes, str]:
    """(model bytes, exporter used). Batch 2 in the example: torch.export specialises sizes 0 and 1."""
    example = (torch.zeros(2, obs_dim), *(torch.zeros(2, *c.shape, dtype=torch.uint8)
                                          for c in cameras), torch.zeros(2, act_dim))
    inputs = input_names(cameras)
    names = dict(input_names=inputs, output_names=[OUTPUT_NAME])
    with warnings.catch_warnings():
        # The legacy exporter warns about its own deprecation and about traced constants; the
        # parity check below is what catches a trace that does not match the module.
        warnings.simplefilter("ignore")
        try:
            buf = io.BytesIO()
            torch.onnx.export(graph, example, buf, dynamo=False, opset_version=OPSET,
                              dynamic_axes={n: {0: "batch"} for n in (*inputs, OUTPUT_NAME)},
                              do_constant_folding=True, **names)
            return buf.getvalue(), "torchscript"
        except Exception as legacy:  # noqa: BLE001 - reported below with the fallback's error
            try:
                batch = torch.export.Dim("batch")
                program = torch.onnx.export(graph, example, dynamo=True, opset_version=max(OPSET, 18),
                                            dynamic_shapes=tuple({0: batch} for _ in inputs),
                                            verbose=False,
                                            **names)
                return program.model_proto.SerializeToString(), "dynamo"
            except Exception as err:
                raise ExportError(f"export: torchscript exporter failed ({legacy}); "
                                  f"dynamo exporter failed ({err})") from err


def reference_actions(graph: PolicyGraph, obs, noise: np.ndarray,
                      cameras: Sequence[str] = ()) -> np.ndarray:
    """What the ONNX graph must compute, computed by torch (float32, CPU); `obs` is the state
    array, or with `cameras` (names, graph order) the observation dict."""
    state = obs["state"] if isinstance(obs, dict) else obs
    images = [torch.from_numpy(np.ascontiguousarray(obs[name])) for name in cameras]
    with torch.no_grad():
        return graph(torch.from_numpy(np.asarray(state, np.float32)), *images,
                     torch.from_numpy(np.asarray(noise, np.float32))).numpy()


def parity_errors(policy: OnnxPolicy, graph: PolicyGraph, obs: np.ndarray,
                  rng: np.random.Generator) -> dict[str, float]:
    """Max |onnx - torch| in the actor's [-1, 1] units (divided by the half range), over the batch
    path and the B=1 path, with zero noise ("deterministic") and standard normal noise ("noisy").

    Raises `ExportError` when the torch side itself is unusable (wrong shape, NaN/inf): then
    there is nothing to compare against. NaN in the ONNX output gives a NaN error.
    """
    n, act_dim = count(obs), policy.act_dim
    half_range = graph.half_range.numpy().astype(np.float64)
    errors = {}
    for label, noise in (("deterministic", np.zeros((n, act_dim), np.float32)),
                         ("noisy", rng.standard_normal((n, act_dim)).astype(np.float32))):
        expected = reference_actions(graph, obs, noise, list(policy.cameras))
        if expected.shape != (n, act_dim):
            raise ExportError(f"actor: returned shape {expected.shape}, expected {(n, act_dim)}")
        if not np.isfinite(expected).all():
            raise ExportError(f"non-finite: the torch actor gives NaN/inf on {label} actions")
        got = np.concatenate([policy(obs, noise), policy(rows(obs, 0), noise[0])[None]])
        errors[label] = float(np.max(np.abs(got - np.concatenate([expected, expected[:1]]))
                                     / half_range))
    return errors


def export_policy(actor: nn.Module, *, obs_dim: int, act_dim: int, action_low: Sequence[float],
                  action_high: Sequence[float], algorithm: str, version: int,
                  config_hash: str = "", probe_obs=None, names: Sequence[str] | None = None,
                  info: dict | None = None, cameras: Sequence[CameraSpec] = ()) -> bytes:
    """Serialized, parity-checked ONNX policy for `actor(obs [B, obs_dim], noise [B, act_dim]) ->
    action in [-1, 1]` (with `cameras`: `actor(state, *images, noise)`, contract v2; `probe_obs`
    may then be a dict of stored states and images). Raises `ExportError` (returning nothing) on
    a bad spec, an export failure, non-finite actions or a parity error. `info`, if given,
    receives timings and parity errors."""
    start = time.perf_counter()
    low, high = _check_inputs(act_dim, action_low, action_high, names)
    if cameras and obs_dim < 1:   # onnxruntime cannot run the empty `state` input of such a graph
        raise ExportError("spec: a policy with cameras needs a state vector (obs_dim >= 1)")
    # A private float32 CPU copy: the learner may keep training the original (on any device)
    # while this runs, and the trace must see one fixed set of weights.
    actor = getattr(actor, "_orig_mod", actor)  # torch.compile wrappers cannot be traced
    frozen = copy.deepcopy(actor).to("cpu", torch.float32).eval().requires_grad_(False)
    graph = PolicyGraph(frozen, low, high).eval()
    with torch.no_grad():
        data, exporter = _to_onnx(graph, obs_dim, act_dim, cameras)
    model = onnx.load_from_string(data)
    spec = {"obs_dim": obs_dim, "act_dim": act_dim, "low": low.tolist(), "high": high.tolist(),
            "names": list(names or [])}
    if cameras:
        spec["cameras"] = [c.as_dict() for c in cameras]
    meta = {META_VERSION: str(int(version)), META_ALGORITHM: algorithm, META_SPEC: json.dumps(spec),
            META_CONFIG_HASH: config_hash,
            META_CREATED: datetime.now(timezone.utc).isoformat(timespec="seconds")}
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "o2o_robot"
    data = model.SerializeToString()
    rng = np.random.default_rng(int(version))
    try:
        obs = probe_inputs(obs_dim, {c.name: c.shape for c in cameras}, probe_obs, rng)
    except ValueError as err:
        raise ExportError(str(err)) from err
    try:
        policy = OnnxPolicy(data, provider="cpu")
    except PolicyRejected as err:
        raise ExportError(f"export produced an unusable graph: {err.reason}") from err
    errors = parity_errors(policy, graph, obs, rng)
    for label, error in errors.items():
        if not error <= PARITY_TOL:  # `not <=` so that NaN fails too
            raise ExportError(f"parity: max abs error {error:.3g} > {PARITY_TOL:g} on {label} actions")
    if info is not None:
        info.update(exporter=exporter, export_s=time.perf_counter() - start, bytes=len(data),
                    parity_max_abs_error=errors, parity_observations=count(obs))
    return data


def write_policy(data: bytes, path: str | Path) -> Path:
    """Write `data` to `path` atomically (see `o2o_robot.fsutil.atomic_write_bytes`): readers
    never see a partial file, only the old policy or the new one."""
    return atomic_write_bytes(path, data)
