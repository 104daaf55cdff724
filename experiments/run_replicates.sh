#!/usr/bin/env bash
# One experiment for each training seed, then its replicate report (issue #26):
#   bash experiments/run_replicates.sh mnist5k_cg_vs_cfg 0 1 2 [more pipeline overrides...]
# Seed 0 uses the quick profile's own stage folder (outputs/pipeline/mnist5k_quick), seed s > 0
# outputs/pipeline/quick_s<s>: every experiment on the quick profile's networks shares them, so each seed's
# eps-model, classifier and judge train once. Writes outputs/replicates/<experiment>/replicates.{md,csv}; the
# pipelines' own output goes to outputs/replicates/<experiment>/seed<s>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { echo "usage: bash experiments/run_replicates.sh <experiment> <seed> <seed> [...] [key=value ...]" >&2; exit 2; }
exp=$1; shift
seeds=(); extra=()
for a in "$@"; do
  if [[ $a =~ ^[0-9]+$ ]]; then seeds+=("$a"); else extra+=("$a"); fi
done
PY=${PY:-.venv/bin/python}
report=outputs/replicates/$exp
mkdir -p "$report"
sweeps=()
for s in "${seeds[@]}"; do
  out=outputs/pipeline/quick_s$s
  [ "$s" = 0 ] && out=outputs/pipeline/mnist5k_quick
  echo "seed $s: $out (log: $report/seed$s.log)"
  start=$(date +%s)
  "$PY" -m cguide.pipeline "experiment=$exp" "seed=$s" "out_dir=$out" "${extra[@]}" > "$report/seed$s.log" 2>&1 \
    || { echo "error: seed $s failed; see $report/seed$s.log" >&2; tail -n 5 "$report/seed$s.log" >&2; exit 1; }
  sweep=$(sed -n 's/^results: \(.*\)\/results\.csv .*/\1/p' "$report/seed$s.log" | tail -n 1)
  echo "  $(( $(date +%s) - start )) s; sweep $sweep"
  sweeps+=("$sweep")
done
"$PY" -m cguide.grid.replicates "$report" "${sweeps[@]}" > /dev/null
printf '%s\n' "${sweeps[@]}" > "$report/sweeps.txt"
echo "report: $report/replicates.md"
