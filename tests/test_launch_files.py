"""Launch files, checked structurally. `launch` / `launch_ros` are not on the package index
(its `launch` is an unrelated project) nor among the pinned ROS wheels; they build from the
upstream sources, as for the hand check in ROS2_NOTES.md ("Under the real ROS 2 tools"), which
this suite does not do. So the files are parsed with `ast`: every `Node(...)` must name this
package, an executable that setup.py installs as a console script whose target function
exists, the node name its module uses, only parameters that module declares, and an `on_exit`
that ties its exit to the launch (`o2o_robot.launch_support.end_launch_on_exit`, whose handler
is tested here too); every LaunchConfiguration must be declared. What the nodes do under the
launch is tested by starting the same processes directly (test_ros_actor, test_ros_sim_bridge,
test_ros_teleop)."""
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
    imported = {a.name for n in tree.body if isinstance(n, ast.ImportFrom)
                and n.module == "o2o_robot.launch_support" for a in n.names}
    if _calls(tree, "end_launch_on_exit") and "end_launch_on_exit" not in imported:
        problems.append(f"{where}: end_launch_on_exit is not imported from "
                        f"o2o_robot.launch_support")
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
        problems += _on_exit_problems(where, call, name, executable)
        params = _kw(call, "parameters")
        for item in getattr(params, "elts", []):
            if not isinstance(item, ast.Dict):
                continue   # a parameter file: checked by the node at start
            for key in item.keys:
                if getattr(key, "value", None) not in facts["parameters"]:
                    problems.append(f"{where}: parameter {getattr(key, 'value', None)!r} is not "
                                    f"declared by {module} ({sorted(facts['parameters'])})")
    return problems


def _on_exit_problems(where: str, call: ast.Call, name: str | None, executable: str) -> list[str]:
    """A node must be `on_exit=end_launch_on_exit(<its name>, ...)`; the actor's clean exit
    must end the launch too (no clean_exit_ends=False)."""
    on_exit = _kw(call, "on_exit")
    if not (isinstance(on_exit, ast.Call)
            and getattr(on_exit.func, "id", "") == "end_launch_on_exit"):
        return [f"{where}: {executable} has no on_exit=end_launch_on_exit(...): its death would "
                f"not end the launch"]
    problems = []
    if _first_str(on_exit) != name:
        problems.append(f"{where}: {executable}: end_launch_on_exit({_first_str(on_exit)!r}) "
                        f"does not name its node {name!r}")
    clean = _kw(on_exit, "clean_exit_ends")
    if executable == "actor_node" and getattr(clean, "value", True) is not True:
        problems.append(f"{where}: the actor's clean exit must end the launch")
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
        "             parameters=[{'config': LaunchConfiguration('cfg'), 'typo': 1}]),\n"
        "        Node(package='o2o_robot', executable='n', name='real',\n"
        "             on_exit=end_launch_on_exit('other')),\n    ]\n")
    problems = check_launch_file(bad, {"n": "o2o_robot.n:main"}, root=tmp_path)
    expected = ["package 'other'", "'ghost' is not a console script",
                "LaunchConfiguration('cfg') is not declared", "Node name 'fake'",
                "n has no on_exit", "parameter 'typo' is not declared",
                "end_launch_on_exit('other') does not name its node 'real'",
                "end_launch_on_exit is not imported"]
    for text in expected:
        assert any(text in p for p in problems), (text, problems)
    assert len(problems) == len(expected)


def _node(tree: ast.AST, executable: str) -> ast.Call:
    return next(c for c in _calls(tree, "Node")
                if getattr(_kw(c, "executable"), "value", None) == executable)


@pytest.mark.parametrize("name", ["finetune.launch.py", "collect_demos.launch.py"])
def test_the_default_config_is_a_sim_config_and_use_sim_auto_starts_the_sim_for_it(name):
    """Item 1 of issue 14: with no arguments the launch started only the actor, holding
    forever. The default config is a sim config (its reward comes from the sim), use_sim
    defaults to auto, and auto starts the bridge with only_sim_config: it runs for a sim
    config and exits 0 for a robot config (test_ros_sim_bridge starts it both ways)."""
    from o2o_robot.config import load_config, resolve_config_path

    tree = ast.parse((ROOT / "launch" / name).read_text())
    defaults = {_first_str(c): getattr(_kw(c, "default_value"), "value", None)
                for c in _calls(tree, "DeclareLaunchArgument")}
    assert defaults["use_sim"] == "auto"
    assert load_config(resolve_config_path(defaults["config"])).control.reward.source == "sim"
    sim = _node(tree, "sim_bridge")
    assert ast.unparse(_kw(sim, "condition")) == "IfCondition(_use_sim_is('auto', 'true'))"
    params = _kw(sim, "parameters").elts[0]
    only = params.values[[k.value for k in params.keys].index("only_sim_config")]
    assert ast.unparse(only) == "ParameterValue(_use_sim_is('auto'), value_type=bool)"
    helper = next(f for f in tree.body
                  if isinstance(f, ast.FunctionDef) and f.name == "_use_sim_is")
    assert "LaunchConfiguration('use_sim')" in ast.unparse(helper) and ".lower() in " in \
        ast.unparse(helper)


def test_end_launch_on_exit_fails_the_launch_on_a_failed_node():
    """The handler launch calls with (ProcessExited, LaunchContext); only their `returncode`
    and `is_shutdown` are read, so plain stand-ins carry them here (`launch` is not installed:
    the Shutdown returned for a clean exit is not built in this test)."""
    from types import SimpleNamespace

    from o2o_robot.launch_support import NodeFailed, end_launch_on_exit

    running, stopping = SimpleNamespace(is_shutdown=False), SimpleNamespace(is_shutdown=True)
    for clean_exit_ends in (True, False):
        handler = end_launch_on_exit("o2o_actor", clean_exit_ends=clean_exit_ends)
        for code in (1, -9):
            with pytest.raises(NodeFailed, match=f"o2o_actor exited with code {code}"):
                handler(SimpleNamespace(returncode=code), running)
        assert handler(SimpleNamespace(returncode=0), stopping) is None
    assert end_launch_on_exit("o2o_sim", clean_exit_ends=False)(
        SimpleNamespace(returncode=0), running) is None
