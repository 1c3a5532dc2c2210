"""rosbag2 import: bags written with `rosbags` (MCAP and sqlite3), replayed through the live
control logic. The reference rows come from feeding the same messages, as plain values, to a
ControlCore the way the actor node's callbacks and timer do."""
from __future__ import annotations

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from o2o_robot.config import load_config
from o2o_robot.control import ControlCore
from o2o_robot.data.importers.common import ImportInputError, run_import
from o2o_robot.ingest.rosbag import RosbagSource
from o2o_robot.data.store import TransitionStore

TS = get_typestore(Stores.ROS2_JAZZY)
T0 = 1_700_000_000 * 10**9          # bag clock: epoch nanoseconds
MS = 10**6
JOINTS = ["joint1", "joint2", "joint3"]
CFG = load_config(overrides={"control": {"control_rate_hz": 20, "obs_timeout_ms": 250,
                                         "max_episode_steps": 1000,
                                         "reward": {"source": "success_button"}}})


def _msg(kind: str, value):
    T = TS.types
    if kind == "joint_state":
        pos, vel = value
        hdr = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
                                        frame_id="")
        # the message lists an extra joint first: joints are picked by name
        return T["sensor_msgs/msg/JointState"](
            header=hdr, name=["gripper"] + JOINTS, position=np.array([9.0, *pos]),
            velocity=np.array([0.0, *vel]), effort=np.array([], np.float64))
    if kind == "array":
        layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        return T["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.asarray(value, np.float64))
    return T["std_msgs/msg/Bool"](data=bool(value))


TYPES = {"joint_state": "sensor_msgs/msg/JointState", "array": "std_msgs/msg/Float64MultiArray",
         "bool": "std_msgs/msg/Bool"}


def session(teleop_segments_ms, presses) -> list[tuple[int, str, str, object]]:
    """(t_ns, topic, kind, value) in time order: joint states at 100 Hz and task_obs at 50 Hz
    over the whole bag, teleop actions at 20 Hz (phase-shifted) inside `teleop_segments_ms`,
    and button presses `(t_ms, topic)`."""
    end_ms = max(e for _, e in teleop_segments_ms) + 300
    events = []
    for t in range(0, end_ms, 10):
        s = t / 1000
        pos = [np.sin(s + j) for j in range(3)]
        events.append((T0 + t * MS, "/joint_states", "joint_state", (pos, [np.cos(s + j) for j in range(3)])))
        if t % 20 == 0:
            events.append((T0 + t * MS + 3 * MS, "/task_obs", "array", [s, 2 * s, 0.5, 0.1, 0.2, 0.3]))
    for lo, hi in teleop_segments_ms:
        for t in range(lo + 7, hi, 50):
            a = [np.clip(np.sin(t / 300 + j), -1.5, 1.5) for j in range(3)]
            events.append((T0 + t * MS, "/teleop/action", "array", a))
    events += [(T0 + t * MS, topic, "bool", True) for t, topic in presses]
    return sorted(events, key=lambda e: e[0])


def write_bag(path, events, storage=StoragePlugin.MCAP):
    with Writer(path, version=9, storage_plugin=storage) as w:
        conns = {}
        for t, topic, kind, value in events:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, TYPES[kind], typestore=TS)
            w.write(conns[topic], t, TS.serialize_cdr(_msg(kind, value), TYPES[kind]))
    return path


def live_rows(cfg, events) -> list[list[dict]]:
    """What the actor node's callbacks + 20 Hz timer would produce from these messages: plain
    values into a ControlCore, ticks every period from the first message, the node's reset rule
    with an instantaneous reset. The last list holds the rows after the last episode end."""
    c = cfg.control
    core = ControlCore(cfg.robot, c, cfg.safety, None, teleop_timeout_ms=c.teleop_timeout_ms,
                       teleop_source="demo", terminate_on_success=c.terminate_on_success,
                       failure_is_terminal=c.failure_is_terminal)
    core.set_teleop(True)
    period = int(1e9 / c.control_rate_hz)
    tick, episodes, rows, reset_at = events[0][0] + period, [], [], None
    for t, topic, kind, value in events + [(events[-1][0] + 2 * period, None, None, None)]:
        while tick <= t:
            now = tick / 1e9
            r = core.tick(now)
            if r.transition is not None:
                rows.append(r.transition)
            if r.episode_done:
                episodes.append(rows)
                rows, reset_at = [], now
            elif reset_at is not None and max(core.observations.ages_ms(now).values()) < (now - reset_at) * 1e3:
                core.episode_reset_done()
                reset_at = None
            tick += period
        s = t / 1e9
        if topic == "/joint_states":
            core.observations.update_joint_state("joint_states", ["gripper"] + JOINTS,
                                                 [9.0, *value[0]], [0.0, *value[1]], [], s)
        elif topic == "/task_obs":
            core.observations.update_array("task_obs", value, s)
        elif topic == "/teleop/action":
            core.set_teleop(None, value, s)
        elif topic == "/operator/success":
            core.mark_success()
        elif topic == "/operator/failure":
            core.mark_failure()
    return episodes + [rows]


def stored(path) -> tuple[dict, list[dict]]:
    with TransitionStore.open(path) as st:
        return st.read(), st.episodes()


PRESSES = [(1500, "/operator/success"), (3200, "/operator/failure")]
SEGMENTS = [(0, 1600), (1700, 3300)]


@pytest.fixture(scope="module")
def bag_events():
    return session(SEGMENTS, PRESSES)


def test_bag_rows_equal_the_live_rows_mcap_and_sqlite3(tmp_path, bag_events):
    expected = live_rows(CFG, bag_events)
    assert [len(e) > 10 for e in expected] == [True, True, False] and expected[2]
    for storage in (StoragePlugin.MCAP, StoragePlugin.SQLITE3):
        bag = write_bag(tmp_path / f"bag_{storage.name}", bag_events, storage)
        out = tmp_path / f"{storage.name}.zarr"
        summary = run_import(RosbagSource(bag, CFG), out, source="demo")
        rows, eps = stored(out)
        # success, failure, and the rows after it (teleop's last action still fresh), which
        # the end of the bag cuts: the only difference from live is that row's truncated flag
        assert len(eps) == 3 == summary["episodes"] and summary["details"]["cut_episodes"] == 1
        expected[2][-1] = {**expected[2][-1], "truncated": True}
        for ep, want in zip(eps, expected):
            assert ep["length"] == len(want) and ep["source"] == "demo"
            for f in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "timestamp"):
                got = rows[f][ep["start"]:ep["end"]]
                ref = np.stack([r[f] for r in want])
                assert np.array_equal(got, ref.astype(got.dtype)), (storage, f)
        assert eps[2]["success"] is None
        assert eps[0]["success"] is True and eps[0]["return"] == 1.0
        assert rows["terminated"][eps[0]["end"] - 1] and not rows["truncated"][eps[0]["end"] - 1]
        assert rows["truncated"][eps[1]["end"] - 1] and not rows["terminated"][eps[1]["end"] - 1]
        assert eps[1]["success"] is False and eps[1]["return"] == 0.0


def test_rows_hold_the_latest_message_values(tmp_path, bag_events):
    """Known values, independent of ControlCore: obs = latest joint state (position, velocity
    joint-major) + latest task_obs at the tick; action = latest teleop action (within bounds)."""
    bag = write_bag(tmp_path / "bag", bag_events)
    run_import(RosbagSource(bag, CFG), tmp_path / "s.zarr")
    rows, eps = stored(tmp_path / "s.zarr")
    assert (rows["source"] == 3).all()                 # offline by default
    for i in range(len(rows["obs"])):
        t_ns = round(rows["timestamp"][i] * 1e9 / MS) * MS          # the tick of row i
        # a message stamped exactly at a tick is applied after it (the replay order)
        latest = {topic: v for t, topic, _, v in bag_events if t < t_ns}
        (pos, vel), task = latest["/joint_states"], latest["/task_obs"]
        want = np.concatenate([np.ravel(np.column_stack([pos, vel])), task]).astype(np.float32)
        assert np.allclose(rows["obs"][i], want, atol=1e-6)
        assert np.allclose(rows["action"][i], latest["/teleop/action"], atol=1e-6)
    for ep in eps:   # one unbroken observation sequence per episode
        s, e = ep["start"], ep["end"]
        assert np.array_equal(rows["next_obs"][s:e - 1], rows["obs"][s + 1:e])


def test_action_silence_longer_than_gap_cuts_the_episode_truncated(tmp_path):
    events = session([(0, 1200), (4500, 5600)], [])   # a 3.3 s silence, no buttons
    bag = write_bag(tmp_path / "gap", events)
    summary = run_import(RosbagSource(bag, CFG, gap_s=2.0), tmp_path / "g.zarr")
    rows, eps = stored(tmp_path / "g.zarr")
    assert len(eps) == 2 and summary["details"]["cut_episodes"] == 2   # the gap, the bag end
    for ep in eps:
        last = ep["end"] - 1
        assert rows["truncated"][last] and not rows["terminated"][last]
        assert not rows["truncated"][ep["start"]:last].any()
        assert ep["success"] is None
    # negative control: a gap longer than the silence keeps one episode (teleop holds meanwhile)
    one = run_import(RosbagSource(bag, CFG, gap_s=5.0), tmp_path / "one.zarr")
    assert one["episodes"] == 1 and one["details"]["core"]["hold_reasons"]["teleop_stale"] > 0


def test_missing_topics_and_wrong_types_are_refused_naming_them(tmp_path, bag_events):
    no_task = write_bag(tmp_path / "no_task", [e for e in bag_events if e[1] != "/task_obs"])
    with pytest.raises(ImportInputError, match="'/task_obs'"):
        RosbagSource(no_task, CFG)
    sim_reward = load_config(overrides={"control": {"reward": {"source": "topic"}}})
    with pytest.raises(ImportInputError, match="'/reward'.*control.reward.source"):
        RosbagSource(write_bag(tmp_path / "b", bag_events), sim_reward)
    wrong = [(t, "/task_obs" if topic == "/operator/success" else topic, k, v)
             for t, topic, k, v in bag_events if topic != "/task_obs"]
    with pytest.raises(ImportInputError, match="'/task_obs' is std_msgs/msg/Bool"):
        RosbagSource(write_bag(tmp_path / "wrong", wrong), CFG)
    with pytest.raises(ImportInputError, match="--gap-s"):
        RosbagSource(tmp_path / "b", CFG, gap_s=0.2)
    assert not any(p.suffix == ".zarr" for p in tmp_path.iterdir())


def test_fixed_topic_names_match_the_actor_node():
    qos = pytest.importorskip("o2o_robot.ros.qos")   # rclpy
    from o2o_robot.ingest import rosbag

    assert (rosbag.TELEOP_ACTION_TOPIC, rosbag.TELEOP_ENGAGED_TOPIC, rosbag.SUCCESS_TOPIC,
            rosbag.FAILURE_TOPIC, rosbag.DEFAULT_DONE_TOPIC) == (
        qos.TELEOP_ACTION_TOPIC, qos.TELEOP_ENGAGED_TOPIC, qos.SUCCESS_TOPIC, qos.FAILURE_TOPIC,
        qos.DEFAULT_DONE_TOPIC)
    for reward in (CFG.control.reward, load_config().control.reward,
                   load_config(overrides={"control": {"reward": {"done_topic": "term"}}}).control.reward):
        assert rosbag.done_topic(reward) == qos.done_topic(reward)


def test_cli_rosbag_import_with_a_config_file(tmp_path, bag_events):
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    cfg = tmp_path / "robot.yaml"
    cfg.write_text(yaml.safe_dump({"control": CFG.control.model_dump(mode="json")}))
    bag = write_bag(tmp_path / "bag", bag_events, StoragePlugin.SQLITE3)
    out = subprocess.run([sys.executable, "-m", "o2o_robot.cli", "data", "import", "rosbag", bag,
                          "--store", tmp_path / "s.zarr", "--config", cfg, "--source", "demo"],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "imported 3 episodes" in out.stdout and "as demo" in out.stdout
    assert "1 episode(s) ended by an action gap or the bag's end" in out.stdout
    default = subprocess.run([sys.executable, "-m", "o2o_robot.cli", "data", "import", "rosbag",
                              bag, "--store", tmp_path / "t.zarr"],
                             cwd=Path(__file__).resolve().parents[1], capture_output=True,
                             text=True, timeout=300)
    # the packaged sim_reach.yaml takes rewards from the sim's reward topic: not in this bag
    assert default.returncode == 2 and "'/reward'" in default.stderr
    assert not (tmp_path / "t.zarr").exists()


def test_importer_modules_import_neither_rclpy_nor_torch():
    import json
    import subprocess
    import sys

    code = ("import json, sys; import o2o_robot.ingest.rosbag, o2o_robot.data.importers.hdf5, "
            "o2o_robot.data.importers.minari_io, o2o_robot.ingest.cli; "
            "print(json.dumps([m for m in ('rclpy', 'torch', 'mujoco') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_malformed_messages_are_dropped_and_counted_as_live(tmp_path, bag_events):
    """Extra bad messages (NaN in a used joint, a 2-value action, a 5-value task_obs) change no
    row: the node drops them; the summary counts them per topic."""
    nan_pos = [0.1, np.nan, 0.3]
    bad = [(T0 + 505 * MS, "/joint_states", "joint_state", (nan_pos, [0.0] * 3)),
           (T0 + 812 * MS, "/teleop/action", "array", [0.5, 0.5]),
           (T0 + 1111 * MS, "/task_obs", "array", [1.0] * 5)]
    clean = write_bag(tmp_path / "clean", bag_events)
    dirty = write_bag(tmp_path / "dirty", sorted(bag_events + bad, key=lambda e: e[0]))
    run_import(RosbagSource(clean, CFG), tmp_path / "c.zarr")
    summary = run_import(RosbagSource(dirty, CFG), tmp_path / "d.zarr")
    (a, ea), (b, eb) = stored(tmp_path / "c.zarr"), stored(tmp_path / "d.zarr")
    assert [e["length"] for e in ea] == [e["length"] for e in eb]
    for f in ("obs", "action", "reward", "next_obs", "terminated", "truncated"):
        assert np.array_equal(a[f], b[f]), f
    dropped = summary["details"]["dropped"]
    assert dropped == {"joint_states": 1, "teleop/action": 1, "task_obs": 1}   # config names
    assert "NaN" in summary["details"]["drop_reasons"]["joint_states"]


def test_a_row_lost_mid_episode_splits_it_where_the_steps_break(tmp_path, bag_events):
    """Joint states silent for 400 ms (> obs_timeout_ms) inside the first episode: the core drops
    the pending row, as live. A store episode is an unbroken run of steps, so the importer's
    EpisodeAssembler splits the live episode there; nothing else changes."""
    events = [e for e in bag_events if not (e[1] == "/joint_states"
                                             and T0 + 600 * MS <= e[0] < T0 + 1000 * MS)]
    expected = live_rows(CFG, events)
    bag = write_bag(tmp_path / "lost", events)
    summary = run_import(RosbagSource(bag, CFG), tmp_path / "s.zarr")
    rows, eps = stored(tmp_path / "s.zarr")
    d = summary["details"]
    assert d["core"]["dropped_stale"] == 1 and d["split_episodes"] == 1
    assert len(eps) == 4 == len(expected) + 1 and d["cut_episodes"] == 1
    before, after = eps[0], eps[1]
    want = expected[0]                                   # the live episode, one row short
    assert before["length"] + after["length"] == len(want) and before["end"] == after["start"]
    for f in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "timestamp"):
        ref = np.stack([r[f] for r in want])
        assert np.array_equal(rows[f][before["start"]:after["end"]], ref.astype(rows[f].dtype)), f
    assert before["success"] is None and after["success"] is True   # the label is on the end
    cut = before["end"] - 1
    assert not rows["terminated"][cut] and not rows["truncated"][cut]   # rows as recorded
    # the split is where the observation sequence breaks; each store episode is unbroken
    assert not np.array_equal(rows["next_obs"][cut], rows["obs"][after["start"]])
    for ep in eps:
        s, e = ep["start"], ep["end"]
        assert np.array_equal(rows["next_obs"][s:e - 1], rows["obs"][s + 1:e])
    assert [e["length"] for e in eps[2:]] == [len(x) for x in expected[1:]]
    from o2o_robot.ingest.cli import _bag_line

    assert "1 episode(s) split where a row was dropped" in _bag_line(d)
