"""Rewards on a real robot, where no simulator computes them (`control.reward`): a configured
function of observations (validated at start by the node and by `o2o-robot config validate`),
a reward topic from an external node, or sparse success from the operator's button. Each source
is checked through a running ActorNode over real rclpy; plus the shipped example robot config.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray

from o2o_robot import cli
from o2o_robot.config import load_config, resolve_config_path
from o2o_robot.control.example_rewards import ARM_ACTION_COST, arm_reach_distance
from o2o_robot.data.schema import Transition
from o2o_robot.ros import qos
from o2o_robot.ros.actor_node import ActorNode
from ros_helpers import (RosGraph, domain_id, kill_group, linear_policy, namespace,
                         start_node_main, wait_for)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "examples" / "my_robot.yaml"
JOINTS = ["joint1", "joint2", "joint3"]
Q, QD = [0.1, 0.4, 1.2], [0.0, 0.0, 0.0]
TASK = [0.2, 0.0, 0.3, 0.1, 0.2, 0.25]          # sim_reach layout: ee xyz, target xyz
REACH_DISTANCE = float(np.linalg.norm(np.subtract(TASK[:3], TASK[3:])))
LOW, HIGH = [-2.0] * 3, [2.0] * 3

REWARD_MODULE = """
import math
NOT_CALLABLE = 3
def ok(obs, action, next_obs):
    return float(next_obs[0]) - 1.0
def two_args(obs, action):
    return 0.0
def nan(obs, action, next_obs):
    return math.nan
def vector(obs, action, next_obs):
    return next_obs[:2]
"""


def write_config(folder: Path, reward: dict, name: str = "robot.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump({"control": {"reward": reward}}))
    return path


# ------------------------------------------------------------------ config validate (CLI)
@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """A module `robot_rewards_<n>` of reward functions, importable as from PYTHONPATH."""
    name = f"robot_rewards_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.mark.parametrize("function, problem", [
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz': ModuleNotFoundError: "
                             "No module named 'no_such_module_xyz' (install it, or add its "
                             "folder to PYTHONPATH)"),
    ("{mod}:missing", "module '{mod}' has no attribute 'missing'"),
    ("{mod}:NOT_CALLABLE", "'NOT_CALLABLE' is not callable (it is a int)"),
    ("{mod}:two_args", "probe call f(zero obs, zero action, zero obs) raised TypeError"),
    ("{mod}:nan", "probe call f(zero obs, zero action, zero obs) returned nan, expected a "
                  "finite number"),
    ("{mod}:vector", "returned ndarray"),
    ("{mod}.ok", "expected 'package.module:function'"),
])
def test_config_validate_fails_on_a_bad_reward_function_naming_file_and_key(
        tmp_path, capsys, reward_module, function, problem):
    function, problem = function.format(mod=reward_module), problem.format(mod=reward_module)
    path = write_config(tmp_path, {"source": "function", "function": function})
    assert cli.main(["config", "validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{path}: control.reward.function {function!r}: "), err
    assert problem in err, err


def test_config_validate_accepts_a_good_reward_function_and_ignores_unused_ones(
        tmp_path, capsys, reward_module):
    good = write_config(tmp_path, {"source": "function", "function": f"{reward_module}:ok"})
    assert cli.main(["config", "validate", str(good)]) == 0
    assert "reward function" in capsys.readouterr().out
    # Negative control: the same bad path is not imported when the reward comes from a topic.
    unused = write_config(tmp_path, {"source": "topic", "function": f"{reward_module}:missing"},
                          "unused.yaml")
    assert cli.main(["config", "validate", str(unused)]) == 0


def test_config_validate_finds_a_reward_module_through_pythonpath(tmp_path):
    """As a user runs it: the console command, the module in a folder on PYTHONPATH."""
    folder = tmp_path / "my_pkg"
    folder.mkdir()
    (folder / "arm_rewards.py").write_text(REWARD_MODULE)
    path = write_config(tmp_path, {"source": "function", "function": "arm_rewards:ok"})
    command = [sys.executable, "-m", "o2o_robot.cli", "config", "validate", str(path)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    without = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=60)
    assert without.returncode == 2 and "add its folder to PYTHONPATH" in without.stderr
    with_path = subprocess.run(command, cwd=tmp_path, env={**env, "PYTHONPATH": str(folder)},
                               capture_output=True, text=True, timeout=60)
    assert with_path.returncode == 0, with_path.stderr


def test_actor_node_main_refuses_a_bad_reward_function_at_start(tmp_path):
    bad = write_config(tmp_path, {"source": "function",
                                  "function": "o2o_robot.control.example_rewards:no_such_reward"})
    proc, lines = start_node_main("o2o_robot.ros.actor_node",
                                  ["-p", f"config:={bad}", "-p", "learning_enabled:=false"],
                                  namespace("bad_reward"), domain_id(2), tmp_path)
    try:
        assert proc.wait(timeout=60) == 1, "".join(lines)
    finally:
        kill_group(proc)
    wait_for(lambda: any("no attribute" in line for line in lines), 5.0, "the error line")
    text = "".join(lines)
    assert ("control.reward.function 'o2o_robot.control.example_rewards:no_such_reward': module "
            "'o2o_robot.control.example_rewards' has no attribute 'no_such_reward'") in text, text


# ------------------------------------------------------------- example robot config
def test_example_robot_config_validates_with_its_reward_function(capsys):
    assert cli.main(["config", "validate", str(EXAMPLE)]) == 0
    assert "obs_dim 22, act_dim 6" in capsys.readouterr().out
    cfg = load_config(EXAMPLE)
    assert resolve_config_path("examples/my_robot.yaml") == EXAMPLE   # by name, as launch does
    assert cfg.control.reward.source == "function"
    assert cfg.control.reward.function == "o2o_robot.control.example_rewards:arm_reach_distance"
    # The layout the reward function documents: 6 joints x 2, ee_pose (7), target (3).
    assert [src.dim for src in cfg.robot.observations] == [12, 7, 3]
    nxt = np.zeros(22, np.float32)
    nxt[12:15], nxt[19:22] = [0.3, 0.1, 0.5], [0.3, 0.4, 0.9]        # 0.5 m apart
    action = np.array([0.1, 0, 0, 0, 0, -0.2], np.float32)
    assert arm_reach_distance(nxt, action, nxt) == pytest.approx(-0.5 - ARM_ACTION_COST * 0.05)


# ------------------------------------------------------------ reward sources over ROS 2
@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rewards")
    policy = tmp / "policy.onnx"
    policy.write_bytes(linear_policy(12, 3, LOW, HIGH, weight=np.zeros((12, 3)),
                                     bias=np.arctanh([0.25, -0.25, 0.1]), version=3))
    g = RosGraph(domain_id(3))
    g.policy = str(policy)
    yield g
    g.close()


class Robot:
    """An ActorNode with `reward` config on the sim_reach robot, fed by a stand-in robot node."""

    def __init__(self, graph: RosGraph, tag: str, reward: dict):
        self.graph, self.ns = graph, namespace(f"reward_{tag}")
        cfg = load_config(resolve_config_path("sim_reach.yaml"), overrides={
            "control": {"reward": reward, "max_episode_steps": 100000, "obs_timeout_ms": 1000.0}})
        self.transitions: list[Transition] = []
        self.actor = graph.add(ActorNode(
            cfg, learner=self, latency_budget_share=None, context=graph.context,
            namespace=self.ns, parameter_overrides=[Parameter("policy_path", value=graph.policy),
                                                    Parameter("deterministic", value=True)]))
        self.node = graph.node(f"robot_{tag}", self.ns)
        joints = self.node.create_publisher(JointState, "joint_states", qos.STREAM)
        task = self.node.create_publisher(Float64MultiArray, "task_obs", qos.STREAM)
        self.extra: list[tuple[object, object]] = []       # (publisher, message) sent each feed

        def feed():
            joints.publish(JointState(name=JOINTS, position=Q, velocity=QD))
            task.publish(Float64MultiArray(data=TASK))
            for pub, msg in list(self.extra):
                pub.publish(msg)
        self.node.create_timer(0.02, feed)

    # The learner interface: this robot records what the node hands over.
    def submit(self, item) -> bool:
        if isinstance(item, Transition):      # an EpisodeEnd carries no row
            self.transitions.append(item)
        return True

    def poll_policy(self) -> None:
        return None

    def stats(self) -> dict:
        return {}

    def pub(self, typ, topic: str):
        return self.node.create_publisher(typ, topic, qos.STREAM)

    def rows_after(self, n: int, count: int) -> list[Transition]:
        wait_for(lambda: len(self.transitions) >= n + count, 20.0, f"{count} more transitions")
        return self.transitions[n:]

    def close(self) -> None:
        self.graph.remove(self.node)
        self.graph.remove(self.actor)


@pytest.fixture
def robot(graph):
    made = []

    def make(reward: dict) -> Robot:
        made.append(Robot(graph, f"{reward['source']}{len(graph.nodes)}", reward))
        return made[-1]
    yield make
    for r in made:
        r.close()


def test_topic_reward_from_an_external_node_on_a_remapped_topic(robot):
    r = robot({"source": "topic", "topic": "task/reward"})
    good, ignored = r.pub(Float64, "task/reward"), r.pub(Float64, "reward")
    wait_for(good.get_subscription_count, 10.0, "task/reward matched")
    assert ignored.get_subscription_count() == 0       # the default name is not listened to
    r.extra += [(good, Float64(data=0.125)), (ignored, Float64(data=9.0))]
    n = len(r.rows_after(0, 1))
    rewards = [float(row.reward) for row in r.rows_after(n + 2, 10)]
    # A tick with no new value since the last one stores 0.0 (counted as missing), so a
    # stalled publisher may leave a few zeros; the default topic's 9.0 never appears.
    assert set(rewards) <= {0.125, 0.0} and rewards.count(0.125) >= len(rewards) // 2, rewards
    assert r.actor.status()["core"]["reward"]["consumed"] >= 5


def test_success_button_gives_a_sparse_terminal_reward(robot):
    r = robot({"source": "success_button"})
    button = r.pub(Bool, qos.SUCCESS_TOPIC)
    wait_for(button.get_subscription_count, 10.0, "operator/success matched")
    n = len(r.rows_after(0, 5))
    assert all(float(row.reward) == 0.0 and not row.terminated for row in r.transitions[:n])
    button.publish(Bool(data=True))
    wait_for(lambda: any(row.terminated for row in r.transitions), 10.0, "the terminal row")
    last = next(row for row in r.transitions if row.terminated)
    assert float(last.reward) == 1.0 and not last.truncated
    assert sum(float(row.reward) for row in r.transitions) == 1.0    # exactly once
    assert r.actor.status()["core"]["episode"]["successes"] == 1


def test_function_reward_is_computed_from_observations_and_a_reward_topic_is_not_used(robot):
    r = robot({"source": "function",
               "function": "o2o_robot.control.example_rewards:reach_distance"})
    stray = r.pub(Float64, "reward")
    r.extra.append((stray, Float64(data=7.0)))
    rows = r.rows_after(0, 5)
    np.testing.assert_allclose([float(row.reward) for row in rows], -REACH_DISTANCE, rtol=1e-6)
    assert stray.get_subscription_count() == 0
    st = r.actor.status()["core"]["reward"]
    assert st["kind"] == "function" and st["calls"] >= 5 and st["errors"] == 0


# ------------------------------------------------------------- README "On your robot"
def _on_your_robot() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## On your robot")
    return text[start:text.index("\n## ", start + 1)]


def test_readme_reward_example_validates_against_the_example_config(tmp_path):
    section = _on_your_robot()
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    module = next(code for lang, code in blocks
                  if lang == "python" and "my_robot_rewards.py" in code)
    reward = next(code for lang, code in blocks if lang == "yaml" and "my_robot_rewards:" in code)
    (tmp_path / "my_robot_rewards.py").write_text(module)
    config = tmp_path / "my_robot.yaml"
    config.write_text(f"base: {EXAMPLE}\n{reward}")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "o2o_robot.cli", "config", "validate", str(config)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "reward function" in out.stdout, out.stderr
    namespace_ = {}
    exec(compile(module, "my_robot_rewards.py", "exec"), namespace_)
    nxt = np.zeros(22, np.float32)
    nxt[12:15], nxt[19:22] = [0.3, 0.1, 0.5], [0.3, 0.4, 0.9]
    zero = np.zeros(6, np.float32)
    assert namespace_["reach"](nxt, zero, nxt) == pytest.approx(arm_reach_distance(nxt, zero, nxt))


def test_readme_on_your_robot_names_only_what_exists():
    """Launch files, executables, parameters, services and config files the section uses."""
    from test_launch_files import console_scripts, node_module_facts

    section = _on_your_robot()
    launch = re.findall(r"ros2 launch o2o_robot (\S+)(.*)", section)
    assert {name for name, _ in launch} >= {"finetune.launch.py", "collect_demos.launch.py"}
    for name, args in launch:       # the file exists and declares every argument used
        tree = ast.parse((ROOT / "launch" / name).read_text())
        declared = {c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call)
                    and getattr(c.func, "id", "") == "DeclareLaunchArgument"}
        used = set(re.findall(r"(\w+):=", args))
        if name == "finetune.launch.py":   # the optional arguments listed in prose
            used |= {"namespace", "policy_path", "learning_enabled"}
        assert used <= declared, (name, used - declared)
    scripts = console_scripts(ROOT / "setup.py")
    runs = set(re.findall(r"ros2 run o2o_robot ([\w-]+)", section))
    assert runs and runs <= set(scripts), runs - set(scripts)
    named = set(re.findall(r"`([\w-]+)`", section))
    assert set(scripts) <= named, set(scripts) - named    # every executable is listed
    params = set(re.findall(r"ros2 param set /o2o_actor (\w+)", section))
    declared = node_module_facts(ROOT / "o2o_robot" / "ros" / "actor_node.py", "main")["parameters"]
    assert params and params <= declared, params - declared
    services = set(re.findall(r"ros2 service call /o2o_actor/(\w+)", section))
    assert services == {qos.ROLLBACK_SERVICE[2:], qos.CLEAR_ESTOP_SERVICE[2:]}, services
    assert {qos.TELEOP_ACTION_TOPIC, qos.TELEOP_ENGAGED_TOPIC, qos.SUCCESS_TOPIC,
            qos.FAILURE_TOPIC, qos.RESET_SERVICE} <= set(re.findall(r"`([\w/]+)`", section))
    files = set(re.findall(r"`(config/[\w/]+\.yaml)`", section))
    assert files and all((ROOT / f).is_file() for f in files), files
    keys = set(re.findall(r"`((?:robot|control|safety|store|train|learner|teleop)\.[\w.]+)",
                          section))
    assert len(keys) >= 10, keys
    for key in keys:      # every documented key exists in the config models
        node = load_config(None)
        for part in key.strip(".").split("."):
            assert hasattr(node, part), key
            node = getattr(node, part)
