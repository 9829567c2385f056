#!/usr/bin/env bash
# drex vs off on smollm2-ee at each KV fill and threshold (issue 12, item C), each run validated against the
# profile in profiles/cpu/smollm2: 32 HumanEval prompts at time 0, 64 tokens, max batch 16, one thread.
#
#   taskset -c N bash benchmarks/smollm2_grid.sh [OUT]       (~10 min on a free core)
#
# Results: OUT/<name>/ (run directories) and benchmarks/results/smollm2_loop/grid/<name>/{summary,validate,run}.json;
# then python benchmarks/smollm2_table.py --grid summarises them.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 PYTHONPATH=$PWD
drex() { python -m drex.cli "$@"; }  # this checkout's drex, whatever is installed
out=${1:-$(mktemp -d)}
res=benchmarks/results/smollm2_loop/grid
common=(--model smollm2-ee --device cpu --trace humaneval --num-requests 32 --max-batch-size 16 --no-progress)
run() {  # name, drex run flags...
    local name=$1; shift
    echo "== $name ($(date -u +%T), load $(cut -d' ' -f1 /proc/loadavg))"
    drex run "${common[@]}" "$@" --out "$out/$name" | grep -E "output_throughput|early_exit_fraction|involuntary_exits"
    drex validate "$out/$name" | grep -E "throughput|tpot|mape" || true
    mkdir -p "$res/$name"
    cp "$out/$name/summary.json" "$out/$name/validate.json" "$out/$name/run.json" "$res/$name/"
    echo "load_after $(cut -d' ' -f1-3 /proc/loadavg)" > "$res/$name/load.txt"
}
# off before each threshold's pair, so that each drex run has an off run minutes from it (the load moves)
for thr in ${THRESHOLDS:-0.99 0.95 0.9}; do
    run "off_before_${thr}" --policy off
    for fill in ${FILLS:-recompute copy}; do
        run "drex_${fill}_${thr}" --policy drex --kv-fill "$fill" --threshold "$thr"
    done
done
echo "run directories in $out"
