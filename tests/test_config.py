"""Config: defaults, shipped files, and errors that name the file and the exact key path."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from o2o_robot.config import ConfigError, O2OConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "config").rglob("*.yaml"))


def write(tmp_path: Path, data, name="c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_empty_file_gives_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg == O2OConfig()
    assert cfg.robot.obs_dim == 12 and cfg.robot.act_dim == 3
    assert cfg.sampler.offline_ratio == 0.5 and cfg.learner.utd_ratio == 20


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_configs_are_valid(path):
    load_config(path)


def test_range_error_names_file_key_and_value(tmp_path):
    path = write(tmp_path, {"learner": {"utd_ratio": 0}}, "sim_reach.yaml")
    assert error_of(path) == f"{path}: learner.utd_ratio: must be >= 1, got 0"


def test_unknown_key_is_refused_with_its_path(tmp_path):
    msg = error_of(write(tmp_path, {"sampler": {"batch_size": 256, "ofline_ratio": 0.5}}))
    assert "sampler.ofline_ratio: unknown key" in msg


def test_nested_list_path_and_wrong_type(tmp_path):
    data = {"robot": {"observations": [{"topic": "js", "type": "joint_state", "joint_names": ["a"]},
                                       {"topic": "x", "type": "float64_multi_array", "size": "six"}]}}
    msg = error_of(write(tmp_path, data))
    assert "robot.observations.1.size:" in msg and "'six'" in msg


def test_literal_and_algorithm_choice(tmp_path):
    assert "learner.mode: must be one of 'thread' or 'process', got 'fiber'" in error_of(
        write(tmp_path, {"learner": {"mode": "fiber"}}))
    assert "algorithm: must be one of 'rlpd'" in error_of(
        write(tmp_path, {"algorithm": {"name": "ppo"}}))


def test_cross_field_checks(tmp_path):
    assert "robot.action: every low must be < high" in error_of(
        write(tmp_path, {"robot": {"action": {"low": [1.0], "high": [0.0]}}}))
    assert "critic_subset_size (11) must be <= critic_ensemble_size (10)" in error_of(
        write(tmp_path, {"algorithm": {"name": "rlpd", "critic_subset_size": 11}}))
    assert "whole number of rows" in error_of(
        write(tmp_path, {"sampler": {"batch_size": 255, "offline_ratio": 0.5}}))


def test_yaml_syntax_error_names_line(tmp_path):
    msg = error_of(write(tmp_path, "learner:\n  utd_ratio: [1,\n"))
    assert "not valid YAML" in msg and "line" in msg


def test_base_file_is_merged_section_by_section(tmp_path):
    write(tmp_path, {"learner": {"utd_ratio": 5, "warmup_steps": 7}}, "base.yaml")
    cfg = load_config(write(tmp_path, {"base": "base.yaml", "learner": {"utd_ratio": 3}}))
    assert cfg.learner.utd_ratio == 3 and cfg.learner.warmup_steps == 7


def test_config_hash_changes_with_values():
    a, b = O2OConfig(), O2OConfig()
    assert a.config_hash() == b.config_hash()
    b.learner.utd_ratio = 3
    assert a.config_hash() != b.config_hash()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "o2o_robot.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_validate_exit_codes_and_message(tmp_path):
    good = run_cli("config", "validate", str(ROOT / "config" / "sim_reach.yaml"))
    assert good.returncode == 0, good.stderr
    bad_path = write(tmp_path, {"learner": {"utd_ratio": 0}})
    bad = run_cli("config", "validate", str(bad_path))
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"{bad_path}: learner.utd_ratio: must be >= 1, got 0"


def test_cli_show_prints_resolved_config_with_defaults(tmp_path):
    out = run_cli("config", "show", str(write(tmp_path, {"learner": {"utd_ratio": 4}})))
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)
    assert shown["learner"]["utd_ratio"] == 4
    assert shown["sampler"]["batch_size"] == 256  # a default, filled in
    assert O2OConfig.model_validate(shown).learner.utd_ratio == 4


def test_bases_merge_in_order_and_algorithm_sections_merge_by_name(tmp_path):
    write(tmp_path, {"algorithm": {"name": "rlpd", "hidden_dims": [64], "tau": 0.01},
                     "learner": {"utd_ratio": 5}}, "a.yaml")
    write(tmp_path, {"algorithm": {"critic_ensemble_size": 4}, "learner": {"utd_ratio": 6}},
          "b.yaml")
    cfg = load_config(write(tmp_path, {"base": ["a.yaml", "b.yaml"],
                                       "algorithm": {"name": "rlpd", "critic_subset_size": 1}}))
    assert cfg.algorithm.hidden_dims == [64] and cfg.algorithm.tau == 0.01
    assert cfg.algorithm.critic_ensemble_size == 4 and cfg.algorithm.critic_subset_size == 1
    assert cfg.learner.utd_ratio == 6


def test_base_cycle_is_refused(tmp_path):
    write(tmp_path, {"base": "b.yaml"}, "a.yaml")
    write(tmp_path, {"base": "a.yaml"}, "b.yaml")
    assert "cycle" in error_of(tmp_path / "a.yaml")


def test_packaged_configs_resolve_from_an_install_space(tmp_path, monkeypatch):
    from o2o_robot import config as config_module

    share = tmp_path / "install" / "o2o_robot" / "share" / "o2o_robot" / "config"
    share.mkdir(parents=True)
    (share / "only_installed.yaml").write_text("learner: {utd_ratio: 3}\n")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "install" / "o2o_robot"))
    monkeypatch.chdir(tmp_path)
    found = config_module.resolve_config_path("only_installed")
    assert found == share / "only_installed.yaml"
    assert load_config(found).learner.utd_ratio == 3
    assert config_module.resolve_config_path("sim_reach.yaml") == ROOT / "config" / "sim_reach.yaml"


def test_moved_time_limit_key_says_where_it_went(tmp_path):
    msg = error_of(write(tmp_path, {"sim": {"max_episode_steps": 50}}))
    assert "sim.max_episode_steps: " in msg and "moved to control.max_episode_steps" in msg
    cfg = load_config(write(tmp_path, {"control": {"max_episode_steps": 7}}))
    assert cfg.control.max_episode_steps == 7


def test_warmup_actions_default_and_choices(tmp_path):
    assert O2OConfig().learner.warmup_actions == "uniform"
    assert "learner.warmup_actions: must be one of 'uniform' or 'policy', got 'random'" in \
        error_of(write(tmp_path, {"learner": {"warmup_actions": "random"}}))


def test_run_dir_override_moves_a_store_inside_it_and_keeps_one_outside():
    inside = O2OConfig.model_validate({"train": {"run_dir": "runs/a"},
                                       "store": {"path": "runs/a/data/store.zarr"}})
    moved = inside.with_run_dir("/tmp/b")
    assert (moved.train.run_dir, moved.store.path) == ("/tmp/b", "/tmp/b/data/store.zarr")
    assert inside.train.run_dir == "runs/a"                        # a copy, not in place
    outside = O2OConfig.model_validate({"train": {"run_dir": "runs/a"},
                                        "store": {"path": "offline_data/robot.zarr"}})
    kept = outside.with_run_dir("/tmp/b")
    assert (kept.train.run_dir, kept.store.path) == ("/tmp/b", "offline_data/robot.zarr")
    assert outside.with_run_dir(None) is outside


def test_cli_validate_reports_and_checks_the_gymnasium_tasks_spec(tmp_path):
    """A gymnasium task brings its own spec (as in `train`), not the default reach arm's, and
    an existing store is checked against it."""
    from o2o_robot.data.store import TransitionStore

    store = tmp_path / "reach.zarr"
    config = write(tmp_path, {"sim": {"task": "InvertedPendulum-v5"},
                              "store": {"path": str(store)}})
    fresh = run_cli("config", "validate", str(config))
    assert fresh.returncode == 0, fresh.stderr
    assert "task InvertedPendulum-v5: obs_dim 4, act_dim 1" in fresh.stdout
    assert "not created yet" in fresh.stdout
    TransitionStore.create(store, 12, 3, spec={"task": "reach"}).close()
    wrong = run_cli("config", "validate", str(config))
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert f"store.path {store}" in wrong.stderr and "obs_dim is 12" in wrong.stderr
    assert "'InvertedPendulum-v5' has 4" in wrong.stderr


# ------------------------------------------------------------------------------------ cameras
def camera(**kw) -> dict:
    return {"name": "front", "topic": "camera/image", "type": "image", "width": 64,
            "height": 48, **kw}


def test_cameras_default_to_none_and_their_shapes_and_stacks(tmp_path):
    from o2o_robot.config import camera_shapes, frame_stacks

    assert load_config(write(tmp_path, "")).robot.cameras == []
    cfg = load_config(write(tmp_path, {"robot": {"cameras": [
        camera(), camera(name="wrist", topic="wrist/compressed", type="compressed_image",
                         channels=1, crop=[10, 0, 100, 80], frame_stack=2)]}}))
    assert camera_shapes(cfg) == {"front": (48, 64, 3), "wrist": (48, 64, 1)}
    assert frame_stacks(cfg) == {"front": 3, "wrist": 2}
    assert cfg.robot.obs_dim == 12          # the state vector is unchanged by cameras


@pytest.mark.parametrize("cams, message", [
    ([camera(type="depth")], "robot.cameras.0.type: must be one of 'image' or "
                             "'compressed_image', got 'depth'"),
    ([camera(width=0)], "robot.cameras.0.width: must be >= 1, got 0"),
    ([camera(channels=4)], "robot.cameras.0.channels: must be one of 1 or 3, got 4"),
    ([camera(crop=[0, 0, 10])], "robot.cameras.0.crop: must have at least 4 entries"),
    ([camera(crop=[0, -1, 10, 10])], "robot.cameras.0.crop: expected [x >= 0, y >= 0"),
    ([camera(frame_stack=0)], "robot.cameras.0.frame_stack: must be >= 1, got 0"),
    ([camera(name="state")], "robot.cameras.0.name: 'state' is the state vector's key"),
    ([camera(name="front cam")], "robot.cameras.0.name: string should match pattern"),
    ([camera(), camera(topic="other")], "robot.cameras: entries 0 and 1 are both named 'front'"),
    ([camera(zoom=2)], "robot.cameras.0.zoom: unknown key"),
    ([camera(topic="task_obs")], "robot.cameras.0.topic: topic 'task_obs' is also "
                                 "robot.observations.1.topic"),
])
def test_bad_camera_entries_name_the_key(tmp_path, cams, message):
    assert message in error_of(write(tmp_path, {"robot": {"cameras": cams}}))


def test_cli_validate_lists_the_cameras_of_the_pixel_task():
    out = subprocess.run([sys.executable, "-m", "o2o_robot.cli", "config", "validate",
                          str(ROOT / "config" / "sim_reach_pixels.yaml")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "obs_dim 9, act_dim 3" in out.stdout
    assert "cameras: front (image on camera/front/image_raw, 48x48x3, 3 frames)" in out.stdout
