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
from o2o_robot.learning.harness import train

ROOT = Path(__file__).resolve().parent.parent


def tiny_config(run_dir: Path, total: int, seed: int = 0):
    """A few seconds of real training: small nets, low UTD, short warm-up."""
    return load_config(ROOT / "config" / "sim_reach.yaml", overrides={
        "store": {"path": str(run_dir / "store.zarr"), "flush_every": 64},
        "algorithm": {"name": "rlpd", "hidden_dims": [32, 32], "critic_ensemble_size": 4},
        "learner": {"utd_ratio": 2, "warmup_steps": 60, "checkpoint_every_steps": 100,
                    "torch_threads": 1},
        "sampler": {"batch_size": 32},
        "train": {"total_env_steps": total, "eval_every": 100, "eval_episodes": 2,
                  "demo_episodes": 3, "run_dir": str(run_dir), "seed": seed},
    })


def test_run_directory_holds_everything(tmp_path):
    run = tmp_path / "run"
    summary = train(tiny_config(run, 220), progress=False)
    assert summary["env_steps"] >= 220 and summary["updates"] == summary["env_steps"] - 60
    kinds = {r["kind"] for r in read_metrics(run)}
    assert {"train", "eval", "episode"} <= kinds
    evals = read_metrics(run, "eval")
    assert [r["step"] for r in evals] == [100, 200]
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
