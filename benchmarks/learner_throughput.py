"""Learner throughput: RLPD critic updates per second (DESIGN.md "Performance budgets").

Setting: E=10, Z=2, UTD G=20, minibatch N=256, hidden 2x256, obs 17, action 6 (HalfCheetah
sized), one `RLPD.update` per "env step" on a fixed 5,120-row big batch; a critic update is one
of the G critic steps, and the once-per-update actor and temperature steps are included in the
time. Variants measured in the same run, interleaved window by window so that other load on the
machine hits all of them alike:

* naive: a plain PyTorch loop over 10 separate critic nn.Modules (per-member forward, a loop of
  MSEs, torch.optim.Adam with default settings, a Python loop for the target EMA);
* rlpd eager fp32, rlpd compiled fp32 (torch.compile of the losses and of Adam+EMA);
* with --bf16: rlpd eager bf16 autocast (and compiled bf16 unless --no-compile);
* fp32 matmul ceiling: only the matrix products of the update at their real shapes
  (`MatmulCeiling`), the most any fp32 implementation of this math could reach here.

Reported per variant: the best window and the median window (updates/s). The official JAX RLPD
figure (92-95 updates/s on the 2-core reference machine) is an anchor stated in the issue, NOT
measured here. Usage: python benchmarks/learner_throughput.py [--seconds 60] [--threads 2] [--bf16]

Pixel setting (`--pixels`, benchmarks/pixel_throughput.py): pixel RLPD at 64 x 64, 3 stacked
frames, batch 256, E=10, Z=1, UTD 1: updates/s eager fp32, compiled and bf16 autocast, each as a
share of a conv+matmul ceiling measured in the same run. `--size`, `--frames`, `--features` and
`--state-dim`, `--batch` change the setting (e.g. `--size 32` for the CI-sized learning check).

Contention (`learner.torch_threads`, o2o_robot/learning/threads.py): `--contend K` keeps K
other processes spinning on the CPU while it measures; `--threads auto` follows the free cores
as the learner does. `--threads-table` runs the eager fp32 update in a fresh process per setting
(1 thread, 2 threads with OpenMP's default and with PASSIVE waits, auto), idle and with
`--contend` (default 1) busy processes, and prints one table.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import os
import re
import statistics
import subprocess
import sys
import time
import traceback

import numpy as np
import torch
from torch import nn

from o2o_robot.agents.networks import LN_EPS, TanhGaussianActor
from o2o_robot.agents.rlpd import RLPD
from o2o_robot.config import RLPDConfig

OBS, ACT, E, Z, G, N, HIDDEN = 17, 6, 10, 2, 20, 256, (256, 256)
JAX_ANCHOR = (92.0, 95.0)  # official ikostrikov/rlpd on the reference machine (issue), not measured


def tune_malloc() -> bool:
    """Keep freed blocks in the glibc heap instead of unmapping them: the update allocates many
    ~2.6 MB temporaries, and memory given back to the OS costs a page fault per 4 KB when touched
    again. It made isolated chains of elementwise ops up to 3x faster here, but its effect on the
    whole update was within the run-to-run noise, so it is opt-in. Applies to every variant."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 32 << 20)) and bool(libc.mallopt(-1, 1 << 30))  # MMAP, TRIM
    except (OSError, AttributeError):
        return False


def big_batch(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = G * N
    return {"obs": rng.standard_normal((rows, OBS), np.float32),
            "action": rng.uniform(-1, 1, (rows, ACT)).astype(np.float32),
            "reward": rng.standard_normal(rows).astype(np.float32),
            "next_obs": rng.standard_normal((rows, OBS), np.float32),
            "mask": (rng.random(rows) > 0.01).astype(np.float32)}


class NaiveRLPD:
    """The plain-PyTorch baseline: same math, one nn.Module per critic, Python loops."""

    def __init__(self, cfg: RLPDConfig):
        def critic() -> nn.Module:
            layers, d = [], OBS + ACT
            for h in HIDDEN:
                layers += [nn.Linear(d, h), nn.LayerNorm(h, eps=LN_EPS), nn.ReLU()]
                d = h
            return nn.Sequential(*layers, nn.Linear(d, 1))
        self.cfg = cfg
        self.critics = nn.ModuleList(critic() for _ in range(E))
        self.targets = copy.deepcopy(self.critics).requires_grad_(False)
        self.actor = TanhGaussianActor(OBS, ACT, HIDDEN)
        self.log_alpha = nn.Parameter(torch.zeros(()))
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), cfg.critic_lr)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), cfg.actor_lr)
        self.temp_opt = torch.optim.Adam([self.log_alpha], cfg.temp_lr)

    def update(self, batch: dict[str, np.ndarray]) -> None:
        b = {k: torch.as_tensor(v) for k, v in batch.items()}
        cfg = self.cfg
        for g in range(G):
            mb = {k: v[g * N:(g + 1) * N] for k, v in b.items()}
            with torch.no_grad():
                na, nlp = self.actor.sample(mb["next_obs"])
                x = torch.cat([mb["next_obs"], na], -1)
                idx = torch.randperm(E)[:Z].tolist()
                nq = torch.min(torch.stack([self.targets[i](x).squeeze(-1) for i in idx]), 0).values
                y = mb["reward"] + cfg.discount * mb["mask"] * (nq - self.log_alpha.exp() * nlp)
            x = torch.cat([mb["obs"], mb["action"]], -1)
            loss = sum(((c(x).squeeze(-1) - y) ** 2).mean() for c in self.critics) / E
            self.critic_opt.zero_grad()
            loss.backward()
            self.critic_opt.step()
            with torch.no_grad():
                for p, tp in zip(self.critics.parameters(), self.targets.parameters()):
                    tp.mul_(1 - cfg.tau).add_(p, alpha=cfg.tau)
        a, lp = self.actor.sample(mb["obs"])
        x = torch.cat([mb["obs"], a], -1)
        q = sum(c(x).squeeze(-1) for c in self.critics) / E
        a_loss = (self.log_alpha.exp().detach() * lp - q).mean()
        self.actor_opt.zero_grad()
        a_loss.backward(inputs=list(self.actor.parameters()))
        self.actor_opt.step()
        t_loss = self.log_alpha.exp() * (-lp.detach().mean() + ACT / 2)
        self.temp_opt.zero_grad()
        t_loss.backward()
        self.temp_opt.step()


class MatmulCeiling:
    """Only the matrix products of one critic step, each at its real shape and layout: online
    critic forward (E members) and backward (weight grads of every layer, input grads of the
    hidden layers), and the target forward (Z members). `update` runs G such steps, so its rate
    is the fp32 ceiling of any implementation of the same math on this machine: everything else
    (LayerNorm, ReLU, the loss, Adam, the EMA) is assumed free."""

    def __init__(self):
        dims = [OBS + ACT, *HIDDEN, 1]
        self.x = torch.randn(N, dims[0]).unsqueeze(0).expand(E, -1, -1)
        self.w = [torch.randn(E, i, o) for i, o in zip(dims[:-1], dims[1:])]
        self.h = [torch.randn(E, N, d) for d in dims[1:]]

    def update(self, batch) -> None:
        for _ in range(G):
            for members in (Z, E):                                  # target, then online forward
                x = self.x[:members]
                for w in self.w:
                    x = torch.bmm(x, w[:members])
            inputs = [self.x, *self.h[:-1]]
            for layer in reversed(range(len(self.w))):              # backward
                g = self.h[layer]
                torch.bmm(inputs[layer].transpose(1, 2), g)         # weight grad
                if layer:
                    torch.bmm(g, self.w[layer].transpose(1, 2))     # input grad


def measure(variants: dict, batch, seconds: float, window: float,
            tuner=None) -> dict[str, list[float]]:
    """Round-robin windows of about `window` s per variant until each had `seconds`."""
    rates: dict[str, list[float]] = {name: [] for name in variants}
    spent = {name: 0.0 for name in variants}
    while min(spent.values()) < seconds:
        if tuner is not None:
            tuner.maybe_adjust()
        for name, agent in variants.items():
            start, steps = time.perf_counter(), 0
            while True:
                agent.update(batch)
                steps += G
                elapsed = time.perf_counter() - start
                if elapsed >= window:
                    break
            rates[name].append(steps / elapsed)
            spent[name] += elapsed
    return rates


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="measured time per variant")
    ap.add_argument("--window", type=float, default=1.0, help="seconds per measurement window")
    ap.add_argument("--threads", default="2", help="torch threads: a number, or auto")
    ap.add_argument("--contend", type=int, default=0,
                    help="other processes kept spinning on the CPU while measuring")
    ap.add_argument("--threads-table", action="store_true",
                    help="eager fp32 per thread setting, idle and contended (module docstring)")
    ap.add_argument("--bf16", action="store_true", help="also measure bf16 autocast")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--no-naive", action="store_true", help="skip the plain-loop baseline")
    ap.add_argument("--tune-malloc", action="store_true",
                    help="keep freed memory in the glibc heap (an experiment; see tune_malloc)")
    ap.add_argument("--pixels", action="store_true", help="the pixel setting (module docstring)")
    ap.add_argument("--size", type=int, default=64, help="--pixels: image side, pixels")
    ap.add_argument("--frames", type=int, default=3, help="--pixels: stacked frames")
    ap.add_argument("--features", default="32,64,128,256", help="--pixels: conv widths")
    ap.add_argument("--state-dim", type=int, default=0, help="--pixels: state vector size")
    ap.add_argument("--batch", type=int, default=256, help="--pixels: minibatch size N")
    args = ap.parse_args(argv)
    if args.pixels:
        from pixel_throughput import run_pixels   # benchmarks/ is on sys.path when run as a script
        return run_pixels(args.seconds, args.window, args.size, args.frames,
                          [int(f) for f in args.features.split(",")], args.state_dim,
                          1 if args.threads == "auto" else int(args.threads),
                          not args.no_compile, True, args.batch)
    if args.threads_table:
        return threads_table(args.seconds, args.window, args.contend or 1)
    from o2o_robot.learning.threads import ThreadTuner

    tuner = ThreadTuner(args.threads if args.threads == "auto" else int(args.threads),
                        period_s=2.0)
    tuned = tune_malloc() if args.tune_malloc else False
    cfg = RLPDConfig(hidden_dims=list(HIDDEN), critic_ensemble_size=E, critic_subset_size=Z)
    batch = big_batch()
    print(f"torch {torch.__version__}, {tuner.threads} thread(s) ({args.threads}), OMP_WAIT_POLICY "
          f"{os.environ.get('OMP_WAIT_POLICY', '(default)')}, {args.contend} spinning "
          f"process(es), glibc malloc tuned: {tuned}; "
          f"E={E} Z={Z} UTD={G} N={N} hidden={list(HIDDEN)} obs={OBS} act={ACT}")

    variants: dict = {}
    if not args.no_naive:
        variants["naive loop fp32"] = NaiveRLPD(cfg)
    plan = [("rlpd eager fp32", False, False)]
    if not args.no_compile:
        plan.append(("rlpd compiled fp32", True, False))
    if args.bf16:
        plan.append(("rlpd eager bf16", False, True))
        if not args.no_compile:
            plan.append(("rlpd compiled bf16", True, True))
    for name, compiled, bf16 in plan:
        agent = RLPD(OBS, ACT, cfg, batch_size=N, compile=compiled, bf16=bf16)
        start = time.perf_counter()
        try:
            agent.update(batch)  # warm-up; compiles here
        except Exception:
            print(f"{name}: FAILED\n{traceback.format_exc()}")
            continue
        if compiled:
            note = f"compile error, ran eager: {agent.compile_error}" if agent.compile_error \
                else "compiled"
            print(f"{name}: first update {time.perf_counter() - start:.1f} s ({note})")
        variants[name] = agent
    for agent in variants.values():  # second warm-up: allocator and caches settle
        agent.update(batch)

    variants["fp32 matmul ceiling"] = MatmulCeiling()
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(args.contend)]
    try:
        rates = measure(variants, batch, args.seconds, args.window,
                        tuner if tuner.auto else None)
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    if tuner.auto:
        print(f"auto ended at {tuner.threads} thread(s) after {tuner.changes} change(s)")
    base, ceiling = rates.get("naive loop fp32"), rates.get("fp32 matmul ceiling")
    print(f"\ncritic updates/s over {len(next(iter(rates.values())))} windows of ~{args.window} s "
          f"per variant (best window / median window)")
    for name, r in rates.items():
        best, med = max(r), statistics.median(r)
        line = f"  {name:22s} best {best:7.1f}   median {med:7.1f}"
        if ceiling and name != "fp32 matmul ceiling":
            line += f"   {best / max(ceiling):.0%} of ceiling"
        if base and name not in ("naive loop fp32", "fp32 matmul ceiling"):
            line += f"   vs naive loop: {best / max(base):.2f}x best, {med / statistics.median(base):.2f}x median"
        line += f"   vs JAX anchor {JAX_ANCHOR[0]:.0f}-{JAX_ANCHOR[1]:.0f}/s (stated): {best / JAX_ANCHOR[1]:.2f}-{best / JAX_ANCHOR[0]:.2f}x"
        print(line)
    print("Windows are wall-clock; other load on the machine lowers the median more than the best.")


def threads_table(seconds: float, window: float, contend: int) -> None:
    """One fresh process per (setting, load): the OpenMP wait policy is fixed at torch's load."""
    settings = [("1 thread", "1", None), ("2 threads, OMP default", "2", "ACTIVE"),
                ("2 threads, OMP PASSIVE", "2", "PASSIVE"), ("auto (PASSIVE)", "auto", "PASSIVE")]
    print(f"eager fp32 RLPD critic updates/s (median window), {seconds:.0f} s each; "
          f"{os.cpu_count()} CPUs")
    print(f"  {'setting':24s} {'idle':>8s} {f'{contend} busy':>8s}")
    for label, threads, policy in settings:
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if policy:
            env["OMP_WAIT_POLICY"] = policy
        row = []
        for load in (0, contend):
            out = subprocess.run(
                [sys.executable, __file__, "--threads", threads, "--contend", str(load),
                 "--seconds", str(seconds), "--window", str(window), "--no-compile",
                 "--no-naive"], env=env, capture_output=True, text=True).stdout
            found = re.search(r"rlpd eager fp32\s+best\s+[\d.]+\s+median\s+([\d.]+)", out)
            row.append(found.group(1) if found else "failed")
        print(f"  {label:24s} {row[0]:>8s} {row[1]:>8s}")


if __name__ == "__main__":
    main()
