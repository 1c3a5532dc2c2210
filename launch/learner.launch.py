"""The fleet learner on a GPU workstation: one learner node for any number of robots.

    ros2 launch o2o_robot learner.launch.py config:=/path/to/my_robot.yaml

Each robot then runs `ros2 launch o2o_robot finetune.launch.py learner:=remote namespace:=<id>`
with the same config (the robot's spec, algorithm and `fleet` section). The learner writes the
one store (`store.path`, rows tagged with their robot) and the run dir (`train.run_dir`:
checkpoints, policies); it resumes both when restarted. Without a ROS 2 install the whole fleet
runs in simulation from `o2o-robot fleet --robots N`. See docs/fleet.md. The learner's exit
ends the launch, with exit status 1 when it failed (`o2o_robot.launch_support`).
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
                              description="namespace of the learner node (the fleet topics are "
                                          "absolute: fleet.topic_prefix)"),
        Node(package="o2o_robot", executable="learner_node", name="o2o_learner",
             namespace=LaunchConfiguration("namespace"), output="screen", emulate_tty=True,
             parameters=[{"config": LaunchConfiguration("config")}],
             on_exit=end_launch_on_exit("o2o_learner")),
    ])
