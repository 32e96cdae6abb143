#!/usr/bin/env bash
# Set up, then run the default test suite (slow and gpu tests excluded; `pytest -m slow` runs those).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
python -m pytest -q -p no:cacheprovider "$@"
