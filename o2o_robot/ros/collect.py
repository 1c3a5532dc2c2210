"""`o2o-robot demos collect`: record teleoperated demonstrations into the store, one process.

The graph is the one `collect_demos.launch.py` starts, with the same nodes and topics: the actor
node in mode "collect" (no policy: only the engaged operator acts, through the SafetyFilter and
the episode bookkeeping of fine-tuning; its rows are source "demo" and go to a `DemoRecorder`
that writes whole, labelled episodes), a teleop source, and the MuJoCo sim bridge (unless
`use_sim` is false: then the robot's drivers provide the topics and its `reset` service, if any).

Teleop sources:
  scripted  the sim task's expert (`scripted_teleop`), always engaged: demos without a person
  joy       `teleop_node` on the `joy` topic of a driver started elsewhere (`ros2 run joy
            joy_node`, a spacemouse driver) on the same ROS_DOMAIN_ID
  keyboard  this terminal (`keyboard_teleop`) through `teleop_node` with the keyboard profile

Collection runs in real time (`sim.lockstep` is ignored): a person is in the loop. Each episode
ends on success (the sim bridge presses the success button at a terminal success; on a robot the
operator's button), on the operator's failure button, or at `control.max_episode_steps`; a
summary line is printed for each. The run ends after `episodes` recorded episodes, on Ctrl-C, or
after `max_wall_s`; an unfinished episode is discarded.
"""
from __future__ import annotations

import sys
import threading
import time
from contextlib import ExitStack

import rclpy
from rclpy.parameter import Parameter

from o2o_robot.config import ConfigError, O2OConfig
from o2o_robot.ros.actor_node import ActorNode
from o2o_robot.ros.graph import Graph, catch_signals, restore_signals, supervise
from o2o_robot.teleop.recorder import DemoRecorder, episode_line

TELEOP_SOURCES = ("scripted", "joy", "keyboard")


def default_teleop(cfg: O2OConfig) -> str:
    """The teleop source `teleop.device` implies: scripted, keyboard, or joy (gamepad,
    spacemouse)."""
    return cfg.teleop.device if cfg.teleop.device in ("scripted", "keyboard") else "joy"


def collect_config(cfg: O2OConfig, teleop: str) -> O2OConfig:
    """`cfg` as collection runs it (a copy): real time; `--teleop joy` with a non-Joy device
    uses the gamepad profile."""
    if teleop not in TELEOP_SOURCES:
        raise ConfigError(f"--teleop: expected one of {', '.join(TELEOP_SOURCES)}, got {teleop!r}")
    cfg = cfg.model_copy(deep=True)
    cfg.sim.lockstep = False
    if teleop == "joy" and cfg.teleop.device not in ("gamepad", "spacemouse"):
        cfg.teleop.device = "gamepad"
    elif teleop == "keyboard":
        cfg.teleop.device = "keyboard"
    return cfg


def _teleop_nodes(cfg: O2OConfig, teleop: str, stack: ExitStack, **kw) -> list:
    if teleop == "scripted":
        from o2o_robot.ros.scripted_teleop_node import ScriptedTeleopNode

        return [ScriptedTeleopNode(cfg, parameter_overrides=[Parameter("mode", value="demo")], **kw)]
    from o2o_robot.ros.teleop_node import TeleopNode

    nodes = [TeleopNode(cfg, **kw)]
    if teleop == "keyboard":
        from o2o_robot.ros.keyboard_teleop import KeyboardTeleopNode, TerminalReader

        nodes.append(KeyboardTeleopNode(cfg, **kw))
        stack.enter_context(TerminalReader(nodes[-1].feed, on_end=nodes[-1].release))
    return nodes


def run_collect(cfg: O2OConfig, *, teleop: str = "scripted", episodes: int | None = None,
                use_sim: bool = True, progress: bool = True, max_wall_s: float | None = None,
                domain_id: int | None = None, namespace: str = "") -> dict:
    """Record demonstrations (module docstring); returns a summary. ConfigError for bad input
    (a keyboard without a terminal, a sim task the robot config does not fit); a StoreError
    when the store cannot be written (locked by a running learner, other dimensions)."""
    if episodes is not None and episodes < 1:
        raise ConfigError(f"--episodes: must be >= 1, got {episodes}")
    cfg = collect_config(cfg, teleop)
    if teleop == "keyboard" and not sys.stdin.isatty():
        from o2o_robot.ros.keyboard_teleop import NOT_A_TTY

        raise ConfigError(f"--teleop keyboard: {NOT_A_TTY}")
    spec = _sim_spec(cfg) if use_sim else None
    say = (lambda text: print(f"[demos] {text}", flush=True)) if progress else (lambda text: None)
    reports: list[dict] = []

    def on_episode(info: dict) -> None:
        reports.append(info)
        say(episode_line(info))

    recorder = DemoRecorder.for_config(cfg, spec=spec, max_episodes=episodes,
                                       on_episode=on_episode)
    context = rclpy.Context()
    graph, ended, stop = Graph(context, "collect"), "error", threading.Event()
    started = time.monotonic()
    handlers: dict = {}
    try:
        rclpy.init(context=context, domain_id=domain_id)
        kw = {"context": context, "namespace": namespace}
        handlers = catch_signals(stop.set)
        with ExitStack() as stack:
            try:
                others = []
                if use_sim:
                    from o2o_robot.ros.sim_bridge_node import SimBridgeNode

                    others.append(SimBridgeNode(cfg, **kw))
                others += _teleop_nodes(cfg, teleop, stack, **kw)
                actor = ActorNode(cfg, learner=recorder, latency_budget_share=None,
                                  parameter_overrides=[Parameter("mode", value="collect")], **kw)
            except ConfigError:
                raise
            except ValueError as exc:   # a Joy profile, expert or reward that does not fit
                raise ConfigError(str(exc)) from None
            graph.add(actor)
            for node in others:
                graph.add(node, group=1)
            graph.start()
            say(f"recording {episodes or 'unlimited'} episode(s) into {cfg.store.path} with "
                f"teleop {teleop}{f' ({cfg.teleop.device})' if teleop == 'joy' else ''}, "
                f"{'sim ' + repr(cfg.sim.task) if use_sim else 'the robot'}; Ctrl-C stops")
            ended = supervise(lambda: _check(recorder, episodes, started, max_wall_s), stop,
                              context)
    finally:
        graph.stop()
        final = recorder.close()
        restore_signals(handlers)
    say(f"{final['stored_episodes']} episode(s), {final['stored_rows']} transitions recorded "
        f"({final['successes']} successes) in {cfg.store.path}")
    return {"ended": ended, **final, "episodes": reports,
            "wall_s": round(time.monotonic() - started, 1)}


def _sim_spec(cfg: O2OConfig) -> dict:
    from o2o_robot.sim.envs import env_spec, make_env

    try:
        env = make_env(cfg.sim)
    except ValueError as exc:
        raise ConfigError(f"sim.task: {exc} (record from a robot with --no-sim)") from None
    try:
        return env_spec(env)
    finally:
        env.close()


def _check(recorder: DemoRecorder, episodes: int | None, started: float,
           max_wall_s: float | None) -> str | None:
    """One supervisor pass (a `graph.supervise` check): why the run ends, or None."""
    stats = recorder.stats()
    if episodes is not None and stats["stored_episodes"] >= episodes:
        return "episodes"
    if stats["state"] == "crashed":
        print(f"[demos] RECORDER CRASHED:\n{stats.get('error', '')}", file=sys.stderr)
        return "recorder_crashed"
    if max_wall_s is not None and time.monotonic() - started > max_wall_s:
        return "wall_time"
    return None


def cmd_demos_collect(args) -> int:
    """`o2o-robot demos collect`: exit 0 when the run ended normally, 1 when the store cannot be
    written or the recorder failed, 2 for bad input (ConfigError, via the CLI)."""
    import json

    from o2o_robot.config import load_config, resolve_config_path

    cfg = load_config(resolve_config_path(args.config or "sim_reach.yaml"))
    if args.store:
        cfg.store.path = args.store
    teleop = args.teleop or default_teleop(cfg)
    from o2o_robot.data.store import StoreError

    try:
        summary = run_collect(cfg, teleop=teleop, episodes=args.episodes, use_sim=not args.no_sim)
    except StoreError as exc:   # a bad or locked store: exit 1 (bad arguments exit 2)
        print(f"{cfg.store.path}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in summary.items() if k != "episodes"}, indent=2,
                     sort_keys=True, default=str))
    return 1 if summary["state"] == "crashed" else 0
