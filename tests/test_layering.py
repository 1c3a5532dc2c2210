"""Import layering (DESIGN.md "Layout", STYLE.md rule 2), checked two ways:
* statically: every module of the package is parsed with `ast` (files added later included)
  and its imports, nested and lazy ones too, are checked against the rules below;
* dynamically: importing the numpy-side data modules in a fresh interpreter must not pull in
  torch or rclpy, even transitively.

Two kinds of static rule:
* third-party: which package may import rclpy, zarr, torch, onnxruntime, mujoco (FORBIDDEN,
  ONLY_IN);
* internal: DESIGN's one-way order `config` -> `agents`, `data` -> `policy`, `control` ->
  `learning`, `sim`, `teleop` -> `ros`, `cli`, as tiers (TIERS). Every first-level module or
  subpackage of o2o_robot has a tier, and a module may import
    - its own first-level package (data/store imports data/schema),
    - the root package `o2o_robot` (its __init__ imports nothing of the project),
    - any package of a lower tier,
    - a package of its own tier only where SAME_TIER_ALLOWED names the pair and the file:
      packages DESIGN puts side by side are independent unless the code needs the edge.
  The tiers, and where the ones DESIGN does not name come from:
    0  config, fsutil, runlog, spaces,  import nothing of the project (fsutil: atomic writes,
       launch_support                   runlog: metrics/plots, spaces: ActionScaler,
                                        launch_support: what launch files share), so they
                                        sit with config; they do not import each other either
    1  agents, data                     independent: neither imports the other
    2  policy, control                  independent; policy may use agents (checkpoints)
    3  learning, sim, teleop, ingest    ingest (rosbag replay + `data import`) is "above
                                        control/". Within the tier only sim is used by others:
                                        learning's harness/pretrain run sim envs, preflight
                                        checks a config against them (LearnerCore,
                                        the worker and the batch plan never do: LearnerCore
                                        has no env) and teleop's scripted operators drive the
                                        sim's experts. sim imports none of the others.
    4  ros                              the only rclpy importers
    5  cli, __main__                    the entry points; they dispatch into ros (ros never
                                        imports cli)
"""
from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "o2o_robot"

# (package-relative path prefix, forbidden top-level modules). A prefix ending in "/" is a
# folder; otherwise it is one file.
FORBIDDEN: list[tuple[str, set[str]]] = [
    ("agents/", {"rclpy", "zarr", "onnxruntime", "mujoco"}),   # pure learning math: torch only
    ("data/", {"rclpy", "torch", "onnxruntime", "mujoco"}),    # numpy (+ zarr in store.py)
    ("control/", {"rclpy", "torch", "mujoco"}),                # ROS-agnostic, no GPU on the tick
    ("policy/runtime.py", {"torch"}),                          # onnxruntime only
    ("policy/slot.py", {"torch"}),
]
# (top-level module, the only places allowed to import it)
ONLY_IN: list[tuple[str, tuple[str, ...]]] = [
    ("rclpy", ("ros/",)),
    ("zarr", ("data/store/zarr_io.py",)),
]
# Internal: o2o_robot.ros drags rclpy along, so only the top of the stack may import it.
ROS_IMPORTERS = ("ros/", "cli.py", "__main__.py")

# Internal layering (module docstring): first-level module or subpackage -> tier.
TIERS: dict[str, int] = {
    "__init__": 0, "config": 0, "fsutil": 0, "runlog": 0, "spaces": 0, "launch_support": 0,
    "agents": 1, "data": 1,
    "policy": 2, "control": 2,
    "learning": 3, "sim": 3, "teleop": 3, "ingest": 3,
    "ros": 4,
    "cli": 5, "__main__": 5,
}
# (importer, imported) of the same tier -> the files (path prefixes) that may make that import.
SAME_TIER_ALLOWED: dict[tuple[str, str], tuple[str, ...]] = {
    ("learning", "sim"): ("learning/harness.py", "learning/pretrain.py", "learning/preflight.py"),
    ("teleop", "sim"): ("teleop/scripted.py",),
}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute dotted names imported anywhere in `path` (relative imports resolved), skipping
    `if TYPE_CHECKING:` blocks; `importlib.import_module("x")` / `__import__("x")` count too."""
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:                                   # from ..x import y
                base = parts[:len(parts) - node.level]
                if rel.name == "__init__":
                    base = parts[:len(parts) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Name) and node.func.id == "__import__")
                   or (isinstance(node.func, ast.Attribute)
                       and node.func.attr == "import_module"))):
            found.add(node.args[0].value)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


def package_modules(pkg: Path = PKG) -> list[tuple[str, set[str]]]:
    """(path relative to the package, with "/" separators, imported names) for every module."""
    return [(p.relative_to(pkg).as_posix(), imported_modules(p, root=pkg.parent))
            for p in sorted(pkg.rglob("*.py")) if "__pycache__" not in p.parts]


def first_level(pkg: Path = PKG) -> set[str]:
    """Names of the package's first-level modules and subpackages ("__init__" for the root)."""
    return ({p.stem for p in pkg.glob("*.py")}
            | {d.name for d in pkg.iterdir() if (d / "__init__.py").is_file()})


def _top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names if n}


def violations(modules: list[tuple[str, set[str]]]) -> list[str]:
    """Every broken rule, one line each, for (package-relative path, imported names) pairs."""
    problems = []
    for rel, names in modules:
        top = _top(names)
        for prefix, banned in FORBIDDEN:
            if rel.startswith(prefix):
                problems += [f"{rel} imports {m} (not allowed under {prefix})"
                             for m in sorted(top & banned)]
        for mod, allowed in ONLY_IN:
            if mod in top and not rel.startswith(allowed):
                problems.append(f"{rel} imports {mod} (only {', '.join(allowed)} may)")
        if (any(n == "o2o_robot.ros" or n.startswith("o2o_robot.ros.") for n in names)
                and not rel.startswith(ROS_IMPORTERS)):
            problems.append(f"{rel} imports o2o_robot.ros (only {', '.join(ROS_IMPORTERS)} may)")
    return problems


def _owner(rel: str) -> str:
    """The first-level module or subpackage a package-relative path belongs to."""
    return rel.split("/")[0].removesuffix(".py")


def _internal_targets(names: set[str]) -> dict[str, list[str]]:
    """First-level package -> the imported names that reach it (`from a.b import c` gives
    `a.b` and `a.b.c`: only the shortest, `a.b`, is kept). Attributes of the root package
    (`from o2o_robot import __version__`) count as the root, "__init__"."""
    inner = {n for n in names if n.startswith("o2o_robot.")}
    shortest = [n for n in sorted(inner)
                if not any(n.startswith(m + ".") for m in inner if m != n)]
    out: dict[str, list[str]] = {}
    for n in shortest:
        head = n.split(".")[1]
        out.setdefault("__init__" if head.startswith("__") and head not in TIERS else head,
                       []).append(n)
    return out


def layer_violations(modules: list[tuple[str, set[str]]]) -> list[str]:
    """Every import against the internal order (TIERS, SAME_TIER_ALLOWED), one line each."""
    problems = []
    for rel, names in modules:
        src = _owner(rel)
        if src not in TIERS:
            problems.append(f"{rel}: '{src}' has no tier (add it to TIERS)")
            continue
        for dst, reached in sorted(_internal_targets(names).items()):
            if dst in (src, "__init__"):
                continue
            if dst not in TIERS:
                problems += [f"{rel} imports {n} ('{dst}' has no tier)" for n in reached]
                continue
            ts, td = TIERS[src], TIERS[dst]
            if td > ts:
                why = f"tier {td} {dst}, above tier {ts} {src}"
            elif td == ts and not rel.startswith(SAME_TIER_ALLOWED.get((src, dst), ())):
                why = f"tier {td} {dst}, same tier as {src}"
            else:
                continue
            problems += [f"{rel} imports {n} ({why})" for n in reached]
    return problems


def test_static_import_rules():
    modules = package_modules()
    assert any(rel == "data/replay.py" for rel, _ in modules)   # the walk sees the package
    problems = violations(modules)
    assert not problems, "\n".join(problems)


def test_static_checker_catches_violations(tmp_path):
    """Negative control: plain, from-, relative, lazy and string imports are all seen."""
    fake = tmp_path / "o2o_robot" / "agents"
    fake.mkdir(parents=True)
    src = fake / "bad.py"
    src.write_text(
        "import numpy\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import zarr\n"
        "def f():\n    import rclpy.node\n    from ..ros import actor_node\n"
        "    import importlib\n    return importlib.import_module('onnxruntime')\n",
        encoding="utf-8")
    names = imported_modules(src, root=tmp_path)
    assert {"rclpy", "onnxruntime", "numpy"} <= _top(names)
    assert "zarr" not in _top(names)                              # TYPE_CHECKING-only
    assert "o2o_robot.ros.actor_node" in names
    found = violations([("agents/bad.py", names), ("data/importers/minari.py", {"zarr.storage"}),
                        ("data/store/zarr_io.py", {"zarr"}), ("ros/node.py", {"rclpy"}),
                        ("learner.py", {"o2o_robot.ros.node"}), ("cli.py", {"o2o_robot.ros"})])
    assert sorted(found) == sorted([
        "agents/bad.py imports rclpy (not allowed under agents/)",
        "agents/bad.py imports onnxruntime (not allowed under agents/)",
        "agents/bad.py imports rclpy (only ros/ may)",
        "agents/bad.py imports o2o_robot.ros (only ros/, cli.py, __main__.py may)",
        "data/importers/minari.py imports zarr (only data/store/zarr_io.py may)",
        "learner.py imports o2o_robot.ros (only ros/, cli.py, __main__.py may)"])


def test_every_first_level_module_has_a_tier():
    """A new subpackage or top-level module must be placed in the order before it lands."""
    have = first_level()
    assert {"config", "agents", "data", "policy", "control", "learning", "sim", "teleop",
            "ingest", "ros", "cli"} <= have                  # the walk sees the package
    assert not have - set(TIERS), f"no tier for {sorted(have - set(TIERS))}: add to TIERS"


def test_internal_layering():
    """DESIGN's one-way order between the project's own packages holds in the real tree."""
    modules = package_modules()
    assert any(n.startswith("o2o_robot.control.") for rel, ns in modules
               if rel.startswith("ingest/") for n in ns)      # the walk sees internal imports
    problems = layer_violations(modules)
    assert not problems, "\n".join(problems)


def test_layer_checker_catches_violations():
    """Negative control: upward, same-tier, unknown-tier imports are flagged; the order's own
    edges, the root package and imports within a package are not."""
    found = layer_violations([
        ("data/replay.py", {"o2o_robot.learning.core", "o2o_robot.learning.core.LearnerCore",
                            "numpy"}),
        ("control/core.py", {"o2o_robot.ros", "o2o_robot.ros.qos"}),       # from ..ros import qos
        ("agents/rlpd.py", {"o2o_robot.data.schema", "o2o_robot.data.schema.Transition"}),
        ("config.py", {"o2o_robot.fsutil"}),
        ("learning/core.py", {"o2o_robot.sim.envs", "o2o_robot.agents.base",
                              "o2o_robot.policy.export"}),
        ("learning/harness.py", {"o2o_robot.sim.envs", "o2o_robot.teleop.scripted"}),
        ("sim/envs.py", {"o2o_robot.teleop.scripted"}),
        ("ros/qos.py", {"o2o_robot.cli"}),
        ("cli.py", {"o2o_robot.ros.finetune", "o2o_robot.ingest.cli", "o2o_robot"}),
        ("data/store/episodes.py", {"o2o_robot.data.schema", "o2o_robot.__version__"}),
        ("teleop/scripted.py", {"o2o_robot.sim.experts", "o2o_robot.spaces"}),
        ("ingest/rosbag.py", {"o2o_robot.robotics"}),
        ("robotics/arm.py", {"o2o_robot.config"}),
    ])
    assert sorted(found) == sorted([
        "data/replay.py imports o2o_robot.learning.core (tier 3 learning, above tier 1 data)",
        "control/core.py imports o2o_robot.ros (tier 4 ros, above tier 2 control)",
        "agents/rlpd.py imports o2o_robot.data.schema (tier 1 data, same tier as agents)",
        "config.py imports o2o_robot.fsutil (tier 0 fsutil, same tier as config)",
        "learning/core.py imports o2o_robot.sim.envs (tier 3 sim, same tier as learning)",
        "learning/harness.py imports o2o_robot.teleop.scripted (tier 3 teleop, same tier as "
        "learning)",
        "sim/envs.py imports o2o_robot.teleop.scripted (tier 3 teleop, same tier as sim)",
        "ros/qos.py imports o2o_robot.cli (tier 5 cli, above tier 4 ros)",
        "ingest/rosbag.py imports o2o_robot.robotics ('robotics' has no tier)",
        "robotics/arm.py: 'robotics' has no tier (add it to TIERS)"])


def test_layer_checker_sees_an_upward_import_in_a_copy_of_the_package(tmp_path):
    """Negative control on real sources: the package copied, one module of data/ given an
    upward import and one of sim/ a lazy same-tier one; exactly those two are reported."""
    import shutil

    copy = tmp_path / "o2o_robot"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    replay = copy / "data" / "replay.py"
    replay.write_text(replay.read_text(encoding="utf-8")
                      + "\nfrom o2o_robot.learning import core  # noqa: E402\n", encoding="utf-8")
    envs = copy / "sim" / "envs.py"
    envs.write_text(envs.read_text(encoding="utf-8")
                    + "\n\ndef _operator():\n    from ..teleop import scripted\n"
                      "    return scripted\n", encoding="utf-8")
    before = set(layer_violations(package_modules()))
    after = set(layer_violations(package_modules(copy)))
    assert after - before == {
        "data/replay.py imports o2o_robot.learning (tier 3 learning, above tier 1 data)",
        "sim/envs.py imports o2o_robot.teleop (tier 3 teleop, same tier as sim)"}
    assert before <= after


@pytest.mark.parametrize("module", ["o2o_robot.data.schema", "o2o_robot.data.replay",
                                    "o2o_robot.data.store", "o2o_robot.config"])
def test_numpy_side_module_does_not_import_torch_or_rclpy(module):
    """Fresh interpreter, so modules imported by other tests cannot hide a violation."""
    if module not in ("o2o_robot.data.schema", "o2o_robot.data.replay") \
            and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not written yet")
    code = (f"import importlib, json, sys; importlib.import_module({module!r}); "
            "print(json.dumps(sorted(m for m in ('torch', 'rclpy') if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
