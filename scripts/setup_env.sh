#!/usr/bin/env bash
# Idempotent set-up of the project's virtual environment (.venv by default).
#
#  - creates the venv (with system site-packages when a system ROS 2 already provides rclpy)
#  - installs the exact pins in requirements/lock.txt
#  - installs torch==2.13.0: the CPU build where no NVIDIA GPU is present, the CUDA build where one is,
#    plus onnxruntime-gpu in that case
#  - installs the pinned, hash-checked ROS 2 Jazzy wheels only where `import rclpy` fails
#  - installs this package in editable mode
#
# Re-running it is cheap: a stamp file records the hash of the inputs, and nothing is reinstalled
# when they have not changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${O2O_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"

log() { printf '[setup] %s\n' "$*" >&2; }

have_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

system_has_rclpy() { "$PY" -c 'import rclpy' >/dev/null 2>&1; }

inputs_hash() {
  cat "$ROOT/requirements/lock.txt" "$ROOT/requirements/ros-jazzy.txt" "$ROOT/setup.py" \
      "$ROOT/scripts/setup_env.sh" | sha256sum | cut -d' ' -f1
}

stamp="$VENV/.o2o_setup_stamp"
want="$(inputs_hash)-gpu=$(have_gpu && echo 1 || echo 0)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  if system_has_rclpy; then
    log "system rclpy found: creating $VENV with system site-packages"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    log "creating $VENV"
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
# The machine's pip config lists file:// indexes that lack most packages; pip warns once per
# package about them. Those lines are noise, everything else is shown.
pip_install() {
  "$VPY" -m pip install --disable-pip-version-check --no-input -q "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

if have_gpu; then
  log "NVIDIA GPU found: installing torch==$TORCH_VERSION (CUDA) and onnxruntime-gpu"
  pip_install "torch==$TORCH_VERSION"
else
  log "no GPU: installing the CPU build of torch==$TORCH_VERSION"
  # The local build tag "+cpu" is what the CPU wheel carries (here it comes from the configured
  # find-links; elsewhere from the PyTorch CPU index). Plain "torch" would pull the CUDA packages.
  pip_install "torch==$TORCH_VERSION+cpu" \
    || pip_install "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu \
         --extra-index-url https://pypi.org/simple
fi

log "installing pinned dependencies (requirements/lock.txt)"
pip_install -r "$ROOT/requirements/lock.txt"
if have_gpu; then
  pip_install "onnxruntime-gpu==$(grep -oP "(?<=^onnxruntime==).*" "$ROOT/requirements/lock.txt")" || log "onnxruntime-gpu not available; the CPU runtime stays"
fi

if "$VPY" -c 'import rclpy' >/dev/null 2>&1; then
  log "rclpy importable: not installing the ROS 2 wheels"
else
  log "rclpy not importable: installing the pinned ROS 2 Jazzy wheels (hash-checked)"
  pip_install --no-deps --require-hashes -r "$ROOT/requirements/ros-jazzy.txt"
fi

log "installing o2o_robot (editable)"
pip_install --no-deps --no-build-isolation -e "$ROOT"

"$VPY" -c 'import torch, rclpy, zarr, onnxruntime, mujoco, o2o_robot' \
  || { log "the environment is incomplete: an import failed"; exit 1; }
echo "$want" > "$stamp"
log "environment ready: $VENV"
