"""Learner throughput, pixel setting: pixel RLPD updates per second (DESIGN.md "Performance
budgets"), run as `python benchmarks/learner_throughput.py --pixels [options]`.

Setting (ALGORITHMS.md 1.10, rlpd_pixels_config): one camera of 64 x 64 RGB, 3 stacked frames
(uint8 [64, 64, 9]), no state vector, action 6, batch N = 256, E = 10 LayerNorm critics, Z = 1,
2x256, latent 50, D4PG encoder (32, 64, 128, 256), UTD 1: an update is one critic step plus the
actor and temperature steps, the random shifts of obs and next_obs and the conv-weight copy
into the actor. Variants, measured in interleaved windows: eager fp32, compiled fp32
(torch.compile of the losses), eager bf16 autocast, and the

* conv+matmul ceilings (fp32, and bf16 with --bf16): only the convolutions and matrix products
  of one update at their real shapes (`ConvMatmulCeiling`), everything else (ReLU, LayerNorm,
  the loss, Adam, the EMA, the augmentation) assumed free: the most an implementation of this
  math in that precision reaches here. bf16 runs on other instructions (AVX512-BF16, AMX), so
  the bf16 variant is given as a share of both.

Each rate is also given as a share of that ceiling. `--size 32` etc. for the CI-sized check.
"""
from __future__ import annotations

import statistics
import time
import traceback

import numpy as np
import torch
import torch.nn.functional as F

from o2o_robot.agents.rlpd import RLPD
from o2o_robot.config import RLPDConfig
from o2o_robot.spaces import CameraSpec

ACT, N, E, Z, HIDDEN, LATENT = 6, 256, 10, 1, (256, 256), 50


def pixel_batch(cam: CameraSpec, state_dim: int, rows: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"obs": rng.standard_normal((rows, state_dim), np.float32),
            "next_obs": rng.standard_normal((rows, state_dim), np.float32),
            "action": rng.uniform(-1, 1, (rows, ACT)).astype(np.float32),
            "reward": rng.standard_normal(rows).astype(np.float32),
            "mask": np.ones(rows, np.float32),
            f"pixels/{cam.name}": rng.integers(0, 256, (rows, *cam.shape), dtype=np.uint8),
            f"next_pixels/{cam.name}": rng.integers(0, 256, (rows, *cam.shape), dtype=np.uint8)}


class ConvMatmulCeiling:
    """The convolutions and matmuls of one pixel RLPD update at UTD 1, nothing else.

    Conv trunk forwards: actor(next_obs) for a', critic(obs) and target(next_obs) in L_Q,
    actor(obs) and critic(obs) in L_pi: 5. One conv backward (L_Q): weight grads of every
    layer, input grads of all but the first. Dense: the latent projection (forward x5, backward
    x1) and the ensemble critic's matmuls (online forward and backward, target forward on Z
    members, L_pi's forward on E), the actor MLP's forwards; the actor's backward is omitted."""

    def __init__(self, cam: CameraSpec, features, state_dim: int, n: int = N,
                 dtype: torch.dtype = torch.float32):
        randn = lambda *shape: torch.randn(*shape, dtype=dtype)  # noqa: E731
        self.x = torch.rand(n, cam.depth, cam.height, cam.width, dtype=dtype)
        self.w, self.acts = [], [self.x]
        c = cam.depth
        for width in features:
            self.w.append(randn(width, c, 3, 3) * 0.05)
            self.acts.append(F.conv2d(self.acts[-1], self.w[-1], stride=2))
            c = width
        flat = self.acts[-1].flatten(1)
        self.flat, self.proj = flat, randn(flat.shape[1], LATENT)
        feat = LATENT + (LATENT if state_dim else 0) + ACT
        dims = [feat, *HIDDEN, 1]
        self.cw = [randn(E, i, o) for i, o in zip(dims[:-1], dims[1:])]
        self.ch = [randn(E, n, d) for d in dims]
        self.aw = [randn(i, o) for i, o in zip([feat - ACT, *HIDDEN], [*HIDDEN, 2 * ACT])]
        self.grad = randn(n, LATENT)

    def update(self, batch) -> None:
        for _ in range(5):
            h = self.x
            for w in self.w:
                h = F.conv2d(h, w, stride=2)
            self.flat @ self.proj
        for layer in reversed(range(len(self.w))):
            torch.ops.aten.convolution_backward(
                self.acts[layer + 1], self.acts[layer], self.w[layer], None, [2, 2], [0, 0],
                [1, 1], False, [0, 0], 1, [layer > 0, True, False])
        self.flat.T @ self.grad
        for members in (E, Z, E):                       # online, target, L_pi's forward
            h = self.ch[0][:members]
            for w in self.cw:
                h = torch.bmm(h, w[:members])
        for layer in reversed(range(len(self.cw))):     # online backward
            torch.bmm(self.ch[layer].transpose(1, 2), self.ch[layer + 1])
            if layer:
                torch.bmm(self.ch[layer + 1], self.cw[layer].transpose(1, 2))
        for _ in range(2):                              # actor forwards: a' and a~
            h = self.ch[0][0, :, :-ACT]
            for w in self.aw:
                h = h @ w


def run_pixels(seconds: float, window: float, size: int, frames: int, features: list[int],
               state_dim: int, threads: int, compile_: bool, bf16: bool, n: int = N) -> None:
    """Build the variants, measure them window by window, print updates/s and ceiling shares."""
    torch.set_num_threads(threads)
    cam = CameraSpec("cam", size, size, 3, frames)
    cfg = RLPDConfig(hidden_dims=list(HIDDEN), critic_ensemble_size=E, critic_subset_size=Z,
                     backup_entropy=False, init_temperature=0.1, latent_dim=LATENT,
                     encoder_features=features)
    batch = pixel_batch(cam, state_dim, n)
    print(f"torch {torch.__version__}, {threads} thread(s); pixel RLPD: {size}x{size}x3, "
          f"{frames} frames, state {state_dim}, encoder {features}, E={E} Z={Z} UTD=1 N={n} "
          f"hidden={list(HIDDEN)} latent={LATENT} act={ACT}")
    plan = [("eager fp32", False, False)]
    if compile_:
        plan.append(("compiled fp32", True, False))
    if bf16:
        plan.append(("eager bf16 autocast", False, True))
    variants: dict = {}
    for name, compiled, use_bf16 in plan:
        agent = RLPD(state_dim, ACT, cfg, batch_size=n, compile=compiled, bf16=use_bf16,
                     cameras=(cam,))
        start = time.perf_counter()
        try:
            agent.update(batch)          # warm-up; compiles here
            agent.update(batch)
        except Exception:
            print(f"{name}: FAILED\n{traceback.format_exc()}")
            continue
        note = f" (compile error, ran eager: {agent.compile_error})" if agent.compile_error else ""
        print(f"{name}: two warm-up updates {time.perf_counter() - start:.1f} s{note}")
        variants[name] = agent
    variants["fp32 ceiling"] = ConvMatmulCeiling(cam, features, state_dim, n)
    if bf16:   # bf16 runs on other instructions (AVX512-BF16 / AMX): its own ceiling
        variants["bf16 ceiling"] = ConvMatmulCeiling(cam, features, state_dim, n, torch.bfloat16)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    spent = dict.fromkeys(variants, 0.0)
    while min(spent.values()) < seconds:
        for name, agent in variants.items():
            start, steps = time.perf_counter(), 0
            while True:
                agent.update(batch)
                steps += 1
                elapsed = time.perf_counter() - start
                if elapsed >= window:
                    break
            rates[name].append(steps / elapsed)
            spent[name] += elapsed
    print(f"\npixel RLPD updates/s (critic updates/s at UTD 1) over "
          f"{len(rates['fp32 ceiling'])} windows of >= {window} s (best / median)")
    for name, r in rates.items():
        line = f"  {name:22s} best {max(r):7.2f}   median {statistics.median(r):7.2f}"
        if "ceiling" not in name:
            line += f"   {max(r) / max(rates['fp32 ceiling']):.0%} of the fp32 ceiling"
            if "bf16" in name and "bf16 ceiling" in rates:
                line += f", {max(r) / max(rates['bf16 ceiling']):.0%} of the bf16 ceiling"
        print(line)
    print("Windows are wall-clock; other load on the machine lowers the median more than the best.")
