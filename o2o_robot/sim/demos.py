"""Scripted demonstrations: roll the task's expert and write each episode into a store as "demo".

Each episode is rolled out completely before any of it is written, so an error mid-episode
leaves no half episode in the store. Rows carry policy_version 0 (no learned policy) and the
wall-clock timestamp (seconds since the epoch) of the step.

A generation records what was asked in the store's notes (`notes["demos"]`: task, seed, noise,
max_episode_steps, episodes, and episodes_done / rows_done), committed with the episodes
themselves (`append_episode`), so after Ctrl-C, `kill -9` or a power cut the notes say exactly
how far it got. Asking again for the same thing completes it; `ensure_demos` (finetune, train,
pretrain) completes an unfinished generation before anything else. Episode i of a generation
resets with seed `seed + i` and draws its expert noise from its own stream (seed, i), so a
completed generation holds the same episodes as one never interrupted.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from o2o_robot.config import CameraSource, ConfigError, O2OConfig, SimConfig
from o2o_robot.data.schema import OFFLINE_SIDE
from o2o_robot.sim.envs import env_spec, make_env
from o2o_robot.sim.experts import expert_for, has_expert

NOTE = "demos"   # the store note that records the last generation asked for
REQUEST_KEYS = ("task", "seed", "noise", "max_episode_steps", "episodes")


def demo_request(store: Any) -> dict | None:
    """The last generation recorded in `store`'s notes, None when there is none."""
    return (getattr(store, "notes", None) or {}).get(NOTE)


def unfinished(request: dict | None) -> bool:
    """Whether a recorded generation stopped before all its episodes were written."""
    return bool(request) and request["episodes_done"] < request["episodes"]


def generate_demos(store: Any, sim_cfg: SimConfig, *, episodes: int, noise: float, seed: int,
                   max_episode_steps: int | None = None, progress: bool = True,
                   cameras: Sequence[CameraSource] = ()) -> dict[str, Any]:
    """Write `episodes` expert episodes of `sim_cfg.task` into `store` (a TransitionStore), or
    complete them when the store records the same generation unfinished (module docstring).

    The store should have been created with `spec=env_spec(make_env(sim_cfg))`; its obs_dim,
    act_dim and spec task (when recorded) are checked against the env before anything is
    written. Episodes end at `max_episode_steps` (the config's `control.max_episode_steps`),
    truncated, unless the task ends first. The rows are committed (`store.flush()`) before this
    returns.

    With `cameras` (the config's `robot.cameras`; reach only) each row also gets the frame of
    every camera at its observation, rendered and converted as the actor would (`SimFrames`),
    and the episode's last next frame; the store must have been created with those cameras.

    Returns {episodes (written now), transitions, success_rate, mean_return (of those),
    resumed_from (episodes of this generation already in the store), replaced (an unfinished
    generation of other parameters that this one replaces as the store's record, or None)}.
    """
    if episodes < 0:
        raise ValueError(f"episodes: must be >= 0, got {episodes}")
    env = make_env(sim_cfg, seed=seed, max_episode_steps=max_episode_steps)
    observer = None
    try:
        if cameras:
            from o2o_robot.sim.camera import SimFrames

            observer = SimFrames(env.unwrapped.model, cameras, sim_cfg.render_size,
                                 blank=sim_cfg.blank_cameras)
        spec = env_spec(env)
        check_store_spec(store, spec)
        asked = {"task": spec["task"] or sim_cfg.task, "seed": int(seed), "noise": float(noise),
                 "max_episode_steps": max_episode_steps, "episodes": int(episodes)}
        last = demo_request(store)
        same = bool(last) and all(last.get(k) == asked[k] for k in REQUEST_KEYS)
        first = last["episodes_done"] if same and unfinished(last) else 0
        rows_done = last["rows_done"] if first else 0
        transitions, successes, returns = 0, 0, []
        for episode in range(first, episodes):
            rows, frames, success = _rollout(
                env, expert_for(env, noise, _expert_seed(seed, episode)), seed + episode,
                observer)
            rows_done += len(rows)
            block = {k: np.array([row[k] for row in rows]) for k in rows[0]}
            block.update(source=np.zeros(len(rows), np.uint8), policy_version=np.zeros(len(rows), np.int64))
            store.append_episode(block, success=success, notes={NOTE: {
                **asked, "episodes_done": episode + 1, "rows_done": rows_done}},
                **_frame_block(frames))
            transitions += len(rows)
            successes += bool(success)
            returns.append(float(sum(row["reward"] for row in rows)))
            if progress:
                print(f"demo {episode + 1}/{episodes}: {len(rows)} steps, return "
                      f"{returns[-1]:.2f}, {'success' if success else 'failure'}", flush=True)
        store.flush()  # the demos are committed (durable) when this returns
    finally:
        if observer is not None:
            observer.close()
        env.close()
    return {
        "episodes": len(returns),
        "transitions": transitions,
        "success_rate": successes / len(returns) if returns else 0.0,
        "mean_return": float(np.mean(returns)) if returns else 0.0,
        "resumed_from": first,
        "replaced": last if unfinished(last) and not same else None,
    }


def _expert_seed(seed: int, episode: int) -> int:
    """The expert noise seed of episode `episode` of a generation: one stream per episode, so a
    resumed generation draws what an uninterrupted one would have."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


# Demo episodes reset with seeds `train.seed + DEMO_SEED_OFFSET + i`: never a training episode's.
DEMO_SEED_OFFSET = 10_000


def ensure_demos(store: Any, cfg: O2OConfig, *, label: str = "o2o",
                 progress: bool = True) -> dict[str, Any] | None:
    """Scripted demos into an open `store` when the learner needs demo-side rows
    (`cfg.demo_rows_reason()`): an unfinished generation recorded in the store is completed
    (what was asked then, module docstring); otherwise, when the store has no demo-side rows,
    `train.demo_episodes` are generated (noise `teleop.expert_noise`). None when nothing was
    needed. ConfigError (`missing_demos`) when rows are needed but cannot be generated
    (`train.demo_episodes` is 0, or the task has no scripted expert): the learner could never
    draw a batch, and the message says how to bring demonstrations in instead."""
    if cfg.demo_rows_reason() is None:
        return None
    last = demo_request(store)
    if unfinished(last) and last["task"] == cfg.sim.task:
        if progress:
            print(f"[{label}] {cfg.store.path}: completing the interrupted demo generation "
                  f"({last['episodes_done']} of {last['episodes']} episodes there)", flush=True)
        return generate_demos(store, cfg.sim, episodes=last["episodes"], noise=last["noise"],
                              seed=last["seed"], max_episode_steps=last["max_episode_steps"],
                              progress=False, cameras=cfg.robot.cameras)
    counts = store.counts()
    if sum(counts[s]["transitions"] for s in OFFLINE_SIDE):
        return None
    env = make_env(cfg.sim)
    try:
        scripted = has_expert(env)
    finally:
        env.close()
    if not scripted:
        raise ConfigError(missing_demos(cfg, f"task {cfg.sim.task!r} has no scripted expert to "
                                             f"generate them (only 'reach' has one)"))
    if cfg.train.demo_episodes == 0:
        raise ConfigError(missing_demos(cfg, "train.demo_episodes is 0: set it > 0 to generate "
                                             "scripted ones", expert=True))
    if progress:
        print(f"[{label}] {cfg.store.path} has no demonstrations: generating "
              f"{cfg.train.demo_episodes} scripted episodes (noise {cfg.teleop.expert_noise})",
              flush=True)
    return generate_demos(store, cfg.sim, episodes=cfg.train.demo_episodes,
                          noise=cfg.teleop.expert_noise, seed=cfg.train.seed + DEMO_SEED_OFFSET,
                          max_episode_steps=cfg.control.max_episode_steps, progress=False,
                          cameras=cfg.robot.cameras)


def missing_demos(cfg: O2OConfig, not_generated: str, *, expert: bool = False) -> str:
    """The one message (for `train`, `finetune`, the actor node and `config validate`) for a
    store without demo, intervention or offline rows when the learner needs some: why it
    needs them (`cfg.demo_rows_reason()`), why they are not generated here (`not_generated`),
    and where they can come from (`expert`: the sim task's scripted expert is one way)."""
    store = cfg.store.path
    ways = ["record them (o2o-robot demos collect, or ros2 launch o2o_robot "
            "collect_demos.launch.py)",
            f"import them (o2o-robot data import rosbag|hdf5|minari SRC --store {store} "
            f"--source demo)"]
    if expert:
        ways.insert(0, f"generate scripted ones (o2o-robot demos generate --episodes 20 "
                       f"--store {store} --config <this file>)")
    if cfg.algorithm.name != "oema":
        ways.append("or set sampler.offline_ratio: 0 to learn from online rows only")
    return (f"store.path {store}: no demo, intervention or offline rows, but the learner "
            f"needs them ({cfg.demo_rows_reason()}) and {not_generated}. Bring some in: "
            + "; ".join(ways))


def check_store_spec(store: Any, spec: dict[str, Any]) -> None:
    """ValueError naming both sides when `store` (a TransitionStore, or anything with obs_dim,
    act_dim and spec) does not fit `spec` (env_spec's keys; a task of None is not compared)."""
    for key in ("obs_dim", "act_dim"):
        have = getattr(store, key, None)
        if have is not None and int(have) != spec[key]:
            raise ValueError(f"store {key} is {have} but task {spec['task']!r} has {spec[key]}; "
                             f"use a store created for this task")
    task = (getattr(store, "spec", None) or {}).get("task")
    if task is not None and spec["task"] is not None and task != spec["task"]:
        raise ValueError(f"store was created for task {task!r}, not {spec['task']!r}; "
                         f"use a store created for this task")


def _frame_block(frames: list[dict[str, np.ndarray]] | None) -> dict[str, Any]:
    """append_episode's frames / next_frames of an episode whose observations had `frames`
    (one more than rows: the last is the final next observation's); {} without cameras."""
    if not frames:
        return {}
    names = list(frames[0])
    stacked = {name: np.stack([f[name] for f in frames]) for name in names}
    return {"frames": {n: a[:-1] for n, a in stacked.items()},
            "next_frames": {n: a[1:] for n, a in stacked.items()}}


def _rollout(env: Any, expert: Any, seed: int, observer: Any = None
             ) -> tuple[list[dict[str, Any]], list[dict] | None, bool | None]:
    """One episode as store rows (without source/policy_version), the camera frames of each
    observation (with `observer`, a SimFrames; else None) and its success label."""
    obs, info = env.reset(seed=seed)
    rows: list[dict[str, Any]] = []
    frames = None if observer is None else [observer.frames(env.unwrapped.data)]
    done = False
    while not done:
        action = expert.act(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        rows.append({"obs": np.asarray(obs, np.float32), "action": np.asarray(action, np.float32),
                     "reward": float(reward), "next_obs": np.asarray(next_obs, np.float32),
                     "terminated": bool(terminated), "truncated": bool(truncated),
                     "timestamp": time.time()})
        if frames is not None:
            frames.append(observer.frames(env.unwrapped.data))
        obs, done = next_obs, terminated or truncated
    success = info.get("is_success")
    return rows, frames, None if success is None else bool(success)
