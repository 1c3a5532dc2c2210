"""`o2o-robot data import {minari,rosbag,hdf5}` and `o2o-robot data export`.

Exit codes as the rest of the CLI: 0 done, 1 a source file or store that cannot be used,
2 bad input (options, a source that does not fit the store, an import already done).
Nothing heavy is imported at module level: each format's package loads with its command.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from o2o_robot.data.schema import SOURCES

FORMATS = ("minari", "rosbag", "hdf5")


def add_data_commands(data) -> None:
    """Register `import` and `export` under the `data` subparsers of `o2o-robot`."""
    imp = data.add_parser("import", help="episodes from Minari, rosbag2 (MCAP/sqlite3) or HDF5 "
                                         "into a store").add_subparsers(dest="format", required=True)
    helps = {"minari": ("a local Minari dataset id, or its directory", {}),
             "rosbag": ("a rosbag2 directory (MCAP or sqlite3)", {}),
             "hdf5": ("an HDF5 file, D4RL layout (or robomimic's data/demo_*)", {})}
    for fmt in FORMATS:
        q = imp.add_parser(fmt, help=helps[fmt][0])
        q.add_argument("src", help=helps[fmt][0])
        q.add_argument("--store", required=True, help="target store (created when absent)")
        q.add_argument("--source", choices=("demo", "offline"), default="offline",
                       help="source recorded on every row (default: offline, for data of "
                       "unknown quality; demo for demonstrations; both are sampled on the demo side)")
        q.add_argument("--task", default=None,
                       help="task recorded in a new store's spec, which `train` checks against "
                       "sim.task (default: the source's: a Minari env id, an HDF5 file's "
                       "env_name attribute or else its file name)")
        q.add_argument("--force", action="store_true",
                       help="import again a source this store already holds")
        q.add_argument("--json", action="store_true", help="print the summary as JSON")
        q.set_defaults(fn=cmd_import)
    rb = imp.choices["rosbag"]
    rb.add_argument("--config", default=None, help="robot/control config the bag was recorded "
                    "with (default: the packaged sim_reach.yaml)")
    rb.add_argument("--action-topic", default="teleop/action",
                    help="Float64MultiArray topic giving the actions (e.g. the commands 'action')")
    rb.add_argument("--gap-s", type=float, default=2.0,
                    help="a silence of the action topic longer than this ends the episode")
    rb.add_argument("--namespace", default="", help="namespace the robot's topics were under")
    imp.choices["hdf5"].add_argument("--obs-keys", default=None,
                                     help="robomimic: observation keys, comma-separated, in order")

    q = data.add_parser("export", help="store episodes -> a local Minari dataset")
    q.add_argument("store")
    q.add_argument("--minari", required=True, metavar="NAME",
                   help="dataset id, e.g. my_robot/reach-demos-v0")
    q.add_argument("--source", action="append", choices=SOURCES, default=None,
                   help="source to export (repeatable; default: all)")
    q.add_argument("--author", default=None)
    q.add_argument("--description", default=None)
    q.set_defaults(fn=cmd_export)


def _source(args):
    if args.format == "minari":
        from o2o_robot.data.importers.minari_io import MinariSource

        return MinariSource(args.src)
    if args.format == "hdf5":
        from o2o_robot.data.importers.hdf5 import Hdf5Source

        keys = [k.strip() for k in args.obs_keys.split(",") if k.strip()] if args.obs_keys else None
        return Hdf5Source(args.src, obs_keys=keys)
    from o2o_robot.config import load_config, resolve_config_path
    from o2o_robot.ingest.rosbag import RosbagSource

    cfg = load_config(resolve_config_path(args.config or "sim_reach.yaml"))
    return RosbagSource(args.src, cfg, action_topic=args.action_topic, gap_s=args.gap_s,
                        namespace=args.namespace)


def _fail(exc: Exception) -> int:
    """Print `exc` as one line; its exit code (2 bad input, 1 unusable file or store)."""
    from o2o_robot.config import ConfigError
    from o2o_robot.data.importers.common import ImportInputError

    print(str(exc), file=sys.stderr)
    return 2 if isinstance(exc, (ImportInputError, ConfigError)) else 1


def cmd_import(args) -> int:
    from o2o_robot.config import ConfigError
    from o2o_robot.data.importers.common import ImportInputError, SourceFileError, run_import
    from o2o_robot.data.store import StoreError

    try:
        src = _source(args)
        if args.task:
            src.spec["task"] = args.task
        summary = run_import(src, args.store, source=args.source, force=args.force,
                             progress=True)
    except (ImportInputError, SourceFileError, StoreError, ConfigError) as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
        return 0
    s = summary
    ret = (f"; return mean {s['return_mean']:.3f} [{s['return_min']:.3f}, {s['return_max']:.3f}]"
           if s["return_mean"] is not None else "")
    print(f"imported {s['episodes']} episodes ({s['transitions']} transitions) from {s['source_path']} "
          f"into {s['store']} as {s['source']}{ret}")
    print(f"  rows labelled source={s['source']}, task {s['task']!r}"
          + ("; to label them as demonstrations, import into a new store with --source demo"
             if s["source"] != "demo" else ""))
    if s.get("resumed_after"):
        print(f"  resumed: the first {s['resumed_after']} of {s['episodes_in_source']} episodes "
              f"were already in the store")
    if s.get("closed_open_episode_rows"):
        print(f"  closed an open episode of {s['closed_open_episode_rows']} rows left by an "
              f"earlier writer")
    details = s.get("details") or {}
    if args.format == "rosbag" and details:
        print("  " + _bag_line(details))
    elif any(details.values()):
        print(f"  {args.format}: " + ", ".join(f"{k} {v}" for k, v in details.items()))
    return 0


def _bag_line(d: dict) -> str:
    core = d["core"]
    parts = [f"bag: {d['messages']} messages, {core['ticks']} ticks -> {core['transitions']} "
             f"transitions"]
    if core["hold_reasons"]:
        parts.append("holds " + ", ".join(f"{k} {v}" for k, v in sorted(core["hold_reasons"].items())))
    if d["cut_episodes"]:
        parts.append(f"{d['cut_episodes']} episode(s) ended by an action gap or the bag's end")
    if d.get("split_episodes"):   # a store episode is an unbroken run of steps
        parts.append(f"{d['split_episodes']} episode(s) split where a row was dropped")
    if d["dropped"]:   # messages the node would have dropped too (malformed, NaN, wrong size)
        parts.append("dropped messages " + ", ".join(
            f"{k} {n} ({d['drop_reasons'][k]})" for k, n in sorted(d["dropped"].items())))
    lost = {k: core[k] for k in ("dropped_stale", "dropped_reward") if core[k]}
    if lost:
        parts.append("transitions " + ", ".join(f"{k} {v}" for k, v in lost.items()))
    return "; ".join(parts)


def cmd_export(args) -> int:
    from o2o_robot.data.importers.common import ImportInputError
    from o2o_robot.data.store import StoreError

    if not Path(args.store).exists():
        print(f"{args.store}: no such store", file=sys.stderr)
        return 2
    try:
        from o2o_robot.data.importers.minari_io import export_minari

        out = export_minari(args.store, args.minari, sources=args.source, author=args.author,
                            description=args.description)
    except (ImportInputError, StoreError) as exc:
        return _fail(exc)
    split = f"; {out['split']} split where a row was dropped" if out["split"] else ""
    print(f"wrote Minari dataset {out['dataset_id']} ({out['episodes']} episodes, "
          f"{out['steps']} steps{split}) to {out['path']}")
    return 0
