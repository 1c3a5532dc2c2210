"""The actor's `~/status` document (control/status.py), from plain values, without ROS."""
from __future__ import annotations

import json

from o2o_robot.control.status import actor_status, learner_stats


def _core() -> dict:
    return {"intervention_rate": 0.25, "online": 7,
            "safety": {"estop_latched": True, "estop_signal": False,
                       "counts": {"estop_hold": 3, "rate_limited": 1}}}


def _status(**changes) -> dict:
    values = dict(timing={"rate_hz": 20.0, "ticks": 9}, core=_core(), policy_version=4,
                  policy_source="/p/policy.onnx", deterministic=True,
                  swaps={"accepted": 2, "rejected": 1, "last_rejection": "x: bad"}, superseded=3,
                  malformed={"task_obs": 2}, malformed_reasons={"task_obs": "expected 6 values"},
                  learning_enabled=False, mode="collect",
                  learner_counts={"submitted": 5, "dropped": 0, "errors": 0, "polled": 1},
                  learner={"achieved_utd": 1.5}, reset_counts={"calls": 2, "done": 1})
    return actor_status(**{**values, **changes})


def test_the_status_arranges_the_values_under_the_published_keys():
    st = _status()
    assert (st["rate_hz"], st["ticks"]) == (20.0, 9)                 # timing at the top level
    assert st["policy"] == {"version": 4, "deterministic": True, "source": "/p/policy.onnx",
                            "accepted": 2, "rejected": 1, "last_rejection": "x: bad",
                            "superseded": 3}
    assert st["intervention_rate"] == 0.25
    assert st["estop"] == {"latched": True, "signal": False}
    assert st["safety"] == {"estop_hold": 3, "rate_limited": 1}
    assert st["malformed"] == {"task_obs": 2}
    assert st["malformed_reasons"] == {"task_obs": "expected 6 values"}
    assert (st["learning_enabled"], st["mode"]) == (False, "collect")
    assert st["learner"] == {"submitted": 5, "dropped": 0, "errors": 0, "polled": 1,
                             "stats": {"achieved_utd": 1.5}}
    assert st["reset"] == {"calls": 2, "done": 1} and st["core"]["online"] == 7
    assert json.loads(json.dumps(st)) == st                          # plain JSON values


def test_the_status_does_not_share_the_node_counters():
    malformed, resets = {"task_obs": 1}, {"calls": 1}
    st = _status(malformed=malformed, reset_counts=resets)
    malformed["task_obs"], resets["calls"] = 5, 9                     # the node counts on
    assert st["malformed"] == {"task_obs": 1} and st["reset"] == {"calls": 1}


def test_learner_stats_reports_a_failing_learner_instead_of_raising():
    class Broken:
        def stats(self):
            raise RuntimeError("queue gone")

    class Fine:
        def stats(self):
            return {"updates": 3}

    assert learner_stats(None) is None
    assert learner_stats(Fine()) == {"updates": 3}
    assert "queue gone" in learner_stats(Broken())["stats_error"]
