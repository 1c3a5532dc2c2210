"""Image encoders for pixel observations (ALGORITHMS.md section 1.10). torch only.

An observation with cameras is a dict: "state" float32 [B, d] and, per camera, uint8
[B, H, W, C*S] (S stacked frames on the last axis, oldest first). `ObsEncoder` turns it into
one feature vector:

    features = concat( tanh(LN(Dense_latent(trunk_c(image_c)))) for each camera c,
                       tanh(LN(Dense_latent(state))) )

* `ConvTrunk`: the D4PG-style trunk the official pixel RLPD trains from scratch: image / 255,
  then 4 x [Conv 3x3, stride 2, VALID, ReLU] with widths (32, 64, 128, 256), flattened.
* `FrozenTrunk`: a user's pretrained per-frame encoder (a `torch.export` program file, float
  [N, C, H, W] in [0, 1] -> [N, F] with a dynamic N), applied to each of the S frames, features
  concatenated; never trained. torch.export rather than TorchScript: the ONNX exporter cannot
  trace through a loaded ScriptModule, and TorchScript is deprecated upstream.
* the critic's `ObsEncoder` owns and trains its trunks; the actor's has its own copy of them,
  overwritten with the critic's before each update (`copy_trunks`) and cut from the gradient
  (`detach_trunks`), so the actor loss trains only its projections.

Every image path is on the learner's device; `random_shift` is DrQ's augmentation.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from o2o_robot.agents.networks import LN_EPS, _xavier_linear
from o2o_robot.agents.ops import batch_tensors
from o2o_robot.spaces import CameraSpec

PAD = 4  # random-shift padding, pixels (DrQ, official rlpd)


# ------------------------------------------------------------------------------- augmentation
def random_shift(images: torch.Tensor, generator: torch.Generator | None = None,
                 pad: int = PAD) -> torch.Tensor:
    """DrQ random shift of uint8 (or float) images [B, H, W, D]: pad by `pad` pixels with edge
    replication, crop back to H x W at an offset drawn independently per sample.

    The offsets come from `generator` on the images' device. On the CPU the crops are numpy
    slice copies, one per sample (a whole row of W x D values at a time); elsewhere one gather
    (the image indexed at clamp(i + o - pad, 0, H - 1)). Both give the same images; the gather
    costs one index computation per byte, 4-7x the copies on the CPU."""
    dev = images.device
    offsets = torch.randint(0, 2 * pad + 1, (images.shape[0], 2), generator=generator, device=dev)
    if dev.type == "cpu":
        return torch.from_numpy(_shift_copies(images.numpy(), offsets.tolist(), pad))
    return _shift_gather(images, offsets, pad)


def _shift_gather(images: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """`random_shift` as one gather on any device: sample b's pixel (i, j) is the image's pixel
    (clamp(i + dy - pad), clamp(j + dx - pad)), offsets [B, 2] = (dy, dx) in 0..2 * pad."""
    b, h, w, _ = images.shape
    dev = images.device
    rows = (torch.arange(h, device=dev) + offsets[:, :1] - pad).clamp_(0, h - 1)    # [B, H]
    cols = (torch.arange(w, device=dev) + offsets[:, 1:] - pad).clamp_(0, w - 1)    # [B, W]
    batch = torch.arange(b, device=dev)[:, None, None]
    return images[batch, rows[:, :, None], cols[:, None, :]]


def _shift_copies(x: np.ndarray, offsets: list[list[int]], pad: int) -> np.ndarray:
    """`random_shift` on the CPU: edge-pad `x` [B, H, W, D] once, then copy out each sample's
    H x W window at its (row, column) offset."""
    b, h, w, d = x.shape
    padded = np.empty((b, h + 2 * pad, w + 2 * pad, d), x.dtype)
    padded[:, pad:pad + h, pad:pad + w] = x
    padded[:, :pad, pad:pad + w] = x[:, :1]               # top and bottom rows repeated
    padded[:, pad + h:, pad:pad + w] = x[:, -1:]
    padded[:, :, :pad] = padded[:, :, pad:pad + 1]        # then the left and right columns
    padded[:, :, pad + w:] = padded[:, :, pad + w - 1:pad + w]
    out = np.empty_like(x)
    for i, (dy, dx) in enumerate(offsets):
        out[i] = padded[i, dy:dy + h, dx:dx + w]
    return out


# ------------------------------------------------------------------------------------ trunks
def _to_float_nchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, D] -> float [B, D, H, W] in [0, 1], converted before the permute: a
    contiguous conversion, and a channels-last view that the convolutions take as it is."""
    return images.float().div(255.0).permute(0, 3, 1, 2)


class ConvTrunk(nn.Module):
    """D4PG conv trunk: uint8 [B, H, W, D] -> [B, out_dim]; Xavier-uniform weights, zero biases."""

    def __init__(self, camera: CameraSpec, features: Sequence[int] = (32, 64, 128, 256)):
        super().__init__()
        layers, channels = [], camera.depth
        for width in features:
            conv = nn.Conv2d(channels, int(width), kernel_size=3, stride=2)  # VALID padding
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU()]
            channels = int(width)
        self.net = nn.Sequential(*layers, nn.Flatten())
        side = lambda n: _valid_size(n, len(features))  # noqa: E731
        if side(camera.height) < 1 or side(camera.width) < 1:
            raise ValueError(f"camera {camera.name!r}: {camera.height}x{camera.width} is too small "
                             f"for {len(features)} stride-2 3x3 convolutions")
        self.out_dim = channels * side(camera.height) * side(camera.width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(_to_float_nchw(images))


def _valid_size(n: int, layers: int) -> int:
    for _ in range(layers):
        n = (n - 3) // 2 + 1
    return n


class FrozenTrunk(nn.Module):
    """A pretrained per-frame encoder, frozen: uint8 [B, H, W, C*S] -> [B, S * F]."""

    def __init__(self, module: nn.Module, camera: CameraSpec, out_features: int):
        super().__init__()
        self.module = module.requires_grad_(False)
        self.channels, self.frames = camera.channels, camera.frame_stack
        self.out_dim = self.frames * int(out_features)

    def train(self, mode: bool = True) -> "FrozenTrunk":
        # Not passed on: the program runs as it was exported (eval mode, batch-norm statistics
        # as trained), and an exported program's module refuses train()/eval().
        self.training = mode
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = images.shape
        frames = images.reshape(b, h, w, self.frames, self.channels).permute(0, 3, 4, 1, 2)
        x = frames.reshape(b * self.frames, self.channels, h, w).float().div(255.0)
        with torch.no_grad():
            return self.module(x).reshape(b, -1)


def load_pretrained(path: str | Path, cameras: Sequence[CameraSpec],
                    key: str = "algorithm.pretrained_encoder") -> tuple[nn.Module, int]:
    """(module, F) of a per-frame encoder file saved with `torch.export.save` (float
    [N, C, H, W] in [0, 1] -> [N, F], N dynamic), checked on every camera's frame size with two
    batch sizes; ValueError naming `key` when it is missing, unreadable or does not fit."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"{key}: {path} does not exist (a torch.export program saved with "
                         f"torch.export.save; nothing is downloaded)")
    try:
        module = torch.export.load(str(path)).module()
    except Exception as err:  # torch raises several private error types here
        raise ValueError(f"{key}: {path} is not a torch.export program "
                         f"({_first_line(err)})") from err
    features = None
    for cam in cameras:
        for n in (2, 3):   # two sizes: an export with a fixed batch size does not fit
            try:
                with torch.no_grad():
                    out = module(torch.zeros(n, cam.channels, cam.height, cam.width))
            except Exception as err:  # noqa: BLE001 - any failure means the file does not fit
                raise ValueError(f"{key}: {path} cannot encode camera {cam.name!r} frames "
                                 f"[N, {cam.channels}, {cam.height}, {cam.width}] with a dynamic "
                                 f"N ({_first_line(err)})") from err
            if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != n or \
                    not torch.isfinite(out).all():
                shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"{key}: {path} maps camera {cam.name!r} frames to {shape}, "
                                 f"expected finite [N, F]")
            if features is not None and out.shape[1] != features:
                raise ValueError(f"{key}: {path} gives {out.shape[1]} features for camera "
                                 f"{cam.name!r} but {features} for another camera")
            features = int(out.shape[1])
    return module, int(features or 0)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [repr(err)])[0][:200]


# ------------------------------------------------------------------------------- the encoder
class Projection(nn.Sequential):
    """Dense(latent) -> LayerNorm -> tanh, the projection of every camera and of the state."""

    def __init__(self, in_dim: int, latent_dim: int):
        super().__init__(_xavier_linear(in_dim, latent_dim), nn.LayerNorm(latent_dim, eps=LN_EPS),
                         nn.Tanh())


class ObsEncoder(nn.Module):
    """Observation dict -> features [B, out_dim] (module docstring); `detach_trunks` stops the
    gradient at the trunk outputs (the actor's encoder)."""

    def __init__(self, state_dim: int, cameras: Sequence[CameraSpec], trunks: Mapping[str, nn.Module],
                 latent_dim: int, detach_trunks: bool = False):
        super().__init__()
        self.cameras = tuple(cameras)
        self.state_dim, self.detach_trunks = int(state_dim), bool(detach_trunks)
        self.trunks = nn.ModuleDict({c.name: trunks[c.name] for c in self.cameras})
        self.projections = nn.ModuleDict({c.name: Projection(trunks[c.name].out_dim, latent_dim)
                                          for c in self.cameras})
        self.state_projection = Projection(state_dim, latent_dim) if state_dim else None
        self.out_dim = latent_dim * (len(self.cameras) + (1 if state_dim else 0))

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for cam in self.cameras:
            x = self.trunks[cam.name](obs[cam.name])
            parts.append(self.projections[cam.name](x.detach() if self.detach_trunks else x))
        if self.state_projection is not None:
            parts.append(self.state_projection(obs["state"]))
        return torch.cat(parts, dim=-1)


def build_trunks(cameras: Sequence[CameraSpec], features: Sequence[int],
                 pretrained: tuple[nn.Module, int] | None = None) -> dict[str, nn.Module]:
    """One trunk per camera: trained `ConvTrunk`s, or `FrozenTrunk`s around a loaded file."""
    if pretrained is None:
        return {c.name: ConvTrunk(c, features) for c in cameras}
    module, out_features = pretrained
    return {c.name: FrozenTrunk(module, c, out_features) for c in cameras}


@torch.no_grad()
def copy_trunks(target: ObsEncoder, source: ObsEncoder) -> None:
    """target's trunk weights <- source's (the actor takes the critic's conv weights)."""
    dst, src = list(target.trunks.parameters()), list(source.trunks.parameters())
    if dst:
        torch._foreach_copy_(dst, src)


# ------------------------------------------------------------------ where pixels enter an agent
def _images(value: Any, camera: CameraSpec, key: str, rows: int | None,
            device: torch.device | str) -> torch.Tensor:
    """uint8 images of one camera as a tensor on `device`, shape checked: [rows, H, W, C*S]
    (rows None: one image [H, W, C*S] or a batch)."""
    t = value if torch.is_tensor(value) else torch.from_numpy(np.ascontiguousarray(value))
    if t.dtype != torch.uint8:
        raise ValueError(f"{key}: expected uint8 images, got {t.dtype}")
    ok = (tuple(t.shape[1:]) == camera.shape and (rows is None or t.shape[0] == rows)) or \
        (rows is None and tuple(t.shape) == camera.shape)
    if not ok:
        want = [rows if rows is not None else "B", *camera.shape]
        raise ValueError(f"{key}: has shape {list(t.shape)}, expected {want}")
    return t.to(device, non_blocking=True)


def observation_batch(big_batch: Mapping[str, Any], keys: Sequence[str],
                      cameras: Sequence[CameraSpec], state_dim: int, act_dim: int,
                      device: torch.device | str,
                      generator: torch.Generator | None) -> dict[str, Any]:
    """`ops.batch_tensors` of `keys`, then obs and next_obs as observation dicts: {"state": the
    state vectors, camera: its `pixels/<name>` (next: `next_pixels/<name>`) images randomly
    shifted}. obs and next_obs draw their shifts separately; everything runs on `device`."""
    out: dict[str, Any] = batch_tensors(big_batch, keys, state_dim, act_dim, device)
    rows = out["reward"].shape[0]
    for obs_key, prefix in (("obs", "pixels/"), ("next_obs", "next_pixels/")):
        obs = {"state": out[obs_key]}
        for cam in cameras:
            key = prefix + cam.name
            if key not in big_batch:
                raise KeyError(f"big batch: missing key {key} (camera {cam.name!r})")
            obs[cam.name] = random_shift(_images(big_batch[key], cam, key, rows, device), generator)
        out[obs_key] = obs
    return out


@torch.no_grad()
def pixel_actions(policy: Callable[[dict], torch.Tensor], obs: Mapping[str, Any],
                  cameras: Sequence[CameraSpec], state_dim: int,
                  device: torch.device | str) -> np.ndarray:
    """`policy` on one observation dict (state [d], images [H, W, C*S]) or a batch of them
    (leading B everywhere), as numpy actions of the same leading shape (no augmentation)."""
    if not isinstance(obs, Mapping):
        raise ValueError(f"act: expected an observation dict with 'state' and cameras "
                         f"{[c.name for c in cameras]}, got {type(obs).__name__}")
    missing = [k for k in ("state", *(c.name for c in cameras)) if k not in obs]
    if missing:
        raise ValueError(f"act: observation lacks {missing}")
    state = torch.as_tensor(np.asarray(obs["state"], np.float32), device=device)
    single = state.dim() == 1
    state = state[None] if single else state
    if state.dim() != 2 or state.shape[1] != state_dim:
        raise ValueError(f"act: state must be [{state_dim}] or [B, {state_dim}], "
                         f"got {list(np.shape(obs['state']))}")
    batch = {"state": state}
    for cam in cameras:
        images = _images(obs[cam.name], cam, cam.name, None, device)
        batch[cam.name] = images[None] if single else images
        if batch[cam.name].dim() != 4 or batch[cam.name].shape[0] != state.shape[0]:
            raise ValueError(f"act: {cam.name} has {list(images.shape)}, expected one image "
                             f"per state row")
    a = policy(batch).cpu().numpy()
    return a[0] if single else a


# -------------------------------------------------------------------------------------- export
class PixelPolicyExport(nn.Module):
    """Exportable sampler with the encoder inside: forward(state [B, d], *images (uint8
    [B, H, W, C*S], one per camera in config order), noise [B, act_dim]) =
    tanh(mu + sigma * noise) of the actor on the observation. CPU deep copy, eval, no grad."""

    def __init__(self, actor: nn.Module, cameras: Sequence[CameraSpec]):
        super().__init__()
        self.actor = copy.deepcopy(actor).cpu().eval().requires_grad_(False)
        self.cameras = tuple(cameras)
        self.obs_dim, self.act_dim = self.actor.encoder.state_dim, actor.act_dim
        self.eval()

    def forward(self, state: torch.Tensor, *images_and_noise: torch.Tensor) -> torch.Tensor:
        *images, noise = images_and_noise
        obs = {"state": state, **{c.name: x for c, x in zip(self.cameras, images)}}
        mu, log_std = self.actor(obs)
        return torch.tanh(mu + log_std.exp() * noise)
