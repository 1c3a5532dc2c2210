"""Teleop without ROS: the Joy mapping of both shipped device profiles (axes, scales, deadzones,
inversion, deadman, button edges), the keyboard's key state and its profile, the scripted
operator's schedule, and the demo recorder on a real store."""
from __future__ import annotations

import queue

import numpy as np
import pytest

from o2o_robot.config import JoyProfile, load_config
from o2o_robot.data.schema import EpisodeEnd, Transition
from o2o_robot.data.store import TransitionStore
from o2o_robot.teleop.joy import JoyError, JoyMapper
from o2o_robot.teleop.keyboard import HELP, KeyboardJoy, split_keys
from o2o_robot.teleop.recorder import DemoRecorder, episode_line
from o2o_robot.teleop.scripted import InterventionSchedule, ScriptedOperator

LOW, HIGH = [-2.0, -2.0, -1.0], [2.0, 2.0, 0.5]


def mapper(device: str, low=LOW, high=HIGH, **joy) -> JoyMapper:
    teleop = load_config(None, overrides={"teleop": {"device": device, **({"joy": joy} if joy else {})}}).teleop
    return JoyMapper(teleop.joy_profile(), low, high)


def pad(axes: dict[int, float] | None = None, pressed: tuple[int, ...] = ()):
    """An Xbox-style Joy message: 8 axes, 11 buttons."""
    a = [0.0] * 8
    a[2] = a[5] = 1.0                                    # triggers rest at +1
    for i, v in (axes or {}).items():
        a[i] = v
    return a, [int(i in pressed) for i in range(11)]


# --------------------------------------------------------------------------------- gamepad
def test_gamepad_maps_sticks_to_dimensions_with_deadzone_scale_and_bounds():
    m = mapper("gamepad")
    # left stick up (axis 1) full, left stick left (axis 0) half, right stick up (axis 4) down
    out = m.map(*pad({1: 1.0, 0: 0.5, 4: -1.0}, pressed=(4,)))
    d = (0.5 - 0.05) / 0.95                              # deadzone rescaled
    np.testing.assert_allclose(out.action, [2.0, 2.0 * d, -1.0])
    assert out.engaged and out.events == ()
    inside = m.map(*pad({1: 0.04, 0: -0.049}))          # inside the deadzone: rests
    np.testing.assert_array_equal(inside.action, [0.0, 0.0, 0.0])
    over = m.map(*pad({1: 3.0}))                         # out-of-range input is clipped
    assert over.action[0] == 2.0


def test_gamepad_deadman_engages_only_while_held():
    m = mapper("gamepad")
    assert not m.map(*pad({1: 1.0})).engaged             # moving without the deadman: no
    assert m.map(*pad({}, pressed=(4,))).engaged          # LB held, sticks at rest: engaged
    assert not m.map(*pad({}, pressed=(5,))).engaged      # RB is not the deadman


def test_gamepad_buttons_fire_on_press_edges_and_estop_reports_its_release():
    m = mapper("gamepad")
    assert m.map(*pad(pressed=(0,))).events == ("success",)
    assert m.map(*pad(pressed=(0,))).events == ()        # held: no second event
    assert m.map(*pad()).events == ()                     # release of a label: nothing
    assert m.map(*pad(pressed=(0, 1))).events == ("success", "failure")
    assert m.map(*pad(pressed=(2,))).events == ("estop",)
    assert m.map(*pad(pressed=(2,))).events == ()
    assert m.map(*pad()).events == ("estop_released",)


def test_configured_overrides_change_axes_scales_inversion_and_buttons():
    m = mapper("gamepad", axes=[{"axis": 3, "scale": 0.5, "invert": True, "deadzone": 0.0},
                                None, {"axis": 0}], deadman_button=5)
    out = m.map(*pad({3: 1.0, 0: 1.0, 1: 1.0}, pressed=(5,)))
    # dim 0: inverted half scale -> -1; dim 1 unmapped rests; dim 2 reaches its bound 0.5
    np.testing.assert_allclose(out.action, [-1.0, 0.0, 0.5])
    assert out.engaged and not m.map(*pad(pressed=(4,))).engaged


def test_asymmetric_bounds_rest_at_zero_clipped_in_and_deflect_to_each_side():
    m = mapper("gamepad", low=[0.2, -1.0, -3.0], high=[1.0, 0.0, 1.0])
    np.testing.assert_allclose(m.map(*pad()).action, [0.2, 0.0, 0.0])
    np.testing.assert_allclose(m.map(*pad({1: 1.0, 0: 1.0, 4: -1.0})).action, [1.0, 0.0, -3.0])
    np.testing.assert_allclose(m.map(*pad({1: -1.0, 0: -1.0, 4: 1.0})).action, [0.2, -1.0, 1.0])


def test_a_message_too_short_or_nan_is_refused_naming_the_key_and_keeps_edges():
    m = mapper("gamepad")
    with pytest.raises(JoyError, match=r"teleop\.joy\.axes\[2\]\.axis: index 4, the Joy message has 3 axes"):
        m.map([0.0, 0.0, 0.0], [0] * 11)
    with pytest.raises(JoyError, match=r"teleop\.joy\.deadman_button: index 4, .* 2 buttons"):
        m.map(pad()[0], [1, 0])                          # the short message pressed button 0
    with pytest.raises(JoyError, match=r"Joy\.axes\[1\]: NaN"):
        m.map(*pad({1: float("nan")}))
    assert m.map(*pad(pressed=(0,))).events == ("success",)   # the refused press did not count


def test_profile_that_does_not_fit_the_robot_is_refused():
    with pytest.raises(ValueError, match=r"teleop\.joy\.axes: 2 entries for 3 action dimensions"):
        mapper("gamepad", axes=[{"axis": 0}, {"axis": 1}])
    with pytest.raises(ValueError, match="nothing engages"):
        JoyMapper(JoyProfile(axes=[{"axis": 0}]), [-1.0], [1.0])


# ------------------------------------------------------------------------------ spacemouse
def test_spacemouse_engages_on_motion_and_maps_six_axes():
    m = mapper("spacemouse", low=[-1.0] * 6, high=[1.0] * 6)
    rest = m.map([0.05, -0.08, 0.0, 0.0, 0.0, 0.0], [0, 0])   # inside the 0.1 deadzone
    assert not rest.engaged and not rest.action.any()
    out = m.map([0.0, 0.0, 0.55, 0.0, 0.0, -1.0], [0, 0])
    assert out.engaged
    np.testing.assert_allclose(out.action, [0, 0, 0.5, 0, 0, -1.0])
    assert m.map([0.0] * 6, [1, 0]).events == ("success",) and not m.map([0.0] * 6, [0, 0]).engaged
    assert m.map([0.0] * 6, [0, 1]).events == ("failure",)


# -------------------------------------------------------------------------------- keyboard
def test_keyboard_keys_deflect_axes_for_the_hold_time_and_toggle_engagement():
    keys = KeyboardJoy(hold_s=0.5, speed=0.5)
    m = mapper("keyboard")
    assert keys.press("w", 0.0) is None and keys.press("d", 0.1) is None
    axes, buttons = keys.joy(0.2)
    assert axes[:2] == [0.5, -0.5] and buttons == [0, 0, 0, 0]
    out = m.map(axes, buttons)
    np.testing.assert_allclose(out.action, [1.0, -1.0, 0.0])   # speed 0.5 x bound 2
    assert not out.engaged
    assert keys.press("space", 0.3).startswith("ENGAGED")
    assert m.map(*keys.joy(0.4)).engaged
    assert keys.joy(0.55)[0][:2] == [0.0, -0.5]                # w expired, d still held
    assert keys.press("space", 0.56) == "released" and keys.joy(0.57) == ([0.0] * 6, [0] * 4)


def test_keyboard_labels_are_momentary_and_speed_is_bounded():
    keys, m = KeyboardJoy(), mapper("keyboard")
    for key in split_keys("\r"):
        assert keys.press(key, 0.0) == "success"
    assert m.map(*keys.joy(0.0)).events == ("success",)
    assert keys.joy(0.05)[1][1] == 0                           # consumed by one message
    keys.press("x", 0.1)
    assert m.map(*keys.joy(0.1)).events == ("estop",)
    assert m.map(*keys.joy(0.15)).events == ("estop_released",)
    for _ in range(20):
        keys.press("+", 0.2)
    assert keys.speed == 1.0 and keys.press("-", 0.2) == "speed 0.9"
    assert keys.press("?", 0.2) is None and "space" in HELP


def test_keyboard_input_bytes_split_into_keys_and_skip_escape_sequences():
    assert split_keys("W \x1b[Aa\r\x7f\x1b[15~x\x1b") == ["w", "space", "a", "enter", "backspace", "x"]


# ------------------------------------------------------------------------- scripted operator
def test_intervention_schedule_and_operator_follow_episode_events():
    sched = InterventionSchedule(every=2, steps=3)
    assert [sched.engaged(e, 0) for e in range(5)] == [True, False, True, False, True]
    assert [sched.engaged(2, s) for s in range(5)] == [True, True, True, False, False]
    assert not InterventionSchedule(every=0).engaged(0, 0)
    assert InterventionSchedule.always().engaged(7, 10_000)
    op = ScriptedOperator(lambda obs: obs[:2] * 2, sched)
    engaged = [op.act(np.ones(4))[1] for _ in range(4)]
    assert engaged == [True, True, True, False]
    op.on_episode({"event": "end", "episode": 0})      # already episode 1's schedule: released
    assert not op.engaged and not op.act(np.ones(4))[1]
    op.on_episode({"event": "start", "episode": 1})
    assert not op.act(np.ones(4))[1]
    op.on_episode({"event": "end", "episode": 1})      # episode 2 is scheduled: engaged at once
    assert op.engaged
    for _ in range(5):                                 # the reset: observations, not steps
        op.act(np.ones(4))
    op.on_episode({"event": "start", "episode": 2})
    action, on = op.act(np.full(4, 0.25))
    assert on and action.tolist() == [0.5, 0.5] and op.step == 1
    assert op.counts == {"observations": 12, "engaged_steps": 4, "episodes_engaged": 2}
    with pytest.raises(ValueError):
        InterventionSchedule(every=-1)


# --------------------------------------------------------------------------------- recorder
def rows(n: int, *, episode: int, end: str = "truncated", success: bool | None = False,
         source: int = 0, start: float = 0.0) -> list[Transition]:
    """Episode `episode` as the actor hands it on: n rows, the last one ending it (`end`)."""
    out = []
    for i in range(n):
        last = i == n - 1
        out.append(Transition(
            obs=np.full(4, start + i, np.float32), action=np.zeros(2, np.float32),
            reward=float(1.0 if last and success else 0.0),
            next_obs=np.full(4, start + i + 1, np.float32),
            terminated=last and end == "terminated", truncated=last and end == "truncated",
            source=source, policy_version=0, timestamp=1.0, episode=episode, step=i,
            success=success if last and end else None))
    return out


def test_recorder_writes_whole_labelled_episodes_and_discards_the_unfinished(tmp_path):
    seen = []
    rec = DemoRecorder(tmp_path / "s.zarr", 4, 2, on_episode=seen.append)
    for row in rows(3, episode=0, end="terminated", success=True) + rows(5, episode=1) + \
            rows(2, episode=2, end=""):
        assert rec.submit(row)
    rec.submit(EpisodeEnd(2, success=False))   # ends the open episode, whose last row was dropped
    for row in rows(4, episode=3, end=""):     # still open when the recorder closes
        rec.submit(row)
    final = rec.close()
    assert final["state"] == "stopped"
    assert (final["stored_episodes"], final["stored_rows"], final["discarded_partial"]) == (3, 10, 1)
    with TransitionStore.open(tmp_path / "s.zarr") as store:
        eps = store.episodes()
        data = store.read(["source", "terminated", "reward"])
    assert [(e["length"], e["success"], e["source"]) for e in eps] == \
        [(3, True, "demo"), (5, False, "demo"), (2, False, "demo")]
    assert data["terminated"].tolist()[:3] == [False, False, True] and data["reward"][2] == 1.0
    assert [(s["steps"], s["success"], s["stored"]) for s in seen] == \
        [(3, True, True), (5, False, True), (2, False, True)]
    assert "demo episode 0: 3 steps, success, return 1.00, recorded (1 so far)" == episode_line(seen[0])


def test_recorder_discards_an_episode_that_lost_a_row_on_the_way(tmp_path):
    """A full queue drops a row: its episode is incomplete and is not stored, whether the lost
    row was in the middle (seen at submit) or the last one (the next episode's rows arrive)."""
    rec = DemoRecorder(tmp_path / "s.zarr", 4, 2)
    episodes = [rows(4, episode=k, success=True) for k in range(4)]
    episodes[1], episodes[3] = rows(3, episode=1, success=True), rows(2, episode=3, success=True)
    episodes[2] = rows(5, episode=2, success=True)
    lose = {(0, 1), (2, 4)}                                 # (episode, row): middle, last
    put = rec._inbox.put_nowait

    def full_for_lost_rows(row):
        if (row.episode, row.obs[0]) in lose:
            raise queue.Full
        put(row)
    rec._inbox.put_nowait = full_for_lost_rows
    for k, episode in enumerate(episodes):
        for i, row in enumerate(episode):
            assert rec.submit(row) == ((k, i) not in lose)
    final = rec.close()
    assert (final["queue_dropped"], final["torn_discarded"], final["stored_episodes"]) == (2, 2, 2)
    with TransitionStore.open(tmp_path / "s.zarr") as store:
        assert [e["length"] for e in store.episodes()] == [3, 2]      # episodes 1 and 3, whole


def test_recorder_drops_failures_when_asked_stops_at_the_limit_and_refuses_policy_rows(tmp_path):
    seen = []
    rec = DemoRecorder(tmp_path / "s.zarr", 4, 2, keep_failures=False, max_episodes=2,
                       on_episode=seen.append)
    for batch in (rows(2, episode=0, success=False),
                  rows(2, episode=1, end="terminated", success=True),
                  rows(3, episode=2, end="terminated", success=True, source=1),
                  rows(4, episode=3, end="terminated", success=True),
                  rows(1, episode=4, end="terminated", success=True)):
        for row in batch:
            rec.submit(row)
    final = rec.close()
    assert (final["stored_episodes"], final["dropped_failures"], final["rejected_episodes"],
            final["dropped_over_limit"]) == (2, 1, 1, 1)
    assert "collect mode records demos only" in final["last_problem"]
    assert [s["stored"] for s in seen] == [False, True, False, True, False]
    assert "NOT recorded: no success" in episode_line(seen[0])
    with TransitionStore.open(tmp_path / "s.zarr") as store:
        assert [e["length"] for e in store.episodes()] == [2, 4]


def test_recorder_refuses_a_store_of_other_dimensions_at_once(tmp_path):
    from o2o_robot.data.store import StoreError

    TransitionStore.create(tmp_path / "s.zarr", 5, 2).close()
    with pytest.raises(StoreError, match="obs_dim=5"):
        DemoRecorder(tmp_path / "s.zarr", 4, 2)
