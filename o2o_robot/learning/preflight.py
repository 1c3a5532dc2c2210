"""Start-up checks: what `o2o-robot finetune`, `train` and the actor node would otherwise fail
on after they started (a traceback, or a learner that silently never updates), as one-line
`ConfigError`s that name the file and the key. `o2o-robot config validate` runs the same
functions, so a config it accepts gets past them.

`startup_checks(cfg, label, sim=...)` runs them in order:

1. `control.reward.function`: imported and probed, as the actor node does at start.
2. the control stack: the observation assembler, safety filter and episode tracker built from
   the config, as `ControlCore` builds them (a catch-all behind the config's own validators);
   and the learner's inputs (`check_learner_inputs`): cameras only for an algorithm that takes
   them, an `algorithm.pretrained_encoder` file that exists (its content is checked when the
   agent is built, with torch).
3. the learner's spec (`learner_spec`): `sim.task` must exist; a gymnasium task brings its own.
4. with `sim` (`o2o-robot finetune` runs the MuJoCo sim bridge): the robot section must be one
   the sim can serve, and the scripted operator (`teleop.intervene_every`) needs an expert.
5. `store.path`, when it exists: its dims (and task) must fit the spec.
6. demonstrations (`check_demos`): when the learner needs demo-side rows
   (`O2OConfig.demo_rows_reason`) the store must have some, or (`generate`) `finetune`/`train`
   must be able to generate scripted ones. The actor node generates none.
"""
from __future__ import annotations

from pathlib import Path

from o2o_robot.config import ConfigError, O2OConfig
from o2o_robot.data.schema import OFFLINE_SIDE
from o2o_robot.sim.demos import check_store_spec, missing_demos
from o2o_robot.sim.envs import REACH_TASK, env_spec, make_env, observation_topics
from o2o_robot.sim.experts import has_expert


def check_reward_function(cfg: O2OConfig, label: str) -> None:
    """Import and probe `control.reward.function` as the actor node does at start."""
    from o2o_robot.control.rewards import RewardFunctionError, load_reward_function

    reward = cfg.control.reward
    if reward.source != "function":
        return
    try:
        load_reward_function(reward.function, cfg.robot.obs_dim, cfg.robot.act_dim)
    except RewardFunctionError as exc:
        raise ConfigError(f"{label}: {exc}") from None


def check_control(cfg: O2OConfig, label: str) -> None:
    """Build what `ControlCore` builds from the config (no reward source: checked above)."""
    from o2o_robot.control.episode import EpisodeTracker
    from o2o_robot.control.observation import ObservationAssembler
    from o2o_robot.control.safety import SafetyFilter

    try:
        ObservationAssembler(cfg.robot)
        SafetyFilter(cfg.robot.action.low, cfg.robot.action.high,
                     max_delta_per_tick=cfg.safety.max_delta_per_tick, hold=cfg.safety.hold)
        EpisodeTracker(cfg.control.max_episode_steps)
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}") from None


def check_learner_inputs(cfg: O2OConfig, label: str) -> None:
    """Cameras only for an algorithm with a pixel variant; the pretrained encoder file exists."""
    from o2o_robot.agents.base import PIXEL_ALGORITHMS   # no torch at import
    from o2o_robot.spaces import camera_specs

    try:
        cameras = camera_specs(cfg.robot)
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    name = cfg.algorithm.name
    if cameras and name not in PIXEL_ALGORITHMS:
        raise ConfigError(f"{label}: algorithm.name: {name} does not take camera observations "
                          f"(robot.cameras has {len(cameras)}); use one of {list(PIXEL_ALGORITHMS)}")
    encoder = getattr(cfg.algorithm, "pretrained_encoder", None)   # RLPD's key only
    if encoder is not None and not Path(encoder).expanduser().is_file():
        raise ConfigError(f"{label}: algorithm.pretrained_encoder: {encoder} does not exist "
                          f"(nothing is downloaded)")


def _env(cfg: O2OConfig, label: str):
    try:
        return make_env(cfg.sim)
    except (ValueError, RuntimeError) as exc:   # unknown task id, missing dependency
        raise ConfigError(f"{label}: {exc}") from None


def learner_spec(cfg: O2OConfig, label: str) -> dict:
    """The obs/action spec the learner uses: a gymnasium `sim.task` brings its own, which
    replaces the robot section in `train` (harness.robot_for_env); with 'reach' it is the robot
    section's (the sim arm, or a real robot's config), task None."""
    env = _env(cfg, label)
    try:
        if cfg.sim.task == REACH_TASK:
            return {"task": None, "obs_dim": cfg.robot.obs_dim, "act_dim": cfg.robot.act_dim}
        return env_spec(env)
    finally:
        env.close()


def sim_problem(cfg: O2OConfig) -> str | None:
    """Why the sim bridge of `o2o-robot finetune` cannot run this config (None: it can)."""
    env = make_env(cfg.sim)
    try:
        observation_topics(cfg.robot, env, cfg.sim)
        if cfg.teleop.intervene_every and not has_expert(env):
            return (f"teleop.intervene_every: task {cfg.sim.task!r} has no scripted expert to "
                    f"intervene with (only 'reach' has one)")
    except ValueError as exc:
        return f"{exc} (the sim task is sim.task {cfg.sim.task!r})"
    finally:
        env.close()
    return None


def check_store(cfg: O2OConfig, label: str, spec: dict) -> tuple[str, int | None]:
    """(summary, demo-side rows) of an existing `store.path` checked against `spec`
    (ConfigError naming both); rows None when there is no store yet."""
    from o2o_robot.data.store import StoreError, TransitionStore

    path = cfg.store.path
    if not Path(path).exists():
        return f"store {path} not created yet", None
    try:
        with TransitionStore.open(path, "r") as store:
            check_store_spec(store, spec)
            counts, rows = store.counts(), store.info()["rows"]
    except (ValueError, StoreError) as exc:   # StoreError: a damaged store, named in the message
        raise ConfigError(f"{label}: store.path {path}: {exc}") from None
    demo_rows = sum(counts[s]["transitions"] for s in OFFLINE_SIDE)
    return f"store {path} fits, {rows} rows ({demo_rows} demo-side)", demo_rows


def check_demos(cfg: O2OConfig, label: str, demo_rows: int | None, *,
                generate: bool) -> str:
    """ConfigError (`sim.demos.missing_demos`) when the learner needs demo-side rows, the store
    has none, and they cannot be generated here; else a summary. `generate`: the caller is
    `finetune`/`train`, which generate scripted demos when the sim task has an expert and the
    sim can run the robot section; the actor node generates none."""
    reason = cfg.demo_rows_reason()
    if reason is None:
        return "demonstrations: not needed (online rows only)"
    if demo_rows:
        return f"demonstrations: {demo_rows} rows"
    expert = cfg.sim.task == REACH_TASK and sim_problem(cfg) is None
    if generate and expert and cfg.train.demo_episodes > 0:
        return (f"demonstrations: none yet; {cfg.train.demo_episodes} scripted episodes are "
                f"generated at start")
    if not generate:
        why = "the actor node generates none"
    elif not expert:
        why = (f"task {cfg.sim.task!r} has no scripted expert to generate them (only 'reach' "
               f"has one)" if cfg.sim.task != REACH_TASK else
               "the sim cannot run this robot section to generate them")
    else:
        why = "train.demo_episodes is 0: set it > 0 to generate scripted ones"
    raise ConfigError(f"{label}: {missing_demos(cfg, why, expert=expert)}")


def check_robot_learner(cfg: O2OConfig, label: str) -> None:
    """The actor node's learner (`ros2 launch`): `store.path` must fit the robot section and,
    since nothing generates demonstrations there, hold the demo-side rows it needs."""
    spec = {"task": None, "obs_dim": cfg.robot.obs_dim, "act_dim": cfg.robot.act_dim}
    _, demo_rows = check_store(cfg, label, spec)
    check_demos(cfg, label, demo_rows, generate=False)


def startup_checks(cfg: O2OConfig, label: str, *, sim: bool, demos: bool = True) -> dict:
    """Everything of the module docstring; ConfigError at the first problem. Returns the
    learner's spec and one summary line per check ("store", "demos", "sim").

    `sim`: the caller runs the sim bridge (`finetune`): a robot section it cannot serve is an
    error, else only reported. `demos`: missing demonstrations are an error (a session about
    to start), else reported (`config validate`: the config is fine, the store not ready yet)."""
    check_reward_function(cfg, label)
    check_control(cfg, label)
    check_learner_inputs(cfg, label)
    spec = learner_spec(cfg, label)
    problem = sim_problem(cfg)
    if sim and problem:
        raise ConfigError(f"{label}: {problem}; o2o-robot finetune runs the MuJoCo sim, a robot "
                          f"config runs with ros2 launch o2o_robot finetune.launch.py")
    store, demo_rows = check_store(cfg, label, spec)
    try:
        demo_line = check_demos(cfg, label, demo_rows, generate=True)
    except ConfigError as exc:
        if demos:
            raise
        demo_line = "demonstrations: NOT READY: " + str(exc).removeprefix(f"{label}: ")
    return {"spec": spec, "store": store, "demos": demo_line,
            "sim": f"the sim bridge cannot run it: {problem}" if problem else
            f"the sim bridge runs it (task {cfg.sim.task})"}
