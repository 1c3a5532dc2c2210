"""The one learning loop (`core.LearnerCore`) and the ways it is fed: the ROS-free harness
(`harness`, `o2o-robot train`), the worker beside one actor node (`worker`), offline pre-training
(`pretrain`). No rclpy here."""
