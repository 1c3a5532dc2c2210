"""The MuJoCo sim bridge alone: a simulated robot on the topics the config names, for an actor
(or any controller) started elsewhere.

    ros2 launch o2o_robot sim.launch.py config:=sim_reach.yaml namespace:=arm1

Lock-step or real-time stepping is `sim.lockstep` in the config. The bridge's exit ends the
launch, with exit status 1 when it failed (`o2o_robot.launch_support`).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from o2o_robot.launch_support import end_launch_on_exit


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value="sim_reach.yaml",
                              description="config file: a path, or a name in o2o_robot's config/"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node and its topics"),
        Node(package="o2o_robot", executable="sim_bridge", name="o2o_sim",
             namespace=LaunchConfiguration("namespace"), output="screen", emulate_tty=True,
             parameters=[{"config": LaunchConfiguration("config")}],
             on_exit=end_launch_on_exit("o2o_sim")),
    ])
