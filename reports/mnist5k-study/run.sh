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
# CLOSE=1: the second stage, once every method's first seed is finished: matd reproduce --close --list names the
# close set (union within 10 points of the best, and mat_rotate), and each of its methods in turn gets seeds 0..2
# evaluated on all 1,000 test images (evals-1000/), published as above (METHODS="a b" narrows the set). The
# second stage evaluates seed 0 again, so it runs where the first stage's weights are (weights are not committed):
# CLOSE_SEEDS=1 does that part alone for every close method (--close --seeds 1), before any new seed trains;
# CLOSE=1 without it then trains and evaluates the rest, which any machine can do. PROVISIONAL=1 draws the close set
# from the rows finished so far (--provisional), so that seed 0 is evaluated before the last rows are trained.
# About 14 hours of training and 3 of evaluation on 2 idle CPU cores; minutes on a GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
HERE=reports/mnist5k-study
PUBLISH=${1:-}
SEEDS=${SEEDS:-1}
CLOSE=${CLOSE:-}
CLOSE_SEEDS=${CLOSE_SEEDS:-}
PROVISIONAL=${PROVISIONAL:+--provisional}  # any value, as for CLOSE
METHODS_GIVEN=${METHODS:-}
METHODS=${METHODS:-$(python -c "from mat_dist.reproduce.presets import PRESETS
print(' '.join(m.name for m in PRESETS['mnist5k-study'].methods))")}
mkdir -p runs

sources() {  # the methods $1 is fine-tuned from (their seeds' runs are published with it: its cost includes theirs)
  python -c "from mat_dist.reproduce.presets import PRESETS
print(' '.join(PRESETS['mnist5k-study'].sources('$1')))"
}

publish() {  # copy the results of method $1 (every seed; in CLOSE mode its sources' runs too) and the study report
  # into $PUBLISH, commit them there
  local m=$1 dest=$PUBLISH/$HERE what="$SEEDS seed(s)" runs=$1 r dirs=()
  mkdir -p "$dest"
  cp $HERE/preset.json $HERE/study.md $HERE/study.json $dest/ 2>/dev/null || true
  # invocations.jsonl: only the lines the clone lacks are appended. A worktree moved to a newer commit starts from
  # that commit's file, so copying it whole would drop the lines published since.
  if [ -f $HERE/invocations.jsonl ]; then
    touch "$dest/invocations.jsonl"
    grep -vxFf "$dest/invocations.jsonl" $HERE/invocations.jsonl >> "$dest/invocations.jsonl" || true
  fi
  cp $HERE/study_cost.png $HERE/study_cost_norms.png $dest/ 2>/dev/null || true
  if [ -n "$CLOSE" ]; then
    what="second stage${CLOSE_SEEDS:+, seed(s) 0 to $((CLOSE_SEEDS - 1))}" runs="$m $(sources "$m")"
    cp $HERE/close.json $dest/
  fi
  for r in $runs; do dirs+=($HERE/runs/$r $HERE/runs/$r-seed*); done
  for d in "${dirs[@]}" $HERE/evals/$m $HERE/evals/$m-seed* $HERE/evals-*/$m $HERE/evals-*/$m-seed*; do
    [ -d "$d" ] || continue
    mkdir -p "$PUBLISH/$d"
    for f in config.yaml metrics.jsonl report.md summary.json results.parquet eval.json; do
      if [ -f "$d/$f" ]; then cp "$d/$f" "$PUBLISH/$d/$f"; fi
    done
  done
  git -C "$PUBLISH" add -- "$HERE"
  if git -C "$PUBLISH" diff --cached --quiet -- "$HERE"; then return 0; fi  # a skipped method: nothing new
  for attempt in 1 2 3 4 5; do  # the other clone may be committing at this moment (index.lock)
    git -C "$PUBLISH" commit -q -m "Study mnist5k-study: $m ($what) trained and evaluated (results, not weights)" \
        -- "$HERE" && return 0
    sleep 5
  done
  echo "$(date -u +%FT%TZ) $m: nothing committed to $PUBLISH" >> runs/study.log
}

if [ -n "$CLOSE" ]; then  # the second stage: the close set, one method at a time
  if ! SET=$(matd reproduce --preset mnist5k-study --output $HERE --no-tracking --close --list $PROVISIONAL \
      2>>runs/study.log)
  then
    tail -n 1 runs/study.log >&2  # the one-line reason (a method's first seed not finished yet)
    exit 1
  fi
  WANTED=" $(echo ${METHODS_GIVEN:-$SET}) "  # one space between names: --list prints one a line
  for m in $SET; do
    case "$WANTED" in *" $m "*) ;; *) continue ;; esac
    echo "$(date -u +%FT%TZ) $m (second stage)" >> runs/study.log
    # Each call draws the set again: a provisional set can lose a method when a first-stage row finishes
    # meanwhile, so a refused method is logged and the loop goes on.
    if ! matd reproduce --preset mnist5k-study --output $HERE --no-tracking --close --only "$m" \
        ${CLOSE_SEEDS:+--seeds "$CLOSE_SEEDS"} $PROVISIONAL > runs/study-close-$m.log 2>&1; then
      echo "$(date -u +%FT%TZ) $m (second stage) failed: $(tail -n 1 runs/study-close-$m.log)" | tee -a runs/study.log >&2
      continue
    fi
    if [ -n "$PUBLISH" ]; then publish "$m"; fi
  done
  exit 0
fi

for m in $METHODS; do
  echo "$(date -u +%FT%TZ) $m" >> runs/study.log
  matd reproduce --preset mnist5k-study --output $HERE --no-tracking --seeds "$SEEDS" --only "$m" \
      > runs/study-$m.log 2>&1
  if [ -n "$PUBLISH" ]; then publish "$m"; fi
done
