"""Recorded robot data in and out through the stack's own code: rosbag2 bags replayed through the
live control code (`rosbag`, above `control/`), and the `o2o-robot data import|export` commands
(`cli`) over every format (`data.importers` holds the ROS-free ones: minari, hdf5)."""
