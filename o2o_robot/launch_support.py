"""What o2o_robot's launch files share (launch/*.launch.py import it under `ros2 launch`).

`ros2 launch` keeps running, and exits 0, when its nodes die, unless a node's exit is tied to
the launch (ROS2_NOTES.md). `end_launch_on_exit(name)` is the `on_exit` of a node whose death
must end the launch: every launch file passes it to the actor node (and to the nodes beside
it, with `clean_exit_ends=False`), and a new launch file does the same:

    from o2o_robot.launch_support import end_launch_on_exit
    Node(package="o2o_robot", executable="actor_node", name="o2o_actor", ...,
         on_exit=end_launch_on_exit("o2o_actor"))

`launch` is imported inside the handler only, so this module imports without a ROS install.
"""
from __future__ import annotations

from collections.abc import Callable


class NodeFailed(RuntimeError):
    """A node tied to the launch exited with a non-zero status."""


def end_launch_on_exit(name: str, *, clean_exit_ends: bool = True) -> Callable:
    """An `on_exit` handler for `launch_ros.actions.Node` (launch calls it with the
    ProcessExited event and the LaunchContext).

    Exit status != 0 (a bad config, a policy that cannot load, a crash): raises `NodeFailed`.
    Raising is how a launch ends with a failure: `launch` logs "Caught exception in launch (see
    debug for traceback): <name> exited with code N", shuts every process down and `ros2
    launch` exits 1; a `Shutdown` action would end it with 0. Exit status 0 (stopped by
    Ctrl-C, or done): a `Shutdown` of the whole launch when `clean_exit_ends`, else nothing
    (e.g. a sim bridge that had nothing to do)."""
    def on_exit(event, context):
        code = event.returncode
        if code != 0:
            raise NodeFailed(f"{name} exited with code {code}; the launch ends with it")
        if not clean_exit_ends or getattr(context, "is_shutdown", False):
            return None
        from launch.actions import Shutdown

        return [Shutdown(reason=f"{name} exited")]

    return on_exit
