"""Bring outside data into a TransitionStore, and share the store as a Minari dataset.

One module per format, each a *source* (`common.Source`: spec + episodes) that
`common.run_import` checks against the store and writes resumably:

* `minari_io`  a local Minari dataset (id or path), through the `minari` package; also the export
* `rosbag`     a rosbag2 directory (MCAP or sqlite3, read by `rosbags`), replayed through the
               actor node's own ControlCore at the control rate
* `hdf5`       an HDF5 file in the D4RL layout (or robomimic's `data/demo_*`)
* `cli`        the `o2o-robot data import ...` / `data export ...` commands

Nothing heavy is imported here: minari, h5py and rosbags load with the module that needs them.
"""
