"""Spinning a node as a console entry point does: one executor, clean shutdown on signals."""
from __future__ import annotations

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor


def spin_node(node) -> int:
    """Spin `node` until SIGINT/SIGTERM, then destroy it and shut rclpy down; returns 0.

    Single-threaded: rclpy's MultiThreadedExecutor busy-waits while a ready callback's group is
    busy (ros2/rclpy#1223); measured here it dropped the actor's 100 Hz tick to 4-18 Hz.
    `rclpy.spin` raises ExternalShutdownException on SIGTERM, not only KeyboardInterrupt.
    """
    try:
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def start_node(make_node, name: str, errors: tuple[type[BaseException], ...] = (ValueError,),
               args=None):
    """`rclpy.init(args)`, then `make_node()`; a construction error of the kinds in `errors`
    (a bad config, a task the node cannot run) is logged as fatal under `name`, rclpy is shut
    down and None returned, so the entry point exits 1 with that message."""
    rclpy.init(args=args)
    try:
        return make_node()
    except errors as exc:
        rclpy.logging.get_logger(name).fatal(str(exc))
        rclpy.try_shutdown()
        return None
