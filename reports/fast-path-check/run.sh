#!/usr/bin/env bash
# The fast path's paired check (issue 22, item 2): the main job's recipe (mnist5k-paper-mat, seed 0, 30 epochs)
# trained in fp32 and with the fast path (bf16 autocast + channels_last, what train.*=auto picks on a CPU with
# AVX512-BF16 or AMX), both evaluated with the field suite on the same 1,000 MNIST-5k test images; the union's
# paired difference with its interval (compare.py -> compare.json, and the small result files here).
#
# Run from the repository root:  bash reports/fast-path-check/run.sh
# Both trainings run in this process without tracking (train.diagnostics=true, as the study's mat_rotate row,
# which was this check's fp32 side: reports/mnist5k-study/runs/mat_rotate). The switches are explicit so
# that the check means the same on any machine. The evaluations leave out the field suite's transfer tables
# and curves (the union does not read them). Interrupted? Re-run: training resumes, evaluation skips shards.
# About 2 x 20 minutes of training and 2 x 10 of evaluation on 2 idle CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
out=runs/fast-path-check
declare -A switches=([fp32]="train.precision=fp32 train.channels_last=false"
                     [fast]="train.precision=bf16 train.channels_last=true")
for side in fp32 fast; do
  run=$out/$side
  if [ ! -f "$run/model.safetensors" ]; then
    if [ -f "$run/config.yaml" ]; then
      matd train --output "$run" --cluster none --no-tracking --resume
    else
      # shellcheck disable=SC2086  # the switches are two words
      matd train --config mnist5k-paper-mat --output "$run" --cluster none --no-tracking \
          ${switches[$side]} train.diagnostics=true
    fi
  fi
  matd evaluate --run "$run" --suite field -n 1000 --workers 2 --no-tracking --output "$out/eval-$side" \
      'transfer.attacks=[]' 'curves.attacks=[]'
done
python reports/fast-path-check/compare.py "$out/fp32" "$out/eval-fp32" "$out/fast" "$out/eval-fast"
