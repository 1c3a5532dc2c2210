"""The `teleop` config section: shipped Joy profiles, overrides field by field, and errors that
name the key."""
from __future__ import annotations

import pytest

from o2o_robot.config import JOY_PROFILES, ConfigError, load_config, resolve_config_path
from o2o_robot.teleop.keyboard import ENGAGE, ESTOP, FAILURE, NUM_AXES, SUCCESS


def teleop(**values):
    return load_config(None, overrides={"teleop": values}).teleop


def test_shipped_profiles_are_usable_and_selected_by_device():
    for device in JOY_PROFILES:
        profile = teleop(device=device).joy_profile()
        assert profile.problems() == [] and len(profile.axes) >= 3, device
    pad = teleop(device="gamepad").joy_profile()
    assert (pad.deadman_button, pad.success_button, pad.failure_button, pad.estop_button) == (4, 0, 1, 2)
    mouse = teleop(device="spacemouse").joy_profile()
    assert mouse.engage_on_motion and mouse.deadman_button is None and len(mouse.axes) == 6
    # scripted configs can still ask for a Joy device's profile (demos collect --teleop joy)
    assert teleop().joy_profile("gamepad") == pad


def test_keyboard_profile_matches_what_the_keyboard_publishes():
    kb = teleop(device="keyboard").joy_profile()
    assert [a.axis for a in kb.axes] == list(range(NUM_AXES))
    assert (kb.deadman_button, kb.success_button, kb.failure_button, kb.estop_button) == \
        (ENGAGE, SUCCESS, FAILURE, ESTOP)


def test_overrides_replace_only_the_keys_given():
    t = teleop(device="gamepad", joy={"deadman_button": 5, "axes": [{"axis": 3, "scale": 0.3}]})
    p = t.joy_profile()
    assert p.deadman_button == 5 and p.success_button == 0 and p.estop_button == 2
    assert [(a.axis, a.scale, a.deadzone) for a in p.axes] == [(3, 0.3, 0.05)]


@pytest.mark.parametrize("values, message", [
    ({"device": "gamepad", "joy": {"success_button": 4}},
     "teleop: joy.success_button: button 4 is also deadman_button"),
    ({"device": "gamepad", "joy": {"deadman_button": None}},
     "teleop: joy.deadman_button: none, and engage_on_motion is false"),
    ({"device": "gamepad", "joy": {"axes": [{"axis": -1}]}}, "teleop.joy.axes.0.axis: must be >= 0"),
    ({"device": "gamepad", "joy": {"axes": [{"axis": 0, "scale": 1.5}]}},
     "teleop.joy.axes.0.scale: must be <= 1"),
    ({"device": "gamepad", "joy": {"axes": [{"axis": 0, "deadzone": 1.0}]}}, "deadzone: must be < 1"),
    ({"device": "spacemouse", "joy": {"buttons": 2}}, "teleop.joy.buttons: unknown key"),
    ({"device": "joystick"}, "teleop.device: must be one of"),
    ({"intervene_every": -1}, "teleop.intervene_every: must be >= 0"),
    ({"intervene_every": 2, "device": "gamepad"}, "intervene_every: only the scripted operator"),
    ({"rate_hz": 0}, "teleop.rate_hz: must be > 0"),
])
def test_bad_teleop_config_names_the_key(values, message):
    with pytest.raises(ConfigError) as err:
        teleop(**values)
    assert message in str(err.value), str(err.value)


def test_packaged_config_keeps_scripted_teleop_without_interventions():
    t = load_config(resolve_config_path("sim_reach.yaml")).teleop
    assert t.device == "scripted" and t.intervene_every == 0 and t.record_failures
