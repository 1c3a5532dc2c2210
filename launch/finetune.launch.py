"""Fine-tune on the robot (or in simulation): the actor node, plus the MuJoCo sim bridge for a
sim config.

    ros2 launch o2o_robot finetune.launch.py                 # the sim (sim_reach.yaml)
    ros2 launch o2o_robot finetune.launch.py config:=/path/to/my_robot.yaml
    ros2 launch o2o_robot finetune.launch.py use_sim:=true namespace:=arm1
    ros2 launch o2o_robot finetune.launch.py learner:=remote namespace:=arm1   # a fleet robot

Arguments: config (a path, or a file name in the package's config/ folder), use_sim (auto |
true | false; auto, the default, starts the sim bridge for a sim config, one whose
`control.reward.source` is `sim`, and not for a robot config), namespace, policy_path (an ONNX
policy to start from; empty = hold until one arrives), learning_enabled, learner (local: a
learner worker beside the actor; remote: the fleet learner node of learner.launch.py, over the
fleet topics, docs/fleet.md), teleop (none | joy | keyboard: a teleop mapper for interventions;
while its deadman is held the operator's action replaces the policy's and rows are stored as
source=intervention) and device (the Joy profile for teleop:=joy; empty = the config's
teleop.device). teleop:=keyboard starts the mapper only: run `ros2 run o2o_robot
keyboard_teleop` in a terminal of its own.

The actor's exit ends the launch, with exit status 1 when it failed (a bad config or
policy_path, a store without the demonstrations its learner needs); so does a failed sim
bridge or teleop mapper (`o2o_robot.launch_support`).
Without a ROS 2 install the same graph runs from `o2o-robot finetune`.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from o2o_robot.launch_support import end_launch_on_exit


def _teleop_is(name: str) -> IfCondition:
    return IfCondition(PythonExpression(["'", LaunchConfiguration("teleop"), f"' == {name!r}"]))


def _use_sim_is(*values: str) -> PythonExpression:
    return PythonExpression(["'", LaunchConfiguration("use_sim"), f"'.lower() in {values!r}"])


def generate_launch_description() -> LaunchDescription:
    config = LaunchConfiguration("config")
    namespace = LaunchConfiguration("namespace")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value="sim_reach.yaml",
                              description="config file: a path, or a name in o2o_robot's config/"),
        DeclareLaunchArgument("use_sim", default_value="auto",
                              description="start the MuJoCo sim bridge (o2o_sim): auto (for a "
                                          "config whose control.reward.source is sim) | true | "
                                          "false"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of both nodes and all their topics"),
        DeclareLaunchArgument("policy_path", default_value="",
                              description="ONNX policy to start from (empty: none yet)"),
        DeclareLaunchArgument("learning_enabled", default_value="true",
                              description="train and hot-swap new policies"),
        DeclareLaunchArgument("learner", default_value="local",
                              description="local (a worker beside the actor) | remote (the "
                                          "fleet learner node, learner.launch.py)"),
        DeclareLaunchArgument("teleop", default_value="none",
                              description="teleop for interventions: none | joy | keyboard"),
        DeclareLaunchArgument("device", default_value="",
                              description="Joy profile for teleop:=joy (gamepad | spacemouse; "
                                          "empty: the config's teleop.device)"),
        Node(package="o2o_robot", executable="actor_node", name="o2o_actor",
             namespace=namespace, output="screen", emulate_tty=True,
             parameters=[{
                 "config": config,
                 "policy_path": ParameterValue(LaunchConfiguration("policy_path"), value_type=str),
                 "learning_enabled": ParameterValue(LaunchConfiguration("learning_enabled"),
                                                    value_type=bool),
                 "learner": LaunchConfiguration("learner"),
             }],
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
    ])
