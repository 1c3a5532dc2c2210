"""ActorNode over real rclpy / Fast DDS: a test node plays the robot (joint_states, task_obs at
50 Hz), the operator (e-stop, labels, teleop) and the reset routine, and watches `action` and
`~/status`. One actor serves the module; each test restores what it changes (feeding on, e-stop
clear, policy 1 unless it says otherwise)."""
from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray, String
from std_srvs.srv import Trigger

from o2o_robot.config import load_config, resolve_config_path
from o2o_robot.data.schema import EpisodeEnd, Transition
from o2o_robot.ros import qos
from o2o_robot.ros.actor_node import ActorNode
from ros_helpers import (Recorder, RosGraph, call_service, check_main_lifecycle, domain_id,
                         linear_policy, linear_reference, namespace, set_parameter, status_json,
                         wait_for)

JOINTS = ["joint1", "joint2", "joint3"]
Q, QD = [0.1, 0.4, 1.2], [0.0, 0.0, 0.0]
TASK = [0.2, 0.0, 0.3, 0.1, 0.2, 0.25]
OBS = np.array([Q[0], QD[0], Q[1], QD[1], Q[2], QD[2], *TASK], np.float32)   # joint-major
MAX_DELTA = 0.25
OBS_TIMEOUT_MS = 1000.0
LOW, HIGH = [-2.0] * 3, [2.0] * 3


class StubLearner:
    """The learner interface, recording what the node hands over."""

    def __init__(self):
        self.transitions: list[Transition] = []
        self.episode_ends: list[EpisodeEnd] = []
        self.next_policy: bytes | None = None

    def submit(self, item: Transition | EpisodeEnd) -> bool:
        (self.transitions if isinstance(item, Transition) else self.episode_ends).append(item)
        return True

    def poll_policy(self) -> bytes | None:
        data, self.next_policy = self.next_policy, None
        return data

    def stats(self) -> dict:
        return {"achieved_utd": 0.0, "store_sizes": {"online": len(self.transitions)}}


def _policy(tmp: Path, name: str, bias, version: int, **options):
    weight = np.random.default_rng(version).normal(0.0, 0.05, (12, 3))
    data = linear_policy(12, 3, LOW, HIGH, weight=weight, bias=np.arctanh(np.asarray(bias) / 2),
                         version=version, **options)
    path = tmp / name
    path.write_bytes(data)
    ref = linear_reference(OBS, LOW, HIGH, weight, np.arctanh(np.asarray(bias) / 2))
    return SimpleNamespace(path=str(path), data=data, ref=ref.astype(np.float64))


@pytest.fixture(scope="module")
def g(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("actor")
    p1 = _policy(tmp, "p1.onnx", [1.6, -1.0, 0.6], version=1)
    p2 = _policy(tmp, "p2.onnx", [-1.2, 0.4, 0.0], version=5)
    p3 = _policy(tmp, "p3.onnx", [0.2, 0.2, 0.2], version=9)
    nan = _policy(tmp, "nan.onnx", [0.0, 0.0, 0.0], version=7, nan=True)
    garbage = tmp / "garbage.onnx"
    garbage.write_bytes(b"this is not an onnx model")
    # A long obs timeout: on a loaded 2-core machine the 50 Hz feeder can stall for a few
    # hundred ms, and only the stale test should see a stale hold.
    cfg = load_config(resolve_config_path("sim_reach.yaml"), overrides={
        "safety": {"max_delta_per_tick": MAX_DELTA},
        "control": {"max_episode_steps": 100000, "obs_timeout_ms": OBS_TIMEOUT_MS}})
    ns = namespace("actor")
    graph = RosGraph(domain_id(0))
    learner = StubLearner()
    # No latency budget: tests never depend on timing (STYLE.md rule 9).
    actor = graph.add(ActorNode(cfg, learner=learner, latency_budget_share=None,
                                context=graph.context, namespace=ns,
                                parameter_overrides=[Parameter("policy_path", value=p1.path),
                                                     Parameter("deterministic", value=True)]))
    tester = graph.node("tester", ns)
    state = SimpleNamespace(feeding=True, reset_calls=0, teleop=None)
    joint_pub = tester.create_publisher(JointState, "joint_states", qos.STREAM)
    task_pub = tester.create_publisher(Float64MultiArray, "task_obs", qos.STREAM)
    teleop_pub = tester.create_publisher(Float64MultiArray, "teleop/action", qos.STREAM)

    def feed():
        if state.feeding:
            joint_pub.publish(JointState(name=JOINTS, position=Q, velocity=QD))
            task_pub.publish(Float64MultiArray(data=TASK))
        if state.teleop is not None:
            teleop_pub.publish(Float64MultiArray(data=state.teleop))

    def on_reset(request, response):
        state.reset_calls += 1
        response.success, response.message = True, "reset"
        return response

    tester.create_timer(0.02, feed)
    tester.create_service(Trigger, "reset", on_reset)
    g = SimpleNamespace(
        graph=graph, actor=actor, tester=tester, state=state, learner=learner, target=f"{ns}/o2o_actor",
        p1=p1, p2=p2, p3=p3, nan=nan, garbage=str(garbage), joint_pub=joint_pub, task_pub=task_pub,
        pub=lambda typ, topic, profile=qos.STREAM: tester.create_publisher(typ, topic, profile),
        actions=Recorder(tester, Float64MultiArray, "action", lambda m: np.array(m.data)),
        status=Recorder(tester, String, f"{ns}/o2o_actor/status", status_json, qos.STATUS),
        clear=tester.create_client(Trigger, f"{ns}/o2o_actor/clear_estop"),
        rollback=tester.create_client(Trigger, f"{ns}/o2o_actor/rollback_policy"))
    g.estop = g.pub(Bool, "estop", qos.LATCHED)
    wait_for(lambda: _acting(g, p1.ref), 15.0, "the first policy's actions")
    yield g
    graph.close()


def _acting(g, ref) -> bool:
    last = g.actions.last()
    return last is not None and np.allclose(last, ref, atol=1e-5)


def _held(g) -> bool:
    last = g.actions.last()
    return last is not None and not np.any(last)


def _status_after(g, t: float, timeout: float = 10.0, where=lambda st: True,
                  what: str = "a fresh status") -> dict:
    """The first status received after time.monotonic() == t for which `where` holds."""
    return wait_for(lambda: next((st for st in g.status.since(t) if where(st)), None),
                    timeout, what)


def test_actions_arrive_at_the_configured_rate_from_the_policy(g):
    t0 = time.monotonic()
    time.sleep(1.0)
    window = [a for a in g.actions.since(t0)]
    # 20 Hz nominal: a loose band (a functional check of the timer, not a benchmark).
    assert 10 <= len(window) <= 30
    assert all(np.allclose(a, g.p1.ref, atol=1e-5) for a in window)
    st = _status_after(g, t0 + 0.1)
    assert st["target_rate_hz"] == 20.0
    assert 10.0 <= st["rate_hz"] <= 30.0
    assert st["policy"]["version"] == 1 and st["policy"]["deterministic"] is True
    assert set(st["period_jitter_ms"]) == {"p50", "p99", "max"}
    assert st["period_jitter_ms"]["p99"] is not None and isinstance(st["missed_ticks"], int)
    assert st["intervention_rate"] == 0.0 and st["estop"] == {"latched": False, "signal": False}


def test_estop_latches_until_cleared_through_the_service(g):
    g.estop.publish(Bool(data=True))
    wait_for(lambda: _held(g), 10.0, "hold after e-stop")
    refused = call_service(g.clear, Trigger.Request())
    assert not refused.success and "still engaged" in refused.message
    g.estop.publish(Bool(data=False))
    t0 = time.monotonic()
    time.sleep(0.4)
    held = g.actions.since(t0)
    assert len(held) >= 4 and all(not np.any(a) for a in held)      # released signal: still latched
    st = _status_after(g, t0, where=lambda st: not st["estop"]["signal"])
    assert st["estop"]["latched"] is True
    assert call_service(g.clear, Trigger.Request()).success
    wait_for(lambda: _acting(g, g.p1.ref), 10.0, "actions after clearing")
    assert st["safety"]["estop_hold"] >= 4


def test_stale_observations_hold_then_the_rate_limit_ramps_back(g):
    g.state.feeding = False
    wait_for(lambda: _held(g), 10.0, "stale-observation hold")
    t_resume = time.monotonic()
    g.state.feeding = True
    wait_for(lambda: _acting(g, g.p1.ref), 10.0, "actions after the hold")
    ramp = [np.zeros(3)] + [a for a in g.actions.since(t_resume)]
    steps = np.abs(np.diff(np.array(ramp), axis=0))
    assert steps.max() <= MAX_DELTA + 1e-9                            # never faster than the limit
    moving = [s for s in steps if s.any()]
    # 1.6 from 0 at 0.25 per tick: at least 7 limited ticks; without the limit it would be one.
    assert len(moving) >= math.ceil(1.6 / MAX_DELTA)
    assert np.isclose(moving[0].max(), MAX_DELTA)
    st = _status_after(g, time.monotonic())
    assert st["core"]["hold_reasons"]["stale"] >= 1 and st["safety"]["rate_limited"] >= 6


def test_malformed_messages_are_dropped_counted_and_the_node_keeps_acting(g):
    reward, teleop = g.pub(Float64, "reward"), g.pub(Float64MultiArray, "teleop/action")
    wait_for(lambda: reward.get_subscription_count() and teleop.get_subscription_count(), 10.0,
             "matched publishers")
    before = g.actor.status()["malformed"]
    g.task_pub.publish(Float64MultiArray(data=[0.1, float("nan"), 0.2, 0.3, 0.4, 0.5]))
    g.task_pub.publish(Float64MultiArray(data=[0.1] * 5))
    g.joint_pub.publish(JointState(name=["joint1", "joint2"], position=[0.0, 0.0],
                                   velocity=[0.0, 0.0]))
    g.joint_pub.publish(JointState(name=JOINTS, position=[0.0], velocity=QD))
    teleop.publish(Float64MultiArray(data=[0.1, 0.2]))
    reward.publish(Float64(data=float("nan")))
    t0 = time.monotonic()
    want = {"task_obs": 2, "joint_states": 2, "teleop/action": 1, "reward": 1}

    def counted(st):
        return {k: st["malformed"].get(k, 0) - before.get(k, 0) for k in want} == want

    st = _status_after(g, t0, 10.0, counted, f"malformed counts {want} in ~/status")
    reasons = st["malformed_reasons"]
    assert "expected 6 values" in reasons["task_obs"] and "NaN" in reasons["reward"]
    assert "1 values for 3 joint names" in reasons["joint_states"]
    # NaN is caught in ros/convert; the wrong length and the missing joint by the assembler.
    dropped = st["core"]["observations"]["dropped"]
    assert dropped["task_obs"] >= 1 and dropped["joint_states"] >= 1
    t1 = time.monotonic()
    wait_for(lambda: len(g.actions.since(t1)) >= 5, 10.0, "actions after malformed input")
    assert all(np.allclose(a, g.p1.ref, atol=1e-5) for a in g.actions.since(t1))


def test_nan_policy_is_refused_and_the_old_policy_keeps_running(g):
    result = set_parameter(g.tester, g.target, "policy_path", g.nan.path)
    assert not result.successful and "non-finite" in result.reason
    assert g.actor.get_parameter("policy_path").value == g.p1.path   # the set was refused
    t0 = time.monotonic()
    st = _status_after(g, t0)
    assert st["policy"]["version"] == 1 and "non-finite" in st["policy"]["last_rejection"]
    assert _acting(g, g.p1.ref)


def test_parameters_are_typed_and_config_is_read_only(g):
    assert not set_parameter(g.tester, g.target, "learning_enabled", "yes").successful
    assert not set_parameter(g.tester, g.target, "config", "other.yaml").successful
    assert g.actor.get_parameter("config").value == "sim_reach.yaml"
    described = {d.name: d for d in g.actor.describe_parameters(
        ["config", "policy_path", "learning_enabled", "deterministic"])}
    assert all(d.description for d in described.values())


def test_policy_path_swaps_a_good_file_refuses_a_bad_one_and_rolls_back(g):
    result = set_parameter(g.tester, g.target, "policy_path", g.p2.path)
    assert result.successful, result.reason
    wait_for(lambda: _acting(g, g.p2.ref), 10.0, "the swapped-in policy's actions")
    assert _status_after(g, time.monotonic())["policy"]["version"] == 5   # its metadata version
    bad = set_parameter(g.tester, g.target, "policy_path", g.garbage)
    assert not bad.successful and bad.reason.startswith("policy rejected: cannot load")
    t0 = time.monotonic()
    time.sleep(0.3)
    assert all(np.allclose(a, g.p2.ref, atol=1e-5) for a in g.actions.since(t0))
    assert _status_after(g, t0)["policy"]["version"] == 5
    assert call_service(g.rollback, Trigger.Request()).success
    wait_for(lambda: _acting(g, g.p1.ref), 10.0, "the rolled-back policy's actions")


def test_learner_gets_transitions_and_its_policy_is_swapped_in(g):
    rows = list(g.learner.transitions)
    assert len(rows) > 20
    row = rows[-1]
    assert row.obs.shape == (12,) and row.obs.dtype == np.float32
    assert row.action.shape == (3,) and row.source == 1 and not row.terminated
    np.testing.assert_allclose(row.next_obs, OBS)
    assert any(a.next_obs is b.obs for a, b in zip(rows, rows[1:]))   # rows chain
    assert abs(row.timestamp - time.time()) < 60.0      # seconds since the epoch (the schema)
    g.learner.next_policy = g.p3.data
    wait_for(lambda: _acting(g, g.p3.ref), 10.0, "the learner's policy in action")
    st = _status_after(g, time.monotonic())
    assert st["policy"]["version"] == 9 and st["learner"]["polled"] == 1
    assert st["learner"]["stats"]["store_sizes"]["online"] > 0
    assert set_parameter(g.tester, g.target, "learning_enabled", False).successful
    time.sleep(0.1)
    n = len(g.learner.transitions)
    time.sleep(0.4)
    assert len(g.learner.transitions) == n                           # nothing handed over
    assert set_parameter(g.tester, g.target, "learning_enabled", True).successful
    wait_for(lambda: len(g.learner.transitions) > n, 10.0, "transitions again")


def test_engaged_teleop_overrides_the_policy_and_a_silent_device_holds(g):
    engaged = g.pub(Bool, "teleop/engaged")
    wait_for(engaged.get_subscription_count, 10.0, "teleop/engaged matched")
    current = g.actions.last().copy()
    g.state.teleop = [0.5, -0.5, 0.25]
    engaged.publish(Bool(data=True))
    wait_for(lambda: _acting(g, np.array(g.state.teleop)), 10.0, "the operator's actions")
    n = len(g.learner.transitions)
    wait_for(lambda: len(g.learner.transitions) >= n + 5, 10.0, "rows under teleop")
    rows = list(g.learner.transitions)[-5:]
    assert all(r.source == 2 for r in rows)                           # stored as intervention
    np.testing.assert_allclose(rows[-1].action, g.state.teleop)
    st = _status_after(g, time.monotonic())
    assert st["intervention_rate"] > 0 and st["core"]["teleop_engaged"] is True
    g.state.teleop = None                                             # the device goes quiet
    wait_for(lambda: _held(g), 10.0, "a hold instead of handing back to the policy")
    engaged.publish(Bool(data=False))
    wait_for(lambda: _acting(g, current), 10.0, "the policy again")


def test_episode_end_calls_reset_and_starts_the_next_episode(g):
    success = g.pub(Bool, "operator/success")
    wait_for(success.get_subscription_count, 10.0, "operator/success matched")
    episode = g.actor.status()["core"]["episode"]["episode"]
    success.publish(Bool(data=True))
    wait_for(lambda: g.state.reset_calls == 1, 10.0, "the reset call")

    st = _status_after(g, time.monotonic() - 0.5, 10.0,
                       lambda st: st["core"]["episode"]["episode"] == episode + 1,
                       "the next episode in ~/status")
    assert st["reset"]["calls"] == 1 and st["reset"]["done"] == 1
    assert st["core"]["episode"]["successes"] == 1 and st["core"]["episode"]["terminated"] == 1
    last = next(r for r in reversed(g.learner.transitions) if r.terminated)
    assert last.episode == episode and last.success is True             # labelled for the store
    wait_for(lambda: _acting(g, g.p3.ref), 10.0, "acting in the new episode")


# Last: these two raise the slot's version numbers past what the tests above expect.
def test_a_slow_policy_path_set_is_validated_while_the_tick_goes_on(g, tmp_path):
    """Validating a policy takes ~210 inferences: for a slow file, seconds. The set request
    waits for it (and reports the outcome), the control tick does not: the old policy keeps
    acting at the control rate until the new one is swapped in."""
    slow = _policy(tmp_path, "slow.onnx", [-0.5, 0.5, -0.5], version=30, slow=(2048, 24))
    serving = g.actions.last()
    ticks, t0 = g.actor.core.counts["ticks"], time.monotonic()
    result = set_parameter(g.tester, g.target, "policy_path", slow.path, timeout=120.0)
    seconds, ticked = time.monotonic() - t0, g.actor.core.counts["ticks"] - ticks
    assert result.successful, result.reason
    assert seconds > 0.5, "the slow policy validated too fast to show anything"
    # 20 Hz: a blocked tick would give ~0 ticks during the set; a quarter of the rate is plenty.
    assert ticked >= 0.25 * 20 * seconds, (ticked, seconds)
    during = g.actions.since(t0)
    assert len(during) >= 2 and np.allclose(during[0], serving, atol=1e-5)   # until the swap
    wait_for(lambda: _acting(g, slow.ref), 10.0, "the slow policy's actions")


def test_a_policy_that_gives_nan_on_real_observations_is_rolled_back(g, tmp_path):
    """It passes validation (random probe observations), then acts with NaN on the robot's
    observation: after `safety.rollback_after_non_finite` held ticks the actor puts the previous
    policy back and says so in ~/status."""
    sneaky = _policy(tmp_path, "sneaky.onnx", [0.0, 0.0, 0.0], version=40,
                     nan_at_obs0=float(OBS[0]))
    before, serving = g.actor.status(), g.actions.last()
    result = set_parameter(g.tester, g.target, "policy_path", sneaky.path)
    assert result.successful, result.reason                          # validation cannot see it
    t0 = time.monotonic()
    st = _status_after(g, t0, where=lambda st: st["policy"]["non_finite_rollbacks"]
                       > before["policy"]["non_finite_rollbacks"], what="the rollback")
    limit = g.actor.cfg.safety.rollback_after_non_finite
    assert st["policy"]["version"] == before["policy"]["version"]      # the previous one again
    assert f"version 40 acted with NaN/inf on {limit} consecutive ticks" in \
        st["policy"]["last_non_finite_rollback"]
    assert st["safety"]["non_finite"] - before["safety"]["non_finite"] >= limit   # held each time
    wait_for(lambda: _acting(g, serving), 10.0, "the previous policy acting again")


def test_main_loads_the_config_parameter_and_exits_cleanly_on_sigint(tmp_path):
    """`actor_node` as `ros2 run` starts it: with learning enabled (the default) it runs the
    configured learner, which checkpoints into the run directory when the node stops, even
    when a second SIGINT arrives meanwhile."""
    check_main_lifecycle("o2o_robot.ros.actor_node", "reach_arm: obs 12, action 3",
                         namespace("main"), domain_id(1), tmp_path)
    assert (tmp_path / "runs" / "sim_reach" / "checkpoints" / "latest.pt").exists()
    assert (tmp_path / "runs" / "sim_reach" / "policies" / "policy_00001.onnx").exists()


def test_message_conversion_round_trips_and_rejects_bad_messages():
    from o2o_robot.ros import convert

    msg = convert.array_to_msg(np.array([1.5, -2.0, 0.25]))
    assert list(msg.data) == [1.5, -2.0, 0.25] and not msg.layout.dim
    np.testing.assert_array_equal(convert.array_from_msg(msg, 3), [1.5, -2.0, 0.25])
    with pytest.raises(convert.MessageError, match="expected 4 values"):
        convert.array_from_msg(msg, 4)
    js = convert.joint_state_to_msg(JOINTS, Q, QD, stamp=convert.stamp_from_seconds(12.5))
    names, pos, vel, eff = convert.joint_state_from_msg(js)
    assert names == JOINTS and pos.tolist() == Q and vel.tolist() == QD and eff.size == 0
    assert (js.header.stamp.sec, js.header.stamp.nanosec) == (12, 500_000_000)
    with pytest.raises(convert.MessageError, match="duplicate"):
        convert.joint_state_from_msg(JointState(name=["a", "a"], position=[0.0, 0.0]))
    xyz, quat = convert.pose_from_msg(convert.pose_to_msg([1, 2, 3], [0, 0, 0, 1]))
    assert xyz.tolist() == [1, 2, 3] and quat.tolist() == [0, 0, 0, 1]
    with pytest.raises(convert.MessageError, match="NaN"):
        convert.pose_from_msg(convert.pose_to_msg([1, float("inf"), 3], [0, 0, 0, 1]))
    with pytest.raises(convert.MessageError, match="NaN"):
        convert.float_from_msg(Float64(data=float("inf")))
    status = convert.status_to_msg({"a": np.float32(0.5), "b": float("nan"), "c": np.arange(2)})
    assert status.data == '{"a":0.5,"b":null,"c":[0,1]}'
