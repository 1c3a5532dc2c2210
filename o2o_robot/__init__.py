"""o2o_robot: offline-to-online RL on real robots through ROS 2."""

__version__ = "0.1.0"
