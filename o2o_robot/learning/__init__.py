"""The one learning loop (`core.LearnerCore`) and the ways it is fed: the ROS-free harness
(`harness`, `o2o-robot train`), the worker beside one actor node (`worker`), offline pre-training
(`pretrain`), and the fleet's side of the learner node (`fleet`: idempotent ingest by robot and
sequence, live robots); `threads` chooses torch's thread count. No rclpy here."""
