"""Launch files, checked structurally (`launch` / `launch_ros` cannot be installed here, see
ROS2_NOTES.md): parsed with `ast`, every `Node(...)` must name this package, an executable that
setup.py installs as a console script whose target function exists, the node name its module
uses, and only parameters that module declares; every LaunchConfiguration must be declared."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "o2o_robot"
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))


def console_scripts(setup_py: Path) -> dict[str, str]:
    """{script name: "module:function"} from setup(entry_points={"console_scripts": [...]})."""
    for node in ast.walk(ast.parse(setup_py.read_text())):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            entries = ast.literal_eval(node.value)["console_scripts"]
            return {name.strip(): target.strip() for name, target in
                    (entry.split("=", 1) for entry in entries)}
    raise AssertionError(f"{setup_py}: no entry_points")


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and (
        (isinstance(n.func, ast.Name) and n.func.id == name)
        or (isinstance(n.func, ast.Attribute) and n.func.attr == name))]


def _first_str(call: ast.Call) -> str | None:
    arg = call.args[0] if call.args else None
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def node_module_facts(path: Path, function: str) -> dict:
    """What a node module declares: parameters (literal `declare_parameter("x", ...)` names),
    its NODE_NAME constant, and whether `function` is defined at top level."""
    tree = ast.parse(path.read_text())
    names = {a.targets[0].id: a.value.value for a in tree.body if isinstance(a, ast.Assign)
             and isinstance(a.targets[0], ast.Name) and isinstance(a.value, ast.Constant)}
    return {"parameters": {_first_str(c) for c in _calls(tree, "declare_parameter")} - {None},
            "node_name": names.get("NODE_NAME"),
            "has_function": any(isinstance(f, ast.FunctionDef) and f.name == function
                                for f in tree.body)}


def follow_entry(module: str, function: str, root: Path = ROOT) -> tuple[str, str]:
    """A console script's (node module, function): `o2o_robot.ros.entry:actor_node` runs
    `_run("o2o_robot.ros.actor_node")`, i.e. that module's `main`."""
    if module != f"{PACKAGE}.ros.entry":
        return module, function
    tree = ast.parse((root / PACKAGE / "ros" / "entry.py").read_text())
    for f in tree.body:
        if isinstance(f, ast.FunctionDef) and f.name == function:
            target = next((_first_str(c) for c in _calls(f, "_run")), None)
            if target is not None:
                return target, "main"
    return module, function


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def check_launch_file(path: Path, scripts: dict[str, str], root: Path = ROOT) -> list[str]:
    """Every problem of one launch file, one line each (empty = fine)."""
    tree = ast.parse(path.read_text())
    where, problems = path.name, []
    if not any(isinstance(f, ast.FunctionDef) and f.name == "generate_launch_description"
               for f in tree.body):
        problems.append(f"{where}: no generate_launch_description()")
    declared = {_first_str(c) for c in _calls(tree, "DeclareLaunchArgument")}
    for call in _calls(tree, "LaunchConfiguration"):
        if _first_str(call) not in declared:
            problems.append(f"{where}: LaunchConfiguration({_first_str(call)!r}) is not declared")
    nodes = _calls(tree, "Node")
    if not nodes:
        problems.append(f"{where}: starts no Node")
    for call in nodes:
        package, executable = _kw(call, "package"), _kw(call, "executable")
        package = getattr(package, "value", None)
        executable = getattr(executable, "value", None)
        if package != PACKAGE:
            problems.append(f"{where}: Node package {package!r}, expected {PACKAGE!r}")
        if executable not in scripts:
            problems.append(f"{where}: executable {executable!r} is not a console script in "
                            f"setup.py (have: {', '.join(sorted(scripts))})")
            continue
        module, function = follow_entry(*scripts[executable].partition(":")[::2], root)
        source = root / Path(*module.split(".")).with_suffix(".py")
        if not source.is_file():
            problems.append(f"{where}: {executable} -> {module}: no file {source}")
            continue
        facts = node_module_facts(source, function)
        if not facts["has_function"]:
            problems.append(f"{where}: {executable} -> {module} defines no {function}()")
        name = getattr(_kw(call, "name"), "value", None)
        if name is not None and name != facts["node_name"]:
            problems.append(f"{where}: Node name {name!r}, but {module} runs as "
                            f"{facts['node_name']!r}")
        params = _kw(call, "parameters")
        for item in getattr(params, "elts", []):
            if not isinstance(item, ast.Dict):
                continue   # a parameter file: checked by the node at start
            for key in item.keys:
                if getattr(key, "value", None) not in facts["parameters"]:
                    problems.append(f"{where}: parameter {getattr(key, 'value', None)!r} is not "
                                    f"declared by {module} ({sorted(facts['parameters'])})")
    return problems


def test_launch_files_exist():
    assert {p.name for p in LAUNCH_FILES} >= {"finetune.launch.py", "sim.launch.py",
                                                "collect_demos.launch.py"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_is_consistent_with_setup_and_nodes(path):
    problems = check_launch_file(path, console_scripts(ROOT / "setup.py"))
    assert not problems, "\n".join(problems)


def test_finetune_takes_config_use_sim_and_namespace():
    tree = ast.parse((ROOT / "launch" / "finetune.launch.py").read_text())
    declared = {_first_str(c) for c in _calls(tree, "DeclareLaunchArgument")}
    assert declared >= {"config", "use_sim", "namespace", "teleop", "device"}
    executables = {getattr(_kw(c, "executable"), "value", None) for c in _calls(tree, "Node")}
    assert executables == {"actor_node", "sim_bridge", "teleop_node"}


def test_checker_catches_broken_launch_files(tmp_path):
    """Negative control: each kind of mistake is reported."""
    (tmp_path / "o2o_robot").mkdir()
    (tmp_path / "o2o_robot" / "n.py").write_text(
        'NODE_NAME = "real"\nclass N:\n    def __init__(self):\n'
        '        self.declare_parameter("config", "")\ndef main():\n    pass\n')
    bad = tmp_path / "bad.launch.py"
    bad.write_text(
        "def generate_launch_description():\n    return [\n"
        "        Node(package='other', executable='ghost'),\n"
        "        Node(package='o2o_robot', executable='n', name='fake',\n"
        "             parameters=[{'config': LaunchConfiguration('cfg'), 'typo': 1}]),\n    ]\n")
    problems = check_launch_file(bad, {"n": "o2o_robot.n:main"}, root=tmp_path)
    expected = ["package 'other'", "'ghost' is not a console script",
                "LaunchConfiguration('cfg') is not declared", "Node name 'fake'",
                "parameter 'typo' is not declared"]
    for text in expected:
        assert any(text in p for p in problems), (text, problems)
    assert len(problems) == len(expected)
