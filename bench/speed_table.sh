#!/usr/bin/env bash
# The README's speed table from one benchmark run (`make speed-table`):
#   bash bench/speed_table.sh                          # every workload, 5 rounds each
#   REPEATS=3 WORKLOADS="mlp gpt2-tiny" bash bench/speed_table.sh
# Each workload writes its record to bench/results/NAME.json (bench/interpolation.py --json),
# then bench/readme_table.py writes the table between the README's speed-table markers
# from every record there. One thread, as the table says; run it on a quiet machine.
set -euo pipefail
PY=${PY:-python}
REPEATS=${REPEATS:-5}
OUT=${OUT:-bench/results}
WORKLOADS=${WORKLOADS:-mlp mlp-bn resnet20 lstm-lm transformer-lm gpt2-tiny pythia-shaped llama-tiny bert-tiny bert-cls-tiny}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
for w in $WORKLOADS; do
  case $w in
    mlp) extra=(--alphas 50) ;;                   # the paper's 50 alphas: seconds per run
    resnet20) extra=(--images 256 --alphas 5) ;;  # ratios are per alpha: 5 keep it minutes
    *) extra=(--alphas 10) ;;
  esac
  $PY bench/interpolation.py --workload "$w" --gauss --threads 1 --repeats "$REPEATS" \
    "${extra[@]}" --json "$OUT/$w.json"
done
$PY bench/readme_table.py "$OUT"/*.json
