"""Record demonstrations: the actor node in mode "collect" (teleop only, rows stored as demo
episodes with the operator's success / failure label, a summary line logged per episode), a
teleop source, and the MuJoCo sim bridge when use_sim:=true.

    ros2 launch o2o_robot collect_demos.launch.py config:=my_robot.yaml teleop:=joy device:=gamepad
    ros2 launch o2o_robot collect_demos.launch.py teleop:=scripted     # sim_reach.yaml: the sim

Arguments: config (a path, or a file name in the package's config/ folder), teleop (joy |
keyboard | scripted), device (Joy profile for teleop:=joy: gamepad | spacemouse; empty = the
config's teleop.device), use_sim (auto | true | false; auto, the default, starts the sim bridge
for a sim config, one whose `control.reward.source` is `sim`), namespace.
teleop:=joy maps the `joy` topic of a driver you start yourself (`ros2 run joy joy_node`, or a
spacemouse driver). teleop:=keyboard starts the mapper only: the keyboard needs a terminal, so
run `ros2 run o2o_robot keyboard_teleop --ros-args -p config:=<same file>` in another one.
teleop:=scripted drives with the sim task's expert (sim only).
The actor's exit ends the launch (exit status 1 when it failed), and so does a failed sim
bridge or teleop node (`o2o_robot.launch_support`).
Without a ROS 2 install the same graph runs from `o2o-robot demos collect`.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from o2o_robot.launch_support import end_launch_on_exit


def _teleop_is(*names: str) -> IfCondition:
    return IfCondition(PythonExpression(
        ["'", LaunchConfiguration("teleop"), f"' in {tuple(names)!r}"]))


def _use_sim_is(*values: str) -> PythonExpression:
    return PythonExpression(["'", LaunchConfiguration("use_sim"), f"'.lower() in {values!r}"])


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
        DeclareLaunchArgument("use_sim", default_value="auto",
                              description="start the MuJoCo sim bridge (o2o_sim): auto (for a "
                                          "config whose control.reward.source is sim) | true | "
                                          "false"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of all nodes and their topics"),
        Node(package="o2o_robot", executable="actor_node", name="o2o_actor",
             namespace=namespace, output="screen", emulate_tty=True,
             parameters=[{"config": config, "mode": "collect"}],
             on_exit=end_launch_on_exit("o2o_actor")),
        Node(package="o2o_robot", executable="sim_bridge", name="o2o_sim",
             namespace=namespace, output="screen", emulate_tty=True,
             parameters=[{"config": config, "only_sim_config": ParameterValue(
                 _use_sim_is("auto"), value_type=bool)}],
             condition=IfCondition(_use_sim_is("auto", "true")),
             on_exit=end_launch_on_exit("o2o_sim", clean_exit_ends=False)),
        Node(package="o2o_robot", executable="teleop_node", name="o2o_teleop",
             namespace=namespace, output="screen", emulate_tty=True,
             parameters=[{"config": config, "device": ParameterValue(
                 LaunchConfiguration("device"), value_type=str)}],
             condition=_teleop_is("joy"),
             on_exit=end_launch_on_exit("o2o_teleop", clean_exit_ends=False)),
        Node(package="o2o_robot", executable="teleop_node", name="o2o_teleop",
             namespace=namespace, output="screen", emulate_tty=True,
             parameters=[{"config": config, "device": "keyboard"}],
             condition=_teleop_is("keyboard"),
             on_exit=end_launch_on_exit("o2o_teleop", clean_exit_ends=False)),
        LogInfo(msg="teleop:=keyboard: run `ros2 run o2o_robot keyboard_teleop` in a terminal "
                    "of its own (same config and namespace)",
                condition=_teleop_is("keyboard")),
        Node(package="o2o_robot", executable="scripted_teleop", name="o2o_scripted_teleop",
             namespace=namespace, output="screen", emulate_tty=True,
             parameters=[{"config": config, "mode": "demo"}],
             condition=_teleop_is("scripted"),
             on_exit=end_launch_on_exit("o2o_scripted_teleop", clean_exit_ends=False)),
    ])
