"""Single-observation policy inference latency: what one control tick pays for the actor.

Prints p50 / p99 / max in microseconds for the RLPD actor (2x256, obs 17, act 6):
  bare ORT      onnxruntime `session.run(None, {"obs": ..., "noise": ...})`, one intra-op thread
  OnnxPolicy    `policy(obs, noise)` (o2o_robot.policy.runtime, I/O-bound buffers)
  PolicySlot    `slot.act(obs)` (adds the lock-free version read and the noise draw)
  torch eager   the same module in torch, no_grad, one thread
and the ratios OnnxPolicy / bare and PolicySlot / bare from the same run (target: <= 1.20).
The methods are measured in interleaved rounds so that machine load drifts hit all alike.

Then policies with cameras (contract v2, the pixel RLPD actor with its D4PG encoder in the
graph, state 7, RGB with 3 stacked frames): `PolicySlot.act` on one observation dict at 64 x 64
and 128 x 128, one and two cameras, one intra-op thread, against the control period of
`--rate-hz` (the actor node allows a policy LATENCY_BUDGET_SHARE of it).

    python benchmarks/policy_latency.py [--n 20000] [--rounds 5] [--camera-n 300] [--no-cameras]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
import torch

from o2o_robot.agents.networks import TanhGaussianActor, TanhGaussianExport
from o2o_robot.agents.rlpd import RLPD
from o2o_robot.config import RLPDConfig
from o2o_robot.policy.export import PolicyGraph, export_policy
from o2o_robot.policy.runtime import LATENCY_BUDGET_SHARE, OnnxPolicy
from o2o_robot.policy.slot import PolicySlot
from o2o_robot.spaces import CameraSpec

OBS, ACT = 17, 6


def timed(fn, n: int) -> np.ndarray:
    clock, times = time.perf_counter, np.empty(n)
    for i in range(n):
        start = clock()
        fn()
        times[i] = clock() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="calls per method per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--camera-n", type=int, default=300, help="calls per camera setting")
    parser.add_argument("--rate-hz", type=float, default=10.0,
                        help="control rate the camera table is compared with (SERL runs 10 Hz)")
    parser.add_argument("--no-cameras", action="store_true", help="skip the camera table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    low, high = -np.ones(ACT), np.ones(ACT)
    actor = TanhGaussianExport(TanhGaussianActor(OBS, ACT, [256, 256]))  # what RLPD exports
    info: dict = {}
    data = export_policy(actor, obs_dim=OBS, act_dim=ACT, action_low=low, action_high=high,
                         algorithm="rlpd", version=1, info=info)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    policy = OnnxPolicy(data, provider="cpu")
    slot = PolicySlot(OBS, ACT, low, high, provider="cpu")
    assert slot.propose(data).accepted
    graph = PolicyGraph(actor, low, high).eval()

    rng = np.random.default_rng(0)
    obs = rng.standard_normal(OBS).astype(np.float32)
    noise = rng.standard_normal(ACT).astype(np.float32)
    obs_b, noise_b = obs[None].copy(), noise[None].copy()
    obs_t, noise_t = torch.from_numpy(obs_b), torch.from_numpy(noise_b)

    def torch_eager():
        with torch.no_grad():
            return graph(obs_t, noise_t)

    methods = {
        "bare ORT session.run": lambda: sess.run(None, {"obs": obs_b, "noise": noise_b}),
        "OnnxPolicy.__call__": lambda: policy(obs, noise),
        "PolicySlot.act": lambda: slot.act(obs),
        "torch eager": torch_eager,
    }
    samples: dict[str, list[np.ndarray]] = {name: [] for name in methods}
    for fn in methods.values():
        timed(fn, 1000)  # warm-up
    for _ in range(args.rounds):
        for name, fn in methods.items():
            samples[name].append(timed(fn, args.n))

    print(f"policy inference, one observation (obs {OBS}, act {ACT}, 2x256 tanh-Gaussian), "
          f"onnxruntime {ort.__version__}, torch {torch.__version__}, {args.rounds} x {args.n} calls")
    print(f"export: {info['exporter']} exporter, {info['export_s'] * 1e3:.1f} ms incl. parity check")
    print(f"{'method':<24}{'p50 us':>9}{'p99 us':>9}{'max us':>10}")
    stats = {}
    for name, parts in samples.items():
        t = np.concatenate(parts) * 1e6
        stats[name] = np.percentile(t, [50, 99])
        print(f"{name:<24}{stats[name][0]:>9.1f}{stats[name][1]:>9.1f}{t.max():>10.1f}")
    bare = stats["bare ORT session.run"]
    for name in ("OnnxPolicy.__call__", "PolicySlot.act"):
        ratio = stats[name] / bare
        print(f"ratio {name} / bare: p50 {ratio[0]:.2f}, p99 {ratio[1]:.2f} (target <= 1.20)")
    if not args.no_cameras:
        camera_table(args.camera_n, args.rate_hz)


def camera_table(n: int, rate_hz: float, state_dim: int = 7) -> None:
    """p50/p99/max of `PolicySlot.act` with 1-2 cameras at 64 and 128 px (module docstring)."""
    budget_us = LATENCY_BUDGET_SHARE / rate_hz * 1e6
    print(f"\npolicies with cameras (pixel RLPD actor, D4PG encoder 32-64-128-256, latent 50, "
          f"RGB x 3 frames, state {state_dim}), PolicySlot.act, {n} calls each; budget at "
          f"{rate_hz:g} Hz: {budget_us:.0f} us (p99)")
    print(f"{'setting':<24}{'p50 us':>9}{'p99 us':>9}{'max us':>10}{'p99 / budget':>14}")
    low, high = -np.ones(ACT), np.ones(ACT)
    cfg = RLPDConfig(critic_ensemble_size=2, critic_subset_size=1)  # the critic is not exported
    rng = np.random.default_rng(0)
    for size in (64, 128):
        for count in (1, 2):
            cams = tuple(CameraSpec(f"cam{i}", size, size, 3, 3) for i in range(count))
            agent = RLPD(state_dim, ACT, cfg, cameras=cams)
            data = export_policy(agent.export_actor(), obs_dim=state_dim, act_dim=ACT,
                                 action_low=low, action_high=high, algorithm="rlpd", version=1,
                                 cameras=cams)
            slot = PolicySlot(state_dim, ACT, low, high, provider="cpu", cameras=cams)
            assert slot.propose(data).accepted
            obs = {"state": rng.standard_normal(state_dim).astype(np.float32),
                   **{c.name: rng.integers(0, 256, c.shape, dtype=np.uint8) for c in cams}}
            timed(lambda: slot.act(obs), 20)   # warm-up
            t = timed(lambda: slot.act(obs), n) * 1e6
            p50, p99 = np.percentile(t, [50, 99])
            print(f"{f'{count} x {size}x{size}':<24}{p50:>9.0f}{p99:>9.0f}{t.max():>10.0f}"
                  f"{p99 / budget_us:>14.2f}")


if __name__ == "__main__":
    main()
