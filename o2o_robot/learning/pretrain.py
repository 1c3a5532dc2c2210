"""`o2o-robot pretrain --config FILE [--steps N] [--run-dir D]`: offline pre-training alone.

For algorithms with an offline phase (OEMA: TD3+BC on the demonstrations), this runs it on the
store's demo-side rows (demo, intervention, offline) and writes `<run_dir>/checkpoints/latest.pt`,
the checkpoint that the next stage continues from without pre-training again:

* `o2o-robot train --config FILE --resume` (the ROS-free harness): the checkpoint holds the
  harness's resume state at env step 0 (same seeds and draws as `train` with the pre-training
  inside it, so the two give the same run);
* `o2o-robot finetune` / the robot learner: it loads `latest.pt` from its run dir at start.

Which rows: a store recorded from a sim task (its spec names the task), or no store yet, is
handled as `train` does (the sim task's spaces; scripted demos are generated when the store has
none); a store recorded on the robot (no task in its spec) is read with `robot`'s action bounds.
Either way the pre-training runs in `learning.core.LearnerCore`, the learning loop of `train` and
`finetune`, which writes the checkpoint; no row is added to the store.
`--steps N` replaces `algorithm.pretrain_steps`; pre-training then counts as finished, so a later
stage does not top it up to the config's value. An existing checkpoint is never overwritten.
"""
from __future__ import annotations

import time
from pathlib import Path

from o2o_robot.config import O2OConfig


class PretrainError(ValueError):
    """Bad input for `o2o-robot pretrain` (the CLI prints it and exits with 2)."""


def _sim_store(cfg: O2OConfig):
    """(cfg with the sim task's robot spec, open store with demos), as `o2o-robot train` does."""
    from o2o_robot.data.store import TransitionStore
    from o2o_robot.sim.demos import ensure_demos
    from o2o_robot.sim.envs import env_spec, make_env
    from o2o_robot.learning.harness import robot_for_env

    env = make_env(cfg.sim, max_episode_steps=cfg.control.max_episode_steps)
    try:
        spec = env_spec(env)
    finally:
        env.close()
    cfg = robot_for_env(cfg, spec)
    store = TransitionStore.open_or_create(cfg.store.path, spec["obs_dim"], spec["act_dim"],
                                           flush_every=cfg.store.flush_every, spec=spec)
    try:
        ensure_demos(store, cfg, label="pretrain")
    except BaseException:
        store.close()
        raise
    return cfg, store


def _robot_store(cfg: O2OConfig, store):
    robot = cfg.robot
    if (store.obs_dim, store.act_dim) != (robot.obs_dim, robot.act_dim):
        store.close()
        raise PretrainError(f"{cfg.store.path}: store has obs_dim {store.obs_dim}, act_dim "
                            f"{store.act_dim}; the config's robot has {robot.obs_dim}, "
                            f"{robot.act_dim}")
    return cfg, store


def _open(cfg: O2OConfig):
    from o2o_robot.data.store import TransitionStore

    path = Path(cfg.store.path)
    if path.exists():
        with TransitionStore.open(path, "r") as probe:
            recorded_on_robot = "task" not in (probe.spec or {})
        if recorded_on_robot:
            return _robot_store(cfg, TransitionStore.open(path, "a",
                                                          flush_every=cfg.store.flush_every))
    return _sim_store(cfg)


def run_pretrain(cfg: O2OConfig, *, steps: int | None = None, progress: bool = True) -> dict:
    """Pre-train the configured agent and write its checkpoint; returns a summary."""
    from o2o_robot.learning.core import CHECKPOINT, LearnerCore
    from o2o_robot.learning.threads import ThreadTuner
    from o2o_robot.runlog import RunLogger

    name = cfg.algorithm.name
    if not hasattr(cfg.algorithm, "pretrain_steps"):   # a config model field, not an agent probe
        raise PretrainError(f"algorithm.name: {name!r} has no offline pre-training "
                            f"(`o2o-robot pretrain` is for oema); train it directly")
    if steps is not None:
        if steps < 1:
            raise PretrainError(f"--steps: must be >= 1, got {steps}")
        cfg = cfg.model_copy(deep=True)
        cfg.algorithm.pretrain_steps = steps
    total = cfg.algorithm.pretrain_steps
    if total < 1:
        raise PretrainError(f"algorithm.pretrain_steps: is {total}: nothing to pre-train")
    run_dir = Path(cfg.train.run_dir)
    ckpt_path = run_dir / CHECKPOINT
    if ckpt_path.exists():
        raise PretrainError(f"{ckpt_path}: a checkpoint exists already; pre-training would "
                            f"replace it (use another --run-dir, or remove it)")
    ThreadTuner(cfg.learner.torch_threads)   # chosen once: pre-training is short
    cfg, store = _open(cfg)
    logger = None
    try:
        core = LearnerCore.open(cfg, store, run_dir, resume=False)
        if core.mirror.size("offline") == 0:
            raise PretrainError(f"{cfg.store.path}: no demo, intervention or offline rows to "
                                f"pre-train on")
        logger = RunLogger(run_dir)
        every = max(1000, (total // 10) // 1000 * 1000)

        def log(step: int, metrics: dict) -> None:
            logger.log("pretrain", step, metrics)
            if step % every == 0 or step == total:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                print(f"[pretrain] {step}/{total}: {shown}", flush=True)

        started = time.perf_counter()
        metrics = core.pretrain(progress=progress, log=log)   # checkpoints at env step 0
        wall = time.perf_counter() - started
    finally:
        store.close()
        if logger is not None:
            logger.close()
    return {"algorithm": name, "pretrain_steps": core.agent.pretrain_steps_done,
            "demo_side_rows": core.mirror.size("offline"), "checkpoint": str(ckpt_path),
            "wall_s": round(wall, 2), "ms_per_step": round(1000 * wall / max(total, 1), 3),
            "final_metrics": metrics}
