"""Faults during `o2o-robot finetune`: the learner killed (restarted from its checkpoint while
the actor goes on) and the whole session killed with SIGKILL, then resumed (`--resume`)."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from o2o_robot.data.store import TransitionStore
from o2o_robot.learning.worker import LearnerClient
from o2o_robot.ros.finetune import run_finetune
from o2o_robot.runlog import read_metrics
from ros_helpers import domain_id, kill_group, namespace, wait_for

ROOT = Path(__file__).resolve().parent.parent
ONLINE = 1


def sections(tmp: Path, total: int) -> dict:
    """A lock-step sim_reach run small enough for a 2-core CI machine."""
    return {"base": str(ROOT / "config" / "sim_reach.yaml"),
            "store": {"path": str(tmp / "run" / "store.zarr")}, "sampler": {"batch_size": 32},
            "algorithm": {"name": "rlpd", "hidden_dims": [32, 32], "critic_ensemble_size": 2},
            "learner": {"utd_ratio": 1, "warmup_steps": 20, "export_every_updates": 20,
                        "checkpoint_every_steps": 50, "device": "cpu", "mode": "process",
                        "restart_backoff_s": 0.2},
            "sim": {"lockstep": True},
            "train": {"demo_episodes": 2, "run_dir": str(tmp / "run"), "total_env_steps": total,
                      "eval_every": 10_000}}


def write_config(tmp: Path, total: int) -> Path:
    path = tmp / "finetune.yaml"
    path.write_text(yaml.safe_dump(sections(tmp, total)))
    return path


def test_a_killed_learner_is_restarted_from_its_checkpoint_and_the_run_completes(tmp_path,
                                                                                 capsys):
    from o2o_robot.config import load_config

    cfg = load_config(write_config(tmp_path, 400))
    clients: list[LearnerClient] = []

    def learner(cfg, run_dir):
        clients.append(LearnerClient(cfg, run_dir))
        return clients[-1]

    killed: dict = {}

    def kill_the_worker() -> None:      # once it has exported a few policies
        wait_for(lambda: clients and clients[0].progress()["policy_version"] >= 4, 120.0,
                 "a few exports")
        killed["version"] = clients[0].progress()["policy_version"]
        os.kill(clients[0]._worker.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_the_worker, daemon=True)
    killer.start()
    summary = run_finetune(cfg, domain_id=domain_id(1), namespace=namespace("learner_kill"),
                           learner_factory=learner)
    killer.join(1.0)
    err = capsys.readouterr().err
    assert summary["ended"] == "steps" and summary["env_steps"] == 400, summary
    assert summary["learner_state"] == "stopped" and not summary["learner_error"]
    final = clients[0].stats()
    assert final["restarts"] == 1 and final["failures"][0].startswith("died"), final
    assert "restart 1 of 3 from its last checkpoint; the actor keeps policy" in err
    failure, = read_metrics(tmp_path / "run", "learner_failure")
    assert failure["failures"] == 1 and not failure["gave_up"]
    assert summary["policy_version"] > killed["version"]          # the new worker exports on
    with TransitionStore.open(cfg.store.path) as store:
        assert store.validate() == []


def _policy_hashes(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((run / "policies").glob("policy_*.onnx"))}


def _finetune(config: Path, *extra: str) -> tuple[subprocess.Popen, list[str]]:
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain_id(2)), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "o2o_robot.cli", "finetune", "--config",
                             str(config), *extra], env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, lines


def _steps(lines: list[str]) -> int:
    """The env step of the newest progress line."""
    steps = [int(line.split()[2].split("/")[0]) for line in list(lines)
             if line.startswith("[finetune] step ")]
    return steps[-1] if steps else -1


def test_finetune_killed_five_times_resumes_to_exactly_its_budget(tmp_path):
    """kill -9 of the whole process group (the session and its learner) at a random moment,
    five times, each followed by `--resume`, then a run to the end: the store validates, no
    policy file was ever rewritten, the policy versions of the online rows never go back, the
    curve has one resume record per restart, and the run ends at exactly its budget."""
    total, rng = 700, random.Random(0)
    config = write_config(tmp_path, total)
    run, seen, resumed_at = tmp_path / "run", {}, []
    for attempt in range(6):
        proc, lines = _finetune(config, *(["--resume"] if attempt else []))
        try:
            if attempt < 5:
                start = _steps(lines) if lines else -1
                wait_for(lambda: proc.poll() is not None or _steps(lines) > max(start, 0) + 40,
                         120.0, "the session stepping")
                assert proc.poll() is None, "".join(lines)
                time.sleep(rng.uniform(0.0, 1.5))
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            else:
                assert proc.wait(timeout=300) == 0, "".join(lines)
        finally:
            kill_group(proc)
        text = "".join(lines)
        if attempt:
            assert "[finetune] resuming" in text, text
            resumed_at.append(int(text.split("at env step ")[1].split()[0]))
        hashes = _policy_hashes(run)
        assert all(hashes[name] == digest for name, digest in seen.items()), "a policy rewritten"
        seen = hashes
    summary = json.loads(text[text.index("{\n"):])
    assert summary["ended"] == "steps" and summary["env_steps"] == total
    assert resumed_at == sorted(resumed_at) and resumed_at[0] > 0
    assert len(read_metrics(run, "resume")) == 5
    steps = [r["step"] for r in read_metrics(run, "episode")]
    assert steps == sorted(steps)                      # the curve: no step goes back
    with TransitionStore.open(run / "store.zarr") as store:
        assert store.validate() == []
        rows = store.read(["source", "policy_version"])
    versions = rows["policy_version"][rows["source"] == ONLINE].astype(np.int64)
    assert len(versions) >= total and (np.diff(versions) >= 0).all()


def test_a_run_dir_that_holds_a_run_is_refused_without_resume(tmp_path):
    config = write_config(tmp_path, 100)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest.json").write_text(json.dumps({"env_steps": 60}))
    proc, lines = _finetune(config)
    try:
        assert proc.wait(timeout=120) == 2
    finally:
        kill_group(proc)
    text = "".join(lines)
    assert "holds a run (checkpoint at env step 60): --resume continues it" in text, text
    assert "Traceback" not in text
    done = tmp_path / "run" / "checkpoints" / "latest.json"
    done.write_text(json.dumps({"env_steps": 100}))
    proc, lines = _finetune(config, "--resume")
    try:
        assert proc.wait(timeout=120) == 2
    finally:
        kill_group(proc)
    assert "at env step 100, the budget train.total_env_steps is 100" in "".join(lines)
