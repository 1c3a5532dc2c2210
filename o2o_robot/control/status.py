"""What an actor reports on `~/status` (DESIGN.md "ROS 2 interface"), as plain JSON values.

The node gathers the values (its counters, `ControlCore.stats()`, `TickTiming.summary()`, the
policy slot, the learner) and `actor_status` arranges them under the status keys; the result
owns its containers, so the node's counters may change while a status is being published.
"""
from __future__ import annotations


def learner_stats(learner) -> dict | None:
    """`learner.stats()`; {"stats_error": ...} when it raised (reported in the status, not
    fatal: the status must go out whatever the learner does); None without a learner."""
    if learner is None:
        return None
    try:
        return learner.stats()
    except Exception as exc:  # noqa: BLE001 - reported in the status itself
        return {"stats_error": repr(exc)}


def actor_status(*, timing: dict, core: dict, policy_version: int | None,
                 policy_source: str | None, deterministic: bool, swaps: dict, superseded: int,
                 malformed: dict, malformed_reasons: dict, learning_enabled: bool, mode: str,
                 learner_counts: dict, learner: dict | None, reset_counts: dict) -> dict:
    """The `~/status` document.

    `timing`: `TickTiming.summary()`; `core`: `ControlCore.stats()`; `policy_*`, `swaps`
    (accepted / rejected / last_rejection) and `superseded` (learner policies replaced before
    validation) describe the policy slot; `malformed[_reasons]`: dropped messages per topic;
    `learner_counts`: submitted / dropped / errors / polled; `learner`: `learner_stats()`;
    `reset_counts`: `ResetSequencer.counts`.
    """
    safety = core["safety"]
    return {
        **timing,
        "policy": {"version": policy_version, "deterministic": deterministic,
                   "source": policy_source, **swaps, "superseded": superseded},
        "intervention_rate": core["intervention_rate"],
        "estop": {"latched": safety["estop_latched"], "signal": safety["estop_signal"]},
        "malformed": dict(malformed), "malformed_reasons": dict(malformed_reasons),
        "safety": safety["counts"],
        "learning_enabled": learning_enabled, "mode": mode,
        "learner": {**learner_counts, "stats": learner},
        "reset": dict(reset_counts),
        "core": core,
    }
