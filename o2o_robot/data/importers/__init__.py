"""Bring outside data into a TransitionStore, and share the store as a Minari dataset.

One module per format, each a *source* (`common.Source`: spec + episodes) that
`common.run_import` checks against the store and writes resumably:

* `minari_io`  a local Minari dataset (id or path), through the `minari` package; also the export
* `hdf5`       an HDF5 file in the D4RL layout (or robomimic's `data/demo_*`)

No ROS logic lives here. Bags need the control logic, which sits above `data/`: the rosbag2
source (replayed through the actor node's own ControlCore) is `o2o_robot.ingest.rosbag`, and the
`o2o-robot data import ...` / `data export ...` commands over every format are
`o2o_robot.ingest.cli`. Both use `common` as the other formats do.

Nothing heavy is imported here: minari and h5py load with the module that needs them.
"""
