#!/usr/bin/env bash
# Do two commits give the same outputs? drex simulate and drex compare (three exits, SLOs, preemption, two
# replicas) and drex validate on one fixed drex run directory, each commit run from its own checkout;
# files compared byte for byte, summary.json without its wall-time field sim_wall_s.
#   benchmarks/same_outputs.sh BASE [HEAD]      (HEAD defaults to the working tree)
# Used for refactors that must not change results (ARCHITECTURE issue, simulator speed issue).
set -euo pipefail
base=${1:?usage: same_outputs.sh BASE [HEAD]}
head=${2:-}
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'git -C "$repo" worktree remove --force "$work/base" >/dev/null 2>&1 || true;
      [ -n "$head" ] && git -C "$repo" worktree remove --force "$work/head" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$repo" worktree add -q --detach "$work/base" "$base"
if [ -n "$head" ]; then git -C "$repo" worktree add -q --detach "$work/head" "$head"; else ln -s "$repo" "$work/head"; fi
export OMP_NUM_THREADS=1
# The fixed inputs, made once with the base commit: a trace with per-request SLOs, and a real run directory.
(cd "$work/base" && PYTHONPATH=. python - "$work/trace.csv" <<'PY'
import sys
import numpy as np
from drex.cli import main  # noqa: F401  (the package imports)
try:
    from drex.workload import make_workload
except ImportError:
    from drex.workload import make_workload
w = make_workload("azure-conv", num_requests=1500, rate_scale=20, rng=np.random.default_rng(0))
with open(sys.argv[1], "w") as f:
    f.write("arrival_s,prompt_tokens,output_tokens,slo_ttft_ms,slo_tpot_ms\n")
    for i, r in enumerate(w):
        f.write(f"{r.arrival_s:.6f},{min(r.prompt_tokens, 3000)},{r.output_tokens},"
                f"{2000 if i % 2 else 5000},{50 if i % 3 else 100}\n")
PY
)
(cd "$work/base" && PYTHONPATH=. python -m drex.cli run --model tiny --device cpu --trace azure-code --num-requests 32 \
    --policy drex --exits 1,2,3 --threshold 0.5 --out "$work/realrun" > /dev/null)
for side in base head; do
  out="$work/out-$side"; mkdir -p "$out"
  (cd "$work/$side" && PYTHONPATH=. python -m drex.cli simulate --trace "$work/trace.csv" --model llama2-13b \
      --device h200 --exits 10,20,30 --threshold 0.5 --replicas 2 --router least-outstanding --num-kv-blocks 3000 \
      --seed 7 --no-progress --out "$out/sim" > /dev/null
   PYTHONPATH=. python -m drex.cli compare --trace "$work/trace.csv" --num-requests 600 --model llama2-13b \
      --device h200 --exits 10,20,30 --threshold 0.5 --replicas 2 --num-kv-blocks 3000 --seed 3 --out "$out/cmp" > /dev/null
   cp -r "$work/realrun" "$out/realrun"
   PYTHONPATH=. python -m drex.cli validate "$out/realrun" > /dev/null)
done
python - "$work/out-base" "$work/out-head" <<'PY'
import json, sys
from pathlib import Path
a, b = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
bad = []
for rel in files:
    x, y = a / rel, b / rel
    if not y.exists():
        bad.append(f"{rel}: missing"); continue
    if rel.name == "summary.json":
        dx, dy = json.loads(x.read_text()), json.loads(y.read_text())
        dx.pop("sim_wall_s", None); dy.pop("sim_wall_s", None)
        same = dx == dy
    else:
        same = x.read_bytes() == y.read_bytes()
    if not same:
        bad.append(str(rel))
print(f"{len(files) - len(bad)} of {len(files)} files identical (summary.json without sim_wall_s)")
for r in bad:
    print("DIFFERS:", r)
sys.exit(1 if bad else 0)
PY
