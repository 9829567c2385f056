#!/usr/bin/env bash
# Real run vs simulator on this machine's CPU (issue 4): the tiny model, 64 azure-code requests, policy drex,
# once at the trace's own arrival times (arrival-bound, ~3 min wall) and once with arrivals compressed 50x
# (saturated, so throughput is the system's). Copies each validate.json into benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
out=$(mktemp -d)
drex run --model tiny --device cpu --trace azure-code --num-requests 64 --policy drex --out "$out/arrivals" --no-progress
drex validate "$out/arrivals"
drex run --model tiny --device cpu --trace azure-code --num-requests 64 --rate-scale 50 --policy drex \
    --out "$out/saturated" --no-progress
drex validate "$out/saturated"
cp "$out/arrivals/validate.json" benchmarks/results/validate_cpu_tiny_arrivals.json
cp "$out/saturated/validate.json" benchmarks/results/validate_cpu_tiny_saturated.json
