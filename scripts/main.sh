#!/usr/bin/env bash
# The main job (README): the sim fine-tune through ROS 2, then export and check of the final policy.
# O2O_CONFIG=path picks another config, O2O_STEPS=N another step budget.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export MUJOCO_GL="${MUJOCO_GL:-egl}" PYTHONUNBUFFERED=1
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
CLI=.venv/bin/o2o-robot
CONFIG="${O2O_CONFIG:-config/sim_reach.yaml}"
RUN_DIR="$(.venv/bin/python -c "from o2o_robot.config import load_config; print(load_config('$CONFIG').train.run_dir)")"

$CLI config validate "$CONFIG"
$CLI finetune --config "$CONFIG" ${O2O_STEPS:+--steps "$O2O_STEPS"}
$CLI data info "$RUN_DIR/store.zarr"
$CLI export "$RUN_DIR/checkpoints/latest.pt" -o "$RUN_DIR/policy_final.onnx"
$CLI policy check "$RUN_DIR/policy_final.onnx" --checkpoint "$RUN_DIR/checkpoints/latest.pt"
echo "done: see $RUN_DIR (learning_curve.png, metrics.jsonl, tensorboard/, policies/, policy_final.onnx)"
