"""Parameter services whose slow checks run off the executor thread.

rclpy answers `set_parameters` requests (what `ros2 param set` calls) on the executor thread
that spins the node, and runs the node's on-set callbacks there. For the actor node that thread
also runs the control tick, so a parameter whose check takes seconds (a `policy_path` being
loaded and validated: about 210 inferences) would stop the tick for as long.

`OffTickParameterService` is rclpy's `ParameterService` with the two set services made
coroutines: a request first hands its parameters to `prepare(parameters)` on a worker thread
and awaits it. The executor resumes a waiting coroutine each time it wakes (every control tick
at least) and runs every other callback meanwhile, so the tick never waits. Once `prepare` is
done, the set goes on exactly as rclpy's: the on-set callbacks, the parameter event, the
response. `prepare` does the slow part and leaves its result where the on-set callback finds it
(the actor node keeps validated policies by path); the set request is answered only when it is
over, so `ros2 param set` still reports a rejection.

Requests are served one at a time (the node's default callback group is mutually exclusive
and stays busy while a request is being prepared).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from rclpy.parameter import Parameter
from rclpy.parameter_service import ParameterService
from rclpy.task import Future

Prepare = Callable[[Sequence[Parameter]], object]


class OffTickParameterService(ParameterService):
    """rclpy's parameter services; a set first awaits `prepare(parameters)` on a worker thread.

    Create the node with `start_parameter_services=False` and this service right after."""

    def __init__(self, node, prepare: Prepare):
        self._prepare = prepare
        super().__init__(node)

    async def _set_parameters_callback(self, request, response):
        await self._prepared(request.parameters)
        return super()._set_parameters_callback(request, response)

    async def _set_parameters_atomically_callback(self, request, response):
        await self._prepared(request.parameters)
        return super()._set_parameters_atomically_callback(request, response)

    async def _prepared(self, messages) -> None:
        parameters = [Parameter.from_parameter_msg(m) for m in messages]
        node = self._get_node()
        done = Future()

        def work() -> None:
            try:
                self._prepare(parameters)
            except Exception as exc:  # noqa: BLE001 - the on-set callback checks again and refuses
                node.get_logger().error(f"preparing a parameter set failed: {exc!r}")
            finally:
                done.set_result(None)
                executor = node.executor
                if executor is not None:
                    executor.wake()   # resume the waiting request now, not at the next tick

        threading.Thread(target=work, name="param-prepare", daemon=True).start()
        await done
