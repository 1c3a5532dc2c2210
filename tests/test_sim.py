"""The reach env, make_env/env_spec, the scripted expert and demo generation."""
from __future__ import annotations

import importlib.util

import mujoco
import numpy as np
import pytest

from o2o_robot.config import ControlConfig, RobotSpec, SimConfig
from o2o_robot.sim.demos import generate_demos
from o2o_robot.sim.envs import env_spec, make_env
from o2o_robot.sim.experts import ScriptedReachExpert, expert_for, rollout_success_rate
from o2o_robot.sim.reach import OBS_NAMES, ReachEnv


class ZeroPolicy:
    def act(self, obs):
        return np.zeros(3, dtype=np.float32)


def random_actions(n, seed=0):
    return np.random.default_rng(seed).uniform(-2, 2, size=(n, 3)).astype(np.float32)


# ------------------------------------------------------------------------------- obs and actions
def test_obs_layout_matches_mujoco_state():
    env = ReachEnv()
    obs, info = env.reset(seed=1)
    for action in random_actions(5):
        obs, _, _, _, info = env.step(action)
    assert obs.dtype == np.float32 and obs.shape == (12,)
    np.testing.assert_array_equal(obs[0:6:2], env.data.qpos.astype(np.float32))
    np.testing.assert_array_equal(obs[1:6:2], env.data.qvel.astype(np.float32))
    assert np.abs(obs[1:6:2]).max() > 0.1  # the arm is moving, so velocities are not all zero
    # The ee entries are the forward kinematics of the observed joints, computed independently.
    fresh = mujoco.MjData(env.model)
    fresh.qpos[:] = env.data.qpos
    mujoco.mj_forward(env.model, fresh)
    np.testing.assert_allclose(obs[6:9], fresh.site_xpos[env.ee_site_id], atol=1e-6)
    np.testing.assert_allclose(obs[9:12], env.target_position(), atol=1e-6)
    assert info["distance"] == pytest.approx(np.linalg.norm(obs[6:9] - obs[9:12]), abs=1e-5)


def test_obs_layout_matches_default_robot_spec():
    robot = RobotSpec()
    joints = robot.observations[0]
    names = [f"{j}.{f}" for j in joints.joint_names for f in joints.fields]
    assert list(OBS_NAMES[:6]) == names
    spec = env_spec(make_env(SimConfig()))
    assert spec["obs_dim"] == robot.obs_dim == 12
    assert spec["act_dim"] == robot.act_dim == 3
    assert spec["action_low"] == robot.action.low and spec["action_high"] == robot.action.high
    assert spec["action_names"] == robot.action.names
    assert spec["task"] == "reach" and spec["dt"] == pytest.approx(0.05)


def test_actions_are_clipped_to_bounds():
    clipped, reference = ReachEnv(), ReachEnv()
    clipped.reset(seed=2)
    reference.reset(seed=2)
    obs_a, *_ = clipped.step(np.array([10.0, -10.0, 0.5]))
    obs_b, *_ = reference.step(np.array([2.0, -2.0, 0.5]))
    np.testing.assert_array_equal(clipped.data.ctrl, [2.0, -2.0, 0.5])
    np.testing.assert_array_equal(obs_a, obs_b)
    assert abs(obs_a[1]) > 1.5  # joint1 really moves at about the bound


def test_bad_actions_are_rejected():
    env = ReachEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([0.0, np.nan, 0.0]))


def test_same_seed_same_actions_same_observations():
    envs = [make_env(SimConfig(), seed=3) for _ in range(2)]
    trajectories = []
    for env in envs:
        obs, _ = env.reset(seed=5)
        trajectory = [obs]
        for action in random_actions(20, seed=9):
            trajectory.append(env.step(action)[0])
        trajectories.append(np.stack(trajectory))
    np.testing.assert_array_equal(trajectories[0], trajectories[1])
    other, _ = envs[0].reset(seed=6)
    assert not np.allclose(other[9:12], trajectories[0][0][9:12])  # the seed matters


def test_make_env_seed_makes_plain_reset_reproducible():
    first = make_env(SimConfig(seed=11)).reset()[0]
    again = make_env(SimConfig(seed=11)).reset()[0]
    other = make_env(SimConfig(seed=12)).reset()[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_targets_lie_in_the_workspace_and_away_from_start():
    env = ReachEnv()
    for seed in range(50):
        obs, info = env.reset(seed=seed)
        assert obs[11] >= 0.05
        assert 0.15 - 1e-6 <= np.linalg.norm(obs[9:12] - [0, 0, 0.2]) <= 0.48 + 1e-6
        assert info["distance"] >= 0.1 and not info["is_success"]


# ------------------------------------------------------------------------ episodes and rewards
def test_time_limit_truncates_without_terminating():
    env = make_env(SimConfig(), max_episode_steps=5)
    env.reset(seed=0)
    flags = [env.step(np.zeros(3))[2:4] for _ in range(5)]
    assert flags == [(False, False)] * 4 + [(False, True)]


def place_target_near_ee(env, offset=0.01):
    env.reset(seed=0)
    ee = env.ee_position()
    env.set_state(env.joint_positions(), np.zeros(3), ee + [offset, 0.0, 0.0])


def test_success_terminates_with_sparse_reward_one():
    env = ReachEnv("sparse")
    place_target_near_ee(env)
    obs, reward, terminated, truncated, info = env.step(np.zeros(3))
    assert (reward, terminated, truncated, info["is_success"]) == (1.0, True, False, True)
    np.testing.assert_allclose(obs[9:12], env.target_position(), atol=1e-6)


def test_far_target_gives_zero_sparse_and_negative_distance_dense():
    sparse, dense = ReachEnv("sparse"), ReachEnv("dense")
    for env in (sparse, dense):
        place_target_near_ee(env, offset=0.2)
    _, r_sparse, term_sparse, _, _ = sparse.step(np.zeros(3))
    _, r_dense, _, _, info = dense.step(np.zeros(3))
    assert (r_sparse, term_sparse) == (0.0, False)
    assert r_dense == pytest.approx(-info["distance"])
    assert info["distance"] == pytest.approx(0.2, abs=1e-3)


def test_success_without_termination_when_disabled():
    env = ReachEnv("sparse", terminate_on_success=False)
    place_target_near_ee(env)
    _, reward, terminated, _, info = env.step(np.zeros(3))
    assert (reward, terminated, info["is_success"]) == (1.0, False, True)


def test_set_state_rejects_bad_shapes():
    env = ReachEnv()
    with pytest.raises(ValueError, match="target"):
        env.set_state(np.zeros(3), np.zeros(3), np.zeros(2))


# ------------------------------------------------------------------------------------- expert
def test_expert_succeeds_and_zero_actions_do_not():
    env = make_env(SimConfig(), max_episode_steps=ControlConfig().max_episode_steps)
    expert = ScriptedReachExpert(env, noise=0.1, seed=0)
    assert rollout_success_rate(env, expert, episodes=20, seed=100) >= 0.9
    assert rollout_success_rate(env, ZeroPolicy(), episodes=20, seed=100) < 0.2


def test_expert_actions_are_bounded_and_noisy():
    env = make_env(SimConfig())
    obs, _ = env.reset(seed=0)
    quiet, noisy = ScriptedReachExpert(env, 0.0, seed=0), ScriptedReachExpert(env, 1.0, seed=0)
    actions = np.stack([noisy.act(obs) for _ in range(200)])
    assert actions.dtype == np.float32 and np.all(np.abs(actions) <= 2.0)
    np.testing.assert_array_equal(quiet.act(obs), quiet.act(obs))
    assert actions.std(axis=0).min() > 0.5


# ------------------------------------------------------------------------------ other tasks
def test_unknown_task_is_named_and_reach_suggested():
    with pytest.raises(ValueError, match=r"'Nope-v0'.*'reach'"):
        make_env(SimConfig(task="Nope-v0"))


def test_discrete_action_task_is_refused():
    with pytest.raises(ValueError, match="CartPole-v1.*Discrete"):
        make_env(SimConfig(task="CartPole-v1"))


def test_box_gymnasium_task_has_dims_time_limit_and_no_expert():
    env = make_env(SimConfig(task="Pendulum-v1"), max_episode_steps=3)
    spec = env_spec(env)
    assert (spec["task"], spec["obs_dim"], spec["act_dim"]) == ("Pendulum-v1", 3, 1)
    assert spec["action_low"] == [-2.0] and spec["action_names"] == []
    env.reset(seed=0)
    assert [env.step(np.zeros(1))[3] for _ in range(3)] == [False, False, True]
    with pytest.raises(ValueError, match="no scripted expert for task 'Pendulum-v1'"):
        expert_for(env, 0.1, 0)


@pytest.mark.skipif(importlib.util.find_spec("imageio") is None,
                    reason="gymnasium's MuJoCo envs import imageio (gymnasium[mujoco])")
def test_gymnasium_mujoco_task_has_the_right_dims():
    spec = env_spec(make_env(SimConfig(task="InvertedPendulum-v5")))
    assert (spec["obs_dim"], spec["act_dim"]) == (4, 1)
    assert spec["action_low"] == [-3.0] and spec["action_high"] == [3.0]


# -------------------------------------------------------------------------------------- demos
def reach_store(path, spec=None, obs_dim=12):
    from o2o_robot.data.store import TransitionStore

    return TransitionStore.create(path, obs_dim, 3, spec=spec, durable=False)


def test_generate_demos_writes_whole_labelled_episodes(tmp_path):
    store = reach_store(tmp_path / "s")
    summary = generate_demos(store, SimConfig(), episodes=4, noise=0.1, seed=0, progress=False)
    rows, episodes = store.read(), store.episodes()
    assert summary["episodes"] == 4 and summary["transitions"] == len(store) == len(rows["obs"])
    assert np.all(rows["source"] == 0) and np.all(rows["policy_version"] == 0)
    for ep in episodes:
        term, trunc = rows["terminated"][ep["start"]:ep["end"]], rows["truncated"][ep["start"]:ep["end"]]
        assert ep["success"] == bool(term[-1])  # sparse reach: success ends it
        assert term[-1] or trunc[-1]
        assert not (term[:-1] | trunc[:-1]).any()
        np.testing.assert_array_equal(rows["next_obs"][ep["start"]:ep["end"] - 1],
                                      rows["obs"][ep["start"] + 1:ep["end"]])
    assert summary["success_rate"] == sum(e["success"] for e in episodes) / 4
    assert summary["mean_return"] == pytest.approx(float(rows["reward"].sum()) / 4)


def test_generate_demos_refuses_a_store_of_other_dims(tmp_path):
    store = reach_store(tmp_path / "s", obs_dim=17)
    with pytest.raises(ValueError, match="obs_dim"):
        generate_demos(store, SimConfig(), episodes=1, noise=0.1, seed=0, progress=False)
    assert store.num_buffered == 0 and len(store) == 0


def test_generate_demos_refuses_a_store_of_another_task(tmp_path):
    store = reach_store(tmp_path / "s", spec={"task": "Other-v1"})
    with pytest.raises(ValueError, match="'Other-v1'"):
        generate_demos(store, SimConfig(), episodes=1, noise=0.1, seed=0, progress=False)
    assert store.num_buffered == 0 and len(store) == 0


def test_generate_demos_into_a_real_store(tmp_path):
    store_module = pytest.importorskip("o2o_robot.data.store")
    spec = env_spec(make_env(SimConfig()))
    path = tmp_path / "demos.zarr"
    writer = store_module.TransitionStore.create(path, 12, 3, spec=spec, durable=False)
    summary = generate_demos(writer, SimConfig(), episodes=3, noise=0.1, seed=0, progress=False)
    reader = store_module.TransitionStore.open(path, "r")  # sees only committed rows
    episodes = reader.episodes()
    rows = reader.read()
    writer.close()
    assert reader.num_episodes == 3 and len(reader) == summary["transitions"]
    assert reader.spec == spec
    assert [e["source"] for e in episodes] == ["demo"] * 3
    assert sum(e["length"] for e in episodes) == summary["transitions"]
    assert np.all(rows["source"] == 0) and np.all(rows["policy_version"] == 0)
    for episode in episodes:
        last = episode["end"] - 1
        assert episode["success"] == bool(rows["terminated"][last])
        assert rows["terminated"][last] or rows["truncated"][last]
        assert episode["return"] == pytest.approx(
            rows["reward"][episode["start"]:episode["end"]].sum())
    assert np.mean([e["success"] for e in episodes]) == summary["success_rate"]
