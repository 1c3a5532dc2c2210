"""Control tick timing of the ActorNode, idle and with the learner running flat out.

For each control rate (100 Hz, 500 Hz) and learner (none, `thread`, `process`), one ActorNode
runs the RLPD actor (ONNX, 2x256) on a SingleThreadedExecutor (as `o2o-robot finetune` does;
`--executor multi`: the MultiThreadedExecutor(2) of `actor_node.main`), fed by a robot
stand-in in another process (joint_states + task_obs at 100 Hz). With a learner, the
node hands it every transition; the learner (sim_reach sizes: 2x256, E=10, batch 256, UTD 10,
one torch thread, an ONNX export + hot-swap every `--export-every` updates) owes far more
updates than it can do, so it never idles. Printed per case:

  period error   |t_k - t_{k-1} - T| of the tick callback starts, ms: p50 / p99 / max
  obs->publish   from the tick reading the observation buffer to the action's publish
                 returning (assemble, policy, safety filter, publish), ms: p50 / p99 / max
  obs age        age of the oldest observation source at the tick (feeder phase + delivery)
  updates/s      the learner's critic updates per second (updates x UTD), and the share of its
                 standalone rate (the same learner fed by a plain loop, no ROS, same mode;
                 measured before and after the cases, averaged)

and the targets: at 100 Hz with the learner running, p99 period error <= 1 ms, max <= 5 ms, and
the learner at >= 80% of its standalone rate. Times are `time.monotonic()` in the node.

Measured on the 2-core development machine (otherwise idle), period error p99 / max in ms,
learner share of standalone:

    executor  learner   100 Hz                 500 Hz
    single    none      0.14 / 0.61            0.23 / 4.1
    single    thread    1.23 / 9.7   96%       1.65 / 11.2  87%
    single    process   0.28 / 1.1   96% PASS  0.70 / 3.6   94%
    multi     none      7.0 / 9.2              2312 / 2615 (4 Hz achieved)
    multi     thread    774 / 887    14%       1114 / 1209   0%
    multi     process   1.21 / 2.6  102%       4.7 / 382    92% (369 Hz achieved)

The MultiThreadedExecutor busy-waits while a ready timer's callback group is busy
(ros2/rclpy#1223) and starves the very callbacks it waits for.

and a policy swap through the `policy_path` parameter at 100 Hz: how long the set took (a slow
policy: validation runs ~210 inferences) and the worst gap between ticks meanwhile.

Camera cases (`--cameras 1 2`, e.g. with `--rates 10 20`): the feeder also publishes that many
640 x 480 rgb8 sensor_msgs/Image streams at 30 Hz; the actor crops each to 448 x 448 and
shrinks it to 64 x 64 (area mean, control/frames.py) and acts on 3-frame stacks. The learner
trains on the state (the state-only config and store: pixel learning is issue 16; the rows'
frames are dropped on the way to it), so it loads the machine as in the other cases.
Measured on the 2-core development machine while other jobs ran on it (load average 4-6, so
the p99/max tails are mostly theirs; the no-camera rows are the baseline of the same run),
`--seconds 10 --rates 10 20 --modes process --cameras 0 1 2 --no-swap`, period error
p50 / p99 / max in ms:

    rate  cameras  no learner             learner (process)
    10    0        0.07 / 11.5 / 11.5     0.49 / 8.1 / 8.2
    10    1        0.24 / 12.9 / 13.2     0.39 / 7.3 / 8.1
    10    2        0.84 / 11.7 / 13.9     0.39 / 21.8 / 37.7
    20    0        0.07 / 1.1 / 1.5       0.29 / 32.6 / 41.6
    20    1        0.08 / 1.1 / 1.9       0.32 / 6.6 / 25.1
    20    2        0.24 / 25.7 / 32.8     0.23 / 12.8 / 19.3

(each 640 x 480 image costs the actor's callback ~1.7 ms to crop and area-shrink,
benchmarks/sim_camera.py; the tick itself only copies the newest 64 x 64 frames.)

    python benchmarks/control_loop.py [--seconds 10] [--rates 100 500] [--modes thread process]
                                      [--executor single|multi] [--swap-hidden 2048 2048 2048]
                                      [--cameras 0 1 2] [--no-swap]
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import rclpy  # noqa: E402
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from o2o_robot.config import load_config, resolve_config_path  # noqa: E402
from o2o_robot.data.schema import SOURCE_CODE, Transition  # noqa: E402
from o2o_robot.learning.worker import LearnerClient  # noqa: E402
from o2o_robot.ros.actor_node import ActorNode  # noqa: E402

FEED_HZ = 100.0
CAMERA_HZ, CAMERA_W, CAMERA_H = 30.0, 640, 480
WARMUP_S = 3.0
NAMESPACE = f"/o2o_bench_{os.getpid()}"
JOINTS = ["joint1", "joint2", "joint3"]


class TimedActor(ActorNode):
    """ActorNode recording, per tick: callback start, publish done, oldest observation age."""

    def __init__(self, *args, capacity: int = 200_000, **kwargs):
        super().__init__(*args, **kwargs)
        self.t_start, self.t_done = np.zeros(capacity), np.zeros(capacity)
        self.obs_age_ms = np.zeros(capacity)
        self.n, self.recording = 0, False

    def _on_tick(self) -> None:
        start = time.monotonic()
        super()._on_tick()
        done = time.monotonic()
        if self.recording and self.n < self.t_start.size:
            self.t_start[self.n], self.t_done[self.n] = start, done
            self.obs_age_ms[self.n] = max([*self.core.observations.ages_ms(start).values(),
                                           *self.core.cameras.ages_ms(start).values()])
            self.n += 1


def feeder(domain: int, namespace: str, stop, cameras: int = 0) -> None:
    """The robot stand-in: joint_states and task_obs at FEED_HZ, `cameras` image streams at
    about CAMERA_HZ (own process, own rclpy)."""
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64MultiArray

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = rclpy.create_node("bench_feeder", namespace=namespace, context=ctx)
    js = node.create_publisher(JointState, "joint_states", 10)
    task = node.create_publisher(Float64MultiArray, "task_obs", 10)
    images = [node.create_publisher(Image, f"camera{i}/image_raw", 10) for i in range(cameras)]
    pixels = np.random.default_rng(0).integers(0, 256, (CAMERA_H, CAMERA_W, 3), np.uint8)
    frame = Image(height=CAMERA_H, width=CAMERA_W, encoding="rgb8", step=CAMERA_W * 3,
                  data=pixels.tobytes())
    every = max(1, round(FEED_HZ / CAMERA_HZ))
    period, k, t0 = 1.0 / FEED_HZ, 0, time.monotonic()
    while not stop.is_set():
        if k % every == 0:
            for pub in images:
                pub.publish(frame)
        msg = JointState(name=JOINTS, position=[0.1, 0.4, 1.2], velocity=[0.0, 0.0, 0.0])
        msg.header.stamp = node.get_clock().now().to_msg()
        js.publish(msg)
        task.publish(Float64MultiArray(data=[0.2, 0.0, 0.3, 0.1, 0.2, 0.25]))
        k += 1
        time.sleep(max(t0 + k * period - time.monotonic(), 0.0))
    node.destroy_node()
    rclpy.try_shutdown(context=ctx)


def bench_config(tmp: Path, rate: float, export_every: int, cameras: int = 0):
    cams = [{"name": f"camera{i}", "topic": f"camera{i}/image_raw", "type": "image",
             "width": 64, "height": 64, "crop": [96, 16, 448, 448]} for i in range(cameras)]
    return load_config(resolve_config_path("sim_reach.yaml"), overrides={
        "robot": {"cameras": cams},
        "store": {"path": str(tmp / "store.zarr")},
        "learner": {"warmup_steps": 0, "device": "cpu", "torch_threads": 1,
                    "export_every_updates": export_every, "checkpoint_every_steps": 10**9,
                    "queue_size": 100_000},
        "control": {"control_rate_hz": rate, "max_episode_steps": 10**9},
        "train": {"demo_episodes": 5, "run_dir": str(tmp)}})


def first_policy(cfg, tmp: Path, hidden: list[int] | None = None, version: int = 1) -> str:
    """A policy of the configured actor size (or `hidden`) for the idle case (the learner
    exports its own)."""
    from o2o_robot.agents import build_agent
    from o2o_robot.policy.export import export_policy, write_policy

    if hidden is not None:
        cfg = cfg.model_copy(deep=True)
        cfg.algorithm.hidden_dims = hidden
    agent = build_agent(cfg, cfg.robot.obs_dim, cfg.robot.act_dim, device="cpu")
    robot = cfg.robot
    data = export_policy(agent.export_actor(), obs_dim=robot.obs_dim, act_dim=robot.act_dim,
                         action_low=robot.action.low, action_high=robot.action.high,
                         algorithm="rlpd", version=version)
    return str(write_policy(data, tmp / f"policy_{version:05d}.onnx"))


def updates_per_s(client, seconds: float) -> float:
    u0, t0 = client.progress()["updates"], time.monotonic()
    time.sleep(seconds)
    return (client.progress()["updates"] - u0) / (time.monotonic() - t0)


def standalone_rate(cfg, tmp: Path, mode: str, seconds: float) -> float:
    """Critic updates/s of the learner fed by a plain loop at the control rate (no ROS)."""
    client = LearnerClient(cfg, tmp / f"standalone_{mode}", mode=mode)
    stop = threading.Event()
    obs = np.zeros(12, np.float32)

    def feed() -> None:
        step = 0
        while not stop.is_set():   # one endless episode of online rows
            client.submit(Transition(obs, np.zeros(3, np.float32), 0.0, obs, False, False,
                                     SOURCE_CODE["online"], policy_version=1, step=step))
            client.poll_policy()
            step += 1
            time.sleep(1.0 / cfg.control.control_rate_hz)

    threading.Thread(target=feed, daemon=True).start()
    try:
        _wait_running(client)
        return updates_per_s(client, seconds) * cfg.learner.utd_ratio
    finally:
        stop.set()
        client.close()


def _wait_running(client, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.progress()["updates"] < 3:
        if time.monotonic() > deadline or client.stats().get("state") in ("crashed", "died"):
            raise RuntimeError(f"learner did not start: {client.stats()}")
        time.sleep(0.1)
    time.sleep(WARMUP_S)


class StateOnly:
    """The learner of a camera case: the rows without their frames (a state-only store)."""

    def __init__(self, client):
        self.client = client

    def submit(self, item) -> bool:
        if isinstance(item, Transition) and item.frames is not None:
            item = dataclasses.replace(item, frames=None, next_frames=None)
        return self.client.submit(item)

    def __getattr__(self, name):
        return getattr(self.client, name)


def run_case(cfg, tmp: Path, mode: str | None, domain: int, seconds: float, policy: str,
             executor_kind: str) -> dict:
    state_only = cfg.model_copy(update={"robot": cfg.robot.model_copy(update={"cameras": []})})
    client = LearnerClient(state_only, tmp / f"run_{mode}_{cfg.control.control_rate_hz:g}_"
                           f"{len(cfg.robot.cameras)}", mode=mode) if mode else None
    if client is not None and cfg.robot.cameras:
        client = StateOnly(client)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = TimedActor(cfg, learner=client, latency_budget_share=None, context=ctx,
                      namespace=NAMESPACE,
                      parameter_overrides=[Parameter("policy_path", value=policy)])
    executor = (MultiThreadedExecutor(num_threads=2, context=ctx) if executor_kind == "multi"
                else SingleThreadedExecutor(context=ctx))
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        if client is not None:
            _wait_running(client)
        else:
            time.sleep(WARMUP_S)
        node.recording = True
        if client is not None:
            rate = updates_per_s(client, seconds) * cfg.learner.utd_ratio
        else:
            rate = None
            time.sleep(seconds)
        node.recording = False
        stats = client.stats() if client else {}
    finally:
        executor.remove_node(node)   # in-flight callbacks finish before the executor goes
        time.sleep(0.2)
        executor.shutdown(timeout_sec=5.0)
        spinner.join(5.0)
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
        if client is not None:
            client.close()
    n, period = node.n, 1.0 / cfg.control.control_rate_hz
    starts = node.t_start[:n]
    err = np.abs(np.diff(starts) - period) * 1e3
    lat = (node.t_done[:n] - starts) * 1e3
    def pct(a: np.ndarray) -> list[float]:
        a = a[np.isfinite(a)]   # an observation age is inf until its source has arrived
        return [float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.max())]

    return {"ticks": n, "rate_hz": (n - 1) / (starts[-1] - starts[0]), "period_err": pct(err),
            "latency": pct(lat), "obs_age": pct(node.obs_age_ms[:n]), "critic_updates_per_s": rate,
            "policy_swaps": node.swaps["accepted"], "exports": stats.get("policy_version"),
            "dropped": stats.get("queue_dropped")}


def swap_case(cfg, tmp: Path, domain: int, policy: str, slow: str) -> dict:
    """Ticks while `ros2 param set policy_path` (the SetParameters service, from another node)
    swaps in `slow`, a policy that takes long to validate: the set's duration and the worst tick
    gap during it, against the ticks before it."""
    from rclpy.parameter_client import AsyncParameterClient

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = TimedActor(cfg, latency_budget_share=None, context=ctx, namespace=NAMESPACE,
                      parameter_overrides=[Parameter("policy_path", value=policy)])
    caller = rclpy.create_node("bench_param_caller", namespace=NAMESPACE, context=ctx)
    executors = [SingleThreadedExecutor(context=ctx), SingleThreadedExecutor(context=ctx)]
    executors[0].add_node(node)
    executors[1].add_node(caller)
    spinners = [threading.Thread(target=e.spin, daemon=True) for e in executors]
    for t in spinners:
        t.start()
    try:
        client = AsyncParameterClient(caller, f"{NAMESPACE}/o2o_actor")
        if not client.wait_for_services(10.0):
            raise RuntimeError("the actor's parameter services did not appear")
        time.sleep(WARMUP_S)
        node.recording = True
        time.sleep(2.0)
        t_set = time.monotonic()
        future = client.set_parameters([Parameter("policy_path", value=slow)])
        while not future.done():
            time.sleep(0.001)
        t_done = time.monotonic()
        time.sleep(1.0)
        node.recording = False
        result = future.result().results[0]
    finally:
        for e, n in zip(executors, (node, caller)):
            e.remove_node(n)
        time.sleep(0.2)
        for e, t in zip(executors, spinners):
            e.shutdown(timeout_sec=5.0)
            t.join(5.0)
        node.destroy_node()
        caller.destroy_node()
        rclpy.try_shutdown(context=ctx)
    starts = node.t_start[:node.n]
    gaps, period = np.diff(starts) * 1e3, 1e3 / cfg.control.control_rate_hz
    during = (starts[1:] > t_set) & (starts[:-1] < t_done)
    return {"accepted": result.successful, "reason": result.reason, "set_s": t_done - t_set,
            "gap_max_during_ms": float(gaps[during].max()) if during.any() else float("nan"),
            "gap_max_before_ms": float(gaps[starts[1:] < t_set].max()), "period_ms": period,
            "ticks_during": int(during.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per case")
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 500.0])
    parser.add_argument("--modes", nargs="+", default=["thread", "process"],
                        choices=["thread", "process"])
    parser.add_argument("--export-every", type=int, default=25,
                        help="updates between ONNX exports (each one is swapped into the actor)")
    parser.add_argument("--executor", choices=["single", "multi"], default="single",
                        help="the actor's executor: SingleThreadedExecutor (as finetune), or "
                        "MultiThreadedExecutor(2) (as actor_node.main)")
    parser.add_argument("--domain", type=int, default=77, help="ROS_DOMAIN_ID of the benchmark")
    parser.add_argument("--cameras", type=int, nargs="+", default=[0],
                        help="camera counts to run every case with (0: no camera)")
    parser.add_argument("--no-swap", action="store_true", help="skip the policy_path swap case")
    parser.add_argument("--swap-hidden", type=int, nargs="+", default=[2048, 2048, 2048],
                        help="hidden sizes of the slow policy swapped in by `policy_path` "
                        "(validation: ~210 inferences of it)")
    args = parser.parse_args()
    from o2o_robot.ros.finetune import ensure_demos

    tmp = Path(tempfile.mkdtemp(prefix="o2o_control_loop_"))
    stop = mp.get_context("spawn").Event()
    feed = mp.get_context("spawn").Process(
        target=feeder, args=(args.domain, NAMESPACE, stop, max(args.cameras)), daemon=True)
    feed.start()
    try:
        base = bench_config(tmp, args.rates[0], args.export_every)
        ensure_demos(base, progress=False)
        policy = first_policy(base, tmp)
        alone_cfg = bench_config(tmp, 100.0, args.export_every)
        standalone = {m: standalone_rate(alone_cfg, tmp, m, args.seconds) for m in args.modes}
        results = []
        for rate in args.rates:
            for cams in args.cameras:
                cfg = bench_config(tmp, rate, args.export_every, cams)
                for mode in [None, *args.modes]:
                    res = run_case(cfg, tmp, mode, args.domain, args.seconds, policy,
                                   args.executor)
                    res["cameras"] = cams
                    results.append((rate, mode or "none", res))
                    print(f"measured {rate:g} Hz, {cams} camera(s), learner {mode or 'none'}",
                          flush=True)
        for m in args.modes:   # measured again after the cases and averaged: the load drifts
            standalone[m] = (standalone[m] + standalone_rate(alone_cfg, tmp, m, args.seconds)) / 2
        swap = None
        if not args.no_swap:
            slow = first_policy(base, tmp, args.swap_hidden, version=2)
            swap = swap_case(bench_config(tmp, 100.0, args.export_every), tmp, args.domain,
                             policy, slow)
    finally:
        stop.set()
        feed.join(10.0)
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    for i, (rate, mode, res) in enumerate(results):
        print_row(rate, mode, res, standalone.get(mode), header=i == 0)
    lc = base.learner
    print(f"\nlearner: sim_reach sizes ({base.algorithm.hidden_dims}, E="
          f"{base.algorithm.critic_ensemble_size}, batch {base.sampler.batch_size}, UTD "
          f"{lc.utd_ratio}), 1 torch thread, export every {args.export_every} updates; actor "
          f"executor {args.executor}; "
          f"standalone " + ", ".join(f"{m} {r:.0f}" for m, r in standalone.items())
          + " critic updates/s")
    print_targets(results, standalone)
    if swap is None:
        return
    print(f"\npolicy_path swap at 100 Hz (a {args.swap_hidden} actor, validated off the tick): "
          f"the set took {swap['set_s']:.2f} s ({'accepted' if swap['accepted'] else swap['reason']})"
          f"; {swap['ticks_during']} ticks meanwhile, worst tick gap {swap['gap_max_during_ms']:.1f}"
          f" ms (period {swap['period_ms']:.0f} ms; worst before the set "
          f"{swap['gap_max_before_ms']:.1f} ms)")


def print_row(rate, mode, res, standalone, header=False) -> None:
    if header:
        print(f"{'rate':>5} {'cams':>4} {'learner':>8} {'achieved':>8} | "
              f"{'period err p50/p99/max ms':>26} | "
              f"{'obs->publish p50/p99/max ms':>28} | {'obs age p50/p99 ms':>18} | "
              f"{'updates/s':>9} {'of alone':>8} {'swaps':>5}")
    f3 = lambda v: "/".join(f"{x:.2f}" for x in v)  # noqa: E731
    ups = res["critic_updates_per_s"]
    share = f"{ups / standalone:.0%}" if ups is not None and standalone else "-"
    print(f"{rate:5.0f} {res.get('cameras', 0):4d} {mode:>8} {res['rate_hz']:8.1f} | "
          f"{f3(res['period_err']):>26} | "
          f"{f3(res['latency']):>28} | {f3(res['obs_age'][:2]):>18} | "
          f"{'-' if ups is None else f'{ups:.0f}':>9} {share:>8} {res['policy_swaps']:>5}",
          flush=True)


def print_targets(results, standalone) -> None:
    print("\ntargets at 100 Hz with the learner running: p99 period error <= 1 ms, max <= 5 ms, "
          "learner >= 80% of standalone")
    for rate, mode, res in results:
        if rate != 100.0 or mode == "none":
            continue
        p99, mx = res["period_err"][1], res["period_err"][2]
        share = res["critic_updates_per_s"] / standalone[mode]
        ok = p99 <= 1.0 and mx <= 5.0 and share >= 0.8
        print(f"  {mode:>8}: p99 {p99:.2f} ms, max {mx:.2f} ms, learner {share:.0%} -> "
              f"{'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
