"""The ROS-free training harness: run directory, exact resume, export of its checkpoint."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from o2o_robot.agents.checkpoint import load_checkpoint
from o2o_robot.config import load_config
from o2o_robot.data.store import TransitionStore
from o2o_robot.runlog import read_metrics
from o2o_robot.learning.harness import eval_seed, evaluate, train
from o2o_robot.sim.envs import make_env
from o2o_robot.sim.rollout import EVAL_SEED_BASE
from o2o_robot.spaces import ActionScaler

ROOT = Path(__file__).resolve().parent.parent


def tiny_sections(run_dir: Path, total: int, seed: int = 0) -> dict:
    """A few seconds of real training: small nets, low UTD, short warm-up."""
    return {
        "store": {"path": str(run_dir / "store.zarr"), "flush_every": 64},
        "algorithm": {"name": "rlpd", "hidden_dims": [32, 32], "critic_ensemble_size": 4},
        "learner": {"utd_ratio": 2, "warmup_steps": 60, "checkpoint_every_steps": 100,
                    "torch_threads": 1},
        "sampler": {"batch_size": 32},
        "train": {"total_env_steps": total, "eval_every": 100, "eval_episodes": 2,
                  "demo_episodes": 3, "run_dir": str(run_dir), "seed": seed},
    }


def tiny_config(run_dir: Path, total: int, seed: int = 0):
    return load_config(ROOT / "config" / "sim_reach.yaml",
                       overrides=tiny_sections(run_dir, total, seed))


def test_run_directory_holds_everything(tmp_path):
    run = tmp_path / "run"
    summary = train(tiny_config(run, 220), progress=False)
    assert summary["env_steps"] >= 220 and summary["updates"] == summary["env_steps"] - 60
    kinds = {r["kind"] for r in read_metrics(run)}
    assert {"train", "eval", "episode"} <= kinds and "final_eval" not in kinds   # not asked for
    evals = read_metrics(run, "eval")
    assert [r["step"] for r in evals] == [100, 200]
    assert [r["eval_seeds"] for r in evals] == ["fresh", "fresh"]
    assert evals[0]["eval_seed"] != evals[1]["eval_seed"]   # each evaluation: new episodes
    assert 0.0 <= evals[-1]["success_rate"] <= 1.0
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
    assert (run / "learning_curve.png").stat().st_size > 1000
    with TransitionStore.open(run / "store.zarr") as store:
        counts = store.counts()
        assert counts["demo"]["episodes"] == 3
        assert counts["online"]["transitions"] == summary["env_steps"]
        assert store.validate() == []
        online = store.read(["source", "policy_version"])
        versions = online["policy_version"][online["source"] == 1]
        assert np.all(np.diff(versions) >= 0) and versions[-1] > 0


def _params(path: Path) -> dict[str, torch.Tensor]:
    agent, _, extra = load_checkpoint(path)
    return {k: v.clone() for k, v in agent.nets.state_dict().items()}, extra


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(tiny_config(whole, 300), progress=False)
    first = train(tiny_config(split, 140), progress=False)
    assert first["env_steps"] < 300
    train(tiny_config(split, 300), resume=True, progress=False)

    a, extra_a = _params(whole / "checkpoints" / "latest.pt")
    b, extra_b = _params(split / "checkpoints" / "latest.pt")
    assert extra_a["env_steps"] == extra_b["env_steps"] and extra_a["updates"] == extra_b["updates"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    drop = ("time",)
    ev_a = [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(whole, "eval")]
    ev_b = [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(split, "eval")]
    assert ev_a == ev_b
    fields = ["obs", "action", "reward", "terminated", "truncated", "source", "policy_version"]
    with TransitionStore.open(whole / "store.zarr") as sa, \
            TransitionStore.open(split / "store.zarr") as sb:
        ra, rb = sa.read(fields), sb.read(fields)
        for f in fields:
            np.testing.assert_array_equal(ra[f], rb[f], err_msg=f)


def test_the_final_evaluation_scores_the_final_policy_on_episodes_every_run_shares(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(run, 120)
    cfg.train.final_eval_episodes = 4
    summary = train(cfg, progress=False)
    [record] = read_metrics(run, "final_eval")
    assert record["step"] == summary["env_steps"] and record["eval_seed"] == EVAL_SEED_BASE
    assert summary["final_eval"] == {k: v for k, v in record.items()
                                     if k not in ("kind", "step", "time")}
    assert [r["step"] for r in read_metrics(run, "eval")] == [100]   # the periodic ones stay
    agent, _, _ = load_checkpoint(run / "checkpoints" / "latest.pt")   # the final policy
    env = make_env(cfg.sim, max_episode_steps=cfg.control.max_episode_steps)
    scaler = ActionScaler(cfg.robot.action.low, cfg.robot.action.high)
    assert evaluate(agent, env, scaler, 4, EVAL_SEED_BASE) == summary["final_eval"]


def test_a_resume_record_supersedes_what_was_logged_after_its_step(tmp_path):
    """A run killed after logging step 30 but checkpointed at 20 logs 30 again on resume: the
    curve reads each step once, in order."""
    from o2o_robot.runlog import RunLogger

    log = RunLogger(tmp_path, tensorboard=False)
    for step, value in ((10, 1.0), (20, 2.0), (30, 3.0)):
        log.log("eval", step, {"return_mean": value})
    log.mark_resume(20, lost_steps=10)
    log.log("eval", 30, {"return_mean": 3.5})
    log.close()
    assert [(r["step"], r["return_mean"]) for r in read_metrics(tmp_path, "eval")] == \
        [(10, 1.0), (20, 2.0), (30, 3.5)]
    assert [r["lost_steps"] for r in read_metrics(tmp_path, "resume")] == [10]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        train(tiny_config(tmp_path / "none", 50), resume=True, progress=False)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "o2o_robot.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_export_and_policy_check_of_a_trained_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, 120), progress=False)
    ckpt, onnx = run / "checkpoints" / "latest.pt", tmp_path / "policy.onnx"
    out = cli("export", ckpt, "-o", onnx)
    assert out.returncode == 0, out.stderr
    report = cli("policy", "check", onnx, "--json", "--checkpoint", ckpt)
    assert report.returncode == 0, report.stderr
    info = json.loads(report.stdout)
    assert info["spec"]["obs_dim"] == 12 and info["spec"]["act_dim"] == 3
    assert info["metadata"]["algorithm"] == "rlpd"
    assert info["parity"]["ok"] is True
    assert max(info["parity"]["max_abs_error"].values()) <= 1e-5
    assert info["latency_us"]["p99"] > 0

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(onnx.read_bytes()[: len(onnx.read_bytes()) // 2])
    bad = cli("policy", "check", broken)
    assert bad.returncode == 1 and "unusable: cannot load" in bad.stderr


def write_config(path: Path, sections: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(sections))
    return path


def test_train_without_demos_or_expert_is_a_one_line_error(tmp_path):
    """A gymnasium task has no scripted expert: an empty store is bad input (exit 2) with a
    message saying how to bring demos in, not a traceback from the demo generator."""
    config = write_config(tmp_path / "pendulum.yaml", {
        "sim": {"task": "InvertedPendulum-v5"}, "sampler": {"offline_ratio": 0.5},
        "store": {"path": str(tmp_path / "run" / "store.zarr")},
        "train": {"run_dir": str(tmp_path / "run"), "total_env_steps": 50}})
    out = cli("train", "--config", config)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "InvertedPendulum-v5" in out.stderr and "no scripted expert" in out.stderr
    assert "o2o-robot data import" in out.stderr and "sampler.offline_ratio: 0" in out.stderr


class _Still:
    """A fixed policy (zero action) that records every observation it is shown."""

    def __init__(self):
        self.seen: list[np.ndarray] = []

    def act(self, obs, deterministic=False):
        self.seen.append(np.array(obs))
        return np.zeros(3, np.float32)


def _episodes_seen(cfg, step: int) -> np.ndarray:
    """First observations of the eval episodes at `step`, evaluating the same fixed policy."""
    env = make_env(cfg.sim, max_episode_steps=5)
    agent = _Still()
    evaluate(agent, env, ActionScaler(cfg.robot.action.low, cfg.robot.action.high), 3,
             eval_seed(cfg.train, step))
    return np.stack(agent.seen[::5])


def test_each_evaluation_draws_new_episodes_and_a_seed_repeats_them(tmp_path):
    cfg = tiny_config(tmp_path, 100)
    first, second = _episodes_seen(cfg, 100), _episodes_seen(cfg, 200)
    assert not np.allclose(first, second)                       # new episodes per evaluation
    np.testing.assert_array_equal(first, _episodes_seen(cfg, 100))   # same seed: same episodes
    other = tiny_config(tmp_path, 100, seed=1)
    assert not np.allclose(first, _episodes_seen(other, 100))   # another training seed: others
    fixed = cfg.model_copy(deep=True)
    fixed.train.eval_seeds = "fixed"
    np.testing.assert_array_equal(_episodes_seen(fixed, 100), _episodes_seen(fixed, 200))


def test_train_on_a_task_without_success_signal_is_solved_on_return(tmp_path):
    """InvertedPendulum-v5 reports no is_success: the eval records leave success_rate out,
    train.success_return sets solved_at, and the progress (not a terminal here) is plain lines
    that show the eval return, without a bar's carriage returns."""
    run = tmp_path / "run"
    sections = tiny_sections(run, 220)
    sections["sim"] = {"task": "InvertedPendulum-v5"}
    sections["sampler"]["offline_ratio"] = 0.0
    sections["train"]["success_return"] = 1.0   # every episode lasts at least a step: met at once
    out = cli("train", "--config", write_config(tmp_path / "pendulum.yaml", sections))
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout[out.stdout.index("{"):])   # after the robot-spec line
    assert summary["solved_at"] == 100
    evals = read_metrics(run, "eval")
    assert evals and all("success_rate" not in r and r["return_mean"] >= 1.0 for r in evals)
    assert "\r" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("train ")]
    assert lines and len(lines) <= 2 + summary["wall_s"] / 10
    assert "eval_return" in lines[-1] and "eval_success" not in lines[-1]
    assert lines[-1].startswith(f"train {summary['env_steps']}/220 steps")


def test_train_refuses_a_store_imported_for_another_task(tmp_path):
    """An HDF5 file without env_name gives its file name as the store's task: the import says
    how its rows were labelled, train refuses the store for another task (exit 2, both named),
    and `data import --task` records the task to train."""
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "pendulum-medium.hdf5", "w") as f:   # D4RL layout, no env_name
        f["observations"] = rng.normal(size=(20, 4)).astype(np.float32)
        f["next_observations"] = rng.normal(size=(20, 4)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, (20, 1)).astype(np.float32)
        f["rewards"] = np.ones(20, np.float32)
        f["terminals"] = np.arange(20) % 10 == 9
    guessed, named = tmp_path / "guessed.zarr", tmp_path / "named.zarr"
    out = cli("data", "import", "hdf5", tmp_path / "pendulum-medium.hdf5", "--store", guessed)
    assert out.returncode == 0, out.stderr
    assert "rows labelled source=offline, task 'pendulum-medium'" in out.stdout
    assert "import into a new store with --source demo" in out.stdout
    sections = tiny_sections(tmp_path / "run", 50)
    sections["sim"] = {"task": "InvertedPendulum-v5"}
    sections["store"]["path"] = str(guessed)
    refused = cli("train", "--config", write_config(tmp_path / "pendulum.yaml", sections))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "'pendulum-medium'" in refused.stderr and "'InvertedPendulum-v5'" in refused.stderr
    assert "--task InvertedPendulum-v5" in refused.stderr

    out = cli("data", "import", "hdf5", tmp_path / "pendulum-medium.hdf5", "--store", named,
              "--source", "demo", "--task", "InvertedPendulum-v5")
    assert out.returncode == 0, out.stderr
    assert "rows labelled source=demo, task 'InvertedPendulum-v5'" in out.stdout
    assert "--source demo" not in out.stdout
    sections["store"]["path"] = str(named)
    fits = cli("config", "validate", write_config(tmp_path / "named.yaml", sections))
    assert fits.returncode == 0 and f"store {named} fits" in fits.stdout, fits.stderr


def test_reach_only_sim_keys_are_refused_for_a_gymnasium_task_and_dropped_when_inherited(tmp_path):
    """sim.reward, sim.success_radius_m, ... configure the reach arm: given with a gymnasium
    task they are an error naming the key; inherited from a reach base, they are dropped."""
    given = write_config(tmp_path / "given.yaml", {"sim": {"task": "Reacher-v5", "reward": "sparse"}})
    out = cli("config", "validate", given)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "sim.reward: configures the 'reach' task only, not 'Reacher-v5'" in out.stderr
    assert "module:EnvId" in out.stderr
    inherited = write_config(tmp_path / "inherited.yaml", {
        "base": str(ROOT / "config" / "sim_reach.yaml"),   # sets reward, success_radius_m, ...
        "sim": {"task": "Reacher-v5"}, "store": {"path": str(tmp_path / "r.zarr")}})
    ok = cli("config", "validate", inherited)
    assert ok.returncode == 0 and "task Reacher-v5: obs_dim 10, act_dim 2" in ok.stdout, ok.stderr
    assert load_config(ROOT / "config" / "sim_reach.yaml").sim.success_radius_m == 0.08


def test_a_success_function_gives_a_gymnasium_task_its_success_signal():
    from o2o_robot.config import SimConfig
    from o2o_robot.sim.rollout import run_episodes

    def evaluate_zero(sim):
        env = make_env(sim, max_episode_steps=5)
        try:
            return run_episodes(env, lambda obs: np.zeros(2, np.float32), 2, seed=0)
        finally:
            env.close()
    plain = evaluate_zero(SimConfig(task="Reacher-v5"))
    assert plain["success_signal"] is False
    signalled = evaluate_zero(SimConfig(
        task="Reacher-v5", success_function="o2o_robot.sim.example_tasks:reacher_success"))
    assert signalled["success_signal"] is True and signalled["success_rate"] == 0.0
    assert signalled["return_mean"] == plain["return_mean"]          # the reward is unchanged
    with pytest.raises(ValueError, match="sim.success_function .*has no attribute 'nope'"):
        make_env(SimConfig(task="Reacher-v5", success_function="o2o_robot.sim.example_tasks:nope"))


def test_a_module_env_id_task_trains_with_its_sparse_reward(tmp_path):
    """The README's worked example: a module that registers a wrapped env, named as
    `module:EnvId`, is validated with its own spec and trained like any gymnasium task."""
    run = tmp_path / "run"
    sections = tiny_sections(run, 120)
    sections["sim"] = {"task": "o2o_robot.sim.example_tasks:SparseReacher-v0"}
    sections["sampler"]["offline_ratio"] = 0.0
    config = write_config(tmp_path / "sparse_reacher.yaml", sections)
    ok = cli("config", "validate", config)
    assert ok.returncode == 0 and "task SparseReacher-v0: obs_dim 10, act_dim 2" in ok.stdout
    out = cli("train", "--config", config)
    assert out.returncode == 0, out.stderr
    evals = read_metrics(run, "eval")
    assert evals and all(r["success_rate"] == 0.0 and r["return_mean"] == 0.0 for r in evals)
    with TransitionStore.open(run / "store.zarr") as store:
        rewards = store.read(["reward"])["reward"]
        assert store.spec["task"] == "SparseReacher-v0"
    assert set(np.unique(rewards)) <= {0.0, 1.0}                      # the sparse reward
