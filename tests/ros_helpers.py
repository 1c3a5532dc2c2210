"""Helpers of the ROS 2 tests: an isolated rclpy graph per test module, recorders, service and
parameter calls, and tiny ONNX policies with a known output.

Isolation (ROS2_NOTES.md): each module gets its own rclpy Context with its own ROS_DOMAIN_ID
and its own namespace, both derived from the process id, so ROS tests of parallel runs (other
workers, other modules) neither see nor answer each other.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx.numpy_helper
import rclpy
from onnx import TensorProto, helper
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.parameter_client import AsyncParameterClient

from o2o_robot.policy.runtime import META_SPEC, META_VERSION
from o2o_robot.ros import qos

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECOND_SIGINT_AFTER_S = 0.3   # inside the actor's shutdown (its learner checkpoints: seconds)

# Cyclone DDS restricted to loopback unicast: matches rclpy started with
# ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (ROS2_NOTES.md "Discovery on one machine").
CYCLONEDDS_URI = (
    '<CycloneDDS><Domain><General><Interfaces><NetworkInterface name="lo"/></Interfaces>'
    '<AllowMulticast>false</AllowMulticast></General><Discovery>'
    '<ParticipantIndex>auto</ParticipantIndex><Peers><Peer address="127.0.0.1"/></Peers>'
    '</Discovery></Domain></CycloneDDS>')


def domain_id(offset: int) -> int:
    """A ROS_DOMAIN_ID for this process and `offset` (0..3), inside the safe range 10..97."""
    assert 0 <= offset < 4
    return 10 + (os.getpid() % 22) * 4 + offset


def namespace(tag: str) -> str:
    """A namespace unique to this process and module (second layer of isolation)."""
    return f"/o2o_test_{os.getpid()}_{tag}"


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, what: str = "condition",
             interval: float = 0.02):
    """Poll until `predicate()` is truthy and return its value; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class RosGraph:
    """One rclpy Context (own domain id) spun by a single-threaded executor in a thread.

    Single-threaded as the nodes' own `main`: rclpy's MultiThreadedExecutor busy-waits while a
    ready callback's group is busy (ros2/rclpy#1223) and starved the actor's tick under load.
    """

    def __init__(self, domain: int):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.nodes = []
        self._thread = threading.Thread(target=self._spin, name="ros-test-executor", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def add(self, node):
        self.executor.add_node(node)
        self.nodes.append(node)
        return node

    def node(self, name: str, ns: str):
        return self.add(rclpy.create_node(name, namespace=ns, context=self.context))

    def remove(self, node) -> None:
        self.executor.remove_node(node)
        self.nodes.remove(node)
        node.destroy_node()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=5.0)
        for node in reversed(self.nodes):
            node.destroy_node()
        rclpy.try_shutdown(context=self.context)


class Rows:
    """A learner that keeps what the actor hands over (the node's Learner interface)."""

    def __init__(self):
        self.items = []

    def submit(self, item) -> bool:
        self.items.append(item)
        return True

    def poll_policy(self):
        return None

    def stats(self) -> dict:
        return {}


class Recorder:
    """Every message on a topic as (receive time.monotonic(), converted value)."""

    def __init__(self, node, msg_type, topic: str, convert: Callable = lambda m: m,
                 profile=qos.STREAM):
        self.items: list[tuple[float, object]] = []
        self._convert = convert
        self.sub = node.create_subscription(msg_type, topic, self._on_msg, profile)

    def _on_msg(self, msg) -> None:
        self.items.append((time.monotonic(), self._convert(msg)))

    def __len__(self) -> int:
        return len(self.items)

    def since(self, t: float) -> list:
        return [v for (s, v) in list(self.items) if s >= t]

    def last(self):
        return self.items[-1][1] if self.items else None

    def wait_count(self, n: int, timeout: float = 10.0) -> list:
        wait_for(lambda: len(self.items) >= n, timeout, f"{n} messages on {self.sub.topic_name}")
        return [v for _, v in self.items]


def status_json(msg) -> dict:
    return json.loads(msg.data)


def call_service(client, request, timeout: float = 10.0):
    """Call a service from the test thread (the executor thread completes the future)."""
    wait_for(client.service_is_ready, timeout, f"service {client.srv_name}")
    future = client.call_async(request)
    wait_for(future.done, timeout, f"reply of {client.srv_name}")
    return future.result()


_PARAM_CLIENTS: dict[tuple[int, str], AsyncParameterClient] = {}


def set_parameter(node, target: str, name: str, value, timeout: float = 15.0):
    """Set one parameter of node `target` through its SetParameters service (as
    `ros2 param set` does); returns the rcl_interfaces SetParametersResult."""
    key = (id(node), target)
    if key not in _PARAM_CLIENTS:    # its service clients live as long as `node`
        _PARAM_CLIENTS[key] = AsyncParameterClient(node, target)
    client = _PARAM_CLIENTS[key]
    assert client.wait_for_services(timeout), f"parameter services of {target}"
    future = client.set_parameters([Parameter(name, value=value)])
    wait_for(future.done, timeout, f"set {name} on {target}")
    return future.result().results[0]


def get_parameter(node, target: str, name: str, timeout: float = 15.0):
    """One parameter's value of node `target`, read through its GetParameters service (as
    `ros2 param get` does)."""
    key = (id(node), target)
    if key not in _PARAM_CLIENTS:
        _PARAM_CLIENTS[key] = AsyncParameterClient(node, target)
    client = _PARAM_CLIENTS[key]
    assert client.wait_for_services(timeout), f"parameter services of {target}"
    future = client.get_parameters([name])
    wait_for(future.done, timeout, f"get {name} of {target}")
    return parameter_value_to_python(future.result().values[0])


def start_node_main(module: str, args: list[str], ns: str, domain: int, cwd: str | os.PathLike = ROOT,
                    *, entry: bool = False) -> tuple[subprocess.Popen, list[str]]:
    """`python -m module --ros-args -r __ns:=ns *args` in its own domain; (process, output
    lines as they arrive). The caller ends it (SIGINT) or waits for it. `entry`: through
    `o2o_robot.ros.entry`, as the console scripts (`ros2 run`, the launch files) start it."""
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "RCUTILS_LOGGING_BUFFERED_STREAM": "0",
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    # Its own process group, so `kill_group` also ends what it started (a learner worker).
    command = ["-m", "o2o_robot.ros.entry", module] if entry else ["-m", module]
    proc = subprocess.Popen([sys.executable, *command, "--ros-args", "-r", f"__ns:={ns}",
                             *args], cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    proc.reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    proc.reader.start()      # join it to have every line of a process that exited
    return proc, lines


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL `proc`'s process group (a `start_node_main` process and its children) and reap
    it; a no-op for a group that is gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def stop_processes(procs: Sequence[subprocess.Popen], timeout: float = 30.0) -> list[int | None]:
    """SIGINT every process, wait for all within `timeout` seconds in total, then kill (with
    its group) any still running: nothing is leaked whatever happens. The exit codes, None for
    a process that had to be killed."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline, codes = time.monotonic() + timeout, []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(deadline - time.monotonic(), 0.0)))
        except subprocess.TimeoutExpired:
            codes.append(None)
        kill_group(proc)
    return codes


def check_main_lifecycle(module: str, ready_text: str, ns: str, domain: int,
                         cwd: str | os.PathLike) -> None:
    """The node's console entry point with the packaged config logs `ready_text`, exits 0 on
    SIGINT, also when a second SIGINT arrives while it shuts down (`ros2 launch` delivers a
    terminal Ctrl-C twice, ROS2_NOTES.md); with a missing config file it exits 1 naming the
    file."""
    proc, lines = start_node_main(module, ["-p", "config:=sim_reach.yaml"], ns, domain, cwd)
    try:
        wait_for(lambda: any(ready_text in line for line in lines), 30.0, f"'{ready_text}'")
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        time.sleep(SECOND_SIGINT_AFTER_S)
        proc.send_signal(signal.SIGINT)       # a no-op when the process has already exited
        assert proc.wait(timeout=30) == 0, "".join(lines)
    finally:
        kill_group(proc)
    bad, lines = start_node_main(module, ["-p", "config:=/nonexistent/robot.yaml"], ns + "_bad",
                                 domain, cwd)
    try:
        assert bad.wait(timeout=30) == 1
    finally:
        kill_group(bad)
    time.sleep(0.1)
    assert any("/nonexistent/robot.yaml" in line for line in lines), "".join(lines)


# ------------------------------------------------------------------------------------ policies
def linear_policy(obs_dim: int, act_dim: int, low: Sequence[float], high: Sequence[float], *,
                  weight: np.ndarray, bias: np.ndarray, version: int = 1,
                  noise_scale: float = 0.1, nan: bool = False, nan_at_obs0: float | None = None,
                  slow: tuple[int, int] | None = None) -> bytes:
    """ONNX bytes of `action = mid + half * tanh(obs @ weight + bias + noise_scale * noise)`
    (the policy contract's inputs/output and metadata). `nan=True` adds NaN to every output;
    `nan_at_obs0=v` only where obs[0] == v exactly (random probe observations never are);
    `slow=(width, layers)` adds 0 x a chain of `layers` width x width tanh layers to the output:
    the same actions, at a higher latency."""
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    consts = {"W": np.asarray(weight, np.float32).reshape(obs_dim, act_dim),
              "b": np.asarray(bias, np.float32).reshape(act_dim),
              "s": np.full(act_dim, noise_scale, np.float32), "half": (high - low) / 2,
              "mid": (high + low) / 2, "bad": np.full(act_dim, np.nan, np.float32),
              "zero": np.zeros(1, np.float32), "v": np.full(1, nan_at_obs0 or 0.0, np.float32),
              "first": np.zeros(1, np.int64), "axis1": np.ones(1, np.int64)}
    nodes = [helper.make_node("MatMul", ["obs", "W"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["z0"]),
             helper.make_node("Mul", ["noise", "s"], ["n"]),
             helper.make_node("Add", ["z0", "n"], ["z"]),
             helper.make_node("Tanh", ["z"], ["t"]),
             helper.make_node("Mul", ["t", "half"], ["th"]),
             helper.make_node("Add", ["th", "mid"], ["a0"])]
    out = "a0"
    if slow is not None:
        width, layers = slow
        rng = np.random.default_rng(0)
        consts["Win"] = rng.normal(0, 0.1, (obs_dim, width)).astype(np.float32)
        consts["Wh"] = rng.normal(0, 1 / np.sqrt(width), (width, width)).astype(np.float32)
        nodes.append(helper.make_node("MatMul", ["obs", "Win"], ["x0"]))
        for i in range(layers):
            nodes += [helper.make_node("MatMul", [f"x{i}", "Wh"], [f"m{i}"]),
                      helper.make_node("Tanh", [f"m{i}"], [f"x{i + 1}"])]
        nodes += [helper.make_node("ReduceSum", [f"x{layers}", "axis1"], ["r"], keepdims=1),
                  helper.make_node("Mul", ["r", "zero"], ["r0"]),
                  helper.make_node("Add", [out, "r0"], ["a1"])]
        out = "a1"
    if nan_at_obs0 is not None:
        nodes += [helper.make_node("Gather", ["obs", "first"], ["o0"], axis=1),
                  helper.make_node("Equal", ["o0", "v"], ["hit"]),
                  helper.make_node("Where", ["hit", "bad", out], ["a2"])]
        out = "a2"
    if nan:
        nodes.append(helper.make_node("Add", [out, "bad"], ["a3"]))
        out = "a3"
    nodes.append(helper.make_node("Identity", [out], ["action"]))
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in consts.items()]
    graph = helper.make_graph(
        nodes, "linear_policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", obs_dim]),
         helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["batch", act_dim])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", act_dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    spec = {"obs_dim": obs_dim, "act_dim": act_dim, "low": low.tolist(), "high": high.tolist()}
    for key, value in ((META_VERSION, str(version)), (META_SPEC, json.dumps(spec))):
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def linear_reference(obs, low, high, weight, bias) -> np.ndarray:
    """The deterministic action of `linear_policy` computed with numpy (float32 like the graph)."""
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    z = np.asarray(obs, np.float32) @ np.asarray(weight, np.float32) + np.asarray(bias, np.float32)
    return ((high + low) / 2 + (high - low) / 2 * np.tanh(z)).astype(np.float32)
