"""The data and demo commands as a user runs them: real processes, a real store on disk."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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


# ------------------------------------------------------------------ damaged stores (issue 13)
def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def one_line_naming(out, name: str) -> bool:
    lines = out.stderr.strip().splitlines()
    return len(lines) == 1 and str(name) in lines[0] and "Traceback" not in out.stderr


def test_a_store_without_its_marker_is_refused_then_repaired(demo_store, tmp_path):
    """Issue 13 item 1: `demos generate` used to recreate it, keeping 4 of its rows."""
    import shutil

    store = tmp_path / "S"
    shutil.copytree(demo_store, store)
    rows = json.loads(cli("data", "info", store, "--json").stdout)["rows"]
    (store / "commit.json").unlink()
    before = snapshot(store)
    out = cli("demos", "generate", "--task", "reach", "--episodes", 1, "--store", store)
    assert out.returncode == 1 and one_line_naming(out, store / "commit.json"), out.stderr
    assert f"o2o-robot data repair {store}" in out.stderr
    assert snapshot(store) == before
    out = cli("data", "validate", store)
    assert out.returncode == 1 and "create it again" not in out.stderr and "data repair" in out.stderr
    out = cli("data", "repair", store)
    assert out.returncode == 0 and f"{rows} rows, 4 episodes" in out.stdout, out.stderr
    assert json.loads(cli("data", "info", store, "--json").stdout)["rows"] == rows
    assert cli("data", "validate", store).returncode == 0


def damage(store: Path, how: str) -> Path:
    """Damage the store as the issue's reproductions did; the file to be named."""
    if how == "truncated chunk":
        target = store / "data" / "action" / "c.0.0"
        target.write_bytes(target.read_bytes()[:30])
    elif how == "garbled zarr.json":
        target = store / "zarr.json"
        target.write_text("{\"zarr_format\": 3, \"node_")
    elif how == "no root zarr.json":
        target = store / "zarr.json"
        target.unlink()
    else:   # a marker claiming more rows than the arrays hold
        target = store / "commit.json"
        target.write_text(json.dumps({**json.loads(target.read_text()), "rows": 99_999}))
    return target


@pytest.mark.parametrize("how", ["truncated chunk", "garbled zarr.json", "no root zarr.json",
                                 "marker claims more rows"])
def test_a_damaged_store_gives_one_line_naming_the_file_and_exit_1(demo_store, tmp_path, how):
    import shutil

    store = tmp_path / "S"
    shutil.copytree(demo_store, store)
    target = damage(store, how)
    before = snapshot(store)
    commands = [("data", "validate", store), ("demos", "generate", "--episodes", 1, "--store", store)]
    if how != "truncated chunk":   # info reads only what it sums up (source, episodes)
        commands.append(("data", "info", store))
    for command in commands:
        out = cli(*command)
        assert out.returncode == 1 and one_line_naming(out, target), (command, out.stderr)
    assert snapshot(store) == before


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_learning_commands_do_not_append_to_a_damaged_store(demo_store, tmp_path, command):
    """Issue 13 item 2: finetune appended to a store with a deleted chunk (all its obs read 0)."""
    import shutil

    run = tmp_path / "run"
    store = run / "store.zarr"      # sim_reach.yaml's store moves into --run-dir
    shutil.copytree(demo_store, store)
    chunk = store / "data" / "obs" / "c.0.0"
    chunk.unlink()
    before = snapshot(store)
    out = cli(command, "--run-dir", run, "--steps", 5, *(["--lockstep"] if command == "finetune" else []))
    assert out.returncode == 1 and one_line_naming(out, chunk), out.stderr
    assert "missing chunk file" in out.stderr
    assert snapshot(store) == before


# ------------------------------------------------------- interrupted demo generation (issue 13)
def interrupted(args: tuple, store: Path, sig: int, after: int) -> int:
    """Run `demos generate` (`args`) into `store`, send `sig` once it has printed demo `after`,
    and return how many episodes the store then holds."""
    import signal

    from o2o_robot.data.store import TransitionStore

    # SIGINT at its default in the child: a test run started in the background of a shell
    # without job control ignores SIGINT, and exec passes that on (the command never saw it).
    proc = subprocess.Popen([sys.executable, "-m", "o2o_robot.cli", *map(str, args), "--store",
                             str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen, rest = [], ("", "")
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(f"demo {after}/"):
                proc.send_signal(sig)
                break
        rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), (
        f"exit {proc.returncode}; read before the signal:\n{''.join(seen)}after it:\n{rest[0]}"
        f"stderr:\n{rest[1]}")
    return TransitionStore.open(store).num_episodes


def same_store(a: Path, b: Path) -> None:
    """Equal rows (but the wall-clock timestamps), episodes and demo record."""
    from o2o_robot.data.schema import FIELDS
    from o2o_robot.data.store import TransitionStore

    ra, rb = TransitionStore.open(a), TransitionStore.open(b)
    assert (len(ra), ra.episodes(), ra.notes) == (len(rb), rb.episodes(), rb.notes)
    got, want = ra.read(), rb.read()
    for f in FIELDS:
        if f != "timestamp":
            np.testing.assert_array_equal(got[f], want[f], err_msg=f)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_an_interrupted_generation_is_completed_by_the_same_command(tmp_path, sig):
    """Issue 13 item 5: what was asked is recorded; asking again completes it, exactly."""
    import signal

    config = tmp_path / "flush.yaml"     # commit after every episode: kill -9 keeps them
    config.write_text("store:\n  flush_every: 1\n")
    # 40 short episodes: the generation must still be running when the signal lands, also on a
    # loaded machine where this process reads "demo 3/" late (with 12, all were done first once,
    # in a full-suite run at load 8).
    args = ("demos", "generate", "--task", "reach", "--episodes", 40, "--seed", 5,
            "--config", config)
    whole, cut = tmp_path / "whole.zarr", tmp_path / "cut.zarr"
    assert cli(*args, "--store", whole).returncode == 0
    done = interrupted(args, cut, getattr(signal, sig), after=3)
    assert 3 <= done < 40
    from o2o_robot.data.store import TransitionStore

    record = TransitionStore.open(cut).notes["demos"]
    assert (record["episodes"], record["episodes_done"], record["seed"]) == (40, done, 5)
    out = cli(*args, "--store", cut)
    assert out.returncode == 0, out.stderr
    assert f"wrote {40 - done} demo episodes" in out.stdout
    assert f"completing an interrupted generation ({done} of 40 were there)" in out.stdout
    same_store(cut, whole)
    again = cli(*args, "--store", cut)   # a finished generation asked again: 40 more, as before
    assert again.returncode == 0 and "wrote 40 demo episodes" in again.stdout
    assert TransitionStore.open(cut).num_episodes == 80


def test_the_learner_completes_an_interrupted_generation_before_it_starts(tmp_path):
    """Issue 13 item 5: finetune saw some demo rows and skipped generating the rest."""
    import signal

    from o2o_robot.config import load_config
    from o2o_robot.data.store import TransitionStore
    from o2o_robot.sim.demos import DEMO_SEED_OFFSET, ensure_demos

    config = tmp_path / "c.yaml"
    config.write_text("store:\n  flush_every: 1\ntrain:\n  demo_episodes: 12\n")
    cfg = load_config(config)
    whole, cut = tmp_path / "whole.zarr", tmp_path / "cut.zarr"
    for path in (whole, cut):
        cfg.store.path = str(path)
        with TransitionStore.create(path, 12, 3, spec={"task": "reach"}) as store:
            if path == whole:
                assert ensure_demos(store, cfg, progress=False)["episodes"] == 12
    # What ensure_demos asks for, killed after 4 episodes (as finetune would be).
    args = ("demos", "generate", "--task", "reach", "--episodes", 12, "--config", config,
            "--seed", cfg.train.seed + DEMO_SEED_OFFSET, "--noise", cfg.teleop.expert_noise)
    done = interrupted(args, cut, signal.SIGKILL, after=4)
    assert 4 <= done < 12
    with TransitionStore.open(cut, "a") as store:
        summary = ensure_demos(store, cfg, progress=False)
        assert (summary["episodes"], summary["resumed_from"]) == (12 - done, done)
        assert ensure_demos(store, cfg, progress=False) is None   # complete: nothing more
    same_store(cut, whole)
