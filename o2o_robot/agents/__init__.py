"""Learning algorithms (torch only: no rclpy, zarr, onnxruntime or mujoco).

`Agent` (agents/base.py) is the interface every algorithm implements; `build_agent` builds the
configured one from the registry, and `ALGORITHMS` is a lazy view of that registry (name ->
agent class). torch is imported only when an agent is built or the registry is read.
"""
from __future__ import annotations

from o2o_robot.agents.base import Agent, build_agent, registry, resolve_device

__all__ = ["ALGORITHMS", "Agent", "build_agent", "registry", "resolve_device"]


def __getattr__(name: str):
    # Lazy `ALGORITHMS`: `import o2o_robot.agents` stays cheap (no torch) until it is used.
    if name == "ALGORITHMS":
        return registry()
    raise AttributeError(f"module 'o2o_robot.agents' has no attribute {name!r}")
