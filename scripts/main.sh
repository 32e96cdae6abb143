#!/usr/bin/env bash
# The main job: set up, train MAT on the embedded MNIST-5k at the paper's radii (l_inf 0.3, l_2 2, l_1 10),
# evaluate it with the field suite (full-strength APGD-CE + APGD-T per norm, per-example union), write the
# report. Re-running it continues the same run and skips the evaluation shards that are already done.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export RAY_USAGE_STATS_ENABLED=0
out=runs/mnist5k-paper-mat
resume=()
[ -f "$out/config.yaml" ] && resume=(--resume)
matd train --config mnist5k-paper-mat --output "$out" "${resume[@]}"
matd evaluate --run "$out" --suite field
echo "report: $out/eval-field/report.md"
