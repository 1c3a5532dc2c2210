"""ROS-agnostic control logic: observation assembly, safety filter, episodes, rewards, the tick."""
from o2o_robot.control.core import ControlCore, TickResult
from o2o_robot.control.observation import MalformedMessage, ObservationAssembler
from o2o_robot.control.rewards import RewardFunctionError
from o2o_robot.control.safety import SafetyFilter, SafetyFlag

__all__ = ["ControlCore", "TickResult", "ObservationAssembler", "MalformedMessage",
           "RewardFunctionError", "SafetyFilter", "SafetyFlag"]
