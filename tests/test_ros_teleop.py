"""Teleop over real rclpy / Fast DDS: Joy in -> teleop/action, teleop/engaged, labels and e-stop
out; the keyboard teleop in a pseudo-terminal; demo collection in sim with the scripted expert
(in one process, and as the launch file's separate node processes); a sim fine-tune with a
scripted operator who takes over every other episode."""
from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.parameter import Parameter
from sensor_msgs.msg import Joy
from std_msgs.msg import Bool, Float64MultiArray, String

from o2o_robot.config import load_config, resolve_config_path
from o2o_robot.learning.core import load_mirror
from o2o_robot.data.schema import SOURCE_CODE
from o2o_robot.data.store import TransitionStore
from o2o_robot.ros import qos
from o2o_robot.ros.actor_node import ActorNode
from o2o_robot.ros.collect import run_collect
from o2o_robot.ros.finetune import run_finetune
from o2o_robot.ros.teleop_node import TeleopNode
from o2o_robot.runlog import read_metrics
from o2o_robot.spaces import ActionScaler
from ros_helpers import (ROOT, Recorder, RosGraph, domain_id, namespace, start_node_main,
                         status_json, stop_processes, wait_for)

DEMO, ONLINE, INTERVENTION = (SOURCE_CODE[s] for s in ("demo", "online", "intervention"))
PACKAGED = resolve_config_path("sim_reach.yaml")


def config(tmp: Path, **sections):
    base = {"store": {"path": str(tmp / "store.zarr")}}
    for key, values in sections.items():
        base[key] = {**base.get(key, {}), **values}
    return load_config(PACKAGED, overrides=base)


def pad(axes: dict[int, float] | None = None, pressed: tuple[int, ...] = ()) -> Joy:
    a = [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    for i, v in (axes or {}).items():
        a[i] = v
    return Joy(axes=a, buttons=[int(i in pressed) for i in range(11)])


# ------------------------------------------------------------------------------- Joy mapping
@pytest.fixture(scope="module")
def joy(tmp_path_factory):
    cfg = config(tmp_path_factory.mktemp("joy"),
                 teleop={"device": "gamepad", "joy_timeout_ms": 600.0, "rate_hz": 20.0})
    graph, ns = RosGraph(domain_id(0)), namespace("teleop")
    node = graph.add(TeleopNode(cfg, context=graph.context, namespace=ns))
    tester = graph.node("tester", ns)
    rec = {name: Recorder(tester, typ, topic, conv, profile) for name, typ, topic, conv, profile in (
        ("action", Float64MultiArray, "teleop/action", lambda m: np.array(m.data), qos.STREAM),
        ("engaged", Bool, "teleop/engaged", lambda m: m.data, qos.STREAM),
        ("success", Bool, "operator/success", lambda m: m.data, qos.STREAM),
        ("failure", Bool, "operator/failure", lambda m: m.data, qos.STREAM),
        ("estop", Bool, "estop", lambda m: m.data, qos.LATCHED),
        ("status", String, f"{ns}/o2o_teleop/status", status_json, qos.STATUS))}
    pub = tester.create_publisher(Joy, "joy", qos.STREAM)
    wait_for(lambda: pub.get_subscription_count() and all(
        r.sub.get_publisher_count() for r in rec.values()), 10.0, "matched topics")
    yield graph, node, pub, rec
    graph.close()


def test_joy_drives_teleop_action_and_engaged_and_goes_silent_without_joy(joy):
    _, node, pub, rec = joy
    t0 = time.monotonic()
    pub.publish(pad({1: 1.0, 0: -0.5}, pressed=(4,)))          # left stick up + right, LB held
    wait_for(lambda: rec["engaged"].since(t0), 5.0, "teleop/engaged")
    first = rec["action"].since(t0)[0]
    np.testing.assert_allclose(first, [2.0, -2.0 * 0.45 / 0.95, 0.0])   # physical units
    assert rec["engaged"].since(t0)[0] is True
    # One Joy message, then silence: republished at rate_hz until joy_timeout_ms, then nothing.
    wait_for(lambda: len(rec["action"].since(t0)) >= 3, 5.0, "republished teleop")
    wait_for(lambda: node.status()["silent"], 5.0, "the Joy timeout")
    t1 = time.monotonic()
    time.sleep(0.3)
    assert rec["action"].since(t1) == [] and rec["engaged"].since(t1) == []
    t2 = time.monotonic()
    pub.publish(pad({1: 0.02}))                                 # deadman released, stick at rest
    wait_for(lambda: rec["engaged"].since(t2), 5.0, "teleop after the silence")
    assert rec["engaged"].since(t2)[0] is False and not rec["action"].since(t2)[0].any()


def test_buttons_press_success_failure_and_latch_the_estop(joy):
    _, node, pub, rec = joy
    before = {k: len(rec[k]) for k in ("success", "failure", "estop")}
    for msg in (pad(pressed=(0,)), pad(pressed=(0,)), pad(), pad(pressed=(1,)),
                pad(pressed=(2,)), pad()):
        pub.publish(msg)
        time.sleep(0.03)
    wait_for(lambda: len(rec["estop"]) >= before["estop"] + 2, 5.0, "e-stop press and release")
    time.sleep(0.2)
    new = {k: [v for _, v in rec[k].items[before[k]:]] for k in before}
    assert new == {"success": [True], "failure": [True], "estop": [True, False]}   # edges only


def test_a_joy_message_the_profile_cannot_read_is_counted_naming_the_key(joy):
    _, node, pub, rec = joy
    t0 = time.monotonic()
    pub.publish(Joy(axes=[0.0, 1.0, 0.0], buttons=[0] * 11))
    st = wait_for(lambda: next((s for s in rec["status"].since(t0) if s["refused"]), None),
                  5.0, "the refusal in ~/status")
    assert "teleop.joy.axes[2].axis: index 4, the Joy message has 3 axes" in st["last_refused"]
    assert st["device"] == "gamepad"


def test_teleop_node_refuses_a_device_without_a_joy_profile(joy):
    graph = joy[0]
    with pytest.raises(ValueError, match="device: teleop_node maps Joy .* got 'scripted'"):
        TeleopNode(config(Path("/tmp")), context=graph.context, namespace=namespace("bad"))


def test_actor_in_collect_mode_refuses_a_policy_and_unknown_modes(joy, tmp_path):
    graph, cfg = joy[0], config(tmp_path)
    (tmp_path / "p.onnx").write_bytes(b"x")
    for params, message in (([Parameter("mode", value="collect"),
                              Parameter("policy_path", value=str(tmp_path / "p.onnx"))],
                             "policy_path: must be empty in mode 'collect'"),
                            ([Parameter("mode", value="demo")], "mode: expected one of")):
        with pytest.raises(ValueError, match=message):
            ActorNode(cfg, context=graph.context, namespace=namespace("collect_bad"),
                      parameter_overrides=params)


# -------------------------------------------------------------------------------- keyboard
def test_keyboard_teleop_reads_a_terminal_and_publishes_joy(tmp_path):
    graph, ns = RosGraph(domain_id(1)), namespace("keyboard")
    tester = graph.node("tester", ns)
    joys = Recorder(tester, Joy, "joy", lambda m: (list(m.axes), list(m.buttons)))
    master, slave = pty.openpty()
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain_id(1)), "RCUTILS_LOGGING_BUFFERED_STREAM": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "o2o_robot.ros.keyboard_teleop", "--ros-args",
                             "-r", f"__ns:={ns}", "-p", "config:=sim_reach.yaml"], cwd=tmp_path,
                            env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    try:
        wait_for(lambda: len(joys) >= 3, 30.0, "Joy from keyboard_teleop")
        t0 = time.monotonic()
        os.write(master, b" w")                                  # engage, then axis 0 up
        pressed = wait_for(lambda: next((j for j in joys.since(t0) if j[0][0] > 0), None), 10.0,
                           "a deflected axis")
        assert pressed[0][0] == pytest.approx(0.5) and pressed[1][0] == 1   # speed 0.5, engaged
        os.write(master, b"\r")
        wait_for(lambda: any(j[1][1] for j in joys.since(t0)), 10.0, "the success button")
        assert sum(j[1][1] for j in joys.since(t0)) == 1         # momentary: one message
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        os.close(master)
        graph.close()
    # Not a terminal: refused at once, saying why.
    out = subprocess.run([sys.executable, "-m", "o2o_robot.ros.keyboard_teleop"], cwd=tmp_path,
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "stdin is not a TTY" in out.stderr


# ----------------------------------------------------------------------- demo collection
def test_scripted_demo_collection_in_sim_records_labelled_demo_episodes(tmp_path, capsys):
    max_steps = 6    # the expert needs 2-14 steps: some episodes succeed, some hit the limit
    cfg = config(tmp_path, control={"max_episode_steps": max_steps})
    summary = run_collect(cfg, teleop="scripted", episodes=4, domain_id=domain_id(2),
                          namespace=namespace("collect"), max_wall_s=90.0)
    out = capsys.readouterr().out
    assert summary["ended"] == "episodes" and summary["stored_episodes"] == 4
    assert out.count("[demos] demo episode") >= 4 and "recorded (4 so far)" in out
    with TransitionStore.open(cfg.store.path) as store:
        episodes = store.episodes()
        rows = store.read(["source", "reward", "terminated", "truncated"])
        assert store.spec["task"] == "reach"
    assert len(episodes) == 4 and (rows["source"] == DEMO).all()
    reports = [r for r in summary["episodes"] if r["stored"]]
    assert [(e["length"], e["success"]) for e in episodes] == \
        [(r["steps"], r["success"]) for r in reports]
    for ep in episodes:
        last = slice(ep["end"] - 1, ep["end"])
        if ep["success"]:    # the sim pressed success: terminal, the sparse reward on that row
            assert rows["terminated"][last].all() and rows["reward"][last].tolist() == [1.0]
        else:                # the time limit: truncated, never terminated
            assert ep["length"] == max_steps and rows["truncated"][last].all()
        assert 1 <= ep["length"] <= max_steps
        assert not rows["terminated"][ep["start"]:ep["end"] - 1].any()


def test_collect_launch_graph_as_node_processes_records_demos(tmp_path):
    """What collect_demos.launch.py starts (use_sim:=true teleop:=scripted), as `ros2 run`
    would: three node processes; the actor in mode collect logs a line per episode."""
    (tmp_path / "collect.yaml").write_text(
        f"base: {PACKAGED}\nstore:\n  path: {tmp_path / 'demos.zarr'}\n")
    cfg_arg, ns, domain = f"config:={tmp_path / 'collect.yaml'}", namespace("launch"), domain_id(3)
    procs = [start_node_main(m, ["-p", cfg_arg, *extra], ns, domain, tmp_path) for m, extra in (
        ("o2o_robot.ros.sim_bridge_node", []),
        ("o2o_robot.ros.scripted_teleop_node", ["-p", "mode:=demo"]),
        ("o2o_robot.ros.actor_node", ["-p", "mode:=collect"]))]
    actor_lines = procs[-1][1]
    try:
        wait_for(lambda: any("demo episode 1:" in line for line in actor_lines), 60.0,
                 "two demo episodes in the actor's log")
    finally:
        codes = stop_processes([proc for proc, _ in procs], timeout=30.0)
    assert codes == [0, 0, 0], "".join(actor_lines)   # None: did not stop within 30 s
    with TransitionStore.open(tmp_path / "demos.zarr") as store:
        counts = store.counts()
    assert counts["demo"]["episodes"] >= 2 and counts["online"]["transitions"] == 0
    assert not (tmp_path / "runs").exists()    # collect mode starts no learner


def test_demos_collect_with_the_keyboard_records_what_the_operator_typed(tmp_path):
    """`o2o-robot demos collect --teleop keyboard` in a pseudo-terminal: space engages, w drives
    joint 1, Enter labels the episode a success; the run stops after that one episode."""
    master, slave = pty.openpty()
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain_id(1))}
    proc = subprocess.Popen([sys.executable, "-m", "o2o_robot.cli", "demos", "collect", "--teleop",
                             "keyboard", "--episodes", "1", "--store", str(tmp_path / "s.zarr")],
                            cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = []

    def read(until: str, timeout: float) -> None:
        def seen():
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    out.append(os.read(master, 4096).decode(errors="ignore"))
                except OSError:   # the process closed the terminal
                    pass
            return until in "".join(out)
        wait_for(seen, timeout, repr(until), interval=0.0)

    try:
        read("Ctrl-C stops", 60.0)
        os.write(master, b" ")
        read("ENGAGED", 10.0)
        for _ in range(8):                      # a held key: repeats faster than key_hold_ms
            os.write(master, b"w")
            time.sleep(0.05)
        os.write(master, b"\r")
        read("transitions recorded", 30.0)
        assert proc.wait(timeout=30) == 0, "".join(out)
    finally:
        proc.kill()
        os.close(master)
    assert "demo episode 0:" in "".join(out) and ", success," in "".join(out)
    with TransitionStore.open(tmp_path / "s.zarr") as store:
        (episode,) = store.episodes()
        actions = store.read(["action"])["action"]
    assert episode["success"] and episode["source"] == "demo" and episode["length"] >= 5
    assert actions[:, 0].max() == pytest.approx(1.0)   # speed 0.5 x the 2 rad/s bound
    assert not actions[:, 1:].any()                    # only joint 1 was driven


def test_demos_collect_cli_exit_codes_for_no_terminal_a_locked_store_and_a_bad_profile(tmp_path):
    store = tmp_path / "s.zarr"
    cmd = [sys.executable, "-m", "o2o_robot.cli", "demos", "collect", "--store", str(store),
           "--episodes", "1"]
    run = lambda *extra: subprocess.run(cmd + list(extra), cwd=ROOT, stdin=subprocess.DEVNULL,  # noqa: E731
                                        capture_output=True, text=True, timeout=120)
    out = run("--teleop", "keyboard")
    assert out.returncode == 2 and "--teleop keyboard" in out.stderr and "not a TTY" in out.stderr
    with TransitionStore.create(store, 12, 3):                   # another writer holds it
        out = run("--teleop", "scripted")
    assert out.returncode == 1 and str(store) in out.stderr, out.stderr
    # A 7-joint arm with the 6-axis gamepad profile: a clear error naming the key, exit 2.
    arm7 = tmp_path / "arm7.yaml"
    arm7.write_text(f"base: {Path(ROOT) / 'config' / 'examples' / 'my_robot.yaml'}\nrobot:\n  action:\n"
                    "    names: [j1, j2, j3, j4, j5, j6, j7]\n    low: [-0.5, -0.5, -0.5, -0.8, "
                    "-0.8, -0.8, -0.8]\n    high: [0.5, 0.5, 0.5, 0.8, 0.8, 0.8, 0.8]\n")
    out = run("--teleop", "joy", "--no-sim", "--config", str(arm7), "--store", str(tmp_path / "s7"))
    assert out.returncode == 2 and "teleop.joy.axes" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


# ---------------------------------------------------------------------- interventions
def test_finetune_with_a_scripted_operator_stores_interventions_on_the_demo_side(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = config(run_dir, sampler={"batch_size": 32},
                 algorithm={"name": "rlpd", "hidden_dims": [32, 32], "critic_ensemble_size": 2},
                 learner={"utd_ratio": 1, "warmup_steps": 20, "export_every_updates": 20,
                          "device": "cpu", "mode": "process", "torch_threads": 1},
                 control={"max_episode_steps": 10, "intervention_window": 10_000},
                 sim={"lockstep": True}, teleop={"intervene_every": 2},
                 train={"demo_episodes": 2, "run_dir": str(run_dir), "total_env_steps": 150,
                        "eval_every": 10**6, "eval_episodes": 2})
    ns, domain = namespace("hil"), domain_id(3)
    graph = RosGraph(domain)             # watches the actor's ~/status from outside
    status = Recorder(graph.node("watcher", ns), String, f"{ns}/o2o_actor/status", status_json,
                      qos.STATUS)
    try:
        summary = run_finetune(cfg, domain_id=domain, namespace=ns)
    finally:
        graph.close()
    out = capsys.readouterr().out
    assert summary["ended"] == "steps" and summary["learner_state"] == "stopped", summary
    with TransitionStore.open(cfg.store.path) as store:
        episodes = [e for e in store.episodes() if e["source"] != "demo"]
        rows = store.read(["source"])["source"]
        # The learner's mirror of every row (as if this learner had ingested them all).
        scaler = ActionScaler(cfg.robot.action.low, cfg.robot.action.high)
        mirror = load_mirror(store, cfg, scaler, [[0, len(store)]])
    # Episodes 0, 2, 4, ... are the operator's, whole; the others the policy's. Episode 0 may
    # start with a few policy rows: the operator's first flags can race DDS discovery.
    sources = [set(rows[e["start"]:e["end"]].tolist()) for e in episodes]
    assert len(sources) >= 8
    assert INTERVENTION in sources[0] and sources[0] <= {ONLINE, INTERVENTION}, sources[0]
    assert sources[1:] == [{INTERVENTION} if i % 2 == 0 else {ONLINE}
                           for i in range(1, len(sources))]
    n_int, n_on = int((rows == INTERVENTION).sum()), int((rows == ONLINE).sum())
    # The sampler's demo side holds demos + interventions; the online side only online rows.
    assert mirror.size("offline") == int((rows == DEMO).sum()) + n_int
    batch = mirror.sample_mixed(256, 0.5, np.random.default_rng(0))
    assert set(batch["source"][:128].tolist()) == {DEMO, INTERVENTION}
    assert set(batch["source"][128:].tolist()) == {ONLINE}
    # The rate the actor reports is the share of rows it stored as interventions.
    assert n_int <= summary["interventions"] <= n_int + 1       # + the last, rowless action
    assert summary["intervention_rate"] == pytest.approx(n_int / (n_int + n_on), abs=0.02)
    seen = [s["intervention_rate"] for _, s in status.items if s["intervention_rate"] is not None]
    assert seen and 0.2 < seen[-1] < 0.8                         # ~/status, from outside
    logged = [r["intervention_rate"] for r in read_metrics(run_dir, "status")
              if "intervention_rate" in r]
    assert logged and all(0 < v <= 1 for v in logged)            # metrics.jsonl + TensorBoard
    assert any("interv 0." in line for line in out.splitlines() if line.startswith("[finetune] step"))


def test_the_keyboard_reader_reports_its_end_so_the_node_releases_teleop():
    """The terminal goes away: the reader calls on_end (the node then drops its engaged flag)."""
    from o2o_robot.ros.keyboard_teleop import TerminalReader

    master, slave = pty.openpty()
    ended, typed = [], []
    with open(slave, "rb", buffering=0, closefd=False) as stream:
        with TerminalReader(lambda text: typed.append(text) or [], stream=stream,
                            on_end=ended.append):
            os.write(master, b" ")
            deadline = time.monotonic() + 5.0
            while not typed and time.monotonic() < deadline:
                time.sleep(0.01)
            os.close(master)                              # the operator's terminal closes
            while not ended and time.monotonic() < deadline:
                time.sleep(0.01)
    os.close(slave)
    assert typed == [" "] and len(ended) == 1, (typed, ended)
