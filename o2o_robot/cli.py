"""`o2o-robot` command: a table of contents; each subcommand imports what it needs lazily.

Exit codes: 0 success, 1 the checked thing is bad (inconsistent or damaged store, a disk that
refuses a write, unusable policy), 2 bad input (arguments, config file), 141 stdout closed by
its reader (`... | head`; 128 + SIGPIPE, what a shell reports for a C tool killed by the
signal) without a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from o2o_robot.config import ConfigError, load_config, resolve_config_path

DEFAULT_CONFIG = "sim_reach.yaml"
RUN_DIR_HELP = ("override train.run_dir; a store configured inside the run dir moves with it "
                "(O2OConfig.with_run_dir)")


class CliError(Exception):
    """Bad input on the command line; printed without a traceback, exit 2."""


def _config(path: str | None):
    return load_config(resolve_config_path(path or DEFAULT_CONFIG))


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# ------------------------------------------------------------------------------------ config
def cmd_config_validate(args) -> int:
    """The start-up checks of `finetune` and the actor node (`learning.preflight`), reported."""
    from o2o_robot.learning.preflight import startup_checks

    path = resolve_config_path(args.file)   # a file name also finds the packaged configs
    cfg = load_config(path)
    found = startup_checks(cfg, str(path), sim=args.sim, demos=False)
    spec = found["spec"]
    task = f"task {spec['task']}: " if spec["task"] else ""
    print(f"{path}: ok ({task}obs_dim {spec['obs_dim']}, act_dim {spec['act_dim']}, "
          f"algorithm {cfg.algorithm.name}, reward {cfg.control.reward.source}; {found['store']})")
    print(f"  sim: {found['sim']}")
    if cfg.robot.cameras:
        print("  cameras: " + ", ".join(
            f"{c.name} ({c.type} on {c.topic}, {c.width}x{c.height}x{c.channels}, "
            f"{c.frame_stack} frames)" for c in cfg.robot.cameras))
    print(f"  {found['demos']}")
    return 0


def cmd_config_show(args) -> int:
    import yaml

    cfg = load_config(resolve_config_path(args.file))
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


# -------------------------------------------------------------------------------------- data
def _open_store(path: str):
    from o2o_robot.data.store import TransitionStore

    if not Path(path).exists():
        raise CliError(f"{path}: no such store")
    return TransitionStore.open(path, "r")


def cmd_data_info(args) -> int:
    info = _open_store(args.store).info()
    if args.json:
        _print_json(info)
        return 0
    print(f"store {info['path']} (schema v{info['schema_version']}): obs_dim {info['obs_dim']}, "
          f"act_dim {info['act_dim']}")
    print(f"  {info['rows']} transitions, {info['episodes']} episodes"
          + (f", {info['open_episode_rows']} rows in an open episode"
             if info.get("open_episode_rows") else ""))
    task = info.get("spec", {}).get("task")
    if task:
        print(f"  task {task}")
    for source, s in info["sources"].items():
        ret = (f", return mean {s['return_mean']:.3f} [{s['return_min']:.3f}, "
               f"{s['return_max']:.3f}]" if s.get("return_mean") is not None else "")
        print(f"  {source:12s} {s['transitions']:8d} transitions {s['episodes']:6d} episodes{ret}")
    for name, cam in info.get("cameras", {}).items():
        h, w, c = cam["shape"]
        disk = cam["disk_bytes_per_frame"]
        print(f"  camera {name}: {h}x{w}x{c} uint8, {cam['frames']} frames + {cam['end_frames']} "
              f"episode end frames, {cam['raw_bytes_per_frame']} bytes/frame raw"
              + (f", {disk:.0f} bytes/frame on disk" if disk is not None else ""))
    return 0


def cmd_data_validate(args) -> int:
    from o2o_robot.data.store import StoreError

    try:
        problems = _open_store(args.store).validate()
    except StoreError as exc:  # a store too damaged to open is inconsistent, not bad input
        problems = [str(exc)]
    if problems:
        for problem in problems:
            print(f"{args.store}: {problem}", file=sys.stderr)
        return 1
    print(f"{args.store}: consistent")
    return 0


def cmd_data_repair(args) -> int:
    from o2o_robot.data.store import repair

    if not Path(args.store).exists():
        raise CliError(f"{args.store}: no such store")
    result = repair(args.store)   # StoreCorruptError (exit 1) when it cannot
    if not result["repaired"]:
        print(f"{args.store}: consistent, nothing to repair ({result['rows']} rows, "
              f"{result['episodes']} episodes)")
        return 0
    print(f"{args.store}: rebuilt the commit marker from the arrays: {result['rows']} rows, "
          f"{result['episodes']} episodes, checksums recorded")
    return 0


# ------------------------------------------------------------------------------------- demos
def cmd_demos_generate(args) -> int:
    from o2o_robot.config import camera_shapes
    from o2o_robot.data.store import TransitionStore
    from o2o_robot.sim.demos import generate_demos
    from o2o_robot.sim.envs import env_spec, make_env, observation_topics

    cfg = _config(args.config)
    sim_cfg = cfg.sim.model_copy(update={"task": args.task} if args.task else {})
    noise = cfg.teleop.expert_noise if args.noise is None else args.noise
    if args.episodes < 1:
        raise CliError(f"--episodes: must be >= 1, got {args.episodes}")
    if noise < 0:
        raise CliError(f"--noise: must be >= 0, got {noise}")
    try:
        env = make_env(sim_cfg)
        spec = env_spec(env)
        if cfg.robot.cameras:   # the frames come from the sim's cameras: can it render them?
            observation_topics(cfg.robot, env, sim_cfg)
    except ValueError as exc:  # unknown task id, unsupported spaces: named in the message
        raise CliError(str(exc)) from None
    store = TransitionStore.open_or_create(args.store, spec["obs_dim"], spec["act_dim"],
                                           flush_every=cfg.store.flush_every, spec=spec,
                                           cameras=camera_shapes(cfg) or None)
    with store:   # Ctrl-C: the whole episodes written so far are committed, and recorded
        summary = generate_demos(store, sim_cfg, episodes=args.episodes, noise=noise,
                                 seed=args.seed, max_episode_steps=cfg.control.max_episode_steps,
                                 progress=True, cameras=cfg.robot.cameras)
    done = summary["resumed_from"]
    old = summary["replaced"]
    if old:
        print(f"note: an earlier interrupted generation ({old['episodes_done']} of "
              f"{old['episodes']} episodes, seed {old['seed']}, noise {old['noise']}) is left "
              f"as it was", file=sys.stderr)
    print(f"wrote {summary['episodes']} demo episodes ({summary['transitions']} transitions, "
          f"success {summary['success_rate']:.0%}, mean return {summary['mean_return']:.3f}) "
          f"to {args.store}" + (f", completing an interrupted generation ({done} of "
                                f"{args.episodes} were there)" if done else ""))
    return 0


def cmd_demos_collect(args) -> int:
    from o2o_robot.ros.collect import cmd_demos_collect as run  # rclpy: only for this command

    return run(args)


# ------------------------------------------------------------------------------ train, policy
def _passive_omp_for(cfg) -> None:
    """torch_threads auto: OMP_WAIT_POLICY=PASSIVE before torch loads (learning/threads.py)."""
    if cfg.learner.torch_threads == "auto":
        from o2o_robot.learning.threads import prefer_passive_omp

        prefer_passive_omp()


def cmd_train(args) -> int:
    cfg = _config(args.config).with_run_dir(args.run_dir)
    _passive_omp_for(cfg)
    from o2o_robot.learning.harness import train
    from o2o_robot.learning.preflight import learner_spec

    learner_spec(cfg, str(resolve_config_path(args.config or DEFAULT_CONFIG)))  # sim.task exists
    if args.steps:
        cfg.train.total_env_steps = args.steps
    result = train(cfg, resume=args.resume)
    _print_json(result)
    return 0


def cmd_pretrain(args) -> int:
    cfg = _config(args.config).with_run_dir(args.run_dir)
    _passive_omp_for(cfg)
    from o2o_robot.learning.pretrain import PretrainError, run_pretrain

    try:
        summary = run_pretrain(cfg, steps=args.steps)
    except PretrainError as exc:
        raise CliError(str(exc)) from None
    _print_json(summary)
    print(f"next: o2o-robot train --config {args.config or DEFAULT_CONFIG} --resume"
          + (f" --run-dir {args.run_dir}" if args.run_dir else "")
          + " (or o2o-robot finetune with the same run dir)", file=sys.stderr)
    return 0


def cmd_finetune(args) -> int:
    from o2o_robot.ros.finetune import cmd_finetune as run  # rclpy: only for this command

    return run(args)


def cmd_fleet(args) -> int:
    from o2o_robot.ros.fleet import cmd_fleet as run  # rclpy: only for this command

    return run(args)


def cmd_export(args) -> int:
    from o2o_robot.policy.tools import export_checkpoint

    if not Path(args.checkpoint).exists():
        raise CliError(f"{args.checkpoint}: no such checkpoint")
    _print_json(export_checkpoint(args.checkpoint, args.output))
    return 0


def cmd_policy_check(args) -> int:
    from o2o_robot.policy.runtime import LATENCY_BUDGET_SHARE, PolicyRejected
    from o2o_robot.policy.tools import check_policy

    robot = budget = None
    if args.config:    # that robot's sizes and bounds, and the latency budget of its rate
        cfg = _config(args.config)
        robot, budget = cfg, LATENCY_BUDGET_SHARE / cfg.control.control_rate_hz
    if not Path(args.policy).is_file():
        raise CliError(f"{args.policy}: no such file")
    try:
        report = check_policy(args.policy, checkpoint=args.checkpoint, robot=robot,
                              latency_budget_s=budget)
    except PolicyRejected as exc:
        print(f"{args.policy}: unusable: {exc.reason}", file=sys.stderr)
        return 1
    if args.json:
        _print_json(report)
    else:
        for key, value in report.items():
            print(f"{key}: {json.dumps(value, default=str) if isinstance(value, (dict, list)) else value}")
    if report.get("parity", {}).get("ok") is False:
        print(f"{args.policy}: does not match {args.checkpoint}: max abs error "
              f"{report['parity']['max_abs_error']} > {report['parity']['tolerance']}",
              file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="o2o-robot", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    cfg = sub.add_parser("config", help="validate or show a config file").add_subparsers(
        dest="action", required=True)
    q = cfg.add_parser("validate", help="the start-up checks of finetune and the actor node "
                       "(a reward function is imported and probed, the store checked): exit 0 "
                       "when they pass, else 2 naming the key")
    q.add_argument("file")
    q.add_argument("--sim", action="store_true", help="also require that o2o-robot finetune "
                   "(the MuJoCo sim bridge) can run the robot section (else only reported)")
    q.set_defaults(fn=cmd_config_validate)
    q = cfg.add_parser("show", help="print the resolved config")
    q.add_argument("file")
    q.set_defaults(fn=cmd_config_show)

    data = sub.add_parser("data", help="inspect, import into, export a transition store").add_subparsers(
        dest="action", required=True)
    q = data.add_parser("info", help="transitions/episodes per source, spec, returns")
    q.add_argument("store")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_data_info)
    q = data.add_parser("validate", help="exit 0 when consistent (every chunk checked against "
                        "its checksum), else 1 naming each problem")
    q.add_argument("store")
    q.set_defaults(fn=cmd_data_validate)
    q = data.add_parser("repair", help="rebuild a lost or wrong commit marker from the arrays, "
                        "keeping every row; exit 1 saying why where they are not consistent")
    q.add_argument("store")
    q.set_defaults(fn=cmd_data_repair)
    from o2o_robot.ingest.cli import add_data_commands  # import, export (argparse only)

    add_data_commands(data)

    demos = sub.add_parser("demos", help="demonstrations").add_subparsers(dest="action",
                                                                         required=True)
    q = demos.add_parser("generate", help="scripted-expert demos of a sim task into a store; "
                         "the same command after an interruption completes it")
    q.add_argument("--task", default=None, help="sim task (default: the config's sim.task)")
    q.add_argument("--episodes", type=int, required=True)
    q.add_argument("--store", required=True)
    q.add_argument("--noise", type=float, default=None, help="action noise (x bound)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--config", default=None)
    q.set_defaults(fn=cmd_demos_generate)
    q = demos.add_parser("collect", help="record teleoperated demos (gamepad, spacemouse, "
                         "keyboard or the scripted expert) into the store, in sim or on a robot")
    q.add_argument("--config", default=None,
                   help=f"config file (default: the packaged {DEFAULT_CONFIG})")
    q.add_argument("--teleop", choices=("joy", "keyboard", "scripted"), default=None,
                   help="teleop source (default: from teleop.device); joy = a Joy driver "
                   "started elsewhere, with the teleop.device profile (gamepad if not a Joy device)")
    q.add_argument("--episodes", type=int, default=None,
                   help="stop after this many recorded episodes (default: until Ctrl-C)")
    q.add_argument("--store", default=None, help="override store.path")
    q.add_argument("--no-sim", action="store_true",
                   help="do not start the sim bridge: record from the robot's topics")
    q.set_defaults(fn=cmd_demos_collect)

    q = sub.add_parser("finetune", help="sim bridge + actor + learner: fine-tune in simulation")
    q.add_argument("--config", default=None,
                   help=f"config file (default: the packaged {DEFAULT_CONFIG})")
    q.add_argument("--run-dir", default=None, help=RUN_DIR_HELP)
    q.add_argument("--steps", type=int, default=None, help="override train.total_env_steps")
    q.add_argument("--lockstep", action="store_true",
                   help="step the sim once per action, paced by the learner (fast, for tests)")
    q.add_argument("--resume", action="store_true",
                   help="continue the run in the run dir from its last checkpoint (a run dir "
                   "that holds a run is refused without it)")
    q.set_defaults(fn=cmd_finetune)

    q = sub.add_parser("fleet", help="a sim fleet: N sim bridges and actor nodes, one learner "
                       "node, as separate processes (docs/fleet.md)")
    q.add_argument("--config", default=None,
                   help=f"config file (default: the packaged {DEFAULT_CONFIG})")
    q.add_argument("--robots", type=int, required=True, help="number of simulated robots")
    q.add_argument("--run-dir", default=None, help=RUN_DIR_HELP)
    q.add_argument("--steps", type=int, default=None,
                   help="override train.total_env_steps (all robots together)")
    q.add_argument("--max-wall-s", type=float, default=None, help="stop after this many seconds")
    q.set_defaults(fn=cmd_fleet)

    q = sub.add_parser("train", help="ROS-free training harness on a sim task")
    q.add_argument("--config", default=None)
    q.add_argument("--run-dir", default=None, help=RUN_DIR_HELP)
    q.add_argument("--steps", type=int, default=None, help="override train.total_env_steps")
    q.add_argument("--resume", action="store_true", help="continue from the run dir's checkpoint")
    q.set_defaults(fn=cmd_train)

    q = sub.add_parser("pretrain", help="offline pre-training on the store's demonstrations "
                       "(OEMA's TD3+BC) -> run_dir/checkpoints/latest.pt")
    q.add_argument("--config", default=None)
    q.add_argument("--run-dir", default=None, help=RUN_DIR_HELP)
    q.add_argument("--steps", type=int, default=None, help="override algorithm.pretrain_steps")
    q.set_defaults(fn=cmd_pretrain)

    q = sub.add_parser("export", help="checkpoint -> validated ONNX policy")
    q.add_argument("checkpoint")
    q.add_argument("-o", "--output", required=True)
    q.set_defaults(fn=cmd_export)

    pol = sub.add_parser("policy", help="ONNX policies").add_subparsers(dest="action",
                                                                      required=True)
    q = pol.add_parser("check", help="spec, metadata, parity, latency; exit 1 if unusable")
    q.add_argument("policy")
    q.add_argument("--config", default=None, help="check against this robot config: its obs and "
                   "action sizes and bounds, and the p99 latency budget of its control rate "
                   "(as the actor node does before a swap)")
    q.add_argument("--checkpoint", default=None)
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_policy_check)
    return p


def _input_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean bad input (printed as one line, exit 2), not a bug."""
    errors: list[type[Exception]] = [ConfigError, CliError]
    if "o2o_robot.data.store" in sys.modules:
        errors.append(sys.modules["o2o_robot.data.store"].StoreError)
    return tuple(errors)


def _bad_thing_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean the checked thing is bad (one line, exit 1): a damaged store, a
    write the disk refused."""
    store = sys.modules.get("o2o_robot.data.store")
    return (store.StoreCorruptError, store.StoreWriteError) if store else ()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.fn(args) or 0)
        sys.stdout.flush()   # a reader gone early shows here, not in the interpreter's exit flush
        return code
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush of what is still buffered
        # cannot raise a second BrokenPipeError at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        if isinstance(exc, _bad_thing_errors()):
            print(str(exc), file=sys.stderr)
            return 1
        if not isinstance(exc, _input_errors()):
            raise
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

if __name__ == "__main__":
    sys.exit(main())
