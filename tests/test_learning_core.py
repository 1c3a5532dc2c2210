"""One learning loop, proven (DESIGN.md "One learner, three ways to feed it").

The same recorded stream of `Transition`s / `EpisodeEnd`s, with the same demonstrations in the
store, is fed to `LearnerCore` two ways:

* harness-style: `core.ingest(item)` then `while core.step(): pass`, in this thread;
* through the learner worker, `LearnerClient(mode="thread")`, one item at a time, waiting until
  the item was ingested and no update is owed before submitting the next.

Both runs must end with bit-identical agents (every tensor of the nets, the optimiser states,
the counters and generators, compared with `torch.equal`), the same core state, and the same
store. A stream that differs in one reward must give other parameters (negative control: the
comparison can fail), and a run checkpointed at an episode boundary and resumed must equal the
uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from o2o_robot.agents.checkpoint import load_checkpoint
from o2o_robot.config import OBACConfig, OEMAConfig, RLPDConfig, load_config, resolve_config_path
from o2o_robot.data.schema import SOURCE_CODE, EpisodeEnd, Transition
from o2o_robot.data.store import TransitionStore
from o2o_robot.learning.core import CHECKPOINT, LearnerCore
from o2o_robot.learning.worker import LearnerClient

WARMUP, UTD, BATCH = 8, 2, 16
DEMO_EPISODES, DEMO_LEN, EP_LEN = 2, 15, 12
ONLINE, INTERVENTION, DEMO = SOURCE_CODE["online"], SOURCE_CODE["intervention"], SOURCE_CODE["demo"]
ALGORITHMS = {
    "rlpd": lambda: RLPDConfig(hidden_dims=[32, 32], critic_ensemble_size=2),
    "obac": lambda: OBACConfig(hidden_dims=[32, 32]),
    "oema": lambda: OEMAConfig(hidden_dims=[32, 32], pretrain_steps=20, recent_window=20),
}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The worker sets torch's thread count (learner.torch_threads, 1) for the whole process in
    thread mode; the harness does the same. Both paths run with it, and it is put back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_cfg(root: Path, name: str, algorithm: str):
    run_dir = root / name
    cfg = load_config(resolve_config_path("sim_reach.yaml"), overrides={
        "store": {"path": str(run_dir / "store.zarr"), "flush_every": 1000},
        "sampler": {"batch_size": BATCH},
        "algorithm": {"name": "rlpd"},
        "learner": {"utd_ratio": UTD, "warmup_steps": WARMUP, "export_every_updates": 1000,
                    "checkpoint_every_steps": 15, "device": "cpu", "torch_threads": 1},
        "train": {"run_dir": str(run_dir), "seed": 3}})
    return cfg.model_copy(update={"algorithm": ALGORITHMS[algorithm]()})


def seed_demos(cfg) -> None:
    """The same deterministic demonstrations in every store (whole episodes, labelled)."""
    rng = np.random.default_rng(100)
    robot = cfg.robot
    with TransitionStore.open_or_create(cfg.store.path, robot.obs_dim, robot.act_dim,
                                        flush_every=cfg.store.flush_every) as store:
        for k in range(DEMO_EPISODES):
            obs = rng.normal(size=(DEMO_LEN + 1, robot.obs_dim)).astype(np.float32)
            ends = np.arange(DEMO_LEN) == DEMO_LEN - 1
            store.append_episode({
                "obs": obs[:-1], "next_obs": obs[1:],
                "action": rng.uniform(-2, 2, (DEMO_LEN, robot.act_dim)).astype(np.float32),
                "reward": ends.astype(np.float32), "terminated": ends,
                "truncated": np.zeros(DEMO_LEN, bool), "source": np.full(DEMO_LEN, DEMO, np.uint8),
                "policy_version": np.zeros(DEMO_LEN, np.int64),
                "timestamp": 1000.0 + k * DEMO_LEN + np.arange(DEMO_LEN, dtype=np.float64)},
                success=True)


def recorded_stream(obs_dim: int = 12, act_dim: int = 3, seed: int = 0) -> list:
    """A fixed stream as an actor node hands it on (sim-like: next_obs of a row is the obs of
    the next): episode 0 truncated (failure), episode 1 with three intervention rows and a true
    terminal (success), episode 2 whose last row is replaced by an `EpisodeEnd` (success),
    episode 3 truncated (success), episode 4 still open when the stream stops."""
    rng = np.random.default_rng(seed)
    items: list = []
    t = 5000.0
    for episode, length in enumerate((EP_LEN, EP_LEN, EP_LEN, EP_LEN, 7)):
        obs = rng.normal(size=(length + 1, obs_dim)).astype(np.float32)
        for step in range(length):
            last = step == length - 1 and episode < 4
            source = INTERVENTION if episode == 1 and 4 <= step < 7 else ONLINE
            t += 0.05
            items.append(Transition(
                obs=obs[step], action=rng.uniform(-2, 2, act_dim).astype(np.float32),
                reward=float(rng.normal()), next_obs=obs[step + 1],
                terminated=last and episode == 1, truncated=last and episode != 1,
                source=source, policy_version=episode, timestamp=t, episode=episode, step=step,
                success=(episode % 2 == 1) if last else None))
        if episode == 2:
            items[-1:] = [EpisodeEnd(2, success=True)]          # the last row was not recorded
    return items


def env_steps_in(items) -> int:
    return sum(isinstance(i, Transition) and i.is_env_step for i in items)


# ----------------------------------------------------------------------------------- feeders
def open_core(cfg, *, resume: bool = False):
    robot = cfg.robot
    store = TransitionStore.open_or_create(cfg.store.path, robot.obs_dim, robot.act_dim,
                                           flush_every=cfg.store.flush_every)
    core = LearnerCore.open(cfg, store, cfg.train.run_dir, resume=resume)
    core.pretrain()          # OEMA's offline phase (a no-op for the others), as every feeder
    return core, store


def feed(core, items) -> None:
    for item in items:
        core.ingest(item)
        while core.step():
            pass


def run_harness_style(cfg, items, *, close_episode: bool = True) -> None:
    """The harness's use of the core: ingest, run what is owed; checkpoint at the end."""
    core, store = open_core(cfg)
    try:
        feed(core, items)
        if close_episode:
            core.close_episode()
        core.checkpoint()
    finally:
        store.close()


def run_through_worker(cfg, items, timeout_s: float = 60.0) -> dict:
    """The learner worker (thread mode), one item at a time, each ingested and its updates
    done before the next; close() checkpoints."""
    client = LearnerClient(cfg, cfg.train.run_dir, mode="thread")
    try:
        steps = 0
        for item in items:
            assert client.submit(item)
            steps += isinstance(item, Transition) and item.is_env_step
            deadline = time.monotonic() + timeout_s
            while not (client.progress()["env_steps"] == steps and client.pending_updates() == 0):
                assert client.stats()["state"] not in ("crashed", "died"), client.stats()
                assert time.monotonic() < deadline, f"worker stuck: {client.stats()}"
                time.sleep(0.0005)
    finally:
        final = client.close()
    assert final["state"] == "stopped", final
    return final


# ---------------------------------------------------------------------------------- compare
def differences(a, b, path: str = "") -> list[str]:
    """Paths where two (nested) states differ: tensors by torch.equal (dtype and shape
    included), arrays by exact equality, everything else by ==."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and \
            a.dtype == b.dtype and torch.equal(a, b)
        return [] if same else [path]
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        same = isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype \
            and np.array_equal(a, b)
        return [] if same else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path} keys {sorted(map(str, set(a) ^ set(b)))}"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path} length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def load_run(cfg) -> tuple[dict, dict, dict, list]:
    """(agent state, core state from the checkpoint, store rows, store episodes)."""
    agent, _, extra = load_checkpoint(Path(cfg.train.run_dir) / CHECKPOINT)
    with TransitionStore.open(cfg.store.path) as store:
        rows, episodes = store.read(), store.episodes()
    return agent.state_dict(), extra, rows, episodes


def net_tensors(state: dict) -> int:
    return sum(isinstance(v, torch.Tensor) for v in state["nets"].values())


# -------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_the_harness_and_the_worker_feeding_one_stream_give_identical_agents_and_stores(
        tmp_path, algorithm):
    items = recorded_stream()
    harness, worker = make_cfg(tmp_path, "harness", algorithm), make_cfg(tmp_path, "worker",
                                                                        algorithm)
    for cfg in (harness, worker):
        seed_demos(cfg)
    run_harness_style(harness, items)
    final = run_through_worker(worker, items)

    a_state, a_core, a_rows, a_eps = load_run(harness)
    b_state, b_core, b_rows, b_eps = load_run(worker)
    steps = env_steps_in(items)
    assert steps == 4 * EP_LEN + 7 - 1 and a_core["env_steps"] == steps     # 5 episodes, one row replaced
    assert a_core["updates"] == steps - WARMUP > 0
    assert a_state["counters"]["updates"] == steps - WARMUP     # the agent's own counter
    assert final["updates"] == b_core["updates"] == a_core["updates"]
    assert net_tensors(a_state) > 4
    pretrain = getattr(harness.algorithm, "pretrain_steps", 0)   # OEMA's phase ran in both
    assert a_state["counters"].get("pretrain_steps_done", 0) == pretrain
    assert differences(a_state, b_state) == []                  # nets, optimisers, counters, RNGs
    # The core's state too, except the policy version: the worker also exported the warm-up
    # policy at start and the agent's actor when warm-up ended (the harness acts itself).
    assert b_core.pop("policy_version") == a_core.pop("policy_version") + 2
    assert differences(a_core, b_core) == []
    assert differences(a_rows, b_rows) == []
    assert a_eps == b_eps
    online = [(e["length"], e["success"]) for e in a_eps if e["source"] != "demo"]
    # episode 4 was closed by the stream's end (success unknown)
    assert online == [(12, False), (12, True), (11, True), (12, True), (7, None)]
    assert len(a_rows["obs"]) == DEMO_EPISODES * DEMO_LEN + steps


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_a_stream_that_differs_in_one_reward_gives_other_parameters(tmp_path, algorithm):
    """Negative control of the comparison above: it can fail."""
    items = recorded_stream()
    changed = list(items)
    changed[0] = dataclasses.replace(items[0], reward=items[0].reward + 1.0)
    a, b = make_cfg(tmp_path, "a", algorithm), make_cfg(tmp_path, "b", algorithm)
    for cfg, stream in ((a, items), (b, changed)):
        seed_demos(cfg)
        run_harness_style(cfg, stream)
    a_state, a_core, a_rows, _ = load_run(a)
    b_state, b_core, b_rows, _ = load_run(b)
    assert a_core["updates"] == b_core["updates"] > 0
    diff = differences(a_state["nets"], b_state["nets"])
    assert diff, "one changed reward left every parameter unchanged"
    assert differences(a_state["counters"], b_state["counters"]) == []
    assert differences(a_rows, b_rows) == ["/reward"]


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_a_run_checkpointed_at_an_episode_boundary_and_resumed_equals_the_uninterrupted_one(
        tmp_path, algorithm):
    """Checkpoint after episode 2 (its end marker; episode 1's intervention rows are in), close
    the store, reopen both with resume=True, feed the rest: same agent, core state and store."""
    items = recorded_stream()
    split = next(i for i, x in enumerate(items) if isinstance(x, EpisodeEnd)) + 1
    whole, parts = make_cfg(tmp_path, "whole", algorithm), make_cfg(tmp_path, "parts", algorithm)
    for cfg in (whole, parts):
        seed_demos(cfg)
    run_harness_style(whole, items)
    run_harness_style(parts, items[:split], close_episode=False)
    core, store = open_core(parts, resume=True)
    try:
        assert core.state.env_steps == env_steps_in(items[:split]) > WARMUP
        feed(core, items[split:])
        core.close_episode()
        core.checkpoint()
    finally:
        store.close()
    a_state, a_core, a_rows, a_eps = load_run(whole)
    b_state, b_core, b_rows, b_eps = load_run(parts)
    assert a_core["updates"] == b_core["updates"] == env_steps_in(items) - WARMUP
    assert differences(a_state, b_state) == []
    # The resumed core keeps one online range per session: [a, b) then [b, c).
    ranges = b_core.pop("online_ranges")
    assert [r for r in a_core.pop("online_ranges")] == [[ranges[0][0], ranges[-1][1]]]
    assert ranges[0][1] == ranges[1][0] and len(ranges) == 2
    assert differences(a_core, b_core) == []
    assert differences(a_rows, b_rows) == [] and a_eps == b_eps
