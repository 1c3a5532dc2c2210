"""Fleet figures (DESIGN.md "Performance budgets", docs/fleet.md): printed, never asserted.

For N = 1, 2, 4, 8 synthetic robots, each a process of its own running the robot side of the
fleet exactly as an actor node does (`FleetClient`: spool, sender; `PolicySlot` +
`PolicyProposer`: every policy validated and swapped as on the robot), and one real
`learner_node` process (the config's learner, e.g. RLPD 128x128, E=10, UTD 4):

* flood: every robot hands over `--rows` rows as fast as the protocol takes them; transitions/s
  acknowledged by the learner (committed to its store), all robots together;
* live: every robot produces rows at `--rate-hz` (a robot's control rate) for `--seconds`; the
  learner's achieved UTD (critic updates per env step, all robots), bytes/s per robot, bytes per
  transition on the wire, and the policy broadcast latency: from the learner's publication to
  each robot serving it (received over DDS, polled as the actor does every 0.25 s, validated,
  swapped), median / max over every (policy, robot) pair;
* camera (`--camera`): rows with one 64 x 64 RGB frame, encoded, sent and decoded by a receiver
  (the learner's store has no camera columns yet, so this is the wire and DDS alone).

Usage: python benchmarks/fleet.py [--robots 1,2,4,8] [--rows 5000] [--seconds 20] [--camera]
One machine runs everything (the robots' share of the CPU is the learner's loss); see
docs/fleet.md for what carries over to robots on their own computers.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OBS, ACT, EP_LEN = 12, 3, 50
UTD = 4                      # sim_reach's learner.utd_ratio
WARMUP = 100
FRAME = (64, 64, 3)


class Rows:
    """Synthetic robot rows: episodes of EP_LEN steps, each row's next_obs the next row's obs
    (as a robot's are), time-limit truncated."""

    def __init__(self, seed: int):
        self.rng, self.n = np.random.default_rng(seed), 0
        self.obs = self.rng.normal(size=OBS).astype(np.float32)

    def next(self):
        from o2o_robot.data.schema import Transition

        step, episode = self.n % EP_LEN, self.n // EP_LEN
        nxt = self.rng.normal(size=OBS).astype(np.float32)
        last = step == EP_LEN - 1
        row = Transition(obs=self.obs, action=self.rng.uniform(-2, 2, ACT).astype(np.float32),
                         reward=float(self.rng.random() < 0.05), next_obs=nxt, terminated=False,
                         truncated=last, source=1, timestamp=time.time(), episode=episode,
                         step=step, success=False if last else None)
        self.obs, self.n = (self.rng.normal(size=OBS).astype(np.float32) if last else nxt), \
            self.n + 1
        return row


# -------------------------------------------------------------------------- robot process
def robot_main(args) -> None:
    """A synthetic robot: FleetClient + PolicySlot/Proposer, rows flooded or at a rate."""
    from o2o_robot.config import load_config
    from o2o_robot.policy.slot import PolicyProposer, PolicySlot
    from o2o_robot.ros.fleet_client import FleetClient

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cfg = load_config(args.config)
    client = FleetClient(cfg, robot_id=args.robot, domain_id=args.domain)
    robot = cfg.robot
    slot = PolicySlot(robot.obs_dim, robot.act_dim, robot.action.low, robot.action.high)
    served: list[tuple[int, float, float, float]] = []

    def on_swap(result) -> None:
        header = client.policy_header      # published after we started: a broadcast we saw
        if result.accepted and header.get("version") == result.metadata_version and \
                header["time"] > started_at:
            served.append((result.version, header["time"], header["received_at"], time.time()))

    proposer = PolicyProposer(slot, on_swap)
    rows, produced, next_poll = Rows(int(args.robot[1:])), 0, 0.0
    start, started_at, ready = time.monotonic(), time.time(), False
    while not stop.is_set():
        now = time.monotonic()
        due = int((now - start) * args.rate_hz) if args.rate_hz else args.rows
        while produced < due and client.submit(rows.next()):
            produced += 1
        if not ready and not args.rate_hz and client.stats()["sendable"] == args.rows:
            ready = True                        # flood: all spooled before the learner starts
            print("ready", flush=True)
        if now >= next_poll:                    # as the actor node polls its learner
            next_poll = now + 0.25
            if (data := client.poll_policy()) is not None:
                proposer.offer(data)
        time.sleep(0.002 if args.rate_hz else 0.02)
    proposer.stop()
    final = client.close(timeout_s=0.0)
    print(json.dumps({"robot": args.robot, "produced": produced, "served": served,
                      "bytes_sent": final["bytes_sent"], "rows_sent": final["rows_sent"],
                      "seconds": time.monotonic() - start}), flush=True)


def camera_main(args) -> None:
    """A camera sender: batches of 100 rows, each with a 64x64 frame, published flat out."""
    import rclpy
    from std_msgs.msg import UInt8MultiArray

    from o2o_robot.data.wire import RowBatch, encode_batch
    from o2o_robot.ros import qos

    rclpy.init(domain_id=args.domain)
    node = rclpy.create_node(f"camera_{args.camera_robot}")
    pub = node.create_publisher(UInt8MultiArray, "/o2o_fleet/transitions", qos.FLEET_STREAM)
    rng = np.random.default_rng(0)
    n, frames = 100, rng.integers(0, 255, (101, *FRAME), np.uint8)
    obs = rng.normal(size=(n + 1, OBS)).astype(np.float32)
    rows = {"obs": obs[:-1], "action": np.zeros((n, ACT), np.float32),
            "reward": np.zeros(n, np.float32), "next_obs": obs[1:],
            "terminated": np.zeros(n, bool), "truncated": np.zeros(n, bool),
            "source": np.ones(n, np.uint8), "policy_version": np.zeros(n, np.int64),
            "timestamp": np.zeros(n)}
    time.sleep(2.0)                                   # discovery
    end, first = time.monotonic() + args.seconds, 0
    while time.monotonic() < end:
        msg = UInt8MultiArray()
        msg.data = encode_batch(RowBatch(args.camera_robot, first, rows, np.full(n, -2, np.int8),
                                         {"cam": frames[:-1]}, {"cam": frames[1:]}))
        pub.publish(msg)
        first += n
    node.destroy_node()
    rclpy.try_shutdown()


def camera_run(n: int, seconds: float, domain: int) -> tuple[int, int, float]:
    """(rows received and decoded, bytes, seconds) from `n` camera senders."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import UInt8MultiArray

    from o2o_robot.data.wire import decode_batch
    from o2o_robot.ros import qos

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("camera_sink", context=context)
    got = {"rows": 0, "bytes": 0, "first": None, "last": None}

    def on_batch(msg) -> None:
        batch = decode_batch(msg.data)
        got["first"] = got["first"] or time.monotonic()
        got["last"] = time.monotonic()
        got["rows"] += len(batch)
        got["bytes"] += len(msg.data)

    node.create_subscription(UInt8MultiArray, "/o2o_fleet/transitions", on_batch,
                             qos.FLEET_STREAM)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    senders = [subprocess.Popen([sys.executable, __file__, "--camera-robot", f"c{i}",
                                 "--seconds", str(seconds), "--domain", str(domain)], env=env)
               for i in range(n)]
    while any(p.poll() is None for p in senders):
        executor.spin_once(timeout_sec=0.05)
    end = time.monotonic() + 2.0
    while time.monotonic() < end:                      # what is still on the way
        executor.spin_once(timeout_sec=0.05)
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown(context=context)
    return got["rows"], got["bytes"], (got["last"] or 1) - (got["first"] or 0)


# ------------------------------------------------------------------------------ the run
def write_config(tmp: Path) -> Path:
    import yaml

    from o2o_robot.config import load_config, resolve_config_path

    cfg = load_config(resolve_config_path("sim_reach.yaml"), overrides={
        "store": {"path": str(tmp / "store.zarr")}, "train": {"run_dir": str(tmp)},
        "learner": {"warmup_steps": WARMUP, "export_every_updates": 50, "device": "auto"},
        "fleet": {"batch_rows": 100}})
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    with __import__("o2o_robot.data.store", fromlist=["TransitionStore"]).TransitionStore.create(
            cfg.store.path, OBS, ACT) as store:          # demo-side rows: the plan can draw
        demo_rows = Rows(10**6)
        demo = [demo_rows.next() for _ in range(EP_LEN)]
        store.append_episode({f: np.stack([np.asarray(getattr(t, f)) for t in demo])
                              for f in ("obs", "action", "reward", "next_obs", "terminated",
                                        "truncated", "policy_version", "timestamp")}
                             | {"source": np.zeros(EP_LEN, np.uint8)}, success=True)
    return path


class LearnerWatch:
    """The learner's ~/status, kept (a node in this process)."""

    def __init__(self, domain: int):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions
        from std_msgs.msg import String

        from o2o_robot.ros import qos
        from o2o_robot.ros.graph import spin_executor

        self.context, self.status = rclpy.Context(), {}
        rclpy.init(context=self.context, domain_id=domain,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("fleet_bench", context=self.context)
        self.node.create_subscription(String, "/o2o_learner/status",
                                      lambda m: setattr(self, "status", json.loads(m.data)),
                                      qos.LATCHED)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        threading.Thread(target=spin_executor, args=(self.executor,), daemon=True).start()

    def rows(self) -> int:
        return sum(r.get("rows", 0) for r in self.status.get("robots", {}).values())

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.node.destroy_node()
        __import__("rclpy").try_shutdown(context=self.context)


def spawn(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    out = open(log, "w")
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=out,
                            env=env, text=True, start_new_session=True)


def run(n: int, mode: str, a, domain: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"fleet_bench_{mode}{n}_"))
    config = write_config(tmp)
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "PYTHONPATH": str(ROOT),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE",
                                                           "LOCALHOST")}
    watch = LearnerWatch(domain)
    rate = ["--rate-hz", str(a.rate_hz)] if mode == "live" else ["--rows", str(a.rows)]
    robots = [spawn([__file__, "--robot", f"r{i}", "--config", str(config), "--domain",
                     str(domain), *rate], env, tmp / f"r{i}.log") for i in range(n)]
    learner = None
    try:
        if mode == "flood":                     # every spool full before the learner starts
            for proc in robots:
                assert proc.stdout.readline().strip() == "ready", "a robot failed"
        learner = spawn(["-m", "o2o_robot.ros.learner_node", "--ros-args", "-p",
                         f"config:={config}"], env, tmp / "learner.log")
        while not watch.status and learner.poll() is None:
            time.sleep(0.05)
        while mode == "live" and watch.status.get("env_steps", 0) < WARMUP:
            time.sleep(0.05)                   # UTD counts from the end of warm-up
        t0, s0 = time.monotonic(), dict(watch.status)
        if mode == "flood":
            while watch.rows() < n * a.rows and time.monotonic() - t0 < 120:
                time.sleep(0.02)
        else:
            time.sleep(a.seconds)
        wall, s1 = time.monotonic() - t0, dict(watch.status)
    finally:
        for proc in robots:
            os.killpg(proc.pid, signal.SIGINT)
        outs = [json.loads(proc.communicate(timeout=60)[0].strip().splitlines()[-1])
                for proc in robots]
        if learner is not None:
            os.killpg(learner.pid, signal.SIGINT)
            learner.wait(timeout=60)
        watch.close()
    steps = s1.get("env_steps", 0) - s0.get("env_steps", 0)
    updates = s1.get("updates", 0) - s0.get("updates", 0)
    lat = [(recv - pub, serve - pub) for o in outs for _, pub, recv, serve in o["served"]]
    sent = sum(o["rows_sent"] for o in outs)
    return {"robots": n, "wall_s": wall,
            "rows": sum(r.get("rows", 0) for r in s1.get("robots", {}).values()),
            "env_steps": steps, "utd": updates * UTD / steps if steps else 0.0,
            "bytes_per_row": sum(o["bytes_sent"] for o in outs) / max(sent, 1),
            "bytes_per_s_robot": statistics.mean(o["bytes_sent"] / o["seconds"] for o in outs),
            "latency_recv": lat and statistics.median(x for x, _ in lat),
            "latency_serve": lat and statistics.median(y for _, y in lat),
            "latency_serve_max": lat and max(y for _, y in lat), "policies": len(lat),
            "threads": s1.get("torch_threads")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--robots", default="1,2,4,8")
    ap.add_argument("--rows", type=int, default=5000, help="flood: rows per robot")
    ap.add_argument("--seconds", type=float, default=20.0, help="live: seconds per N")
    ap.add_argument("--rate-hz", type=float, default=20.0, help="live: rows/s per robot")
    ap.add_argument("--camera", action="store_true", help="also rows with a 64x64 camera")
    ap.add_argument("--domain", type=int, default=91)
    ap.add_argument("--robot", help=argparse.SUPPRESS)
    ap.add_argument("--camera-robot", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.camera_robot:
        return camera_main(a)
    if a.robot:
        a.rate_hz = a.rate_hz if "--rate-hz" in sys.argv else 0.0
        return robot_main(a)
    counts = [int(x) for x in a.robots.split(",")]
    print(f"{os.cpu_count()} CPUs; learner: sim_reach RLPD (128x128, E=10, UTD 4), "
          f"batches of 100 rows")
    print("flood: transitions/s committed by the learner, all robots together")
    for n in counts:
        r = run(n, "flood", a, a.domain)
        print(f"  N={n}: {r['rows'] / r['wall_s']:8.0f} rows/s ({r['rows']} rows in "
              f"{r['wall_s']:.1f} s), {r['bytes_per_row']:.1f} bytes/row on the wire", flush=True)
    print(f"live: {a.rate_hz:g} rows/s per robot for {a.seconds:g} s")
    for n in counts:
        r = run(n, "live", a, a.domain)
        print(f"  N={n}: achieved UTD {r['utd']:.2f}/4, {r['bytes_per_s_robot'] / 1e3:.1f} KB/s "
              f"per robot, policy broadcast: received {1e3 * (r['latency_recv'] or 0):.0f} ms, "
              f"serving {1e3 * (r['latency_serve'] or 0):.0f} ms median / "
              f"{1e3 * (r['latency_serve_max'] or 0):.0f} ms max over {r['policies']} "
              f"(policy, robot) pairs; torch threads {r['threads']}", flush=True)
    if a.camera:
        print(f"camera rows ({FRAME[0]}x{FRAME[1]} RGB), encode + DDS + decode, as fast as "
              f"the senders go, {a.seconds:g} s")
        for n in counts:
            rows, nbytes, wall = camera_run(n, a.seconds, a.domain)
            print(f"  N={n}: {rows / wall:8.0f} rows/s received, {nbytes / max(rows, 1):.0f} "
                  f"bytes/row, {nbytes / wall / 1e6:.1f} MB/s", flush=True)


if __name__ == "__main__":
    main()
