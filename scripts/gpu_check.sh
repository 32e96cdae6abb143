#!/usr/bin/env bash
# The GPU check: gpu-marked tests, matd bench on CUDA (MSD CNN and PreAct ResNet-18), the main job's recipe for
# a few epochs and a 100-image field evaluation on CUDA, all in this process (no Ray, no MLflow), into one JSON.
#
#   bash scripts/gpu_wheels.sh                       # where a package registry is reachable: .gpu-wheels/
#   bash scripts/gpu_check.sh RESULT.json [--wheels DIR]   # on the GPU machine, with .gpu-wheels/ carried along
#
# Under 8 minutes on one GPU (an overall deadline of 440 s, each step with its own limit). PYTHON names the
# interpreter that holds the CUDA build of torch (default: python3). Without a CUDA device: one line, exit 2,
# nothing written. Exit 1: a step failed (the JSON has its output's tail). Details: scripts/gpu_check.py.
set -euo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: bash scripts/gpu_check.sh RESULT.json [--wheels DIR]" >&2
  exit 2
fi
exec "${PYTHON:-python3}" -B "$(dirname "$0")/gpu_check.py" "$@"
