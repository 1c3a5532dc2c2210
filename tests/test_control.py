"""o2o_robot.control without ROS: observation assembly, safety filter, rewards, episodes, ticks."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from o2o_robot.config import (ControlConfig, ObservationSource, RewardConfig, RobotSpec,
                              SafetyConfig)
from o2o_robot.control.core import ControlCore
from o2o_robot.control.episode import EpisodeTracker
from o2o_robot.control.example_rewards import reach_distance
from o2o_robot.control.observation import MalformedMessage, ObservationAssembler
from o2o_robot.control.rewards import (FunctionReward, RewardFunctionError, SuccessButtonReward,
                                       TopicReward, load_reward_function)
from o2o_robot.control.safety import SafetyFilter, SafetyFlag, flag_names
from o2o_robot.data.schema import FIELDS, SOURCE_CODE, validate_rows

ROOT = Path(__file__).resolve().parents[1]
JOINTS = ["joint1", "joint2", "joint3"]
LOW, HIGH = [-2.0] * 3, [2.0] * 3


def feed(asm: ObservationAssembler, t: float, k: float = 0.0) -> np.ndarray:
    """Send the default RobotSpec's two sources at time t; return the obs they should make."""
    pos, vel = [k + 0.1, k + 0.2, k + 0.3], [k - 0.1, k - 0.2, k - 0.3]
    task = [k, 0.0, 0.0, k, 0.0, 1.0]
    assert asm.update_joint_state("joint_states", JOINTS, pos, vel, [], stamp_s=t)
    assert asm.update_array("task_obs", task, stamp_s=t)
    return np.array([pos[0], vel[0], pos[1], vel[1], pos[2], vel[2], *task], np.float32)


# ------------------------------------------------------------------------------ observation
def test_joint_state_assembled_by_name_whatever_the_message_order():
    asm = ObservationAssembler(RobotSpec())
    ok = asm.update_joint_state("/joint_states", ["joint3", "gripper", "joint1", "joint2"],
                                position=[3.0, 9.0, 1.0, 2.0], velocity=[-3.0, 9.0, -1.0, -2.0],
                                stamp_s=0.0)
    assert ok and asm.update_array("task_obs", [4, 5, 6, 7, 8, 9], stamp_s=0.0)
    # joint-major, config order: j1.pos, j1.vel, j2.pos, ...; then the array
    np.testing.assert_array_equal(asm.assemble(),
                                  [1, -1, 2, -2, 3, -3, 4, 5, 6, 7, 8, 9])
    assert asm.assemble().dtype == np.float32 and asm.assemble().shape == (12,)
    # The cached joint lookup follows a change of message order.
    asm.update_joint_state("joint_states", JOINTS, [1.5, 2.5, 3.5], [0, 0, 0], stamp_s=0.1)
    np.testing.assert_array_equal(asm.assemble()[:6], [1.5, 0, 2.5, 0, 3.5, 0])


def test_pose_source_and_assemble_into_buffer():
    robot = RobotSpec(observations=[ObservationSource(topic="ee_pose", type="pose_stamped")])
    asm = ObservationAssembler(robot)
    assert asm.update_pose("ee_pose", [1, 2, 3], [0, 0, 0, 1], stamp_s=0.0)
    out = np.full(7, -1.0, np.float32)
    assert asm.assemble(out) is out
    np.testing.assert_array_equal(out, [1, 2, 3, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="expected float32"):
        asm.assemble(np.zeros(7, np.float64))


def test_ready_ages_and_stale_transitions():
    asm = ObservationAssembler(RobotSpec())
    assert not asm.ready and asm.stale(0.0, 200) == ["joint_states", "task_obs"]
    assert asm.ages_ms(0.0)["joint_states"] == math.inf
    asm.update_joint_state("joint_states", JOINTS, [0] * 3, [0] * 3, stamp_s=1.0)
    assert not asm.ready and asm.stale(1.0, 200) == ["task_obs"]
    asm.update_array("task_obs", [0] * 6, stamp_s=1.1)
    assert asm.ready
    assert asm.ages_ms(1.15) == pytest.approx({"joint_states": 150.0, "task_obs": 50.0})
    assert asm.stale(1.15, 200) == [] and not asm.any_stale(1.15, 200)
    assert asm.stale(1.25, 200) == ["joint_states"] and asm.any_stale(1.25, 200)
    assert asm.stale(1.35, 200) == ["joint_states", "task_obs"]
    asm.update_joint_state("joint_states", JOINTS, [0] * 3, [0] * 3, stamp_s=1.3)
    assert asm.stale(1.35, 200) == ["task_obs"]          # a fresh message clears staleness


POSE_ROBOT = RobotSpec(observations=[*RobotSpec().observations,
                                     ObservationSource(topic="ee_pose", type="pose_stamped")])
MALFORMED = [
    ("joint_states", lambda a: a.update_joint_state("joint_states", ["joint1", "joint2"], [0, 0],
                                                    [0, 0], stamp_s=5), "missing joint(s) joint3"),
    ("joint_states", lambda a: a.update_joint_state("joint_states", JOINTS, [0, np.nan, 0],
                                                    [0, 0, 0], stamp_s=5), "NaN or inf"),
    ("joint_states", lambda a: a.update_joint_state("joint_states", JOINTS, [0, 0, 0], [],
                                                    stamp_s=5), "velocity: 0 values for 3"),
    ("joint_states", lambda a: a.update_array("joint_states", [0] * 6, stamp_s=5),
     "configured as joint_state"),
    ("task_obs", lambda a: a.update_array("task_obs", [0] * 5, stamp_s=5), "expected 6 values"),
    ("task_obs", lambda a: a.update_array("task_obs", [0, 0, np.inf, 0, 0, 0], stamp_s=5),
     "NaN or inf"),
    ("task_obs", lambda a: a.update_array("task_obs", [0] * 6, stamp_s=float("nan")),
     "stamp_s is not finite"),
    ("ee_pose", lambda a: a.update_pose("ee_pose", [0, 0, 0], [0, 0, 0, 0], stamp_s=5),
     "zero quaternion"),
    ("wrist_cam", lambda a: a.update_array("wrist_cam", [0] * 6, stamp_s=5),
     "not a configured observation topic"),
]


@pytest.mark.parametrize("topic, send, reason", MALFORMED, ids=[m[2] for m in MALFORMED])
def test_malformed_message_rejected_counted_previous_kept(topic, send, reason):
    asm = ObservationAssembler(POSE_ROBOT)
    feed(asm, 1.0, k=0.5)
    asm.update_pose("ee_pose", [1, 2, 3], [0, 0, 0, 1], stamp_s=1.0)
    before, ages = asm.assemble(), asm.ages_ms(2.0)
    assert send(asm) is False
    assert asm.dropped == {topic: 1}
    assert reason in asm.drop_reasons[topic]
    np.testing.assert_array_equal(asm.assemble(), before)
    assert asm.ages_ms(2.0) == ages                      # the rejected stamp was not taken
    assert send(asm) is False and asm.dropped[topic] == 2


def test_nan_in_an_unconfigured_joint_is_not_our_business():
    """Negative control for the NaN check: only the selected joints must be finite."""
    asm = ObservationAssembler(RobotSpec())
    assert asm.update_joint_state("joint_states", [*JOINTS, "gripper"], [1, 2, 3, np.nan],
                                  [0, 0, 0, np.nan], stamp_s=0.0)
    assert asm.dropped == {}


def test_strict_mode_raises_malformed_message_after_counting():
    asm = ObservationAssembler(RobotSpec(), strict=True)
    with pytest.raises(MalformedMessage, match="missing joint") as info:
        asm.update_joint_state("joint_states", ["joint1"], [0], [0], stamp_s=0.0)
    assert info.value.topic == "joint_states" and asm.dropped == {"joint_states": 1}


# ----------------------------------------------------------------------------------- safety
def test_nan_guard_holds_and_counts():
    sf = SafetyFilter(LOW, HIGH)
    out, flags = sf.filter([np.nan, 0.5, 0.5])
    np.testing.assert_array_equal(out, [0, 0, 0])
    assert flags == SafetyFlag.NON_FINITE | SafetyFlag.HELD and sf.counts["non_finite"] == 1
    assert flag_names(flags) == ["non_finite", "held"]
    out, flags = sf.filter([0.5, 0.5, 0.5])          # negative control: finite passes unchanged
    np.testing.assert_array_equal(out, [0.5, 0.5, 0.5])
    assert flags == SafetyFlag.NONE and sf.counts["passed"] == 1
    out, flags = sf.filter([1.0, 2.0])               # wrong length is held too
    assert flags & SafetyFlag.BAD_SHAPE and sf.counts["bad_shape"] == 1


def test_clip_to_bounds_counted():
    sf = SafetyFilter(LOW, HIGH)
    out, flags = sf.filter([5.0, -7.0, 1.0])
    np.testing.assert_array_equal(out, [2.0, -2.0, 1.0])
    assert flags == SafetyFlag.CLIPPED and sf.counts["clipped"] == 1
    _, flags = sf.filter([2.0, -2.0, 0.0])           # on the bound is not clipped
    assert flags == SafetyFlag.NONE and sf.counts["clipped"] == 1


def test_rate_limit_relative_to_last_published_and_off_when_none():
    sf = SafetyFilter(LOW, HIGH, max_delta_per_tick=0.5)
    out1, f1 = sf.filter([2.0, -2.0, 0.2])
    out2, f2 = sf.filter([2.0, -2.0, 0.2])
    np.testing.assert_allclose(out1, [0.5, -0.5, 0.2])
    np.testing.assert_allclose(out2, [1.0, -1.0, 0.2])
    assert f1 == f2 == SafetyFlag.RATE_LIMITED and sf.counts["rate_limited"] == 2
    free = SafetyFilter(LOW, HIGH, max_delta_per_tick=None)     # negative control
    out, flags = free.filter([2.0, -2.0, 0.2])
    np.testing.assert_array_equal(out, [2.0, -2.0, 0.2])
    assert flags == SafetyFlag.NONE and free.counts["rate_limited"] == 0


def test_estop_latch_persists_after_release_until_cleared():
    sf = SafetyFilter(LOW, HIGH, hold="zero")
    sf.filter([1.0, 1.0, 1.0])
    sf.estop(True)
    assert sf.clear_estop() is False and sf.counts["estop_clear_refused"] == 1
    sf.estop(False)                                   # the signal drops: the latch stays
    out, flags = sf.filter([1.0, 1.0, 1.0])
    np.testing.assert_array_equal(out, [0, 0, 0])
    assert flags == SafetyFlag.ESTOP | SafetyFlag.HELD and sf.estopped
    assert sf.clear_estop() is True and not sf.estopped
    out, flags = sf.filter([1.0, 1.0, 1.0])
    assert flags == SafetyFlag.NONE and out.tolist() == [1.0, 1.0, 1.0]
    assert sf.counts["estop_latched"] == 1 and sf.counts["estop_hold"] == 1
    assert sf.state()["counts"]["estop_cleared"] == 1


def test_stale_observations_hold():
    sf = SafetyFilter(LOW, HIGH, hold="last")
    sf.filter([0.3, 0.3, 0.3])
    out, flags = sf.filter([1.0, 1.0, 1.0], stale=True)
    assert flags == SafetyFlag.STALE | SafetyFlag.HELD and sf.counts["stale_hold"] == 1
    np.testing.assert_array_equal(out, [0.3, 0.3, 0.3])
    _, flags = sf.filter([1.0, 1.0, 1.0], stale=False)
    assert flags == SafetyFlag.NONE


@pytest.mark.parametrize("hold, expected", [("zero", [0.5, 0.0, 0.0]), ("last", [1.0, -1.0, 0.5])])
def test_hold_zero_vs_last_clipped_into_bounds(hold, expected):
    sf = SafetyFilter([0.5, -2, -2], [2, 2, 2], hold=hold)   # 0 is outside dim 0's bounds
    sf.filter([1.0, -1.0, 0.5])
    out, flags = sf.filter(None)
    assert flags == SafetyFlag.NO_ACTION | SafetyFlag.HELD
    np.testing.assert_array_equal(out, expected)


def test_hold_bypasses_rate_limit_and_the_policy_ramps_back_from_it():
    sf = SafetyFilter(LOW, HIGH, max_delta_per_tick=0.5, hold="zero")
    for _ in range(4):
        sf.filter([2.0, 2.0, 2.0])
    out, _ = sf.filter([2.0, 2.0, 2.0], stale=True)
    np.testing.assert_array_equal(out, [0, 0, 0])           # a stop is immediate
    out, flags = sf.filter([2.0, 2.0, 2.0])
    np.testing.assert_allclose(out, [0.5, 0.5, 0.5])
    assert flags == SafetyFlag.RATE_LIMITED


# ---------------------------------------------------------------------------------- rewards
@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "import math\nNOT_CALLABLE = 3\n"
        "def nan_reward(o, a, n):\n    return math.nan\n"
        "def text_reward(o, a, n):\n    return 'high'\n"
        "def raising_reward(o, a, n):\n    raise RuntimeError('boom')\n"
        "def ok_reward(o, a, n):\n    return float(n[0])\n")
    (tmp_path / "broken_rewards.py").write_text("import not_a_real_package_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


@pytest.mark.parametrize("path, problem", [
    ("no_such_module_abc:f", "cannot import module 'no_such_module_abc'"),
    ("broken_rewards:f", "cannot import module 'broken_rewards': ModuleNotFoundError"),
    ("my_rewards:missing", "has no attribute 'missing'"),
    ("my_rewards:NOT_CALLABLE", "is not callable (it is a int)"),
    ("my_rewards:nan_reward", "returned nan, expected a finite number"),
    ("my_rewards:text_reward", "returned str 'high', expected a real number"),
    ("my_rewards:raising_reward", "raised RuntimeError: boom"),
    ("my_rewards.ok_reward", "expected 'package.module:function'"),
])
def test_reward_function_validation_names_path_and_problem(reward_module, path, problem):
    with pytest.raises(RewardFunctionError) as info:
        load_reward_function(path, obs_dim=12, act_dim=3)
    assert f"reward.function {path!r}" in str(info.value)
    assert problem in str(info.value)


def test_valid_reward_function_loads_and_a_runtime_failure_is_counted(reward_module):
    fn = FunctionReward("my_rewards:ok_reward", obs_dim=12, act_dim=3)
    assert fn.reward(np.zeros(12), np.zeros(3), np.full(12, 0.25)) == 0.25
    assert fn.reward(np.zeros(12), np.zeros(3), np.full(12, np.inf)) is None
    assert fn.counts == {"calls": 2, "errors": 1} and "finite" in fn.last_error


def test_example_reach_reward_is_minus_distance():
    obs = np.zeros(12, np.float32)
    nxt = np.zeros(12, np.float32)
    nxt[6:9], nxt[9:12] = [0.1, 0.2, 0.3], [0.1, 0.5, 0.7]
    assert reach_distance(obs, np.zeros(3), nxt) == pytest.approx(-0.5)
    loaded = load_reward_function("o2o_robot.control.example_rewards:reach_distance", 12, 3)
    assert loaded(obs, np.zeros(3), nxt) == pytest.approx(-0.5)


def test_topic_reward_consumed_once_missing_counted():
    src = TopicReward()
    assert src.update(0.5) and src.update(0.75)          # the newer one wins
    assert src.reward(None, None, None) == 0.75
    assert src.reward(None, None, None) == 0.0
    assert not src.update(float("nan"))
    assert src.counts == {"received": 2, "rejected": 1, "overwritten": 1, "consumed": 1,
                          "missing": 1}


def test_success_button_reward_is_sparse():
    src = SuccessButtonReward()
    assert src.reward(None, None, None, success=False) == 0.0
    assert src.reward(None, None, None, success=True) == 1.0


# --------------------------------------------------------------------------------- episodes
def test_time_limit_truncates_and_never_terminates():
    ep = EpisodeTracker(3)
    assert [ep.step(0.0) for _ in range(3)] == [(False, False), (False, False), (False, True)]
    assert ep.needs_reset and ep.history[-1].end_reason == "time_limit"
    with pytest.raises(RuntimeError):
        ep.step(0.0)
    assert ep.reset_done() and ep.steps == 0 and ep.index == 1


@pytest.mark.parametrize("mark, kwargs, expected", [
    ("mark_success", {}, (True, False, True)),
    ("mark_success", {"terminate_on_success": False}, (False, True, True)),
    ("mark_failure", {}, (False, True, False)),
    ("mark_failure", {"failure_is_terminal": True}, (True, False, False)),
])
def test_operator_labels_end_the_episode(mark, kwargs, expected):
    ep = EpisodeTracker(50, **kwargs)
    ep.step(0.0)
    assert getattr(ep, mark)()
    terminated, truncated = ep.step(1.0)
    assert (terminated, truncated, ep.history[-1].success) == expected
    assert ep.history[-1].steps == 2 and ep.history[-1].episode_return == 1.0
    assert not ep.mark_success() and ep.counts["labels_ignored"] == 1   # between episodes


def test_reset_refused_mid_episode():
    ep = EpisodeTracker(5)
    ep.step(0.0)
    assert not ep.reset_done() and ep.steps == 1 and ep.counts["resets_refused"] == 1


# ------------------------------------------------------------------------------ ControlCore
class FakePolicy:
    """Deterministic policy: action = first three obs entries * gain; fixed version."""

    def __init__(self, version=7, gain=1.0):
        self.version, self.gain, self.calls = version, gain, 0

    def __call__(self, obs):
        self.calls += 1
        return obs[:3] * self.gain, self.version


def make_core(policy=None, *, steps=50, reward=None, safety=None, **kw) -> ControlCore:
    control = ControlConfig(max_episode_steps=steps, obs_timeout_ms=200,
                            reward=reward or RewardConfig(source="topic"))
    return ControlCore(RobotSpec(), control, safety or SafetyConfig(),
                       FakePolicy() if policy is None else policy, **kw)


def run(core, ticks, start=0, dt=0.05):
    """Feed fresh obs and tick; return (obs sent per tick, results)."""
    sent, results = [], []
    for i in range(start, start + ticks):
        sent.append(feed(core.observations, i * dt, k=0.01 * i))
        results.append(core.tick(i * dt))
    return sent, results


def test_policy_ticks_make_online_transitions_one_tick_later():
    core = make_core()
    sent, res = run(core, 4)
    assert [r.source for r in res] == ["online"] * 4 and res[0].transition is None
    for t in (1, 2, 3):
        row = res[t].transition
        assert set(row) == set(FIELDS)
        np.testing.assert_array_equal(row["obs"], sent[t - 1])
        np.testing.assert_array_equal(row["next_obs"], sent[t])
        np.testing.assert_allclose(row["action"], res[t - 1].action, rtol=1e-6)
        assert row["source"] == SOURCE_CODE["online"] and row["policy_version"] == 7
        assert row["timestamp"] == pytest.approx((t - 1) * 0.05)
        assert not row["terminated"] and not row["truncated"]
    rows = {f: np.stack([np.asarray(r.transition[f]) for r in res[1:]]) for f in FIELDS}
    assert validate_rows(rows, obs_dim=12, act_dim=3)["obs"].shape == (3, 12)
    assert core.stats()["reward"]["missing"] == 3              # no reward topic data: 0, counted


def test_rows_record_the_safe_action_actually_sent():
    core = make_core(FakePolicy(gain=100.0), safety=SafetyConfig(max_delta_per_tick=0.5))
    _, res = run(core, 2)
    assert res[0].flags & SafetyFlag.RATE_LIMITED
    np.testing.assert_allclose(res[1].transition["action"], res[0].action)
    assert np.abs(res[0].action).max() == pytest.approx(0.5)


def test_not_ready_or_stale_holds_without_transition_and_drops_the_pending_one():
    core = make_core()
    res = core.tick(0.0)
    assert (res.source, res.hold_reason, res.transition) == ("hold", "not_ready", None)
    run(core, 1)                                    # obs at t=0, action pending
    res = core.tick(0.5)                            # 500 ms later: stale
    assert (res.source, res.hold_reason, res.transition) == ("hold", "stale", None)
    assert res.flags & SafetyFlag.STALE and core.counts["dropped_stale"] == 1
    _, (res,) = run(core, 1, start=20)              # fresh again: no row (nothing pending)
    assert res.source == "online" and res.transition is None


def test_teleop_engaged_makes_intervention_rows_with_the_teleop_action():
    core = make_core(teleop_timeout_ms=100)
    run(core, 1)
    core.set_teleop(True, [0.25, -0.25, 0.0], stamp_s=0.05)
    _, (r1, r2) = run(core, 2, start=1)
    assert r1.source == "intervention" and r1.action.tolist() == [0.25, -0.25, 0.0]
    assert r2.transition["source"] == SOURCE_CODE["intervention"]
    np.testing.assert_array_equal(r2.transition["action"], [0.25, -0.25, 0.0])
    assert r2.transition["policy_version"] == 7
    _, (r3,) = run(core, 1, start=5)                # teleop silent for 200 ms: hold, not policy
    assert (r3.source, r3.hold_reason) == ("hold", "teleop_stale")
    assert not core.set_teleop(None, [np.nan, 0, 0]) and core.counts["teleop_rejected"] == 1
    core.set_teleop(False)
    _, (r4,) = run(core, 1, start=6)
    assert r4.source == "online"
    assert core.stats()["intervention_rate"] == pytest.approx(2 / 4)
    assert core.stats()["intervention_rate_total"] == pytest.approx(2 / 4)


def test_time_limit_row_is_truncated_then_hold_until_reset():
    core = make_core(steps=3)
    _, res = run(core, 5)
    assert [r.transition["truncated"] for r in res[1:4]] == [False, False, True]
    assert not any(r.transition["terminated"] for r in res[1:4])
    assert res[3].episode_done and res[3].needs_reset
    assert (res[4].source, res[4].hold_reason, res[4].transition) == ("hold", "needs_reset", None)
    assert core.episode_reset_done()
    _, res = run(core, 2, start=5)
    assert res[0].source == "online" and res[1].transition is not None
    assert not res[1].transition["truncated"] and core.episode.steps == 1


def test_success_button_row_gets_reward_one_and_terminates():
    core = make_core(reward=RewardConfig(source="success_button"))
    run(core, 2)
    assert core.mark_success()
    _, (res,) = run(core, 1, start=2)
    row = res.transition
    assert row["reward"] == 1.0 and row["terminated"] and not row["truncated"] and res.needs_reset


def test_function_reward_from_config_and_bad_path_fails_at_construction():
    path = "o2o_robot.control.example_rewards:reach_distance"
    core = make_core(reward=RewardConfig(source="function", function=path))
    sent, res = run(core, 2)
    expected = -np.linalg.norm(sent[1][6:9] - sent[1][9:12])
    assert res[1].transition["reward"] == pytest.approx(expected)
    with pytest.raises(RewardFunctionError, match="no attribute 'nope'"):
        make_core(reward=RewardConfig(source="function",
                                      function="o2o_robot.control.example_rewards:nope"))


def test_policy_error_and_nan_policy_hold_without_rows():
    def broken(obs):
        raise RuntimeError("session died")
    core = make_core(broken)
    _, (res,) = run(core, 1)
    assert (res.source, res.hold_reason) == ("hold", "policy_error")
    assert core.counts["policy_errors"] == 1 and "session died" in core.last_policy_error
    core = make_core(lambda obs: (np.full(3, np.nan), 3))
    _, res = run(core, 2)
    assert [(r.source, r.hold_reason, r.transition) for r in res] == [("hold", "non_finite", None)] * 2


def test_the_non_finite_streak_counts_the_policys_consecutive_nan_ticks_only():
    """The actor node rolls a policy back on this streak: it must count the serving policy's
    NaN/inf actions in a row, restart at a finite one, and ignore an operator's ticks."""
    nan = {"on": True}
    core = make_core(lambda obs: (np.full(3, np.nan if nan["on"] else 0.1), 3),
                     teleop_timeout_ms=1000)
    run(core, 3)
    assert core.non_finite_streak == 3 and core.stats()["non_finite_streak"] == 3
    nan["on"] = False
    run(core, 1, start=3)
    assert core.non_finite_streak == 0                      # a finite action ends the streak
    nan["on"] = True
    core.set_teleop(True, [0.1, 0.1, 0.1], stamp_s=0.2)
    _, res = run(core, 2, start=4)
    assert [r.source for r in res] == ["intervention"] * 2 and core.non_finite_streak == 0
    core.set_teleop(False)
    run(core, 2, start=6)
    assert core.non_finite_streak == 2


def test_estop_holds_the_core_until_cleared():
    core = make_core()
    core.estop(True)
    core.estop(False)
    _, res = run(core, 2)
    assert [(r.source, r.hold_reason) for r in res] == [("hold", "estop")] * 2
    assert core.clear_estop()
    _, res = run(core, 2, start=2)
    assert [r.source for r in res] == ["online", "online"] and res[1].transition is not None
    assert json.dumps(core.stats(now_s=0.2))         # status is plain JSON


def test_control_package_imports_no_heavy_stack():
    code = ("import sys, json; import o2o_robot.control.core, o2o_robot.control.example_rewards; "
            "print(json.dumps(sorted(m for m in ('rclpy', 'torch', 'zarr', 'onnxruntime', "
            "'mujoco') if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_every_hold_reason_is_declared():
    from o2o_robot.control.core import HOLD_REASONS
    core = make_core(lambda obs: ([1.0, 2.0], 1))                 # wrong length -> bad_shape
    seen = {core.tick(0.0).hold_reason}
    seen |= {r.hold_reason for r in run(core, 1)[1]}
    assert seen == {"not_ready", "bad_shape"} and seen <= set(HOLD_REASONS)
