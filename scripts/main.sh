#!/usr/bin/env bash
# The main job: set up, train MAT on the embedded MNIST-5k, evaluate it with the
# quick suite, write the report. Re-running it continues the same run and skips
# the evaluation shards that are already done.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export RAY_USAGE_STATS_ENABLED=0
out=runs/mnist5k-mat
resume=()
[ -f "$out/config.yaml" ] && resume=(--resume)
matd train --config mnist5k-mat --output "$out" "${resume[@]}"
matd evaluate --run "$out" --suite quick
echo "report: $out/eval-quick/report.md"
