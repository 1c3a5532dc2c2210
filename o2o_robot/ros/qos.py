"""QoS profiles and the fixed names of the ROS 2 interface (DESIGN.md "ROS 2 interface").

Names are relative, so a namespace (`-r __ns:=/arm1`) or a remap moves the whole graph; the
observation, action, reward and e-stop topics come from the config, the rest are fixed here.

QoS matching is silent when it fails (ROS2_NOTES.md: a best-effort writer never reaches a
reliable reader, a volatile writer never reaches a transient-local reader), so every profile
below says which writers it matches.
"""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from o2o_robot.config import (DEFAULT_DONE_TOPIC, FAILURE_TOPIC, SUCCESS_TOPIC,  # noqa: F401
                              TELEOP_ACTION_TOPIC, TELEOP_ENGAGED_TOPIC)

# ---------------------------------------------------------------------------------- profiles
# Streams (observations, actions, reward, teleop, labels): the DESIGN's reliable, volatile,
# keep-last. Same as rclpy's default, so `ros2 topic pub` and most drivers match it.
STREAM = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
                    history=HistoryPolicy.KEEP_LAST, depth=10)

# Latched state (the e-stop, the status): a late joiner gets the last value at once. A
# transient-local reader only matches transient-local writers.
LATCHED = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL,
                     history=HistoryPolicy.KEEP_LAST, depth=1)

# A reader that matches every writer (best-effort and volatile are the weakest requests). Used
# beside LATCHED for the e-stop, so an e-stop published with any QoS still stops the robot.
ANY_WRITER = QoSProfile(reliability=ReliabilityPolicy.BEST_EFFORT,
                        durability=DurabilityPolicy.VOLATILE,
                        history=HistoryPolicy.KEEP_LAST, depth=10)

STATUS = LATCHED

# --------------------------------------------------------------------------- fixed names
STATUS_TOPIC = "~/status"                 # std_msgs/String, JSON
# teleop/action, teleop/engaged, operator/success, operator/failure and done: named in config.py,
# which checks that no configured topic takes one of them.
RESET_SERVICE = "reset"                   # std_srvs/Trigger, provided by the sim / the robot
CLEAR_ESTOP_SERVICE = "~/clear_estop"     # std_srvs/Trigger
ROLLBACK_SERVICE = "~/rollback_policy"    # std_srvs/Trigger


def done_topic(reward_cfg) -> str | None:
    """The terminal-signal topic: `control.reward.done_topic`, else "done" when the reward comes
    from the sim bridge (which publishes its terminal states there), else None (no subscription).

    One function for both nodes, so the bridge publishes where the actor listens."""
    if reward_cfg.done_topic:
        return reward_cfg.done_topic
    return DEFAULT_DONE_TOPIC if reward_cfg.source == "sim" else None


# ------------------------------------------------------------------ fleet (docs/fleet.md)
# Topics under `fleet.topic_prefix` (absolute: robots in their own namespaces and the learner
# meet there). The payloads are o2o_robot/data/wire.py's.
FLEET_TRANSITIONS = "transitions"   # std_msgs/UInt8MultiArray, robots -> learner, batches of rows
FLEET_POLICY = "policy"             # std_msgs/UInt8MultiArray, learner -> robots, latched
FLEET_ACKS = "acks"                 # std_msgs/String (JSON), learner -> robots, latched
FLEET_ROBOTS = "robots"             # std_msgs/String (JSON), robot heartbeats -> learner

# Batches: reliable, volatile, and deep enough for a robot's rows in flight (its window over
# its batch size, 50 by default) so that a slow reader does not lose them from the writer's
# history (a lost batch is resent anyway, the protocol does not depend on it).
FLEET_STREAM = QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE,
                          history=HistoryPolicy.KEEP_LAST, depth=64)
# Policy and acks: latched, so a robot that (re)joins gets the current policy and learns what the
# learner holds of it at once.
FLEET_LATCHED = LATCHED


def fleet_topic(prefix: str, name: str) -> str:
    """The absolute name of fleet topic `name` under `prefix`."""
    return f"{prefix.rstrip('/')}/{name}"
