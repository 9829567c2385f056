"""Simulator speed: requests simulated per wall-second (issue 2's benchmark).

azure-conv, first 10,000 requests, llama2-13b on h200, exit after layer 20,
policies off and drex. Reports the simulation proper (SimPy run + records in
memory) and the end-to-end CLI-equivalent time (trace load + files written),
and writes benchmarks/results/sim_speed.json.

    python benchmarks/sim_speed.py [--num-requests N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from drex.config import EEConfig, SchedulerConfig  # noqa: E402
from drex.metrics import write_run  # noqa: E402
from drex.settings import RunSettings
from drex.sim.simulator import Simulation  # noqa: E402
from drex.traces import load_trace  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "sim_speed.json"


def one(policy: str, n: int) -> dict:
    t0 = time.perf_counter()
    workload = load_trace("azure-conv", num_requests=n)
    t1 = time.perf_counter()
    cfg = RunSettings(model="llama2-13b", device="h200", ee=EEConfig((20,), 0.8),
                    scheduler=SchedulerConfig(policy=policy, max_model_len=4096), seed=0)
    sim = Simulation(cfg, workload)
    t2 = time.perf_counter()
    res = sim.run()
    t3 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        write_run(d, res.requests, res.steps, res.summary)
    t4 = time.perf_counter()
    return {"policy": policy, "num_requests": n, "num_steps": int(len(res.steps)),
            "load_s": t1 - t0, "setup_s": t2 - t1, "simulate_s": t3 - t2, "write_s": t4 - t3,
            "requests_per_wall_s": n / (t3 - t2), "requests_per_wall_s_end_to_end": n / (t4 - t0),
            "completed": res.summary["completed"], "failed": res.summary["failed"],
            "output_throughput": res.summary["output_throughput"], "num_rebatches": res.summary["num_rebatches"],
            "early_exit_fraction": res.summary["early_exit_fraction"], "cost_model": res.summary["cost_model"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-requests", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--policies", default="off,drex")
    args = ap.parse_args()
    results = []
    for policy in args.policies.split(","):
        runs = [one(policy, args.num_requests) for _ in range(args.repeat)]
        best = max(runs, key=lambda r: r["requests_per_wall_s"])
        best["repeats"] = args.repeat
        best["requests_per_wall_s_all"] = [round(r["requests_per_wall_s"], 1) for r in runs]
        results.append(best)
        print(f"{policy:>6}: {best['requests_per_wall_s']:8.0f} req/wall-s simulated "
              f"({best['simulate_s']:.2f} s; {best['num_steps']} steps), "
              f"{best['requests_per_wall_s_end_to_end']:8.0f} req/wall-s end to end "
              f"(load {best['load_s']:.2f} s, write {best['write_s']:.2f} s)")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
                               "results": results}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
