"""Simulator speed (issue 13): the whole ``drex simulate`` command, timed as a user waits for it.

Each case runs the real command line in a child process (start-up, trace, simulation, requests.csv,
steps.csv, summary.json) and reads the child's own rusage (os.wait4): wall seconds, CPU seconds (user +
system) and peak RSS. llama2-13b on h200, exit after layer 20, seed 0; policies ``off`` and ``drex`` at
``--threshold 0.3`` (where drex really rebatches: >= 30% of tokens exit early). Sizes: the first 1,000 and
10,000 requests of azure-conv, and 100,000 generated requests (Poisson arrivals at the rate of azure-conv's
first 10,000, lengths resampled from the trace). Reports requests per wall- and CPU-second, seconds per
1,000 requests at each size (time must grow linearly with requests), and checks issue 13's targets.

    taskset -c 1 python benchmarks/sim_speed.py [--sizes 1000,10000,100000] [--policies off,drex] [--out FILE]
        [--baseline DIR]   (DIR: git archive COMMIT | tar -x -C DIR; its 10k cases timed in the same run)
        [--drex-threshold T]   (default 0.3)   [--repeat R]   (the fastest of R runs per case)

Writes benchmarks/results/sim_speed.json and sim_speed.md (or --out and its .md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "sim_speed.json"
COMMON = ["--model", "llama2-13b", "--device", "h200", "--exits", "20", "--seed", "0", "--no-progress"]
POLICIES = ("off", "drex")
DREX_THRESHOLD = 0.3
TRACE_SIZES = (1_000, 10_000)  # up to here, the trace itself; beyond, generated requests at its lengths
# Issue 13's done-when, on the 10,000-request case; and peak RSS of the 100,000-request runs.
TARGETS = {"off": 4_500, "drex": 2_300}
MIN_EARLY_EXIT = 0.30
MAX_RSS_BYTES = 2 * 2**30


def trace_args(n: int) -> list[str]:
    if n <= max(TRACE_SIZES):
        return ["--trace", "azure-conv", "--num-requests", str(n)]
    sys.path.insert(0, str(REPO))
    from drex.traces import load_trace

    first = load_trace("azure-conv", num_requests=max(TRACE_SIZES))
    rate = len(first) / (first[-1].arrival_s - first[0].arrival_s)
    return ["--trace", f"synthetic:poisson:rate={rate:.4f},n={n},prompt=trace:azure-conv,output=trace:azure-conv"]


def policy_flags(policy: str, drex_threshold: float = DREX_THRESHOLD) -> list[str]:
    return ["--policy", policy] + (["--threshold", str(drex_threshold)] if policy == "drex" else [])


def fastest(policy: str, n: int, src: Path = REPO, repeat: int = 1, drex_threshold: float = DREX_THRESHOLD) -> dict:
    """run_case repeated: the run with the least wall time, and every run's wall time (a shared machine's noise
    only ever adds time)."""
    runs = [run_case(policy, n, src, drex_threshold) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["wall_s"])
    return {**best, "repeats": repeat, "wall_s_all": [r["wall_s"] for r in runs]}


def run_case(policy: str, n: int, src: Path = REPO, drex_threshold: float = DREX_THRESHOLD) -> dict:
    """One whole command in a child process (the drex package of ``src``): its wall time, its own CPU time and
    peak RSS."""
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "drex.cli", "simulate", *trace_args(n), *COMMON,
               *policy_flags(policy, drex_threshold), "--out", str(Path(d) / "run")]
        env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
        done = threading.Event()
        t0 = time.perf_counter()
        threading.Thread(target=_heartbeat, args=(f"{policy} {n:,}", t0, done), daemon=True).start()
        child = subprocess.Popen(cmd, cwd=src, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stderr = child.stderr.read()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed ({child.returncode}):\n{stderr.decode()[-2000:]}")
        summary = json.loads((Path(d) / "run" / "summary.json").read_text())
    cpu = usage.ru_utime + usage.ru_stime
    return {"policy": policy, "num_requests": n, "trace": cmd[cmd.index("--trace") + 1],
            "command": "drex simulate " + " ".join(cmd[cmd.index("simulate") + 1:-2]) + " --out DIR",
            "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "sim_wall_s": round(summary["sim_wall_s"], 3),
            "requests_per_wall_s": round(n / wall, 1), "requests_per_cpu_s": round(n / cpu, 1),
            "wall_s_per_1k_requests": round(wall / n * 1e3, 4), "peak_rss_bytes": usage.ru_maxrss * 1024,
            "num_steps": summary["num_steps"], "completed": summary["completed"], "failed": summary["failed"],
            "early_exit_fraction": round(summary["early_exit_fraction"], 4), "num_rebatches": summary["num_rebatches"],
            "cost_model": summary["cost_model"]}


def _heartbeat(what: str, t0: float, done: threading.Event) -> None:
    while not done.wait(15.0):
        print(f"  ... {what}: {time.perf_counter() - t0:.0f} s", flush=True)


def verdicts(results: list[dict]) -> dict:
    """Issue 13's targets against this run's results (None: the case was not run)."""
    by = {(r["policy"], r["num_requests"]): r for r in results}
    out = {}
    for policy, target in TARGETS.items():
        r = by.get((policy, 10_000))
        out[f"{policy}_10k_requests_per_wall_s >= {target}"] = None if r is None else r["requests_per_wall_s"] >= target
    r = by.get(("drex", 10_000))
    out[f"drex_10k_early_exit_fraction >= {MIN_EARLY_EXIT}"] = None if r is None else \
        r["early_exit_fraction"] >= MIN_EARLY_EXIT
    big = [r for r in results if r["num_requests"] >= 100_000]
    out["peak_rss_100k <= 2 GiB"] = None if not big else all(r["peak_rss_bytes"] <= MAX_RSS_BYTES for r in big)
    for policy in TARGETS:  # linear: seconds per 1k requests at the largest size within 1.5x of the 10k one's
        runs = sorted((r for r in results if r["policy"] == policy), key=lambda r: r["num_requests"])
        ten = by.get((policy, 10_000))
        if ten is not None and runs and runs[-1]["num_requests"] > 10_000:
            out[f"{policy}_linear (s per 1k at {runs[-1]['num_requests']:,} <= 1.5 x at 10k)"] = \
                runs[-1]["wall_s_per_1k_requests"] <= 1.5 * ten["wall_s_per_1k_requests"]
    return out


def table(results: list[dict], checks: dict, machine: str, baseline=(), baseline_src=None) -> str:
    lines = [f"# Simulator speed (issue 13): whole `drex simulate` command\n", f"Machine: {machine}. One run per case; "
             "wall time of the whole command (start-up, trace, simulation, records written); CPU and peak RSS from "
             "the child's rusage. Made by `taskset -c 1 python benchmarks/sim_speed.py`.\n",
             "| policy | requests | wall s | req / wall-s | req / CPU-s | wall s per 1k req | peak RSS MiB | "
             "steps | early-exit fraction | rebatches |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['policy']} | {r['num_requests']:,} | {r['wall_s']:.2f} | {r['requests_per_wall_s']:,.0f} | "
                     f"{r['requests_per_cpu_s']:,.0f} | {r['wall_s_per_1k_requests']:.3f} | "
                     f"{r['peak_rss_bytes'] / 2**20:,.0f} | {r['num_steps']:,} | {r['early_exit_fraction']:.3f} | "
                     f"{r['num_rebatches']:,} |")
    if baseline:
        lines += ["", f"Baseline in the same run ({baseline_src}), 10,000 requests:", "",
                  "| policy | wall s | CPU s | peak RSS MiB | this tree, wall | this tree, CPU |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {b['policy']} | {b['wall_s']:.2f} | {b['cpu_s']:.2f} | {b['peak_rss_bytes'] / 2**20:,.0f} | "
                  f"{b.get('speedup_wall', '-')}x faster | {b.get('speedup_cpu', '-')}x faster |" for b in baseline]
    lines += ["", "| target | met |", "|---|---|"] + [f"| {k} | {'-' if v is None else ('yes' if v else 'NO')} |"
                                                    for k, v in checks.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="comma-separated request counts")
    ap.add_argument("--policies", default="off,drex", help="comma-separated: off, drex")
    ap.add_argument("--out", type=Path, default=OUT, help="JSON results (a .md table beside it)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest is kept (all are listed)")
    ap.add_argument("--drex-threshold", type=float, default=0.3,
                    help="drex's exit threshold (0.3: most tokens exit; 0.8, the default of drex simulate: few do)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a checkout of an earlier commit (git archive COMMIT | tar -x -C DIR): its 10,000-request "
                         "cases run in the same run, for ratios measured under the same load")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    policies = [p for p in args.policies.split(",") if p]
    bad = [p for p in policies if p not in POLICIES]
    if bad or not sizes or min(sizes) < 1 or args.repeat < 1:
        raise SystemExit(f"sim_speed: policies must be off or drex (got {bad}), sizes and --repeat positive (got "
                         f"{sizes}, {args.repeat})")
    machine = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    results = []
    for policy in policies:
        for n in sizes:
            print(f"{policy} {n:,} requests ...", flush=True)
            r = fastest(policy, n, repeat=args.repeat, drex_threshold=args.drex_threshold)
            results.append(r)
            print(f"{policy:>5} {n:>7,}: {r['wall_s']:8.2f} s wall, {r['requests_per_wall_s']:8,.0f} req/wall-s, "
                  f"{r['requests_per_cpu_s']:8,.0f} req/CPU-s, {r['wall_s_per_1k_requests']:.3f} s per 1k, "
                  f"peak RSS {r['peak_rss_bytes'] / 2**20:,.0f} MiB, early exit {r['early_exit_fraction']:.2f}",
                  flush=True)
    baseline = []
    if args.baseline is not None:
        if not (args.baseline / "drex" / "cli.py").exists():
            raise SystemExit(f"sim_speed: --baseline {args.baseline} holds no drex package")
        for policy in policies:
            print(f"baseline {policy} 10,000 requests ({args.baseline}) ...", flush=True)
            b = fastest(policy, 10_000, args.baseline, args.repeat, args.drex_threshold)
            ours = next((r for r in results if r["policy"] == policy and r["num_requests"] == 10_000), None)
            if ours is not None:
                b["speedup_wall"] = round(b["wall_s"] / ours["wall_s"], 2)
                b["speedup_cpu"] = round(b["cpu_s"] / ours["cpu_s"], 2)
            baseline.append(b)
            print(f"baseline {policy:>5} 10,000: {b['wall_s']:8.2f} s wall, {b['cpu_s']:.2f} s CPU; this tree is "
                  f"{b.get('speedup_wall', '-')}x (wall), {b.get('speedup_cpu', '-')}x (CPU) faster", flush=True)
    checks = verdicts(results)
    sys.path.insert(0, str(REPO))
    from drex.outputs import recorded_path

    source = recorded_path(args.baseline) if args.baseline is not None else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "results": results, "targets": checks,
                                    "baseline": {"source": source, "results": baseline} if baseline
                                    else None}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table(results, checks, machine, baseline, source))
    for k, v in checks.items():
        print(f"{k}: {'-' if v is None else ('yes' if v else 'NO')}")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
