"""Run exported policies on the control thread, and swap them in safely (DESIGN.md "Policy contract").

numpy + onnxruntime only: this is what runs on the robot computer, next to the control loop.

* `OnnxPolicy`: one onnxruntime session with preallocated, I/O-bound buffers, so a
  single-observation call costs about what a bare `session.run` costs (benchmarks/policy_latency.py).
  Two input contracts are read: v1 `obs` [B, d] + `noise` (vector observations; what every
  vector-only export still writes, so robots running an older runtime keep loading new
  vector policies) and v2 `state` [B, d] + one uint8 input per camera [B, H, W, C*S] (named as
  the camera) + `noise` (policies with cameras, the image encoder inside the graph).
* `validate_policy`: the checks a candidate passes before it may drive the robot; each failure is a
  `PolicyRejected` whose `reason` starts with a fixed tag ("cannot load:", "inputs:", "opset:",
  "obs dim:", "act dim:", "cameras:", "spec:", "output:", "non-finite:", "out of bounds:",
  "latency:").
* `probe_observations`: the one set of observations that validation, export parity and
  `o2o-robot policy check` try a policy on.
* `PolicySlot` and `PolicyProposer` (in `o2o_robot.policy.slot`) swap validated policies into
  the running loop.

Threading: an `OnnxPolicy` reuses its buffers, so one thread at a time may call it. A slot's
policies are called by validation before publication (proposer thread) and by `act` after it
(control thread), never by both.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from o2o_robot.spaces import CameraSpec

from .onnx_wire import onnx_opset
from .probes import (MAX_STORED_PROBES, N_RANDOM_PROBES, count, probe_inputs,  # noqa: F401
                     probe_observations, rows)

INPUT_NAMES = ("obs", "noise")          # contract v1 (vector observations)
STATE_INPUT, NOISE_INPUT = "state", "noise"  # contract v2: state, one uint8 input per camera, noise
OUTPUT_NAME = "action"
MIN_OPSET = 13
LATENCY_BUDGET_SHARE = 0.5    # a policy may use at most half a control period (p99)
# metadata_props keys written by policy/export.py
META_VERSION, META_ALGORITHM, META_SPEC = "policy_version", "algorithm", "spec"
META_CONFIG_HASH, META_CREATED = "config_hash", "created"


class PolicyRejected(Exception):
    """A policy that must not drive the robot; `reason` says why, starting with a fixed tag."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class NoPolicy(RuntimeError):
    """`PolicySlot.act` before any policy was accepted (the control core holds instead)."""


def _read_source(source: bytes | str | Path) -> tuple[bytes, str]:
    """(model bytes, a name for messages). A path is read once, so the file cannot change between
    the checks and the session."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), f"<{len(source)} bytes>"
    try:
        return Path(source).read_bytes(), str(source)
    except OSError as err:
        raise PolicyRejected(f"cannot load: {err}") from err


class OnnxPolicy:
    """An exported policy: `obs` [B, obs_dim], `noise` [B, act_dim] -> physical `action` [B, act_dim]
    (v1), or `state` [B, obs_dim] + uint8 camera images + `noise` (v2; `cameras` lists them,
    {name: (H, W, C*S)} in graph order, empty for v1). Observations are a vector or a dict
    {"state": vector, camera name: image} (a v1 policy reads only "state").

    `provider`: "cpu", "cuda" (needs onnxruntime-gpu and a GPU) or "auto" (both when CUDA is
    present, each timed once on the single-observation path; the faster is kept: for a small MLP
    the host-device copies usually make the CPU win). Loading problems raise `PolicyRejected`.
    """

    def __init__(self, source: bytes | str | Path, *, provider: str = "auto",
                 intra_op_threads: int = 1):
        if provider not in ("auto", "cpu", "cuda"):
            raise ValueError(f"provider: expected 'auto', 'cpu' or 'cuda', got {provider!r}")
        data, self.source = _read_source(source)
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        if provider == "cuda" and not has_cuda:
            raise PolicyRejected("cannot load: provider 'cuda' requested but onnxruntime has no "
                                 "CUDAExecutionProvider (install onnxruntime-gpu)")
        sessions = [self._open(data, "cuda" if provider == "cuda" else "cpu", intra_op_threads)]
        if provider == "auto" and has_cuda:
            try:
                sessions.append(self._open(data, "cuda", intra_op_threads))
            except PolicyRejected:  # onnxruntime-gpu without a usable GPU: the CPU it is
                pass
        self.metadata: dict[str, str] = dict(sessions[0].get_modelmeta().custom_metadata_map)
        try:
            self.opset = onnx_opset(data)
        except (ValueError, IndexError, UnicodeDecodeError) as err:
            raise PolicyRejected(f"cannot load: unreadable opset_import ({err})") from err
        self.obs_dim, self.act_dim, self.cameras = self._check_signature(sessions[0])
        self.state_input = STATE_INPUT if self.cameras else INPUT_NAMES[0]
        try:
            raw = self.metadata.get(META_SPEC)
            self.spec: dict | None = json.loads(raw) if raw is not None else None
        except json.JSONDecodeError as err:
            raise PolicyRejected(f"spec: metadata '{META_SPEC}' is not JSON ({err})") from err
        if len(sessions) > 1:  # "auto" with CUDA: keep the faster on the tick's own call shape
            times = []
            for sess in sessions:
                self._bind(sess)
                times.append(float(np.median(measure_latency(self, n=50))))
            sessions = [sessions[int(np.argmin(times))]]
        self._bind(sessions[0])

    @staticmethod
    def _open(data: bytes, kind: str, threads: int) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        # One intra-op thread by default: a 2x256 MLP gains nothing from a pool, and the control
        # loop, the learner and ROS all want the other cores.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if kind == "cuda"
                     else ["CPUExecutionProvider"])
        try:
            sess = ort.InferenceSession(data, opts, providers=providers)
        except Exception as err:  # onnxruntime raises several private exception types
            first_line = (str(err).strip().splitlines() or [repr(err)])[0]
            raise PolicyRejected(f"cannot load: {first_line[:300]}") from err
        if kind == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":
            raise PolicyRejected("cannot load: CUDAExecutionProvider present but no usable GPU")
        return sess

    @staticmethod
    def _check_signature(sess: ort.InferenceSession
                         ) -> tuple[int, int, dict[str, tuple[int, int, int]]]:
        """(obs_dim, act_dim, cameras) of a v1 or v2 graph; PolicyRejected for anything else."""
        inputs = {i.name: i for i in sess.get_inputs()}
        outputs = [o.name for o in sess.get_outputs()]
        v2 = STATE_INPUT in inputs and INPUT_NAMES[0] not in inputs
        image_names = [n for n in inputs if n not in (STATE_INPUT, NOISE_INPUT)] if v2 else []
        if (not v2 and sorted(inputs) != sorted(INPUT_NAMES)) or NOISE_INPUT not in inputs or \
                (v2 and not image_names) or OUTPUT_NAME not in outputs:
            raise PolicyRejected(f"inputs: graph takes {sorted(inputs)} and gives {outputs}, expected "
                                 f"inputs {list(INPUT_NAMES)} (or '{STATE_INPUT}', one uint8 input "
                                 f"per camera and '{NOISE_INPUT}') and output '{OUTPUT_NAME}'")
        dims = []
        for name in (STATE_INPUT if v2 else INPUT_NAMES[0], NOISE_INPUT):
            arg = inputs[name]
            if arg.type != "tensor(float)" or len(arg.shape) != 2 or not isinstance(arg.shape[1], int):
                raise PolicyRejected(f"inputs: '{name}' is {arg.type} {arg.shape}, expected "
                                     f"tensor(float) [batch, fixed size]")
            dims.append(arg.shape[1])
        cameras = {}
        for name in image_names:
            arg = inputs[name]
            if arg.type != "tensor(uint8)" or len(arg.shape) != 4 or \
                    not all(isinstance(d, int) and d > 0 for d in arg.shape[1:]):
                raise PolicyRejected(f"inputs: camera '{name}' is {arg.type} {arg.shape}, expected "
                                     f"tensor(uint8) [batch, H, W, C*S]")
            cameras[name] = tuple(int(d) for d in arg.shape[1:])
        return dims[0], dims[1], cameras

    def _bind(self, sess: ort.InferenceSession) -> None:
        """Bind preallocated [1, dim] buffers, so the single-observation call is one copy in, one
        run, one copy out: no feed dict, no output list, no new arrays inside onnxruntime."""
        self.session = sess
        self.provider = sess.get_providers()[0]
        self._obs = np.zeros((1, self.obs_dim), np.float32)
        self._noise = np.zeros((1, self.act_dim), np.float32)
        self._action = np.zeros((1, self.act_dim), np.float32)
        self._images = {name: np.zeros((1, *shape), np.uint8) for name, shape in self.cameras.items()}
        self._binding = binding = sess.io_binding()
        for name, buf in ((self.state_input, self._obs), (NOISE_INPUT, self._noise),
                          *self._images.items()):
            binding.bind_input(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        binding.bind_output(OUTPUT_NAME, "cpu", 0, np.float32, list(self._action.shape),
                            self._action.ctypes.data)
        self._run = sess.run_with_iobinding
        self._out_names = [OUTPUT_NAME]
        self._obs_shape, self._noise_shape = (self.obs_dim,), (self.act_dim,)

    def __call__(self, obs: np.ndarray | Mapping[str, np.ndarray], noise: np.ndarray | None = None,
                 out: np.ndarray | None = None) -> np.ndarray:
        """Action(s) in physical units for obs [obs_dim] or [B, obs_dim], or an observation dict
        ({"state": [(B,) obs_dim], camera: uint8 [(B,) H, W, C*S]}; a v2 policy needs the dict);
        noise of the matching shape (standard normal; None = zeros = the deterministic action).
        A single observation returns a fresh [act_dim] array, or fills `out` to allocate nothing."""
        images = None
        if isinstance(obs, Mapping):
            images, obs = obs, obs["state"]
        elif self.cameras:
            raise ValueError(f"obs: this policy takes cameras {list(self.cameras)}: give a dict "
                             f"with 'state' and one image per camera")
        obs = np.asarray(obs)
        if obs.ndim == 2:
            return self._batch(obs, noise, images)
        if obs.shape != self._obs_shape:
            raise ValueError(f"obs: expected shape ({self.obs_dim},) or (B, {self.obs_dim}), "
                             f"got {obs.shape}")
        self._obs[0] = obs
        for name, buf in self._images.items():
            image = images[name]
            if np.shape(image) != buf.shape[1:] or np.asarray(image).dtype != np.uint8:
                raise ValueError(f"{name}: expected uint8 {buf.shape[1:]}, got "
                                 f"{np.asarray(image).dtype} {np.shape(image)}")
            buf[0] = image
        if noise is None:
            self._noise.fill(0.0)
        elif np.shape(noise) != self._noise_shape:
            raise ValueError(f"noise: expected shape ({self.act_dim},), got {np.shape(noise)}")
        else:
            self._noise[0] = noise
        self._run(self._binding)
        if out is None:
            return self._action[0].copy()
        out[...] = self._action[0]
        return out

    def _batch(self, obs: np.ndarray, noise: np.ndarray | None,
               images: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        if obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs: expected shape (B, {self.obs_dim}), got {obs.shape}")
        noise = (np.zeros((obs.shape[0], self.act_dim), np.float32) if noise is None
                 else np.ascontiguousarray(noise, np.float32))
        if noise.shape != (obs.shape[0], self.act_dim):
            raise ValueError(f"noise: expected shape ({obs.shape[0]}, {self.act_dim}), got {noise.shape}")
        feeds = {self.state_input: np.ascontiguousarray(obs, np.float32), NOISE_INPUT: noise}
        for name, shape in self.cameras.items():
            image = np.asarray(images[name])
            if image.shape != (obs.shape[0], *shape) or image.dtype != np.uint8:
                raise ValueError(f"{name}: expected uint8 {(obs.shape[0], *shape)}, got "
                                 f"{image.dtype} {image.shape}")
            feeds[name] = np.ascontiguousarray(image)
        return self.session.run(self._out_names, feeds)[0]

    @property
    def camera_inputs(self) -> tuple[str, ...]:
        """Names of the cameras the graph takes, in graph order (() for a v1 policy)."""
        return tuple(self.cameras)

    @property
    def version(self) -> int | None:
        """The exporter's policy version from the metadata (None for graphs made elsewhere)."""
        try:
            return int(self.metadata[META_VERSION])
        except (KeyError, ValueError):
            return None

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(low, high) the graph scales to, from the metadata spec (None when absent)."""
        if not self.spec or "low" not in self.spec:
            return None
        return np.asarray(self.spec["low"], np.float64), np.asarray(self.spec["high"], np.float64)


def policy_from_file(path: str | Path, **kwargs) -> OnnxPolicy:
    """Load an `.onnx` policy file (kwargs as `OnnxPolicy`)."""
    return OnnxPolicy(Path(path), **kwargs)


def measure_latency(policy: OnnxPolicy, n: int = 200, warmup: int = 10, seed: int = 0) -> np.ndarray:
    """Seconds per single-observation call (with noise, as `PolicySlot.act` calls), n samples;
    a policy with cameras gets random images of its camera shapes."""
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal(policy.obs_dim).astype(np.float32)
    if policy.cameras:
        obs = {"state": obs, **{name: rng.integers(0, 256, shape, dtype=np.uint8)
                                for name, shape in policy.cameras.items()}}
    noise = rng.standard_normal(policy.act_dim).astype(np.float32)
    out = np.empty(policy.act_dim, np.float32)
    for _ in range(warmup):
        policy(obs, noise, out)
    times = np.empty(n)
    clock = time.perf_counter
    for i in range(n):
        start = clock()
        policy(obs, noise, out)
        times[i] = clock() - start
    return times


def _describe(cameras: Mapping[str, tuple[int, int, int]]) -> str:
    return ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in cameras.items()) or "no cameras"


def camera_shapes(cameras: Mapping[str, Sequence[int]] | Sequence[CameraSpec] | None
                  ) -> dict[str, tuple[int, int, int]]:
    """{name: (H, W, C*S)} of a robot's cameras given as CameraSpecs or already as shapes."""
    if not cameras:
        return {}
    if isinstance(cameras, Mapping):
        return {str(k): tuple(int(d) for d in v) for k, v in cameras.items()}
    return {c.name: c.shape for c in cameras}


def validate_policy(policy: OnnxPolicy | bytes | str | Path, *, obs_dim: int, act_dim: int,
                    action_low: Sequence[float] | None, action_high: Sequence[float] | None,
                    probe_obs: Any = None, latency_budget_s: float | None = None,
                    n_random: int = N_RANDOM_PROBES, seed: int = 0,
                    cameras: Mapping[str, Sequence[int]] | Sequence[CameraSpec] | None = None
                    ) -> None:
    """Raise `PolicyRejected` unless `policy` may drive this robot: it loads, has the contract's
    inputs/output, opset >= MIN_OPSET, the robot's dimensions, cameras the robot gives (`cameras`:
    the robot's, None = none; the policy may take fewer) and, when the metadata has a spec, its
    bounds, finite in-bounds actions on
    probe observations (`probes.probe_inputs`: random images for each camera) with zero and
    random noise, and a p99 single-call latency within the budget. `action_low/high` None skips
    the bounds check."""
    if not isinstance(policy, OnnxPolicy):
        policy = OnnxPolicy(policy, provider="cpu")
    if policy.opset < MIN_OPSET:
        raise PolicyRejected(f"opset: {policy.opset} < minimum {MIN_OPSET}")
    if policy.obs_dim != obs_dim:
        raise PolicyRejected(f"obs dim: policy takes {policy.obs_dim}, robot gives {obs_dim}")
    if policy.act_dim != act_dim:
        raise PolicyRejected(f"act dim: policy gives {policy.act_dim}, robot takes {act_dim}")
    robot_cameras = camera_shapes(cameras)
    # Every camera the policy takes, the robot must give, at that shape; a robot camera the
    # policy does not take is ignored (a state-only policy on a camera robot is allowed).
    if any(robot_cameras.get(name) != shape for name, shape in policy.cameras.items()):
        raise PolicyRejected(f"cameras: policy takes {_describe(policy.cameras)}, robot gives "
                             f"{_describe(robot_cameras)}")
    check_bounds = action_low is not None and action_high is not None
    low = np.asarray(action_low if check_bounds else [-np.inf] * act_dim, np.float64)
    high = np.asarray(action_high if check_bounds else [np.inf] * act_dim, np.float64)
    if low.shape != (act_dim,) or high.shape != (act_dim,):
        raise ValueError(f"action_low/high: expected {act_dim} values each")
    if policy.bounds is not None and check_bounds:
        p_low, p_high = policy.bounds
        if p_low.shape != low.shape or not (np.allclose(p_low, low) and np.allclose(p_high, high)):
            raise PolicyRejected(f"spec: policy scales to low {p_low.tolist()} high {p_high.tolist()}, "
                                 f"robot bounds are {low.tolist()} {high.tolist()}")
    rng = np.random.default_rng(seed)
    obs = probe_inputs(obs_dim, policy.cameras, probe_obs, rng, n_random)
    n = count(obs)
    # Tolerance: tanh can round to exactly +-1, and the affine scaling adds a few ulps on top.
    tol = 1e-5 * np.maximum(1.0, np.where(np.isfinite(high - low), high - low, 1.0))
    for label, noise in (("zero noise", np.zeros((n, act_dim), np.float32)),
                         ("random noise", rng.standard_normal((n, act_dim)).astype(np.float32))):
        try:
            action = np.asarray(policy(obs, noise))
        except Exception as err:  # a graph that cannot run on a batch is unusable
            raise PolicyRejected(f"output: running on {n} probe observations failed: {err}") from err
        if action.shape != (n, act_dim) or action.dtype != np.float32:
            raise PolicyRejected(f"output: action is {action.dtype} {action.shape}, "
                                 f"expected float32 {(n, act_dim)}")
        bad = ~np.isfinite(action).all(axis=1)
        if bad.any():
            raise PolicyRejected(f"non-finite: NaN/inf actions on {int(bad.sum())} of {n} "
                                 f"probe observations ({label})")
        over, under = action - high > tol, low - action > tol
        if over.any() or under.any():
            row, dim = np.argwhere(over | under)[0]
            raise PolicyRejected(f"out of bounds: action[{dim}] = {action[row, dim]:.6g} outside "
                                 f"[{low[dim]:.6g}, {high[dim]:.6g}] on {int((over | under).any(1).sum())} "
                                 f"of {n} probe observations ({label})")
    # Always exercised, budget or not: the single-observation path must run, and this warms it up
    # before the control thread's first tick on it.
    p99 = float(np.percentile(measure_latency(policy, n=200), 99))
    if latency_budget_s is not None and p99 > latency_budget_s:
        raise PolicyRejected(f"latency: p99 {p99 * 1e6:.0f} us > budget {latency_budget_s * 1e6:.0f} us")
