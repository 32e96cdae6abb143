#!/usr/bin/env bash
# The study (issue "the study"): every method of the registry at the main job's budget on MNIST-5k at the paper's
# radii, field suite on 500 test images, union against training cost (study.md, study_cost*.png).
#
# Run from the repository root of a worktree at a fixed commit, so that other work does not change the code under
# it:  bash reports/mnist5k-study/run.sh [PUBLISH_REPO]
# Each method is trained and evaluated in turn (matd reproduce --only), then, with PUBLISH_REPO (a clone of the
# project, e.g. the one you work in), its results (not its weights) are copied there and committed, so a later
# run on another machine continues where this one stopped: matd reproduce skips a method whose committed config,
# metrics and evaluation match. METHODS="a b" runs those only; SEEDS=3 gives them seeds 0..2.
# About 14 hours of training and 3 of evaluation on 2 idle CPU cores; minutes on a GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
HERE=reports/mnist5k-study
PUBLISH=${1:-}
SEEDS=${SEEDS:-1}
METHODS=${METHODS:-$(python -c "from mat_dist.reproduce.presets import PRESETS
print(' '.join(m.name for m in PRESETS['mnist5k-study'].methods))")}
mkdir -p runs

publish() {  # copy the results of method $1 (every seed) and the study report into $PUBLISH, commit them there
  local m=$1 dest=$PUBLISH/$HERE
  mkdir -p "$dest"
  cp $HERE/preset.json $HERE/invocations.jsonl $HERE/study.md $HERE/study.json $dest/ 2>/dev/null || true
  cp $HERE/study_cost.png $HERE/study_cost_norms.png $dest/ 2>/dev/null || true
  for d in $HERE/runs/$m $HERE/runs/$m-seed* $HERE/evals/$m $HERE/evals/$m-seed*; do
    [ -d "$d" ] || continue
    mkdir -p "$PUBLISH/$d"
    for f in config.yaml metrics.jsonl report.md summary.json results.parquet eval.json; do
      if [ -f "$d/$f" ]; then cp "$d/$f" "$PUBLISH/$d/$f"; fi
    done
  done
  git -C "$PUBLISH" add -- "$HERE"
  for attempt in 1 2 3 4 5; do  # the other clone may be committing at this moment (index.lock)
    git -C "$PUBLISH" commit -q -m "Study mnist5k-study: $m ($SEEDS seed(s)) trained and evaluated (results, not weights)" \
        -- "$HERE" && return 0
    sleep 5
  done
  echo "$(date -u +%FT%TZ) $m: nothing committed to $PUBLISH" >> runs/study.log
}

for m in $METHODS; do
  echo "$(date -u +%FT%TZ) $m" >> runs/study.log
  matd reproduce --preset mnist5k-study --output $HERE --no-tracking --seeds "$SEEDS" --only "$m" \
      > runs/study-$m.log 2>&1
  if [ -n "$PUBLISH" ]; then publish "$m"; fi
done
