#!/usr/bin/env bash
# The whole test suite: unit, data, learner, policy, ROS 2 and sim-in-the-loop tests, and the
# learning checks. `scripts/test.sh ARGS...` runs pytest on ARGS alone (one file, -k, ...).
#
# Without arguments it runs two lanes at once:
# * the learning checks (tests marked `learning_check`: fixed seeds, lock-step training, each
#   CPU-bound and about as fast on a busy machine as their share of it) at nice 10, output to
#   a log that is printed when they end;
# * everything else in front, at normal priority: most of it waits on ROS 2 graphs,
#   subprocesses and files, so on one pytest alone one of two cores idles (1.01 cores busy
#   on average over the suite), and the checks take up that core.
# Either lane failing fails the run; an interrupt (Ctrl-C, SIGTERM) stops both, and each test
# ends what it started on the way out.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export PYTHONUNBUFFERED=1
PYTEST=(.venv/bin/python -m pytest -q -ra)
if [ $# -gt 0 ]; then
    exec "${PYTEST[@]}" --durations=15 "$@"
fi

log="$(mktemp "${TMPDIR:-/tmp}/o2o_learning_checks.XXXXXX")"
# Both lanes as background jobs with job control on, each in its own process group: a Ctrl-C or
# SIGTERM to this script reaches both as SIGTERM through the traps below, and pytest unwinds as
# on Ctrl-C (tests/conftest.py), so each test's clean-up ends the processes it started.
set -m
nice -n 10 "${PYTEST[@]}" --durations=10 -m learning_check tests < /dev/null > "$log" 2>&1 &
checks=$!
"${PYTEST[@]}" --durations=15 -m "not learning_check" tests < /dev/null &
main=$!
set +m
stop() {
    # SIGTERM every 5 s: a test running a graph in-process (finetune, the fleet) takes a SIGTERM
    # as its session's clean stop, as it would on a robot, and pytest goes on to the next
    # test; the next SIGTERM then ends pytest. After 60 s, SIGKILL.
    for _ in $(seq 12); do
        for pid in "$main" "$checks"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
        for _ in $(seq 50); do
            kill -0 "$main" 2>/dev/null || kill -0 "$checks" 2>/dev/null || break 2
            sleep 0.1
        done
    done
    for pid in "$main" "$checks"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    rm -f "$log"
    exit "$1"
}
trap 'stop 130' INT
trap 'stop 143' TERM
echo "learning checks: running beside the other tests (nice 10; their output follows at the end)"
rc=0
wait "$main" || rc=$?
if [ "$rc" -ne 0 ] && kill -0 "$checks" 2>/dev/null; then
    echo "learning checks: the other tests failed (exit $rc); waiting for the checks"
fi
checks_rc=0
wait "$checks" || checks_rc=$?
echo "==================== learning checks (ran beside the tests above) ===================="
cat "$log"
rm -f "$log"
if [ "$rc" -ne 0 ] || [ "$checks_rc" -ne 0 ]; then
    echo "FAILED: tests exit $rc, learning checks exit $checks_rc" >&2
    exit 1
fi
