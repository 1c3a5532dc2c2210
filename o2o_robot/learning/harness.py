"""ROS-free training harness: `o2o-robot train --config FILE`, a gymnasium env loop feeding the
one learning loop (`learning.core.LearnerCore`).

Per environment step: act (during warm-up, `learner.warmup_actions`: uniform random or the
agent's own stochastic policy; after it, a sample of the behaviour policy), step the sim, hand
the row to the core as a `Transition` (store + mirror), then run the updates the core owes
(`learner.utd_ratio` critic steps per env step after warm-up). Agents with an offline phase
(OEMA's TD3+BC) pre-train first. Every `train.eval_every` steps the deterministic policy is
evaluated on a separate env, on new episodes each time unless `train.eval_seeds` is fixed
(`eval_seed`); the first evaluation that meets the solved threshold (`solved`) is solved_at.
After the budget, `train.final_eval_episodes` (when set) scores the final policy on that many
episodes, the same for every run. The run directory receives the store rows, checkpoints,
exported policies, `metrics.jsonl`, TensorBoard scalars and `learning_curve.png`.

A robot with `robot.cameras` (reach only) acts and is evaluated on the observation dict the
actor would build (`sim.camera.CameraObservation`: the state plus each camera's frame stack),
and every row goes to the store with its camera frames, as a finetune run stores them.

Exact resume: the run ends at an episode boundary, checkpoints are written at boundaries and hold
the core's state (agent, RNGs, counters, the store rows learned from) plus the harness's own
(episode counter, acting RNG, solved_at), and every training episode resets the env with a seed
derived from its index; so a resumed run continues exactly as the uninterrupted one would have.
Store rows written after the last checkpoint by a run that died stay in the store (append-only)
but are not learned from.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from o2o_robot.config import (ActionSpace, ConfigError, O2OConfig, ObservationSource, RobotSpec,
                              TrainConfig, camera_shapes)
from o2o_robot.data.schema import SOURCE_CODE, Transition
from o2o_robot.data.store import TransitionStore
from o2o_robot.learning.threads import ThreadTuner
from o2o_robot.sim.camera import camera_env
from o2o_robot.runlog import Progress, RunLogger, plot_curve
from o2o_robot.sim.demos import check_store_spec, ensure_demos
from o2o_robot.sim.envs import env_spec, make_env
from o2o_robot.sim.rollout import EVAL_SEED_BASE, run_episodes
from o2o_robot.spaces import ActionScaler



def state_of(obs) -> np.ndarray:
    """The state vector of an observation (a camera robot's is a dict, `CameraObservation`)."""
    return obs["state"] if isinstance(obs, dict) else obs


def episode_seed(seed: int, episode: int) -> int:
    """Reset seed of training episode `episode` (independent of how the run was split)."""
    return seed * 1_000_003 + episode


def eval_seed(tc: TrainConfig, step: int) -> int:
    """Reset seed of the first episode of the evaluation at env step `step` (episode i: + i).

    `train.eval_seeds` fixed: EVAL_SEED_BASE, the same episodes every time. fresh: drawn from a
    stream keyed by (train.seed, step), so each evaluation sees new episodes, a run repeats
    exactly, and a resumed run needs no extra state to continue the stream.
    """
    if tc.eval_seeds == "fixed":
        return EVAL_SEED_BASE
    draw = int(np.random.SeedSequence([tc.seed, step]).generate_state(1, np.uint64)[0])
    return EVAL_SEED_BASE + draw   # a 64-bit draw: practically never a training episode's seed


def evaluate(agent, env, scaler: ActionScaler, episodes: int, seed: int) -> dict:
    """Deterministic policy (tanh of the mean) on episodes reset with `seed + i`; touches no
    training RNG. The record names its seeds (eval_seed) and leaves success_rate out when the
    env reports no info['is_success'] (a rate of 0 would only say the signal is missing)."""
    result = run_episodes(env, lambda obs: scaler.to_physical(agent.act(obs, deterministic=True)),
                          episodes, seed=seed)
    if not result.pop("success_signal"):
        del result["success_rate"]
    return {**result, "eval_seed": seed}


def solved(tc: TrainConfig, result: dict) -> bool:
    """Whether an eval `result` meets the solved threshold: mean return >= train.success_return
    when that is set, else success rate >= train.success_threshold."""
    if tc.success_return is not None:
        return result["return_mean"] >= tc.success_return
    return result.get("success_rate", 0.0) >= tc.success_threshold


def robot_for_env(cfg: O2OConfig, spec: dict) -> O2OConfig:
    """`cfg` with a robot spec that matches the sim env (a gymnasium task has its own dims).

    Checkpoints carry the config, and the exporter takes the action bounds from it.
    """
    robot = cfg.robot
    if (robot.obs_dim, robot.act_dim) == (spec["obs_dim"], spec["act_dim"]) and \
            np.allclose(robot.action.low, spec["action_low"]) and \
            np.allclose(robot.action.high, spec["action_high"]):
        return cfg
    robot = RobotSpec(name=spec.get("task", "sim"),
                      observations=[ObservationSource(topic="obs", type="float64_multi_array",
                                                      size=spec["obs_dim"])],
                      action=ActionSpace(low=spec["action_low"], high=spec["action_high"],
                                         names=spec.get("action_names") or []))
    print(f"[train] robot spec taken from the sim task {spec.get('task')!r} "
          f"(obs {spec['obs_dim']}, action {spec['act_dim']})", flush=True)
    return cfg.model_copy(update={"robot": robot})


def _check_store_task(store: TransitionStore, spec: dict, path: str) -> None:
    """Refuse (ConfigError) a store recorded for another task than the one trained: its rows
    would be learned from as if they came from this env. An imported store's task is the
    source's (an HDF5 file's env_name attribute, else its file name; a Minari env id), or
    `data import ... --task`."""
    try:
        check_store_spec(store, spec)
    except ValueError as exc:
        raise ConfigError(f"store.path {path}: {exc}, or, when its rows are this task's, "
                          f"import them into a new store with `o2o-robot data import ... "
                          f"--task {spec['task']}`") from None


HARNESS_STATE = {"episode": 0, "solved_at": None, "act_rng": None}   # beside the core's


def train(cfg: O2OConfig, *, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) the training loop described in the module docstring; return a summary."""
    from o2o_robot.learning.core import CHECKPOINT, LearnerCore

    run_dir = Path(cfg.train.run_dir)
    if resume and not (run_dir / CHECKPOINT).exists():
        raise FileNotFoundError(f"{run_dir / CHECKPOINT}: no checkpoint to resume from")
    tuner = ThreadTuner(cfg.learner.torch_threads)   # a learner on its own: every free core
    limit = cfg.control.max_episode_steps
    env, eval_env = (camera_env(make_env(cfg.sim, max_episode_steps=limit), cfg.robot.cameras,
                                cfg.sim) for _ in range(2))
    spec = env_spec(env)
    cfg = robot_for_env(cfg, spec)
    run_dir.mkdir(parents=True, exist_ok=True)
    store = TransitionStore.open_or_create(cfg.store.path, spec["obs_dim"], spec["act_dim"],
                                           flush_every=cfg.store.flush_every, spec=spec,
                                           cameras=camera_shapes(cfg) or None)
    logger = RunLogger(run_dir)
    try:
        _check_store_task(store, spec, cfg.store.path)
        ensure_demos(store, cfg, label="train")
        core = LearnerCore.open(cfg, store, run_dir, resume=resume)
        if resume:   # what an interrupted run logged after its checkpoint is superseded
            logger.mark_resume(core.state.env_steps)
        state = {**HARNESS_STATE, **{k: core.resumed.get(k) for k in HARNESS_STATE
                                     if k in core.resumed}}
        core.pretrain(progress=progress, log=lambda step, m: logger.log("pretrain", step, m))
        summary = _loop(cfg, core, env, eval_env, state, logger, progress, tuner)
    finally:
        store.close()
        logger.close()
        env.close()
        eval_env.close()
    curve = plot_curve(run_dir)
    summary.update({"run_dir": str(run_dir), "learning_curve": str(curve) if curve else None,
                    "checkpoint": str(run_dir / CHECKPOINT)})
    return summary


def _loop(cfg, core, env, eval_env, state, logger, progress, tuner) -> dict:
    lc, tc, agent, s = cfg.learner, cfg.train, core.agent, core.state
    scaler, online = core.scaler, SOURCE_CODE["online"]
    cameras = bool(cfg.robot.cameras)
    act_rng = np.random.default_rng(tc.seed + 1)
    if state["act_rng"] is not None:
        act_rng.bit_generator.state = state["act_rng"]
    bar = Progress(tc.total_env_steps, s.env_steps, desc="train", enabled=progress)
    obs, _ = env.reset(seed=episode_seed(tc.seed, state["episode"]))
    ep_return, ep_len, last_eval, started = 0.0, 0, {}, time.perf_counter()
    last_ckpt, timed = s.env_steps, (core.update_time, s.updates)

    def checkpoint() -> None:
        core.checkpoint(**{**state, "act_rng": act_rng.bit_generator.state})

    # The run ends at the first episode boundary at or after total_env_steps, so that every
    # checkpoint sits on a boundary and a resumed run continues exactly.
    while s.env_steps < tc.total_env_steps or ep_len:
        if core.in_warmup and lc.warmup_actions == "uniform":
            unit = act_rng.uniform(-1.0, 1.0, size=scaler.dim).astype(np.float32)
        else:
            unit = agent.act(obs)
        action = scaler.to_physical(unit)
        frames = env.frames if cameras else None    # a camera robot's frames at obs
        next_obs, reward, terminated, truncated, info = env.step(action)
        ended = terminated or truncated
        success = bool(info.get("is_success", False))
        core.ingest(Transition(state_of(obs), action, float(reward), state_of(next_obs),
                               bool(terminated), bool(truncated), online,
                               policy_version=s.updates, timestamp=time.time(),
                               episode=state["episode"], step=ep_len,
                               success=success if ended else None, frames=frames,
                               next_frames=env.frames if cameras else None))
        tuner.maybe_adjust()
        while core.step():
            if s.updates % 100 == 0:
                seconds, n = core.update_time - timed[0], s.updates - timed[1]
                timed = (core.update_time, s.updates)
                logger.log("train", s.env_steps, {
                    **core.metrics, "critic_updates_per_s": n * lc.utd_ratio / max(seconds, 1e-9),
                    "update_ms": 1000.0 * seconds / max(n, 1),   # one agent.update (all of G)
                    "torch_threads": tuner.threads})
        ep_return += float(reward)
        ep_len += 1
        obs = next_obs
        t = s.env_steps
        if t % tc.eval_every == 0:
            last_eval = evaluate(agent, eval_env, scaler, tc.eval_episodes, eval_seed(tc, t))
            logger.log("eval", t, {**last_eval, "eval_seeds": tc.eval_seeds})
            if state["solved_at"] is None and solved(tc, last_eval):
                state["solved_at"] = t
        if ended:
            logger.log("episode", t, {"return": ep_return, "length": ep_len,
                                      "success": float(success)})
            state["episode"] += 1
            ep_return, ep_len = 0.0, 0
            obs, _ = env.reset(seed=episode_seed(tc.seed, state["episode"]))
            if t - last_ckpt >= lc.checkpoint_every_steps or t >= tc.total_env_steps:
                checkpoint()
                last_ckpt = t
        bar.update({"ep": state["episode"], "eval_return": last_eval.get("return_mean"),
                    **({"eval_success": last_eval["success_rate"]}
                       if "success_rate" in last_eval else {}),
                    "alpha": round(core.metrics.get("temperature", float("nan")), 4)})
    bar.close()
    if s.env_steps != last_ckpt:
        checkpoint()
    if tc.final_eval_episodes:
        if progress:
            print(f"[train] final evaluation: {tc.final_eval_episodes} episodes", flush=True)
        last_eval = evaluate(agent, eval_env, scaler, tc.final_eval_episodes, EVAL_SEED_BASE)
        logger.log("final_eval", s.env_steps, last_eval)
    return {"env_steps": s.env_steps, "episodes": state["episode"], "updates": s.updates,
            "final_eval": last_eval, "solved_at": state["solved_at"],
            "wall_s": round(time.perf_counter() - started, 2)}
