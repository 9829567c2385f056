"""Sweep speed: one 64-configuration ``drex sweep`` (2,000 azure-conv requests each) in-process
(``--ray off``) and on a local Ray instance (``--ray auto``), each a fresh ``drex`` process into
a fresh directory, timed end to end (Ray's start-up included). Also checks that both wrote the
same sweep.csv apart from ``sim_wall_s``, and records the machine's load average before and after
each (the machine may be shared), and writes benchmarks/results/sweep_speed.json.

    python benchmarks/sweep_speed.py [--num-requests N] [--order off,auto]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drex.outputs import recorded_path  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "sweep_speed.json"
# 2 policies x 2 models x 2 devices x 2 thresholds x 2 batch sizes x 2 loads = 64 cheap configurations
GRID = ["--trace", "azure-conv", "--policy", "off,lazy", "--model", "llama2-7b,llama2-13b", "--device", "a100,h100",
        "--threshold", "0.5,0.8", "--max-batch-size", "64,256", "--rate-scale", "1,2"]


def one(mode: str, n: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "drex.cli", "sweep", *GRID, "--num-requests", str(n), "--ray", mode,
           "--out", str(out), "--no-progress"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"sweep --ray {mode} failed:\n{proc.stderr[-2000:]}")
    df = pd.read_csv(out / "sweep.csv")
    return {"ray": mode, "wall_s": wall, "configurations": len(df), "ok": int((df.status == "ok").sum()),
            "sum_sim_wall_s": float(df.sim_wall_s.sum()), "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(), "stdout": proc.stdout.strip().replace(str(out), recorded_path(out))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-requests", type=int, default=2000)
    ap.add_argument("--order", default="off,auto", help="which sweep runs first")
    args = ap.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.order.split(","):
            runs[mode] = one(mode, args.num_requests, Path(tmp) / mode)
            print(f"--ray {mode}: {runs[mode]['wall_s']:.1f} s (load {runs[mode]['loadavg_before'][0]:.2f} -> "
                  f"{runs[mode]['loadavg_after'][0]:.2f})", file=sys.stderr)
        a, b = (pd.read_csv(Path(tmp) / m / "sweep.csv").drop(columns="sim_wall_s") for m in ("off", "auto"))
        same = a.equals(b)
    result = {"command": "python benchmarks/sweep_speed.py " + " ".join(sys.argv[1:]),
              "grid": " ".join(GRID), "num_requests": args.num_requests,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "runs": runs, "ratio_auto_over_off": runs["auto"]["wall_s"] / runs["off"]["wall_s"],
              "same_results_except_sim_wall_s": same}
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ratio_auto_over_off", "same_results_except_sim_wall_s")}))


if __name__ == "__main__":
    main()
