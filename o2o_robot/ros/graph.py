"""Running a node graph inside one process, as `o2o-robot finetune` and `demos collect` do.

A `Graph` holds the nodes of one rclpy Context in groups; `start` spins each group on its own
single-threaded executor in a daemon thread (rclpy's MultiThreadedExecutor busy-waits while a
ready callback's group is busy, ros2/rclpy#1223, and starves the callbacks it should run), and
`stop` takes it down in the order rclpy needs. `supervise` is the calling thread's loop until
the session decides to end. `catch_signals` turns SIGINT/SIGTERM into a flag the supervisor
reads, so a Ctrl-C (or the two that `ros2 launch` delivers, ROS2_NOTES.md) ends the session
cleanly instead of raising wherever the main thread happens to be.
"""
from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

SIGNALS = (signal.SIGINT, signal.SIGTERM)
SUPERVISE_PERIOD_S = 0.05
SETTLE_S = 0.2        # for in-flight callbacks to finish once their nodes left the executors
JOIN_TIMEOUT_S = 5.0


def catch_signals(on_signal: Callable[[], object]) -> dict:
    """Until `restore_signals`, SIGINT and SIGTERM call `on_signal()` (every time: a second
    Ctrl-C lands there too) instead of raising or shutting rclpy down. Returns the previous
    handlers; off the main thread (where Python cannot set handlers) does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, lambda *_: on_signal()) for signum in SIGNALS}


def restore_signals(handlers: dict) -> None:
    """Put back the handlers `catch_signals` returned."""
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def ignore_sigint() -> None:
    """For helper processes: Ctrl-C reaches the whole process group, but the session stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def spin_executor(executor) -> None:
    """`executor.spin()` for a thread: returns quietly when the context shuts down."""
    try:
        executor.spin()
    except ExternalShutdownException:   # SIGINT/SIGTERM: the supervisor sees context.ok()
        pass


def stop_graph(spinning: list, context) -> None:
    """End a graph given as [(executor, nodes, spinning thread or None)]. Stop ticking first
    (the nodes leave their executors and in-flight callbacks finish), then shut the executors
    down (doing that under running callbacks makes rclpy complain), and only then destroy the
    nodes: destroying a node an executor still holds can hang (ROS2_NOTES.md)."""
    for executor, nodes, _ in spinning:
        for node in nodes:
            executor.remove_node(node)
    time.sleep(SETTLE_S)
    for executor, nodes, thread in spinning:
        executor.shutdown(timeout_sec=JOIN_TIMEOUT_S)
        if thread is not None:
            thread.join(timeout=JOIN_TIMEOUT_S)
        for node in nodes:
            node.destroy_node()
    rclpy.try_shutdown(context=context)


class Graph:
    """The nodes of one context, in groups that each get one executor and one thread."""

    def __init__(self, context, name: str):
        self.context, self.name = context, name
        self._groups: list[list] = []
        self._spinning: list[tuple] = []

    def add(self, node, group: int = 0):
        """Put `node` in executor group `group` (0, 1, ... in order); returns it. A node added
        is destroyed by `stop` whether or not the graph was started."""
        if group == len(self._groups):
            self._groups.append([])
        self._groups[group].append(node)
        return node

    def start(self) -> None:
        """Spin every group: its own SingleThreadedExecutor, in a daemon thread."""
        for i, nodes in enumerate(self._groups):
            executor = SingleThreadedExecutor(context=self.context)
            for node in nodes:
                executor.add_node(node)
            thread = threading.Thread(target=spin_executor, args=(executor,), daemon=True,
                                      name=f"{self.name}-executor-{i}")
            thread.start()
            self._spinning.append((executor, nodes, thread))

    def stop(self) -> None:
        """Take the graph down (`stop_graph`) and shut its context down; idempotent."""
        if self._spinning:
            stop_graph(self._spinning, self.context)
        else:                     # never started: nothing spins, only nodes to destroy
            for nodes in self._groups:
                for node in nodes:
                    node.destroy_node()
            rclpy.try_shutdown(context=self.context)
        self._groups, self._spinning = [], []


def supervise(check: Callable[[], str | None], stop: threading.Event, context,
              period_s: float = SUPERVISE_PERIOD_S) -> str:
    """Call `check()` every `period_s` until it returns why the session ends; it also ends on
    `stop` ("interrupted", see `catch_signals`) or when the context was shut down elsewhere
    ("shutdown"). Returns the reason."""
    try:
        while True:
            reason = check()
            if reason is not None:
                return reason
            if stop.is_set():
                return "interrupted"
            if not context.ok():
                return "shutdown"
            time.sleep(period_s)
    except KeyboardInterrupt:   # a signal handler other than catch_signals' raised it
        return "interrupted"
