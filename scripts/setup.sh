#!/usr/bin/env bash
# Set-up for a fresh machine: a virtualenv in .venv with mat-dist and its dependencies.
# torch is installed first, pinned to the CPU build (2.13.0): any other torch
# spec pulls gigabytes of CUDA packages. On GPU machines set MATD_TORCH to the
# torch spec you want (e.g. MATD_TORCH="torch==2.13.0" with a CUDA index URL).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check --upgrade pip
python -c "import torch" 2>/dev/null || pip install -q --disable-pip-version-check "${MATD_TORCH:-torch==2.13.0}"
pip install -q --disable-pip-version-check -e ".[test]"
