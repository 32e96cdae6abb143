#!/usr/bin/env bash
# The search comparison of issue 13 on 2 CPU cores: random+ASHA, TPE+ASHA and PBT, each given the same wall-clock
# budget (600 s of trials), then the best config of each and the hand-picked base trained with 2 seeds at the
# base's budget (8 epochs, every training image) and evaluated with the field suite on 300 test images.
# Run from the repository root: bash reports/search-comparison/run.sh   (about 100 minutes on 2 idle cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
HERE=reports/search-comparison
TRACK=sqlite:///runs/cmp-mlflow.db
mkdir -p runs
for s in random-asha tpe-asha pbt; do
  [ -f runs/cmp-$s/summary.json ] || matd tune --space $HERE/$s.yaml --output runs/cmp-$s --time-budget 600 \
      --tracking-uri $TRACK > runs/cmp-$s.log 2>&1
  cp runs/cmp-$s/report.md $HERE/$s-report.md
  cp runs/cmp-$s/trials.csv $HERE/$s-trials.csv
done
python scripts/compare_searches.py --base $HERE/base.yaml \
  --sweep random+asha=runs/cmp-random-asha --sweep tpe+asha=runs/cmp-tpe-asha --sweep pbt=runs/cmp-pbt \
  --seeds 2 --suite field --suite-override "transfer.attacks=[]" --suite-override "curves.attacks=[]" \
  --examples 300 --output runs/cmp-confirm --report $HERE > runs/cmp-confirm.log 2>&1
