"""Shared test set-up: headless MuJoCo, local-only ROS 2 discovery, one torch thread."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import signal  # noqa: E402

import pytest  # noqa: E402

_GUARDED = (signal.SIGINT, signal.SIGTERM)


@pytest.fixture(autouse=True)
def _signal_dispositions_restored():
    """A test leaves SIGINT/SIGTERM as it found them. A test that ignored SIGINT in this
    process made every later subprocess inherit SIG_IGN (exec keeps it), and a later test's
    Ctrl-C to its child did nothing."""
    before = {s: signal.getsignal(s) for s in _GUARDED}
    yield
    changed = [s.name for s in _GUARDED if signal.getsignal(s) is not before[s]]
    for s in _GUARDED:
        signal.signal(s, before[s])
    assert not changed, f"the test left {', '.join(changed)} changed in the pytest process"
