"""`colcon build` of the repository (ament_python) gives an install space that `ros2 run` and
`ros2 launch` can use. There is no ROS 2 install here (ROS2_NOTES.md), so the test resolves
executables the way `ros2 run` does: the package's marker in the ament index of a prefix on
AMENT_PREFIX_PATH, then `<prefix>/lib/o2o_robot/<executable>`, with the environment that
sourcing `install/setup.bash` gives. The build runs on a copy of the source tree in a
temporary workspace (installed files are compared with that copy), as a plain install and as a
`--symlink-install` (the developer's choice).
"""
from __future__ import annotations

import ast
import os
import shutil
import signal
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from test_launch_files import console_scripts

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "o2o_robot"
MARKER = Path("share/ament_index/resource_index/packages") / PACKAGE
SCRATCH = {".git", ".venv", "build", "install", "log", "runs", ".pytest_cache", ".gl", ".whl"}
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH", "COLCON_PREFIX_PATH")}


def copy_sources(dest: Path) -> None:
    """What a clone holds (tracked and new, not ignored files), or the tree without scratch."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True) if shutil.which("git") else None
    if listed is None or listed.returncode != 0:    # no git, or not a checkout (an archive)
        shutil.copytree(ROOT, dest, ignore=lambda d, names: [
            n for n in names if (Path(d) == ROOT and n in SCRATCH) or n == "__pycache__"
            or n.endswith(".egg-info")])
        return
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def sourced_env(install: Path) -> dict[str, str]:
    """The environment after `source install/setup.bash`, as a user's shell has it."""
    out = subprocess.run(["bash", "-c", f'source "{install}/setup.bash" >/dev/null && env -0'],
                         env=CLEAN_ENV, capture_output=True, text=True, timeout=60, check=True)
    return dict(item.split("=", 1) for item in out.stdout.split("\0") if "=" in item)


def ros2_run_path(package: str, executable: str, env: dict[str, str]) -> Path:
    """Where `ros2 run package executable` finds the file: the first prefix on
    AMENT_PREFIX_PATH whose ament index lists the package, then lib/<package>/<executable>."""
    for prefix in filter(None, env.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        if (Path(prefix) / "share/ament_index/resource_index/packages" / package).is_file():
            return Path(prefix) / "lib" / package / executable
    raise AssertionError(f"package {package!r} is in no ament index on AMENT_PREFIX_PATH "
                         f"({env.get('AMENT_PREFIX_PATH')!r})")


@pytest.fixture(scope="module", params=["install", "symlink-install"])
def ws(request, tmp_path_factory):
    """A colcon workspace with the package built into `install/` (prefix install/o2o_robot)."""
    pytest.importorskip("colcon_core", reason="colcon is not installed (requirements/lock.txt "
                        "pins it)")
    root = tmp_path_factory.mktemp(f"colcon_{request.param}")
    src = root / "src" / PACKAGE
    src.mkdir(parents=True)
    copy_sources(src)
    command = [sys.executable, "-c", "import sys; from colcon_core.command import main; "
               "sys.exit(main())", "--log-base", str(root / "log"), "build",
               "--base-paths", str(root / "src"), "--build-base", str(root / "build"),
               "--install-base", str(root / "install"), "--event-handlers", "console_cohesion+"]
    if request.param == "symlink-install":
        command.append("--symlink-install")
    # COLCON_HOME in the workspace: no user defaults (~/.colcon) change the build.
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300,
                          env={**CLEAN_ENV, "COLCON_HOME": str(root / ".colcon")})
    assert done.returncode == 0, done.stdout + done.stderr
    env = sourced_env(root / "install")
    return SimpleNamespace(root=root, src=src, prefix=root / "install" / PACKAGE, env=env,
                           mode=request.param)


def run_in(ws, args: list, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=ws.env, capture_output=True,
                          text=True, timeout=timeout)


def ros_imports(files) -> set[str]:
    """Top-level modules of ROS 2 packages imported anywhere in `files` (lazy imports too)."""
    found = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return {n for n in found if n in ("rclpy", "launch", "launch_ros")
            or n.endswith(("_msgs", "_srvs", "_interfaces"))}


def test_package_xml_declares_every_ros_package_the_code_imports():
    """rosdep installs exec_depends: a ROS package imported but not declared is missing on a
    fresh robot computer."""
    manifest = ET.parse(ROOT / "package.xml").getroot()
    declared = {e.text for e in manifest.iter("exec_depend")}
    used = ros_imports([*(ROOT / PACKAGE).rglob("*.py"), *(ROOT / "launch").glob("*.py")])
    assert {"rclpy", "std_msgs", "launch_ros"} <= used       # the scan itself works
    assert used <= declared, sorted(used - declared)
    assert manifest.findtext("export/build_type") == "ament_python"


def test_install_space_has_the_executables_where_ros2_run_looks(ws):
    scripts = console_scripts(ws.src / "setup.py")
    assert {"o2o-robot", "actor_node", "sim_bridge"} <= set(scripts)
    assert (ws.prefix / MARKER).is_file()
    for name in scripts:
        path = ros2_run_path(PACKAGE, name, ws.env)
        assert path == ws.prefix / "lib" / PACKAGE / name
        assert path.is_file() and os.access(path, os.X_OK), path
    assert not (ws.prefix / "bin").exists()     # setup.cfg: scripts go to lib/<package>, not bin


def test_install_space_shares_package_xml_launch_config_and_sim(ws):
    share = ws.prefix / "share" / PACKAGE
    manifest = ET.parse(share / "package.xml").getroot()
    setup_kwargs = {k.arg: k.value for k in ast.walk(ast.parse((ws.src / "setup.py").read_text()))
                    if isinstance(k, ast.keyword)}
    assert manifest.findtext("name") == PACKAGE
    assert manifest.findtext("version") == ast.literal_eval(setup_kwargs["version"])
    assert manifest.findtext("export/build_type") == "ament_python"
    launch = {p.name for p in (share / "launch").glob("*.launch.py")}
    assert launch == {p.name for p in (ws.src / "launch").glob("*.launch.py")}
    assert launch >= {"finetune.launch.py", "sim.launch.py", "collect_demos.launch.py"}
    for folder, pattern in (("config", "**/*.yaml"), ("sim", "**/*.xml")):
        repo = {p.relative_to(ws.src / folder) for p in (ws.src / folder).glob(pattern)}
        installed = {p.relative_to(share / folder) for p in (share / folder).glob(pattern)}
        assert repo and installed == repo, (folder, repo ^ installed)
    assert (share / "config" / "examples" / "my_robot.yaml").read_text() == \
        (ROOT / "config" / "examples" / "my_robot.yaml").read_text()   # the copy is complete
    site = next(ws.prefix.glob("lib/python3*/site-packages"))
    assert not (site / "tests").exists()      # the test suite is not installed as a package


def test_installed_commands_run_from_the_sourced_install_space(ws, tmp_path):
    """Every console script's target imports from the workspace (not the checkout or the venv),
    the CLI finds packaged configs by name through AMENT_PREFIX_PATH, and each node's entry
    point refuses a missing config with exit 1 naming the file."""
    probe = ("import importlib.metadata as md, sys, o2o_robot\n"
             "eps = [e for e in md.entry_points(group='console_scripts') if e.dist and "
             "e.dist.name.replace('_', '-') == 'o2o-robot']\n"
             "for ep in eps: ep.load()\n"
             "print(o2o_robot.__file__); print(' '.join(sorted(e.name for e in eps)))\n")
    out = run_in(ws, [sys.executable, "-c", probe], tmp_path)
    assert out.returncode == 0, out.stderr
    module_file, names = out.stdout.splitlines()
    assert Path(module_file).is_relative_to(ws.root), module_file
    assert set(names.split()) == set(console_scripts(ws.src / "setup.py"))

    cli = ros2_run_path(PACKAGE, "o2o-robot", ws.env)
    ok = run_in(ws, [cli, "config", "validate", "examples/my_robot.yaml"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert Path(ok.stdout.split(":")[0]).is_relative_to(ws.root), ok.stdout
    assert "obs_dim 22, act_dim 6" in ok.stdout and "reward function" in ok.stdout
    for node in ("actor_node", "sim_bridge"):
        bad = run_in(ws, [ros2_run_path(PACKAGE, node, ws.env), "--ros-args", "-p",
                          "config:=/nonexistent/robot.yaml"], tmp_path)
        assert bad.returncode == 1 and "/nonexistent/robot.yaml" in bad.stdout + bad.stderr, \
            (node, bad.stdout, bad.stderr)


def test_installed_actor_node_starts_on_the_example_robot_config(ws, tmp_path):
    """`ros2 run o2o_robot actor_node --ros-args -p config:=examples/my_robot.yaml`: the
    packaged config by name, its reward function imported and probed, a clean SIGINT exit."""
    from ros_helpers import domain_id, namespace, wait_for

    env = {**ws.env, "ROS_DOMAIN_ID": str(domain_id(3)), "RCUTILS_LOGGING_BUFFERED_STREAM": "0",
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    proc = subprocess.Popen([str(ros2_run_path(PACKAGE, "actor_node", env)), "--ros-args",
                             "-r", f"__ns:={namespace('colcon')}", "-p",
                             "config:=examples/my_robot.yaml", "-p", "learning_enabled:=false"],
                            cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    ready = "my_arm: obs 22, action 6 on 'forward_velocity_controller/commands'"
    try:
        wait_for(lambda: any(ready in line for line in lines) or proc.poll() is not None, 60.0,
                 "the actor's ready line")
        assert proc.poll() is None, "".join(lines)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, "".join(lines)
    finally:
        proc.kill()
