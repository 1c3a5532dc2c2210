"""Spinning a node as a console entry point does: one executor, clean shutdown on signals."""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

from o2o_robot.ros.entry import INTERRUPTED, guard_signals
from o2o_robot.ros.graph import JOIN_TIMEOUT_S, SIGNALS

SHUTDOWN_LIMIT_S = 60.0   # the node down, rclpy down, the learner's final checkpoint


def guard_start_up() -> None:
    """From now on, SIGINT/SIGTERM set a flag (`interrupted()`) instead of raising
    KeyboardInterrupt wherever start-up happens to be (an import, building the node, starting
    its learner). Call it before `rclpy.init`: rclpy then installs its own handler on top,
    which still shuts its context down on a signal (ending `spin_node`) and passes the signal on
    to this one. A start-up cut short so is a clean stop: the entry point exits 0."""
    guard_signals()


def interrupted() -> bool:
    """A SIGINT/SIGTERM arrived since `guard_start_up` (or the `entry` point's guard), or rclpy
    is shut down: rclpy's handler shuts its context down from a thread of its own, which can be
    before the signal reaches ours."""
    return INTERRUPTED.is_set() or not rclpy.ok()


def start_failed() -> int:
    """The exit status of an entry point whose node did not start: 0 when a signal stopped the
    start-up (not a failure: `stopped_by_signal`), else 1."""
    return 0 if INTERRUPTED.is_set() else 1


def stopped_by_signal() -> bool:
    """Whether a start-up that failed failed because a signal shut rclpy down under it (then
    `start_failed()` is 0); call it before shutting rclpy down yourself."""
    if interrupted():
        INTERRUPTED.set()
        return True
    return False


def spin_node(node, on_shutdown: Callable[[], object] | None = None) -> int:
    """Spin `node` until SIGINT/SIGTERM, then take it down and shut rclpy down; returns 0.
    For a console entry point: the process is expected to exit right after.

    Single-threaded: rclpy's MultiThreadedExecutor busy-waits while a ready callback's group is
    busy (ros2/rclpy#1223); measured here it dropped the actor's 100 Hz tick to 4-18 Hz.
    `rclpy.spin` raises ExternalShutdownException on SIGTERM, not only KeyboardInterrupt.
    Shutdown order: the node leaves the executor and the executor shuts down before the node
    is destroyed (destroying a node an executor holds can hang, ROS2_NOTES.md), then rclpy
    shuts down and `on_shutdown()` runs (e.g. the learner's checkpoint).

    From the first signal on, further SIGINT/SIGTERM are ignored until the process has exited:
    under `ros2 launch` a Ctrl-C arrives twice, and Python's own finalisation puts back the
    default action of any handler it installed (a late second Ctrl-C would then kill a process
    that stopped cleanly), but leaves an ignored signal ignored. A watchdog bounds the whole
    shutdown: past `SHUTDOWN_LIMIT_S` the process logs why and exits 1.
    """
    executor = None
    try:
        if not interrupted():   # else a signal came during the rest of start-up: stop at once
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if not interrupted():   # rclpy shut down between the check and the executor: a stop
            raise
    finally:
        ignore_signals()
        watchdog = _shutdown_watchdog(node.get_name())
        if executor is not None:
            executor.remove_node(node)
            executor.shutdown(timeout_sec=JOIN_TIMEOUT_S)
        node.destroy_node()
        rclpy.try_shutdown()
        if on_shutdown is not None:
            on_shutdown()
        watchdog.cancel()
    return 0


def ignore_signals() -> None:
    """SIGINT and SIGTERM are ignored from now on (a process on its way out)."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _shutdown_watchdog(name: str) -> threading.Timer:
    def give_up() -> None:
        print(f"[{name}] shutdown did not finish within {SHUTDOWN_LIMIT_S:.0f} s: exiting 1",
              file=sys.stderr, flush=True)
        os._exit(1)

    timer = threading.Timer(SHUTDOWN_LIMIT_S, give_up)
    timer.daemon = True
    timer.start()
    return timer


def start_node(make_node, name: str, errors: tuple[type[BaseException], ...] = (ValueError,),
               args=None):
    """`rclpy.init(args)`, then `make_node()`, under `guard_start_up`; None when the node did
    not start (the entry point returns `start_failed()`): a construction error of the kinds in
    `errors` (a bad config, a task the node cannot run) is logged as fatal under `name`, and any
    error after a SIGINT/SIGTERM (which shut rclpy down under the construction) is a stop."""
    guard_start_up()
    rclpy.init(args=args)
    try:
        node = make_node()
        if not stopped_by_signal():
            return node
        node.destroy_node()   # the signal came before rclpy's handler was there to see it
    except errors as exc:
        if not stopped_by_signal():
            rclpy.logging.get_logger(name).fatal(str(exc))
    except Exception:
        if not stopped_by_signal():
            raise
    rclpy.try_shutdown()
    return None
