"""Shared test set-up: headless MuJoCo, local-only ROS 2 discovery, the `learning_check` mark."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import signal  # noqa: E402

import pytest  # noqa: E402

_GUARDED = (signal.SIGINT, signal.SIGTERM)


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"pytest got {signal.Signals(signum).name}")


def pytest_configure(config):
    # SIGTERM (scripts/test.sh stopping a lane, a CI timeout) unwinds like Ctrl-C: each test's
    # finally/fixture clean-up still ends what it started, instead of leaving it running.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)
    config.addinivalue_line(
        "markers", "learning_check: a CI-sized learning check (fixed seeds, lock-step, CPU-bound "
        "for minutes); scripts/test.sh runs them in a lane of their own beside the other tests")


@pytest.fixture(autouse=True)
def _signal_dispositions_restored():
    """A test leaves SIGINT/SIGTERM and the main thread's signal mask as it found them: an
    ignored or blocked SIGINT in this process is inherited by every later subprocess (exec
    keeps both), and a later test's Ctrl-C to its child then does nothing."""
    before = {s: signal.getsignal(s) for s in _GUARDED}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    changed = [s.name for s in _GUARDED if signal.getsignal(s) is not before[s]]
    for s in _GUARDED:
        signal.signal(s, before[s])
    now = signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if now != mask:
        changed.append(f"the blocked signals ({sorted(x.name for x in now - mask)} blocked)")
    assert not changed, f"the test left {', '.join(changed)} changed in the pytest process"
