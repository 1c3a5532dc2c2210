"""Cross-vendor: a bare Cyclone DDS participant plays the robot for the rclpy (Fast DDS) actor.

The robot runs in a subprocess (this file run as a script: `--robot`), so the two DDS stacks
never share a process and the robot side imports no ROS at all. It publishes JointState and
task_obs at 50 Hz on `rt/<ns>/...` with the ROS type names, XCDR1 (ROS2_NOTES.md), records the
actions it receives, and later raises the e-stop with a best-effort writer, the weakest QoS a
robot might use. The actor must act at its configured rate with the policy's exact action, and
hold zeros after the e-stop.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

ROBOT_RATE_HZ = 50.0
Q, QD = [0.1, 0.4, 1.2], [0.0, 0.0, 0.0]
TASK = [0.2, 0.0, 0.3, 0.1, 0.2, 0.25]
OBS = np.array([Q[0], QD[0], Q[1], QD[1], Q[2], QD[2], *TASK], np.float32)


# ------------------------------------------------------------------- the robot (subprocess side)
def _robot(domain: int, ns: str, steady_s: float, after_s: float, timeout_s: float) -> dict:
    """Publish observations and record actions; `steady_s` after the first non-hold action
    raise the e-stop, and stop `after_s` later. The types are defined in the `__main__` block below (cyclonedds resolves
    nested type names in module globals)."""
    xcdr1 = Policy.DataRepresentation(use_cdrv0_representation=True)
    reliable = Qos(Policy.Reliability.Reliable(max_blocking_time=100_000_000),
                   Policy.History.KeepLast(10), xcdr1)
    best_effort = Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(10), xcdr1)
    dp = DomainParticipant(domain)
    prefix = "rt" + ns
    joints = DataWriter(dp, Topic(dp, f"{prefix}/joint_states", JointState), qos=reliable)
    task = DataWriter(dp, Topic(dp, f"{prefix}/task_obs", Float64MultiArray), qos=reliable)
    estop = DataWriter(dp, Topic(dp, f"{prefix}/estop", Bool), qos=best_effort)
    actions = DataReader(dp, Topic(dp, f"{prefix}/action", Float64MultiArray), qos=reliable)
    received, sent, estop_at = [], 0, None
    start = time.monotonic()
    next_pub = start
    while True:
        now = time.monotonic()
        # The clock starts at the first policy action (not a hold): by then both directions
        # are matched, however long discovery took under load.
        first = next((t + start for t, a in received if any(a)), None)
        if (first is None and now - start > timeout_s) or (
                first is not None and now - first > steady_s + after_s):
            break
        if now >= next_pub:
            stamp = Time(sec=int(time.time()), nanosec=0)
            joints.write(JointState(Header(stamp, ""), ["joint1", "joint2", "joint3"], Q, QD, []))
            task.write(Float64MultiArray(MultiArrayLayout([], 0), TASK))
            sent += 1
            next_pub += 1.0 / ROBOT_RATE_HZ
            if first is not None and now - first >= steady_s:
                estop.write(Bool(True))            # repeated: a best-effort sample may be lost
                estop_at = estop_at if estop_at is not None else now - start
        received += [(time.monotonic() - start, list(s.data)) for s in actions.take(N=100)]
        time.sleep(0.002)
    return {"actions": received, "sent": sent, "estop_at": estop_at}


# ------------------------------------------------------------------------ the test (rclpy side)
def test_cyclone_robot_drives_the_rclpy_actor(tmp_path):
    from rclpy.parameter import Parameter

    from o2o_robot.config import load_config, resolve_config_path
    from o2o_robot.ros.actor_node import ActorNode
    from ros_helpers import (CYCLONEDDS_URI, RosGraph, domain_id, linear_policy,
                             linear_reference, namespace)

    low, high = [-2.0] * 3, [2.0] * 3
    weight = np.random.default_rng(1).normal(0.0, 0.05, (12, 3))
    bias = np.arctanh(np.array([0.4, -0.3, 0.2]))
    policy = tmp_path / "policy.onnx"
    policy.write_bytes(linear_policy(12, 3, low, high, weight=weight, bias=bias))
    expected = linear_reference(OBS, low, high, weight, bias)
    cfg = load_config(resolve_config_path("sim_reach.yaml"))
    ns, domain = namespace("xv"), domain_id(3)
    graph = RosGraph(domain)
    try:
        actor = graph.add(ActorNode(cfg, latency_budget_share=None, context=graph.context,
                                    namespace=ns, parameter_overrides=[
            Parameter("policy_path", value=str(policy)), Parameter("deterministic", value=True)]))
        env = {**os.environ, "CYCLONEDDS_URI": CYCLONEDDS_URI}
        proc = subprocess.run(
            [sys.executable, __file__, "--robot", "--domain", str(domain), "--ns", ns,
             "--steady", "1.5", "--after", "1.0", "--timeout", "30"],
            env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        status = actor.status()
    finally:
        graph.close()

    times = np.array([t for t, _ in result["actions"]])
    acts = np.array([a for _, a in result["actions"]])
    assert len(times) > 0, "no action reached the Cyclone robot"
    assert result["estop_at"] is not None, f"only holds reached the robot: {status['core']}"
    first = times[np.flatnonzero(acts.any(axis=1))[0]]           # the first policy action
    steady = (times > first + 0.2) & (times < result["estop_at"])
    # The actor's 20 Hz, seen from the other vendor: a loose band, not a benchmark.
    rate = (steady.sum() - 1) / (times[steady][-1] - times[steady][0])
    assert 10.0 <= rate <= 30.0, (rate, status["rate_hz"], status["period_jitter_ms"],
                                  status["missed_ticks"], status["ticks"])
    np.testing.assert_allclose(acts[steady], np.broadcast_to(expected, acts[steady].shape), atol=1e-5)
    after = times > result["estop_at"] + 0.3
    assert after.sum() >= 5 and not acts[after].any()             # best-effort e-stop held it
    assert status["estop"]["latched"] is True and status["malformed"] == {}
    assert status["core"]["observations"]["received"]["joint_states"] >= 50


if __name__ == "__main__":
    # The robot process only: cyclonedds is never imported by pytest's process. (No
    # `from __future__ import annotations` in this file: cyclonedds cannot resolve string
    # annotations such as "sequence[str]".)
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.idl import IdlStruct
    import cyclonedds.idl.annotations as annotate
    from cyclonedds.idl.types import float64, int32, sequence, uint32
    from cyclonedds.pub import DataWriter
    from cyclonedds.qos import Policy, Qos
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic

    @dataclass
    @annotate.final
    class Time(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
        sec: int32 = 0
        nanosec: uint32 = 0

    @dataclass
    @annotate.final
    class Header(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
        stamp: Time = field(default_factory=Time)
        frame_id: str = ""

    @dataclass
    @annotate.final
    class JointState(IdlStruct, typename="sensor_msgs::msg::dds_::JointState_"):
        header: Header
        name: sequence[str]
        position: sequence[float64]
        velocity: sequence[float64]
        effort: sequence[float64]

    @dataclass
    @annotate.final
    class MultiArrayDimension(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayDimension_"):
        label: str
        size: uint32
        stride: uint32

    @dataclass
    @annotate.final
    class MultiArrayLayout(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayLayout_"):
        dim: sequence[MultiArrayDimension]
        data_offset: uint32

    @dataclass
    @annotate.final
    class Float64MultiArray(IdlStruct, typename="std_msgs::msg::dds_::Float64MultiArray_"):
        layout: MultiArrayLayout
        data: sequence[float64]

    @dataclass
    @annotate.final
    class Bool(IdlStruct, typename="std_msgs::msg::dds_::Bool_"):
        data: bool

    parser = argparse.ArgumentParser(description="Cyclone DDS robot stand-in (test helper)")
    parser.add_argument("--robot", action="store_true", required=True)
    parser.add_argument("--domain", type=int, required=True)
    parser.add_argument("--ns", required=True)
    parser.add_argument("--steady", type=float, default=1.5, help="s of acting before the e-stop")
    parser.add_argument("--after", type=float, default=1.0, help="s recorded after the e-stop")
    parser.add_argument("--timeout", type=float, default=30.0, help="s to wait for discovery")
    opts = parser.parse_args()
    print(json.dumps(_robot(opts.domain, opts.ns, opts.steady, opts.after, opts.timeout)))
