#!/usr/bin/env bash
# The whole loop on this CPU with a real pretrained LLM (issue 12): SmolLM2-135M-Instruct (fp32, one thread)
# with trained exits (smollm2-ee), on the first 32 HumanEval prompts, all at time 0, 64 output tokens each,
# max batch 16: profile -> fit -> run each policy -> validate each -> Hugging Face generate on the same prompts.
#
#   taskset -c N bash benchmarks/smollm2_loop.sh [profile|runs|hf|all]      (all: ~15 min on a free core)
#
# Results: profiles/cpu/smollm2/ (profile + fit), benchmarks/results/smollm2_loop/<policy>/{summary,validate}.json,
# benchmarks/results/smollm2_loop/table.csv, benchmarks/results/hf_generate_cpu_smollm2.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 PYTHONPATH=$PWD
drex() { python -m drex.cli "$@"; }  # this checkout's drex, whatever is installed
what=${1:-all}
res=benchmarks/results/smollm2_loop
out=${DREX_LOOP_OUT:-$(mktemp -d)}
mkdir -p "$res"
drex model fetch smollm2
if [[ $what == profile || $what == all ]]; then
    drex profile --gpu cpu --model smollm2 --quick --restart --no-progress   # wall time, as drex run times steps
    drex costmodel fit profiles/cpu/smollm2 --timing wall   # drex run times steps by the wall clock
fi
if [[ $what == runs || $what == all ]]; then
    for policy in ${POLICIES:-off drex latency-only lazy eager}; do
        drex run --model smollm2-ee --device cpu --trace humaneval --num-requests 32 --max-batch-size 16 \
            --policy "$policy" --kv-fill "${KV_FILL:-recompute}" --out "$out/$policy" --no-progress
        drex validate "$out/$policy"
        python benchmarks/smollm2_step_errors.py "$out/$policy" > "$out/$policy/step_errors.txt"
        mkdir -p "$res/$policy"
        cp "$out/$policy/summary.json" "$out/$policy/validate.json" "$out/$policy/run.json" \
            "$out/$policy/step_errors.txt" "$res/$policy/"
    done
fi
if [[ $what == hf || $what == all ]]; then
    drex run --model smollm2 --device cpu --trace humaneval --num-requests 32 --max-batch-size 16 --policy off \
        --out "$out/base-off" --no-progress
    python benchmarks/hf_generate_smollm2.py --drex-run "$out/base-off"
fi
echo "run directories in $out"
