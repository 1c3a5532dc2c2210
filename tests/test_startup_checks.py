"""Start-up checks (`o2o_robot.learning.preflight`): a config that `o2o-robot config validate`
accepts starts, and one that `o2o-robot finetune` would fail on is refused by both, the same
way: exit 2, one line naming the file and the key, no traceback, nothing written. Also: a
store without the demonstrations the learner needs is refused at start (never a learner that
waits silently), `sampler.offline_ratio: 0` learns from online rows only, and `policy check
--config` checks a policy against a robot config.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from o2o_robot.config import ConfigError, OBACConfig, OEMAConfig, RLPDConfig, load_config
from o2o_robot.data.schema import SOURCE_CODE, Transition
from o2o_robot.data.store import TransitionStore
from o2o_robot.learning.preflight import check_robot_learner, startup_checks

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "config" / "sim_reach.yaml"

# (case id, the file's text, the key path (or what) the one-line message must name)
BAD_FILES = [
    ("nan_low", "robot:\n  action:\n    low: [.nan, -2.0, -2.0]\n    high: [2.0, 2.0, 2.0]\n",
     "robot.action.low.0: must be a finite number, got nan"),
    ("inf_high", "robot:\n  action:\n    low: [-2.0, -2.0, -2.0]\n    high: [2.0, 2.0, .inf]\n",
     "robot.action.high.2: must be a finite number, got inf"),
    ("inf_rate_limit", "safety:\n  max_delta_per_tick: .inf\n",
     "safety.max_delta_per_tick: must be a finite number, got inf"),
    ("rate_limit_2_of_3", "safety:\n  max_delta_per_tick: [0.1, 0.2]\n",
     "safety.max_delta_per_tick: 2 values, but robot.action has 3 dimensions"),
    ("topic_two_types", "robot:\n  observations:\n"
     "    - {topic: joint_states, type: joint_state, joint_names: [joint1]}\n"
     "    - {topic: joint_states, type: float64_multi_array, size: 6}\n",
     "robot.observations.1.topic: topic 'joint_states' is also robot.observations.0.topic "
     "(JointState there, Float64MultiArray here)"),
    ("action_on_an_observation_topic", "robot:\n  action:\n    topic: /task_obs\n"
     "    low: [-2.0, -2.0, -2.0]\n    high: [2.0, 2.0, 2.0]\n",
     "robot.action.topic: topic '/task_obs' is also robot.observations.1.topic"),
    ("fixed_topic_taken", "safety:\n  estop_topic: operator/success\n",
     "safety.estop_topic: topic 'operator/success' is also the actor's fixed topic"),
    ("unknown_task", "sim:\n  task: NoSuchTask-v9\n", "sim.task: unknown task 'NoSuchTask-v9'"),
    ("missing_reward_module", "control:\n  reward:\n    source: function\n"
     "    function: no_such_module_o2o:reward\n",
     "control.reward.function 'no_such_module_o2o:reward': cannot import module"),
    ("no_observations", "robot:\n  observations: []\n",
     "robot.observations: must have at least 1 entry"),
    ("missing_pretrained_encoder", "algorithm:\n  pretrained_encoder: /no/such/backbone.pt2\n",
     "algorithm.pretrained_encoder: /no/such/backbone.pt2 does not exist"),
    ("duplicate_key", "learner:\n  warmup_steps: 500\nsampler:\n  batch_size: 128\n"
     "learner:\n  utd_ratio: 4\n",
     "key 'learner' appears twice in one mapping (lines 6 and 10)"),   # after the header
    ("binary_file", b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00\x00binary",
     "not a YAML text file (byte 0xff at offset 8 is not UTF-8)"),
]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`o2o-robot *args` in its own process group, which is killed whatever happens (a
    finetune that got past a missing check would start a learner and an evaluator)."""
    proc = subprocess.Popen([sys.executable, "-m", "o2o_robot.cli", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _write(tmp: Path, name: str, text: str | bytes) -> Path:
    path = tmp / f"{name}.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:   # on top of the sim config, with its store and runs inside tmp
        path.write_text(f"base: {SIM}\nstore:\n  path: {tmp / 'store.zarr'}\ntrain:\n"
                        f"  run_dir: {tmp / 'run'}\n" + text)
    return path


@pytest.mark.parametrize("name,text,key", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_bad_file_is_refused_alike_by_validate_and_by_the_start_of_finetune(tmp_path, name,
                                                                                text, key):
    path = _write(tmp_path, name, text)
    for args in (("config", "validate", str(path)),
                 ("finetune", "--config", str(path), "--steps", "1")):
        out = _cli(*args, cwd=tmp_path)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr and len(lines) == 1, (args, out.stderr)
        assert lines[0].startswith(f"{path}: ") and key in lines[0], (args, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]   # nothing written


def test_train_names_an_unknown_task_in_one_line(tmp_path):
    path = _write(tmp_path, "unknown", "sim:\n  task: NoSuchTask-v9\n")
    out = _cli("train", "--config", str(path), "--steps", "1", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip() == (f"{path}: sim.task: unknown task 'NoSuchTask-v9' (Environment "
                                  f"`NoSuchTask` doesn't exist.); use 'reach' or a gymnasium "
                                  f"MuJoCo id such as 'Hopper-v5'")


def test_the_sim_configs_pass_and_a_duplicate_key_names_both_lines(tmp_path):
    """Negative control of the table: the same files without the fault are fine."""
    good = _write(tmp_path, "good", "learner:\n  warmup_steps: 500\n  utd_ratio: 4\n")
    cfg = load_config(good)
    assert (cfg.learner.warmup_steps, cfg.learner.utd_ratio) == (500, 4)
    found = startup_checks(cfg, str(good), sim=True)
    assert found["spec"] == {"task": None, "obs_dim": 12, "act_dim": 3}
    assert found["demos"].startswith("demonstrations: none yet; 20 scripted episodes")
    with pytest.raises(ConfigError, match=r"key 'utd_ratio' appears twice in one mapping "
                                          r"\(lines 7 and 8\)"):
        load_config(_write(tmp_path, "nested", "learner:\n  utd_ratio: 4\n  utd_ratio: 8\n"))
    anchors = tmp_path / "anchors.yaml"     # YAML merge keys may repeat what they override
    anchors.write_text("x: &d {utd_ratio: 4, warmup_steps: 5}\nlearner:\n  <<: *d\n"
                       "  utd_ratio: 8\n")
    with pytest.raises(ConfigError, match="x: unknown key"):   # got past the loader
        load_config(anchors)


def test_a_robot_section_the_sim_cannot_serve_stops_finetune_and_validate_reports_it(tmp_path):
    robot = tmp_path / "robot.yaml"
    robot.write_text(f"base: {ROOT / 'config/examples/my_robot.yaml'}\nstore:\n  path: "
                     f"{tmp_path / 'store.zarr'}\n")
    ok = _cli("config", "validate", str(robot), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "sim: the sim bridge cannot run it: robot.action: 6 dimensions" in ok.stdout
    for args in (("config", "validate", "--sim", str(robot)),
                 ("finetune", "--config", str(robot), "--steps", "1")):
        out = _cli(*args, cwd=tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert "robot.action: 6 dimensions, the sim task takes 3" in out.stderr
        assert "ros2 launch o2o_robot finetune.launch.py" in out.stderr


# ------------------------------------------------------------------------- demonstrations
ALGORITHMS = {"rlpd": lambda: RLPDConfig(hidden_dims=[16, 16], critic_ensemble_size=2),
              "obac": lambda: OBACConfig(hidden_dims=[16, 16]),
              "oema": lambda: OEMAConfig(hidden_dims=[16, 16], pretrain_steps=0)}


def _cfg(tmp: Path, algorithm: str, offline_ratio: float, **train):
    cfg = load_config(SIM, overrides={
        "store": {"path": str(tmp / "store.zarr")}, "sampler": {"batch_size": 8,
                                                                 "offline_ratio": offline_ratio},
        "learner": {"utd_ratio": 1, "warmup_steps": 0, "device": "cpu"},
        "train": {"run_dir": str(tmp / "run"), **train}})
    cfg.algorithm = ALGORITHMS[algorithm]()
    return cfg


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_a_store_without_demonstrations_is_refused_at_start_with_what_to_do(tmp_path, algorithm):
    """The actor node's learner (`ros2 launch`, nothing generates demos there) and finetune
    without a way to generate them refuse an empty store; RLPD and OBAC start with
    `sampler.offline_ratio: 0`, OEMA needs demonstrations whatever the ratio says."""
    TransitionStore.create(tmp_path / "store.zarr", 12, 3).close()
    for ratio in (0.5, 0.0):
        cfg = _cfg(tmp_path, algorithm, ratio, demo_episodes=0)
        needs = algorithm == "oema" or ratio > 0
        for check in (lambda: check_robot_learner(cfg, "c.yaml"),
                      lambda: startup_checks(cfg, "c.yaml", sim=True)):
            if not needs:
                check()
                continue
            with pytest.raises(ConfigError) as info:
                check()
            msg = str(info.value)
            assert msg.startswith(f"c.yaml: store.path {tmp_path / 'store.zarr'}: no demo, "
                                  "intervention or offline rows, but the learner needs them")
            assert "o2o-robot demos collect" in msg and "o2o-robot data import" in msg
            assert ("sampler.offline_ratio: 0" in msg) == (algorithm != "oema")
        found = startup_checks(cfg, "c.yaml", sim=True, demos=False)   # config validate
        assert found["demos"].startswith("demonstrations: NOT READY") == needs
    with TransitionStore.open(tmp_path / "store.zarr", "a") as store:   # one demo episode
        store.append(obs=np.zeros(12, np.float32), action=np.zeros(3, np.float32), reward=0.0,
                     next_obs=np.zeros(12, np.float32), terminated=True, truncated=False,
                     source="demo", policy_version=0, timestamp=0.0)
        store.end_episode(success=True)
    check_robot_learner(_cfg(tmp_path, algorithm, 0.5), "c.yaml")


def _online_rows(n: int) -> list[Transition]:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n + 1, 12)).astype(np.float32)
    return [Transition(obs[i], rng.uniform(-2, 2, 3).astype(np.float32), 0.0, obs[i + 1], False,
                       i == n - 1, SOURCE_CODE["online"], policy_version=1, timestamp=0.0,
                       episode=0, step=i, success=False if i == n - 1 else None)
            for i in range(n)]


@pytest.mark.parametrize("algorithm", ["rlpd", "obac"])
def test_offline_ratio_zero_learns_from_online_rows_only_and_a_missing_side_is_said(
        tmp_path, algorithm):
    from o2o_robot.learning.core import LearnerCore

    for ratio, updates in ((0.0, 10), (0.5, 0)):     # 0.5 without demos: the negative control
        store = TransitionStore.create(tmp_path / f"s{ratio}.zarr", 12, 3)
        cfg = _cfg(tmp_path, algorithm, ratio)
        with store:
            core = LearnerCore.open(cfg, store, tmp_path / f"run{ratio}", resume=False)
            for row in _online_rows(10):
                core.ingest(row)
                while core.step():
                    pass
            assert core.state.updates == updates
            report = core.report("running")
        if updates:
            assert report["last_problem"] == ""
        else:
            assert report["last_problem"] == (
                "cannot update: no demo, intervention or offline rows to draw "
                "(sampler.offline_ratio 0.5 of every minibatch)")


# ----------------------------------------------------------------------- policy check --config
def _policy(path: Path, obs_dim: int, act_dim: int, low, high, slow: bool = False) -> Path:
    """A linear tanh policy (`ros_helpers.linear_policy`); `slow` puts 40 matmuls by a
    1024 x 1024 matrix before it (about 40 M multiply-adds, milliseconds per call)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from ros_helpers import linear_policy

    data = linear_policy(obs_dim, act_dim, low, high, weight=np.full((obs_dim, act_dim), 0.01),
                         bias=np.zeros(act_dim))
    if slow:
        import onnx
        from onnx import helper, numpy_helper

        model = onnx.load_from_string(data)
        graph, rng, n = model.graph, np.random.default_rng(0), 1024
        weights = {"W_in": rng.normal(0, 1 / np.sqrt(obs_dim), (obs_dim, n)),
                   "W_mid": rng.normal(0, 1 / np.sqrt(n), (n, n)),
                   "W_out": rng.normal(0, 1 / np.sqrt(n), (n, obs_dim))}
        graph.initializer.extend(numpy_helper.from_array(w.astype(np.float32), k)
                                 for k, w in weights.items())
        layers = [helper.make_node("MatMul", ["obs", "W_in"], ["h0"])]
        layers += [helper.make_node("MatMul", [f"h{i}", "W_mid"], [f"h{i + 1}"])
                   for i in range(40)]
        layers += [helper.make_node("MatMul", ["h40", "W_out"], ["hout"]),
                   helper.make_node("Tanh", ["hout"], ["obs_h"])]
        for node in graph.node:      # the linear head reads the hidden features
            node.input[:] = ["obs_h" if i == "obs" else i for i in node.input]
        nodes = layers + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.checker.check_model(model)
        data = model.SerializeToString()
    path.write_bytes(data)
    return path


def test_policy_check_against_a_robot_config_checks_its_sizes_bounds_and_latency_budget(
        tmp_path):
    robot = ROOT / "config" / "examples" / "my_robot.yaml"   # 22 -> 6, +-0.5 / +-0.8, 20 Hz
    cfg = load_config(robot)
    low, high = cfg.robot.action.low, cfg.robot.action.high
    fits = _policy(tmp_path / "fits.onnx", 22, 6, low, high)
    out = _cli("policy", "check", str(fits), "--config", str(robot), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["checked_against"].startswith("robot config (my_arm: obs 22, action 6")
    assert report["latency_budget_us"] == pytest.approx(25_000.0)   # half of 50 ms
    plain = _cli("policy", "check", str(fits), cwd=tmp_path)      # no config: no budget
    assert plain.returncode == 0 and "latency_budget_us: None" in plain.stdout
    for name, policy, reason in (
            ("sim-sized", _policy(tmp_path / "sim.onnx", 12, 3, [-2] * 3, [2] * 3), "obs dim"),
            ("other bounds", _policy(tmp_path / "wide.onnx", 22, 6, [-1] * 6, [1] * 6), "spec")):
        out = _cli("policy", "check", str(policy), "--config", str(robot), cwd=tmp_path)
        assert out.returncode == 1 and f"unusable: {reason}" in out.stderr, (name, out.stderr)
    # A policy of a few ms per call: far inside 20 Hz's 25 ms, far outside 2 kHz's 0.25 ms.
    slow = _policy(tmp_path / "slow.onnx", 22, 6, low, high, slow=True)
    fast_robot = tmp_path / "fast_robot.yaml"
    fast_robot.write_text(yaml.safe_dump({"base": str(robot), "control": {
        "control_rate_hz": 2000, "obs_timeout_ms": 10}}))
    slow_robot = tmp_path / "slow_robot.yaml"
    slow_robot.write_text(yaml.safe_dump({"base": str(robot), "control": {"control_rate_hz": 1}}))
    assert _cli("policy", "check", str(slow), "--config", str(slow_robot),
                cwd=tmp_path).returncode == 0
    out = _cli("policy", "check", str(slow), "--config", str(fast_robot), cwd=tmp_path)
    assert out.returncode == 1 and "unusable: latency: p99" in out.stderr, out.stderr
    assert "budget 250 us" in out.stderr
    bad_config = _cli("policy", "check", str(fits), "--config", str(tmp_path / "none.yaml"),
                      cwd=tmp_path)
    assert bad_config.returncode == 2 and "none.yaml: cannot read" in bad_config.stderr
