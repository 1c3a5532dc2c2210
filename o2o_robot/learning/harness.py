"""ROS-free training harness: `o2o-robot train --config FILE`.

Before the first step, agents with an offline phase pre-train on the demo-side rows (OEMA's
TD3+BC; `batches.pretrain`). Per environment step (RLPD, ALGORITHMS.md 1.5): act (during warm-up
uniform random, or the deterministic actor for OEMA; else a sample of the behaviour policy), step
the sim, append the row to the durable store and to the in-memory mirror, then, after warm-up,
draw the algorithm's batch (`batches.batch_plan`: for RLPD/OBAC one big batch of G minibatches,
each exactly offline_ratio demo-side rows) and run `agent.update` on it. Every `train.eval_every` steps the deterministic
policy is evaluated on a separate env. The run directory receives the store rows, checkpoints,
`metrics.jsonl`, TensorBoard scalars and `learning_curve.png`.

Exact resume: the run ends at an episode boundary, checkpoints are written at boundaries and hold the agent (with its RNG),
the numpy RNG, the env-step and episode counters and the store row ranges the learner used, and
every training episode resets the env with a seed derived from its index; so a resumed run
continues exactly as the uninterrupted one would have. Store rows written after the last
checkpoint by a run that died are kept in the store (append-only) but not fed to the learner.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from o2o_robot.agents import build_agent, resolve_device
from o2o_robot.agents.checkpoint import load_checkpoint, save_checkpoint
from o2o_robot.learning.batches import batch_plan, plan_state, pretrain, restore_plan, warmup_action
from o2o_robot.config import ActionSpace, O2OConfig, ObservationSource, RobotSpec
from o2o_robot.data.replay import ReplayMirror
from o2o_robot.data.schema import OFFLINE_SIDE_CODES, SOURCE_CODE
from o2o_robot.data.store import TransitionStore
from o2o_robot.runlog import RunLogger, plot_curve
from o2o_robot.sim.demos import ensure_demos
from o2o_robot.sim.envs import env_spec, make_env
from o2o_robot.sim.rollout import EVAL_SEED_BASE, run_episodes
from o2o_robot.spaces import ActionScaler



def episode_seed(seed: int, episode: int) -> int:
    """Reset seed of training episode `episode` (independent of how the run was split)."""
    return seed * 1_000_003 + episode


def evaluate(agent, env, scaler: ActionScaler, episodes: int) -> dict:
    """Deterministic policy (tanh of the mean) on fixed seeds; touches no training RNG."""
    return run_episodes(env, lambda obs: scaler.to_physical(agent.act(obs, deterministic=True)),
                        episodes, seed=EVAL_SEED_BASE)


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


def load_mirror(store: TransitionStore, cfg: O2OConfig, scaler: ActionScaler,
                 online_ranges: list[list[int]]) -> ReplayMirror:
    """Demo-side rows of the whole store, then this run's online rows, actions in [-1, 1]."""
    mirror = ReplayMirror(store.obs_dim, store.act_dim,
                          online_capacity=cfg.sampler.online_capacity)
    rows = store.read()
    keep = np.isin(rows["source"], OFFLINE_SIDE_CODES)
    blocks = [np.flatnonzero(keep)] + [np.arange(a, b) for a, b in online_ranges]
    index = np.concatenate(blocks) if blocks else np.zeros(0, np.int64)
    if index.size:
        block = {k: v[index] for k, v in rows.items()}
        block["action"] = scaler.to_unit(block["action"])
        mirror.add_rows(block)
    return mirror


class _Progress:
    """tqdm bar over env steps when available and wanted, else periodic lines."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                            desc="train")

    def update(self, postfix: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def fresh_state() -> dict:
    """The harness's resume state before the first env step (what its checkpoints hold)."""
    return {"env_step": 0, "episode": 0, "online_ranges": [], "updates": 0,
            "solved_at": None, "np_rng": None, "plan_state": None}


def train(cfg: O2OConfig, *, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) the training loop described in the module docstring; return a summary."""
    run_dir = Path(cfg.train.run_dir)
    ckpt_path = run_dir / "checkpoints" / "latest.pt"
    torch.set_num_threads(cfg.learner.torch_threads)
    env = make_env(cfg.sim)
    eval_env = make_env(cfg.sim)
    spec = env_spec(env)
    cfg = robot_for_env(cfg, spec)
    scaler = ActionScaler(spec["action_low"], spec["action_high"])
    device = resolve_device(cfg.learner.device)

    state = fresh_state()
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"{ckpt_path}: no checkpoint to resume from")
        agent, _, extra = load_checkpoint(ckpt_path, device=device)
        state.update({k: extra[k] for k in state if k in extra})
    else:
        agent = build_agent(cfg, spec["obs_dim"], spec["act_dim"], device=device,
                            seed=cfg.train.seed)
    rng = np.random.default_rng(cfg.train.seed)
    if state["np_rng"] is not None:
        rng.bit_generator.state = state["np_rng"]

    run_dir.mkdir(parents=True, exist_ok=True)
    store = TransitionStore.open_or_create(cfg.store.path, spec["obs_dim"], spec["act_dim"],
                                           flush_every=cfg.store.flush_every, spec=spec)
    logger = RunLogger(run_dir)
    try:
        ensure_demos(store, cfg, label="train")
        mirror = load_mirror(store, cfg, scaler, state["online_ranges"])
        pretrained = pretrain(agent, cfg, mirror, rng, progress=progress,
                              log=lambda step, m: logger.log("pretrain", step, m))
        if pretrained:
            _checkpoint(ckpt_path, agent, cfg, store, rng, state)
        segment = [len(store), len(store)]
        state["online_ranges"].append(segment)
        summary = _loop(cfg, agent, env, eval_env, scaler, store, mirror, rng, state, segment,
                        logger, ckpt_path, progress)
    finally:
        store.close()
        logger.close()
    curve = plot_curve(run_dir)
    summary.update({"run_dir": str(run_dir), "learning_curve": str(curve) if curve else None,
                    "checkpoint": str(ckpt_path)})
    return summary


def _loop(cfg, agent, env, eval_env, scaler, store, mirror, rng, state, segment, logger,
          ckpt_path, progress) -> dict:
    lc, tc = cfg.learner, cfg.train
    plan = batch_plan(cfg, mirror)
    restore_plan(plan, state["plan_state"])   # OEMA's replay priorities (exact resume)
    online = SOURCE_CODE["online"]
    bar = _Progress(tc.total_env_steps, state["env_step"], progress)
    obs, _ = env.reset(seed=episode_seed(tc.seed, state["episode"]))
    ep_return, ep_len, last_eval, started = 0.0, 0, {}, time.perf_counter()
    update_time, metrics = 0.0, {}
    last_ckpt = state["env_step"]
    # The run ends at the first episode boundary at or after total_env_steps, so that every
    # checkpoint sits on a boundary and a resumed run continues exactly.
    while state["env_step"] < tc.total_env_steps or ep_len:
        t = state["env_step"]
        if t < lc.warmup_steps:
            unit = warmup_action(agent, obs, scaler.dim, rng)
        else:
            unit = agent.act(obs)
        action = scaler.to_physical(unit)
        next_obs, reward, terminated, truncated, info = env.step(action)
        row = dict(obs=obs, action=action, reward=reward, next_obs=next_obs,
                   terminated=terminated, truncated=truncated, source=online,
                   policy_version=state["updates"], timestamp=time.time())
        store.append(**row)
        mirror.add(**{**row, "action": scaler.to_unit(action)})
        segment[1] += 1
        ep_return += float(reward)
        ep_len += 1
        obs = next_obs
        state["env_step"] = t = t + 1

        if t > lc.warmup_steps:
            tick = time.perf_counter()
            batch = plan.draw(rng)
            metrics = agent.update(batch)
            plan.after_update(agent, batch)
            update_time += time.perf_counter() - tick
            state["updates"] += 1
            if state["updates"] % 100 == 0:
                metrics["critic_updates_per_s"] = 100 * lc.utd_ratio / max(update_time, 1e-9)
                metrics["update_ms"] = 1000.0 * update_time / 100   # one agent.update (all of G)
                update_time = 0.0
                logger.log("train", t, metrics)

        if t % tc.eval_every == 0:
            last_eval = evaluate(agent, eval_env, scaler, tc.eval_episodes)
            logger.log("eval", t, last_eval)
            if state["solved_at"] is None and last_eval["success_rate"] >= tc.success_threshold:
                state["solved_at"] = t

        if terminated or truncated:
            success = bool(info.get("is_success", False))
            store.end_episode(success=success)
            logger.log("episode", t, {"return": ep_return, "length": ep_len,
                                      "success": float(success)})
            state["episode"] += 1
            ep_return, ep_len = 0.0, 0
            obs, _ = env.reset(seed=episode_seed(tc.seed, state["episode"]))
            if t - last_ckpt >= lc.checkpoint_every_steps or t >= tc.total_env_steps:
                state["plan_state"] = plan_state(plan)
                _checkpoint(ckpt_path, agent, cfg, store, rng, state)
                last_ckpt = t
        bar.update({"ep": state["episode"], "eval_success": last_eval.get("success_rate"),
                    "alpha": round(metrics.get("temperature", float("nan")), 4)})
    bar.close()
    if state["env_step"] != last_ckpt:
        state["plan_state"] = plan_state(plan)
        _checkpoint(ckpt_path, agent, cfg, store, rng, state)
    return {"env_steps": state["env_step"], "episodes": state["episode"],
            "updates": state["updates"], "final_eval": last_eval, "solved_at": state["solved_at"],
            "wall_s": round(time.perf_counter() - started, 2)}


def _checkpoint(path, agent, cfg, store, rng, state) -> None:
    store.flush()  # rows the checkpoint refers to must be durable before it is
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, agent, cfg, **{**state, "np_rng": rng.bit_generator.state,
                                         "online_ranges": [list(r) for r in state["online_ranges"]],
                                         "policy_version": state["updates"]})
