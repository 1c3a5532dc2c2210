"""Record demonstrations: the actor node in mode "collect" (teleop only, rows stored as demo
episodes with the operator's success / failure label, a summary line logged per episode), a
teleop source, and the MuJoCo sim bridge when use_sim:=true.

    ros2 launch o2o_robot collect_demos.launch.py config:=my_robot.yaml teleop:=joy device:=gamepad
    ros2 launch o2o_robot collect_demos.launch.py use_sim:=true teleop:=scripted

Arguments: config (a path, or a file name in the package's config/ folder), teleop (joy |
keyboard | scripted), device (Joy profile for teleop:=joy: gamepad | spacemouse; empty = the
config's teleop.device), use_sim, namespace.
teleop:=joy maps the `joy` topic of a driver you start yourself (`ros2 run joy joy_node`, or a
spacemouse driver). teleop:=keyboard starts the mapper only: the keyboard needs a terminal, so
run `ros2 run o2o_robot keyboard_teleop --ros-args -p config:=<same file>` in another one.
teleop:=scripted drives with the sim task's expert (sim only).
Without a ROS 2 install the same graph runs from `o2o-robot demos collect`.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def _teleop_is(*names: str) -> IfCondition:
    return IfCondition(PythonExpression(
        ["'", LaunchConfiguration("teleop"), f"' in {tuple(names)!r}"]))


def generate_launch_description() -> LaunchDescription:
    config = LaunchConfiguration("config")
    namespace = LaunchConfiguration("namespace")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value="sim_reach.yaml",
                              description="config file: a path, or a name in o2o_robot's config/"),
        DeclareLaunchArgument("teleop", default_value="joy",
                              description="teleop source: joy | keyboard | scripted"),
        DeclareLaunchArgument("device", default_value="",
                              description="Joy profile for teleop:=joy (gamepad | spacemouse; "
                                          "empty: the config's teleop.device)"),
        DeclareLaunchArgument("use_sim", default_value="false",
                              description="also start the MuJoCo sim bridge (o2o_sim)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of all nodes and their topics"),
        Node(package="o2o_robot", executable="actor_node", name="o2o_actor",
             namespace=namespace, output="screen", emulate_tty=True,
             parameters=[{"config": config, "mode": "collect"}]),
        Node(package="o2o_robot", executable="sim_bridge", name="o2o_sim",
             namespace=namespace, output="screen", emulate_tty=True,
             parameters=[{"config": config}],
             condition=IfCondition(LaunchConfiguration("use_sim"))),
        Node(package="o2o_robot", executable="teleop_node", name="o2o_teleop",
             namespace=namespace, output="screen", emulate_tty=True,
             parameters=[{"config": config, "device": ParameterValue(
                 LaunchConfiguration("device"), value_type=str)}],
             condition=_teleop_is("joy")),
        Node(package="o2o_robot", executable="teleop_node", name="o2o_teleop",
             namespace=namespace, output="screen", emulate_tty=True,
             parameters=[{"config": config, "device": "keyboard"}],
             condition=_teleop_is("keyboard")),
        LogInfo(msg="teleop:=keyboard: run `ros2 run o2o_robot keyboard_teleop` in a terminal "
                    "of its own (same config and namespace)",
                condition=_teleop_is("keyboard")),
        Node(package="o2o_robot", executable="scripted_teleop", name="o2o_scripted_teleop",
             namespace=namespace, output="screen", emulate_tty=True,
             parameters=[{"config": config, "mode": "demo"}],
             condition=_teleop_is("scripted")),
    ])
