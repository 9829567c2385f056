#!/usr/bin/env bash
# The GPU evidence run in one command (issue 15): a thin wrapper over benchmarks/gpu/oneshot.py,
# which brings in the carried wheels, runs every stage under its budget and writes under $OUT.
#   benchmarks/gpu/run.sh             on one H100/H200, <= 9 min;  benchmarks/gpu/run.sh --dry-run  on CPU, < 3 min
# Exit: 0 all stages ok, 1 some stage failed or was cut, 3 stopped at the environment (no CUDA, missing packages).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/gpu/oneshot.py "$@"
