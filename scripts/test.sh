#!/usr/bin/env bash
# The whole test suite: unit, data, learner, policy, sim (and ROS 2 tiers as they land).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest -q -ra --durations=15 tests "$@"
