"""Teleoperation without ROS: Joy mapping, the terminal keyboard, scripted operators, and the
demo recorder (the ROS nodes around them live in `o2o_robot.ros`)."""
