"""Import speed: a D4RL-layout HDF5 file and a teleop rosbag2 (MCAP) into a fresh store.

    .venv/bin/python benchmarks/import_speed.py [--rows 100000] [--bag-seconds 60]

HDF5: `--rows` transitions in episodes of 1,000 (obs 17, action 6, the HalfCheetah-sized D4RL
layout with timeouts). Bag: `--bag-seconds` of a reach-arm teleop session, joint states at
500 Hz, teleop actions at 20 Hz, an episode button every 10 s, replayed through the live control
logic at the configured 20 Hz. Both are written to a temporary folder by this script, imported
with `run_import` (what `o2o-robot data import` runs), and timed end to end, including the
validation pass; prints rows/s and the peak resident memory of this process.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from o2o_robot.config import load_config
from o2o_robot.data.importers.common import run_import
from o2o_robot.data.importers.hdf5 import Hdf5Source
from o2o_robot.ingest.rosbag import RosbagSource

JOINTS = ["joint1", "joint2", "joint3"]


def write_d4rl(path: Path, rows: int, episode_len: int = 1000) -> None:
    rng = np.random.default_rng(0)
    timeouts = np.zeros(rows, bool)
    timeouts[episode_len - 1::episode_len] = True
    with h5py.File(path, "w") as f:
        f["observations"] = rng.standard_normal((rows, 17), np.float32)
        f["next_observations"] = rng.standard_normal((rows, 17), np.float32)
        f["actions"] = rng.uniform(-1, 1, (rows, 6)).astype(np.float32)
        f["rewards"] = rng.standard_normal(rows).astype(np.float32)
        f["terminals"] = np.zeros(rows, bool)
        f["timeouts"] = timeouts


def write_bag(path: Path, seconds: float) -> int:
    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types
    names = {"js": "sensor_msgs/msg/JointState", "arr": "std_msgs/msg/Float64MultiArray",
             "bool": "std_msgs/msg/Bool"}
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
                                      frame_id="")
    layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    t0, count = 1_700_000_000 * 10**9, 0
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {"/joint_states": w.add_connection("/joint_states", names["js"], typestore=ts),
                 "/task_obs": w.add_connection("/task_obs", names["arr"], typestore=ts),
                 "/teleop/action": w.add_connection("/teleop/action", names["arr"], typestore=ts),
                 "/operator/success": w.add_connection("/operator/success", names["bool"],
                                                       typestore=ts)}
        for ms in range(0, int(seconds * 1000), 2):               # 500 Hz joint states
            s, t = ms / 1000, t0 + ms * 10**6
            msg = T[names["js"]](header=header, name=JOINTS,
                                 position=np.array([np.sin(s + j) for j in range(3)]),
                                 velocity=np.array([np.cos(s + j) for j in range(3)]),
                                 effort=np.array([], np.float64))
            w.write(conns["/joint_states"], t, ts.serialize_cdr(msg, names["js"]))
            count += 1
            if ms % 20 == 0:                                       # 50 Hz task observation
                arr = T[names["arr"]](layout=layout, data=np.array([s, 2 * s, .5, .1, .2, .3]))
                w.write(conns["/task_obs"], t + 10**6, ts.serialize_cdr(arr, names["arr"]))
                count += 1
            if ms % 50 == 0:                                       # 20 Hz teleop action
                arr = T[names["arr"]](layout=layout,
                                      data=np.array([np.sin(s / 3 + j) for j in range(3)]))
                w.write(conns["/teleop/action"], t + 7 * 10**6, ts.serialize_cdr(arr, names["arr"]))
                count += 1
            if ms % 10000 == 9990:                                 # episode button every 10 s
                w.write(conns["/operator/success"], t,
                        ts.serialize_cdr(T[names["bool"]](data=True), names["bool"]))
                count += 1
    return count


def timed(label: str, src, store: Path, units: str, messages: int | None = None) -> None:
    start = time.perf_counter()
    summary = run_import(src, store, progress=False)
    wall = time.perf_counter() - start
    rows = summary["transitions"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{label:6s} {units}: {summary['episodes']} episodes, {rows} transitions in {wall:.2f} s "
          f"({rows / wall:,.0f} rows/s"
          + (f", {messages / wall:,.0f} bag messages/s" if messages else "")
          + f"); peak RSS so far {peak_mb:.0f} MB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000, help="HDF5 transitions")
    ap.add_argument("--bag-seconds", type=float, default=60.0, help="length of the bag")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_d4rl(tmp / "d4rl.hdf5", args.rows)
        timed("hdf5", Hdf5Source(tmp / "d4rl.hdf5"), tmp / "h.zarr", f"{args.rows:,} rows")
        messages = write_bag(tmp / "bag", args.bag_seconds)
        cfg = load_config(overrides={"control": {"control_rate_hz": 20, "obs_timeout_ms": 250,
                                                 "max_episode_steps": 1000,
                                                 "reward": {"source": "success_button"}}})
        timed("rosbag", RosbagSource(tmp / "bag", cfg), tmp / "b.zarr",
              f"{args.bag_seconds:.0f} s, {messages:,} messages", messages)


if __name__ == "__main__":
    main()
