"""The data and demo commands as a user runs them: real processes, a real store on disk."""
import json
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "o2o_robot.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("cli") / "demos.zarr"
    out = cli("demos", "generate", "--task", "reach", "--episodes", 4, "--store", store,
              "--noise", 0.1, "--seed", 3)
    assert out.returncode == 0, out.stderr
    assert "wrote 4 demo episodes" in out.stdout
    return store


def test_info_json_counts_demo_episodes(demo_store):
    out = cli("data", "info", demo_store, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["episodes"] == 4 and info["obs_dim"] == 12 and info["act_dim"] == 3
    assert info["sources"]["demo"]["episodes"] == 4
    assert info["sources"]["demo"]["transitions"] == info["rows"] > 0
    assert info["sources"]["online"]["transitions"] == 0
    assert info["spec"]["task"] == "reach"


def test_info_text_and_validate_ok(demo_store):
    text = cli("data", "info", demo_store)
    assert text.returncode == 0 and "demo" in text.stdout and "4 episodes" in text.stdout
    ok = cli("data", "validate", demo_store)
    assert ok.returncode == 0 and "consistent" in ok.stdout


def test_demos_append_to_existing_store(demo_store, tmp_path):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(demo_store, copy)
    assert cli("demos", "generate", "--episodes", 2, "--store", copy, "--seed", 9).returncode == 0
    assert json.loads(cli("data", "info", copy, "--json").stdout)["episodes"] == 6


def test_validate_reports_a_damaged_store(demo_store, tmp_path):
    import shutil

    broken = tmp_path / "broken.zarr"
    shutil.copytree(demo_store, broken)
    marker = broken / "commit.json"
    commit = json.loads(marker.read_text())
    commit["episodes"] += 5  # claims episodes whose metadata was never written
    marker.write_text(json.dumps(commit))
    out = cli("data", "validate", broken)
    assert out.returncode == 1
    assert str(broken) in out.stderr


def test_bad_inputs_exit_2_with_a_message(tmp_path):
    missing = cli("data", "info", tmp_path / "nope.zarr")
    assert missing.returncode == 2 and "no such store" in missing.stderr
    task = cli("demos", "generate", "--task", "NoSuchTask-v0", "--episodes", 1,
               "--store", tmp_path / "x.zarr")
    assert task.returncode == 2 and "unknown task" in task.stderr
    assert not (tmp_path / "x.zarr").exists()
    episodes = cli("demos", "generate", "--episodes", 0, "--store", tmp_path / "y.zarr")
    assert episodes.returncode == 2 and "--episodes" in episodes.stderr


def test_info_into_a_closed_pipe_exits_without_a_traceback(demo_store):
    """`o2o-robot data info STORE | head`: the reader is gone before the command writes."""
    proc = subprocess.Popen([sys.executable, "-m", "o2o_robot.cli", "data", "info", demo_store],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()   # no reader left: the command's first write gets EPIPE
    stderr = proc.communicate(timeout=300)[1]
    assert "BrokenPipeError" not in stderr and "Traceback" not in stderr, stderr
    assert proc.returncode == 141
