"""Import layering (DESIGN.md "Layout", STYLE.md rule 2), checked two ways:
* statically: every module of the package is parsed with `ast` (files added later included)
  and its imports, nested and lazy ones too, are checked against the rules below;
* dynamically: importing the numpy-side data modules in a fresh interpreter must not pull in
  torch or rclpy, even transitively.
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


def package_modules() -> list[tuple[str, set[str]]]:
    """(path relative to the package, with "/" separators, imported names) for every module."""
    return [(p.relative_to(PKG).as_posix(), imported_modules(p)) for p in sorted(PKG.rglob("*.py"))]


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
