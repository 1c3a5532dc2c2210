"""Shared test set-up: headless MuJoCo, local-only ROS 2 discovery, one torch thread."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
