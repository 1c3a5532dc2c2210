"""The learner worker (thread and process modes, real store) and `o2o-robot finetune`: the sim
bridge, the actor node and the learner over real rclpy, down to a learned reach policy.

Fault injection: `crashing_agent` builds the real agent and makes its update raise after
`CRASH_AFTER` updates; in process mode the worker process imports it from this module.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor

from o2o_robot.agents import build_agent
from o2o_robot.config import OEMAConfig, load_config, resolve_config_path
from o2o_robot.data.schema import EpisodeEnd, Transition
from o2o_robot.data.store import TransitionStore
from o2o_robot.learning.worker import LearnerClient
from o2o_robot.policy.runtime import META_VERSION
from o2o_robot.cli import build_parser
from o2o_robot.ros.finetune import FinetuneActor, apply_overrides, ensure_demos, run_finetune
from o2o_robot.ros.graph import spin_executor, stop_graph
from o2o_robot.ros.sim_bridge_node import SimBridgeNode
from o2o_robot.runlog import read_metrics
from ros_helpers import domain_id, namespace, wait_for

ROOT = Path(__file__).resolve().parent.parent
CRASH_AFTER = 3
WARMUP = 10


def crashing_agent(cfg, obs_dim, act_dim, device):
    """The configured agent, whose update raises once it has done CRASH_AFTER updates."""
    agent = build_agent(cfg, obs_dim, act_dim, device=device)
    update = agent.update

    def failing_update(batch):
        if agent.updates >= CRASH_AFTER:
            raise RuntimeError("injected learner fault")
        return update(batch)

    agent.update = failing_update
    return agent


def tiny_config(tmp: Path, **sections):
    """sim_reach with nets and batches small enough for a 2-core CI machine."""
    base = {"store": {"path": str(tmp / "store.zarr")}, "sampler": {"batch_size": 32},
            "algorithm": {"name": "rlpd", "hidden_dims": [32, 32], "critic_ensemble_size": 2},
            "learner": {"utd_ratio": 2, "warmup_steps": WARMUP, "export_every_updates": 5,
                        "checkpoint_every_steps": 40, "device": "cpu"},
            "train": {"demo_episodes": 2, "run_dir": str(tmp)}}
    for key, values in sections.items():
        base[key] = {**base.get(key, {}), **values}
    return load_config(resolve_config_path("sim_reach.yaml"), overrides=base)


def online_rows(n: int, episode_len: int, seed: int = 0) -> list[Transition]:
    """n online transitions in episodes of `episode_len` (time-limit truncation), as the actor
    hands them on; the last row of episode k carries success = (k is odd)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        end = (i + 1) % episode_len == 0
        rows.append(Transition(
            obs=rng.normal(size=12).astype(np.float32),
            action=rng.uniform(-2, 2, 3).astype(np.float32), reward=0.0,
            next_obs=rng.normal(size=12).astype(np.float32), terminated=False, truncated=end,
            source=1, policy_version=1, timestamp=time.time(), episode=i // episode_len,
            step=i % episode_len, success=bool((i // episode_len) % 2) if end else None))
    return rows


def version_of(data: bytes) -> int:
    meta = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    return int(meta[META_VERSION])


# ------------------------------------------------------------------------------------ learner
@pytest.mark.parametrize("mode", ["thread", "process"])
def test_learner_stores_rows_trains_at_the_utd_and_exports_increasing_versions(tmp_path, mode):
    cfg = tiny_config(tmp_path)
    assert ensure_demos(cfg, progress=False)["episodes"] == 2
    assert ensure_demos(cfg, progress=False) is None            # demos there: none added
    rows = online_rows(60, episode_len=20)
    bad = dataclasses.replace(rows[0], obs=np.full(12, np.nan, np.float32), episode=-1,
                              truncated=True)                   # a one-row episode of its own
    client = LearnerClient(cfg, tmp_path, mode=mode)
    versions = []
    try:
        assert client.submit(bad)                               # refused by the store, counted
        for row in rows:
            assert client.submit(row)

        def trained() -> bool:
            if (data := client.poll_policy()) is not None:
                versions.append(version_of(data))
            return client.progress()["updates"] == 60 - WARMUP
        wait_for(trained, 120.0, "the owed updates")
        assert client.pending_updates() == 0
    finally:
        final = client.close()
    if (data := client.poll_policy()) is not None:              # kept through close()
        versions.append(version_of(data))
    assert final["state"] == "stopped" and final["alive"] is False, final
    assert (final["env_steps"], final["updates"], final["rejected_rows"]) == (60, 50, 1)
    assert final["achieved_utd"] == cfg.learner.utd_ratio
    assert versions == sorted(set(versions)) and versions[-1] == final["policy_version"]
    # the warm-up policy, the agent's actor when warm-up ends, then one per 5 updates
    assert final["policy_version"] == 2 + 50 // cfg.learner.export_every_updates
    assert len(list((tmp_path / "policies").glob("policy_*.onnx"))) == final["policy_version"]
    assert (tmp_path / "checkpoints" / "latest.pt").exists()
    with TransitionStore.open(cfg.store.path) as store:
        counts = store.counts()
        online = [e for e in store.episodes() if e["source"] == "online"]
    assert counts["demo"]["episodes"] == 2
    assert (counts["online"]["transitions"], counts["online"]["episodes"]) == (60, 3)
    assert [e["success"] for e in online] == [False, True, False]


def test_the_learner_reports_its_offline_pretraining_before_the_first_policy(tmp_path):
    """OEMA pre-trains on the demos when the learner starts: stats() says so, with progress."""
    cfg = tiny_config(tmp_path).model_copy(update={"algorithm": OEMAConfig(
        hidden_dims=[32, 32], pretrain_steps=3000)})
    ensure_demos(cfg, progress=False)
    client = LearnerClient(cfg, tmp_path, mode="thread")
    seen = []
    try:
        def exported() -> bool:
            st = client.stats()
            if st.get("state") == "pretraining":
                seen.append(st["pretrain_steps_done"])
            return client.poll_policy() is not None
        wait_for(exported, 120.0, "the first policy after pre-training")
    finally:
        client.close()
    assert seen and set(seen) <= {1000, 2000, 3000}, seen
    assert client.stats()["state"] == "stopped"


def test_an_episode_whose_last_row_was_dropped_is_closed_by_the_end_marker(tmp_path):
    """The actor could not record an episode's last row (e.g. no reward): `EpisodeEnd` closes
    the store episode, so the next episode's rows start a new one instead of merging into it."""
    cfg = tiny_config(tmp_path, learner={"warmup_steps": 1000})
    rows = online_rows(20, episode_len=10)
    first = rows[:9]                                            # episode 0 without its last row
    client = LearnerClient(cfg, tmp_path, mode="thread")
    try:
        for row in first:
            assert client.submit(row)
        assert client.submit(EpisodeEnd(0, success=True))
        assert client.submit(EpisodeEnd(0, success=False))      # nothing open: ignored
        for row in rows[10:]:
            assert client.submit(row)
        wait_for(lambda: client.progress()["env_steps"] == 19, 30.0, "19 rows stored")
    finally:
        client.close()
    with TransitionStore.open(cfg.store.path) as store:
        online = [e for e in store.episodes() if e["source"] == "online"]
    assert [(e["length"], e["success"]) for e in online] == [(9, True), (10, True)]


def test_an_episode_whose_last_row_was_lost_is_closed_when_the_next_one_starts(tmp_path):
    """Rows carry the actor's episode index: the next episode's first row closes an open
    episode whose last row never arrived (e.g. a full queue), so the two never merge."""
    cfg = tiny_config(tmp_path, learner={"warmup_steps": 1000})
    rows = online_rows(20, episode_len=10)
    first, second = rows[:9], rows[10:]                         # episode 0 lost its last row
    client = LearnerClient(cfg, tmp_path, mode="thread")
    try:
        for row in first + second:
            assert client.submit(row)
        wait_for(lambda: client.progress()["env_steps"] == 19, 30.0, "19 rows stored")
    finally:
        final = client.close()
    assert final["cut_episodes"] == 1
    with TransitionStore.open(cfg.store.path) as store:
        online = [e for e in store.episodes() if e["source"] == "online"]
    assert [(e["length"], e["success"]) for e in online] == [(9, None), (10, True)]


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_a_learner_crash_is_reported_and_the_client_keeps_working(tmp_path, mode):
    """With no restarts allowed (`learner.max_restarts: 0`), the crash is final and said so."""
    cfg = tiny_config(tmp_path, learner={"export_every_updates": 1, "queue_size": 50,
                                         "max_restarts": 0})
    ensure_demos(cfg, progress=False)
    client = LearnerClient(cfg, tmp_path, mode=mode, agent_factory=crashing_agent)
    try:
        for row in online_rows(30, episode_len=10):
            assert client.submit(row)
        stats = wait_for(lambda: (s := client.stats())["state"] == "crashed" and s, 120.0,
                         "the crash report")
        assert "injected learner fault" in stats["error"] and stats["updates"] == CRASH_AFTER
        wait_for(lambda: not client.stats()["alive"], 10.0, "the worker to end")
        wait_for(lambda: client.stats()["gave_up"], 10.0, "no restart: max_restarts is 0")
        # The last good policy: v1 (uniform warm-up), v2 (the agent when warm-up ended), then
        # one per update.
        newest = client.poll_policy()
        assert newest is not None and version_of(newest) == CRASH_AFTER + 2
        # Nothing reads the queue any more: it fills, then rows are dropped and counted.
        accepted = [client.submit(row) for row in online_rows(60, episode_len=10, seed=1)]
        assert sum(accepted) == 50 and client.stats()["queue_dropped"] == 10
        assert client.poll_policy() is None
    finally:
        final = client.close()
    assert final["state"] == "crashed" and final["gave_up"] and final["restarts"] == 0
    assert final["failures"] == ["crashed: RuntimeError: injected learner fault"]
    with TransitionStore.open(cfg.store.path, "a") as store:   # the lock was released
        assert store.counts()["online"]["transitions"] == 30


def test_the_actor_keeps_its_last_good_policy_when_the_learner_crashes(tmp_path):
    cfg = tiny_config(tmp_path, learner={"export_every_updates": 1, "max_restarts": 0},
                      control={"control_rate_hz": 50.0}, sim={"sim_rate_hz": 50.0})
    ensure_demos(cfg, progress=False)
    client = LearnerClient(cfg, tmp_path, mode="thread", agent_factory=crashing_agent)
    context, ns = rclpy.Context(), namespace("finetune_crash")
    rclpy.init(context=context, domain_id=domain_id(2))
    # A single-threaded executor, as finetune uses (the multi-threaded one starves callbacks).
    executor = SingleThreadedExecutor(context=context)
    nodes = [SimBridgeNode(cfg, context=context, namespace=ns),
             FinetuneActor(cfg, learner=client, latency_budget_share=None, context=context,
                           namespace=ns)]
    actor = nodes[1]
    for node in nodes:
        executor.add_node(node)
    spinner = threading.Thread(target=spin_executor, args=(executor,), daemon=True)
    spinner.start()
    try:
        wait_for(lambda: client.stats()["state"] == "crashed", 120.0, "the learner crash")
        # v1 uniform warm-up, v2 the agent when warm-up ended, then one per update
        wait_for(lambda: actor.slot.version == CRASH_AFTER + 2, 10.0, "the last good policy")
        acted = actor.core.counts["online"]
        time.sleep(2.0)
        assert actor.core.counts["online"] > acted + 20          # still acting, at 50 Hz
        assert actor.slot.version == CRASH_AFTER + 2
        status = actor.status()
        assert status["learner"]["stats"]["state"] == "crashed"
        assert status["learner"]["errors"] == 0                  # the client never raised
    finally:
        stop_graph([(executor, nodes, spinner)], context)
        client.close()


# ----------------------------------------------------------------------------------- finetune
def test_a_dying_learner_is_restarted_until_max_restarts_then_given_up(tmp_path):
    """Each worker resumes from the last checkpoint and is killed again as soon as it is up;
    the client restarts it after a doubling back-off, `learner.max_restarts` times, then gives
    up and says so."""
    cfg = tiny_config(tmp_path, learner={"max_restarts": 2, "restart_backoff_s": 0.1})
    ensure_demos(cfg, progress=False)
    client = LearnerClient(cfg, tmp_path, mode="process")
    killed: list[int] = []

    def kill_each_worker():
        worker = client._worker
        if worker.pid not in killed and client.stats()["state"] == "running":
            killed.append(worker.pid)
            os.kill(worker.pid, signal.SIGKILL)
        return (s := client.stats())["gave_up"] and s
    try:
        stats = wait_for(kill_each_worker, 180.0, "giving up", interval=0.05)
        assert stats["restarts"] == 2 and len(killed) == 3, stats
        assert stats["failures"] == ["died: learner worker exited (code -9) without a report"] * 3
        assert stats["state"] == "died"
        time.sleep(1.0)
        assert client.stats()["restarts"] == 2 and not client.stats()["alive"]   # no 4th
    finally:
        client.close()


def test_cli_flags_move_the_run_and_store_and_switch_to_lockstep(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["finetune", "--run-dir", str(tmp_path / "r"), "--steps", "300",
                              "--lockstep"])
    cfg = load_config(resolve_config_path(args.config or "sim_reach.yaml"))
    out = apply_overrides(cfg, args)
    assert Path(out.store.path) == tmp_path / "r" / "store.zarr"
    assert (out.train.run_dir, out.train.total_env_steps, out.sim.lockstep) == \
        (str(tmp_path / "r"), 300, True)
    assert not cfg.sim.lockstep                                   # the input is not changed
    with pytest.raises(ValueError, match="--steps"):
        apply_overrides(cfg, parser.parse_args(["finetune", "--steps", "0"]))


def test_finetune_in_lockstep_reaches_the_success_threshold(tmp_path, capsys):
    """Sim-in-the-loop: the CI reach config (RLPD, 20 scripted demos, sparse reward) in
    lock-step, its learner in its own process with one torch thread (the graph needs the other
    core) and an export every 50 updates, must pass an evaluation at its success threshold
    within its env-step budget."""
    run_dir = tmp_path / "run"
    cfg = load_config(ROOT / "config" / "ci_reach.yaml", overrides={
        "store": {"path": str(run_dir / "store.zarr")}, "sim": {"lockstep": True},
        "learner": {"mode": "process", "torch_threads": 1, "export_every_updates": 50},
        "train": {"run_dir": str(run_dir)}})
    summary = run_finetune(cfg, stop_when_solved=True, domain_id=domain_id(3),
                           namespace=namespace("finetune"))
    out = capsys.readouterr().out
    print(summary)
    assert summary["solved_at"] is not None, summary
    assert summary["ended"] == "solved" and summary["learner_state"] == "stopped"
    assert summary["solved_at"] <= cfg.train.total_env_steps
    assert summary["last_eval"]["success_rate"] >= cfg.train.success_threshold
    assert abs(summary["achieved_utd"] - cfg.learner.utd_ratio) < 0.2
    assert "[finetune] step" in out and "policy v" in out
    with TransitionStore.open(cfg.store.path) as store:
        counts, rows = store.counts(), store.read(["source", "policy_version"])
    assert counts["demo"]["episodes"] == cfg.train.demo_episodes
    assert counts["online"]["episodes"] >= summary["episodes"]
    versions = rows["policy_version"][rows["source"] == 1]
    assert np.all(np.diff(versions) >= 0) and versions[-1] > 1
    assert read_metrics(run_dir, "episode") and read_metrics(run_dir, "status")
    evals = read_metrics(run_dir, "eval")
    assert evals[-1]["step"] == summary["solved_at"] and evals[0]["success_rate"] < \
        cfg.train.success_threshold                             # it was learned, not given
    for path in ("learning_curve.png", "checkpoints/latest.pt", "policies/policy_00001.onnx",
                 "tensorboard"):
        assert (run_dir / path).exists(), path
