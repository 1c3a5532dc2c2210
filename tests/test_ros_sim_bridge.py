"""SimBridgeNode over real rclpy / Fast DDS: lock-step stepping, the reset service, published
observations equal to an independent env driven with the same seed and actions, success signal
and freeze, malformed actions, and real-time stepping."""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray, String
from std_srvs.srv import Trigger

from o2o_robot.config import load_config, resolve_config_path
from o2o_robot.ros import qos
from o2o_robot.ros.sim_bridge_node import SimBridgeNode, observation_topics
from o2o_robot.sim.envs import make_env
from o2o_robot.sim.experts import expert_for
from ros_helpers import (Recorder, RosGraph, call_service, check_main_lifecycle, domain_id,
                         kill_group, namespace, start_node_main, status_json, stop_processes,
                         wait_for)

SEED = 3


def _cfg(lockstep: bool, rate: float = 20.0):
    return load_config(resolve_config_path("sim_reach.yaml"),
                       overrides={"sim": {"lockstep": lockstep, "seed": SEED, "sim_rate_hz": rate}})


def _joint(msg: JointState):
    return list(msg.name), np.array(msg.position), np.array(msg.velocity), np.array(msg.effort)


@pytest.fixture(scope="module")
def s():
    graph = RosGraph(domain_id(2))
    ns = namespace("sim")
    cfg = _cfg(lockstep=True)
    sim = graph.add(SimBridgeNode(cfg, context=graph.context, namespace=ns))
    tester = graph.node("tester", ns)
    s = SimpleNamespace(
        graph=graph, cfg=cfg, sim=sim, tester=tester, ns=ns,
        action=tester.create_publisher(Float64MultiArray, "action", qos.STREAM),
        joints=Recorder(tester, JointState, "joint_states", _joint),
        task=Recorder(tester, Float64MultiArray, "task_obs", lambda m: np.array(m.data)),
        reward=Recorder(tester, Float64, "reward", lambda m: m.data),
        success=Recorder(tester, Bool, "operator/success", lambda m: m.data),
        done=Recorder(tester, Bool, "done", lambda m: m.data),
        status=Recorder(tester, String, f"{ns}/o2o_sim/status", status_json, qos.STATUS),
        reset=tester.create_client(Trigger, "reset"))
    wait_for(lambda: s.action.get_subscription_count() and all(
        r.sub.get_publisher_count() for r in (s.joints, s.task, s.reward, s.success, s.done)),
        10.0, "matched topics")
    yield s
    graph.close()


def _reset(s) -> tuple[int, np.ndarray]:
    """Call `reset`; return (episode index, the observation published with it)."""
    n = len(s.task)
    reply = call_service(s.reset, Trigger.Request())
    assert reply.success
    s.task.wait_count(n + 1)
    episode = int(reply.message.split()[1])
    return episode, _obs(s, -1)


def _obs(s, i: int) -> np.ndarray:
    """The 12-value observation from the i-th JointState + task_obs pair (joint-major)."""
    names, pos, vel, effort = s.joints.items[i][1]
    assert names == ["joint1", "joint2", "joint3"] and effort.size == 0
    return np.concatenate([np.stack([pos, vel], 1).ravel(), s.task.items[i][1]])


def _step(s, action) -> np.ndarray:
    """Send one action and wait for the observation it produces."""
    n = len(s.task)
    s.action.publish(Float64MultiArray(data=[float(a) for a in action]))
    s.task.wait_count(n + 1)
    s.joints.wait_count(n + 1)
    return _obs(s, -1)


def test_reset_service_publishes_the_seeded_first_observation(s):
    episode, obs = _reset(s)
    assert s.sim.episode == episode and episode >= 1
    ref = make_env(s.cfg.sim)
    ref_obs, _ = ref.reset(seed=SEED + episode)
    np.testing.assert_allclose(obs, ref_obs, atol=1e-6)       # env obs are float32
    base = ref.unwrapped
    np.testing.assert_array_equal(s.joints.last()[1], base.joint_positions())   # exact float64
    np.testing.assert_array_equal(s.task.last(), np.concatenate(
        [base.ee_position(), base.target_position()]))
    episode2, obs2 = _reset(s)
    assert episode2 == episode + 1 and not np.allclose(obs2, obs)   # a new seed, a new target


def test_lockstep_steps_once_per_action_and_matches_the_env(s):
    episode, _ = _reset(s)
    ref = make_env(s.cfg.sim)
    ref.reset(seed=SEED + episode)
    rng = np.random.default_rng(0)
    counts = (len(s.task), len(s.joints), len(s.reward))
    for i in range(5):
        action = rng.uniform(-1.0, 1.0, 3)
        obs = _step(s, action)
        ref_obs, ref_reward, *_rest = ref.step(action)
        np.testing.assert_allclose(obs, ref_obs, atol=1e-6)
        np.testing.assert_array_equal(s.joints.last()[1], ref.unwrapped.joint_positions())
        np.testing.assert_array_equal(s.joints.last()[2], ref.unwrapped.joint_velocities())
        wait_for(lambda: len(s.reward) >= counts[2] + i + 1, 10.0, "the step's reward")
        assert s.reward.last() == ref_reward
    time.sleep(0.3)   # nothing more arrives without actions: no stepping on a clock
    assert (len(s.task) - counts[0], len(s.joints) - counts[1], len(s.reward) - counts[2]) == (5, 5, 5)
    assert s.sim.episode_steps == 5


def test_success_is_signalled_once_then_the_env_waits_for_reset(s):
    episode, obs = _reset(s)
    expert = expert_for(make_env(s.cfg.sim), noise=0.0)
    successes, rewards = len(s.success), len(s.reward)
    for _ in range(s.cfg.control.max_episode_steps):
        obs = _step(s, expert.act(obs))
        if len(s.success) > successes:
            break
    assert s.success.wait_count(successes + 1)[-1] is True and len(s.done) == 0
    assert s.reward.items[-1][1] == 1.0 and all(r == 0.0 for _, r in s.reward.items[rewards:-1])
    steps = s.sim.counts["steps"]
    frozen = _step(s, [1.0, 1.0, 1.0])            # after the terminal step: observed, not stepped
    np.testing.assert_array_equal(frozen, obs)
    assert s.sim.counts["steps"] == steps and len(s.success) == successes + 1
    finished = s.sim.counts["episodes_finished"]
    _reset(s)
    t0 = time.monotonic()
    st = wait_for(lambda: next(iter(s.status.since(t0)), None), 10.0, "a status")
    assert st["episodes_finished"] == finished + 1 and st["last_episode_success"] is True
    assert st["successes"] >= 1 and 0.0 < st["success_rate"] <= 1.0 and st["ignored_after_end"] >= 1
    assert st["mode"] == "lockstep" and st["task"] == "reach" and st["success"] is False


def test_malformed_actions_are_dropped_and_counted(s):
    _reset(s)
    n, steps = len(s.task), s.sim.counts["steps"]
    s.action.publish(Float64MultiArray(data=[0.1, 0.2]))
    s.action.publish(Float64MultiArray(data=[0.1, float("nan"), 0.2]))
    _step(s, [0.0, 0.0, 0.0])                       # a good one after them still steps
    assert len(s.task) == n + 1 and s.sim.counts["steps"] == steps + 1
    assert s.sim.counts["malformed_actions"] == 2 and "NaN" in s.sim.last_malformed


def test_realtime_mode_steps_on_its_clock_with_zero_order_hold(s):
    ns = namespace("sim_rt")
    sim = s.graph.add(SimBridgeNode(_cfg(lockstep=False, rate=50.0), context=s.graph.context,
                                    namespace=ns))
    try:
        task = Recorder(s.tester, Float64MultiArray, f"{ns}/task_obs", lambda m: np.array(m.data))
        task.wait_count(10, timeout=5.0)              # no action sent: stepping anyway
        assert sim.counts["steps"] >= 10 and sim.counts["actions"] == 0
        action = s.tester.create_publisher(Float64MultiArray, f"{ns}/action", qos.STREAM)
        wait_for(action.get_subscription_count, 10.0, "action matched")
        action.publish(Float64MultiArray(data=[1.0, 0.0, 0.0]))
        wait_for(lambda: sim.counts["actions"] == 1, 10.0, "the action")
        steps = sim.counts["steps"]
        wait_for(lambda: sim.counts["steps"] >= steps + 12, 10.0, "more steps")
        np.testing.assert_array_equal(sim._action, [1.0, 0.0, 0.0])   # held, not reset to zero
        assert sim.env.unwrapped.joint_velocities()[0] > 0.5           # the held command acts
    finally:
        s.graph.remove(sim)


def test_observation_topics_refuses_a_config_the_sim_cannot_serve():
    cfg = _cfg(lockstep=True)
    env = make_env(cfg.sim)
    assert observation_topics(cfg.robot, env) == (["joint_states"], "task_obs")
    bad = cfg.robot.model_copy(deep=True)
    bad.observations[1].size = 7
    with pytest.raises(ValueError, match="size 6"):
        observation_topics(bad, env)
    bad = cfg.robot.model_copy(deep=True)
    bad.observations[0].fields = ["position", "effort"]
    with pytest.raises(ValueError, match="effort"):
        observation_topics(bad, env)


def test_main_runs_the_configured_task_and_exits_cleanly_on_sigint(tmp_path):
    check_main_lifecycle("o2o_robot.ros.sim_bridge_node", "sim task 'reach', 20 Hz",
                         namespace("sim_main"), domain_id(2), tmp_path)


def test_only_sim_config_starts_the_sim_for_a_sim_config_and_skips_a_robot_config(tmp_path):
    """What `use_sim:=auto` of the launch files starts: `only_sim_config:=true`. A robot config
    (control.reward.source 'function') makes the bridge exit 0 with one line saying why; the
    sim config starts the sim. Negative control: without the flag the robot config is an error
    (the sim cannot serve its 6-joint robot section)."""
    procs = []

    def run(config: str, only: bool, tag: str):
        proc, lines = start_node_main("o2o_robot.ros.sim_bridge_node",
                                      ["-p", f"config:={config}", "-p", f"only_sim_config:={only}"],
                                      namespace(tag), domain_id(2), tmp_path)
        procs.append(proc)
        return proc, lines

    try:
        robot, lines = run("examples/my_robot.yaml", True, "auto_robot")
        assert robot.wait(timeout=60) == 0, "".join(lines)
        robot.reader.join(timeout=10)
        assert len(lines) == 1 and "INFO" in lines[0], "".join(lines)
        assert "control.reward.source is 'function', not 'sim': a robot config, so no sim" \
            in lines[0]
        forced, lines = run("examples/my_robot.yaml", False, "forced_robot")
        assert forced.wait(timeout=60) == 1
        forced.reader.join(timeout=10)
        assert any(
            "FATAL" in x and "robot.action: 6 dimensions" in x for x in lines), "".join(lines)
        sim, lines = run("sim_reach.yaml", True, "auto_sim")
        wait_for(lambda: any("sim task 'reach'" in x for x in lines), 60.0, "the sim started")
        assert stop_processes([sim]) == [0], "".join(lines)
    finally:
        for proc in procs:
            kill_group(proc)
