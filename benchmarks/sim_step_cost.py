"""What one simulated step costs (issue 13): the simulation alone, in process, per step and per plan.

The 10,000-request case of ``benchmarks/sim_speed.py`` (azure-conv, llama2-13b on h200, exit after layer 20,
seed 0), run three ways with the settings ``drex simulate`` gives it:

- ``off``: the shipped scheduler, which plans runs of identical decode steps (up to 64) and prices them at once;
- ``off, one step a plan``: the same with ``max_lookahead_steps=1``: the cost of a bare step when every step is
  planned, run and applied alone (no exit point, no decision);
- ``drex`` at threshold 0.3: rows park and drain nearly every step, and a step that parks or drains ends its run.

It reports CPU seconds of ``Simulation.run`` (start-up, trace reading and record writing excluded), steps, plans
(``schedule`` calls that ran something), and microseconds per step and per plan; and the budget a step has under
issue 13's drex target (10,000 requests in 10,000 / 2,300 s of whole command, every second of it given to
stepping: a bound no real run reaches).

    taskset -c 1 python benchmarks/sim_step_cost.py [--num-requests N] [--out FILE]

Writes benchmarks/results/sim_step_cost.json and .md (or --out and its .md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OUT = REPO / "benchmarks" / "results" / "sim_step_cost.json"
TARGET_REQ_PER_S = 2_300  # issue 13's drex target, whole command
COMMON = ["--trace", "azure-conv", "--model", "llama2-13b", "--device", "h200", "--exits", "20", "--seed", "0",
          "--no-progress", "--out", "unused"]
CASES = (("off", "off", 64, []), ("off, one step a plan", "off", 1, []),
         ("drex, threshold 0.3", "drex", 64, ["--threshold", "0.3"]))


def measure(policy: str, lookahead: int, extra: list[str], n: int, split: bool = False) -> dict:
    from drex.cli import build_parser
    from drex.settings import load_workload, settings_from_args
    from drex.sim.simulator import Simulation

    argv = ["simulate", *COMMON, "--num-requests", str(n), "--policy", policy, *extra]
    args = build_parser(argv).parse_args(argv)
    cfg = settings_from_args(args, policy)
    cfg = dataclasses.replace(cfg, scheduler=dataclasses.replace(cfg.scheduler, max_lookahead_steps=lookahead))
    sim = Simulation(cfg, load_workload(args))
    by_kind = _time_by_kind(sim) if split else None
    c0 = time.process_time()
    res = sim.run()
    cpu = time.process_time() - c0
    steps = int(res.summary["num_steps"])
    plans = sum(r.sched.log._runs for r in sim.replicas)
    out = {"policy": policy, "max_lookahead_steps": lookahead, "cpu_s": round(cpu, 3), "steps": steps,
           "plans": plans, "us_per_step": round(cpu / steps * 1e6, 1), "us_per_plan": round(cpu / plans * 1e6, 1),
           "early_exit_fraction": round(res.summary["early_exit_fraction"], 4),
           "num_rebatches": res.summary["num_rebatches"], "num_drains": res.summary["num_drains"]}
    if by_kind is not None:
        out["by_kind"] = {kind: {"plans": v[0], "steps": v[1], "cpu_s": round(v[2], 3),
                                 "us_per_plan": round(v[2] / max(v[0], 1) * 1e6, 1)} for kind, v in by_kind.items()}
    return out


def _time_by_kind(sim) -> dict:
    """CPU seconds of planning, running and applying each kind of plan (decode, mixed, prefill, flush), timed by
    wrapping the replica's own schedule, execute and complete (this instance only; a run timed this way is a
    little slower than a plain one)."""
    totals: dict[str, list] = {}
    clock = time.process_time
    for rep in sim.replicas:
        sched, executor = rep.sched, rep.executor
        schedule, execute, complete = sched.schedule, executor.execute, sched.complete

        def timed_schedule(now, schedule=schedule):
            t = clock()
            plan = schedule(now)
            if plan is not None:
                entry = totals.setdefault(plan.kind, [0, 0, 0.0])
                entry[0] += 1
                entry[2] += clock() - t
            return plan

        def timed_execute(plan, now, until=float("inf"), execute=execute):
            t = clock()
            result = execute(plan, now, until)
            totals[plan.kind][1] += len(result.durations_s)
            totals[plan.kind][2] += clock() - t
            return result

        def timed_complete(plan, result, start_s, complete=complete):
            t = clock()
            complete(plan, result, start_s)
            totals[plan.kind][2] += clock() - t

        sched.schedule, executor.execute, sched.complete = timed_schedule, timed_execute, timed_complete
    return totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-requests", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.num_requests < 1:
        raise SystemExit("sim_step_cost: --num-requests must be positive")
    rows = []  # (torch is never imported: the simulator does not use it, as drex simulate does not)
    for label, policy, lookahead, extra in CASES:
        print(f"{label}: {args.num_requests:,} requests ...", flush=True)
        r = {"case": label, **measure(policy, lookahead, extra, args.num_requests)}
        if policy == "drex":  # again, timed by kind of plan
            r["by_kind"] = measure(policy, lookahead, extra, args.num_requests, split=True)["by_kind"]
        rows.append(r)
        print(f"  {r['cpu_s']:.2f} s CPU, {r['steps']:,} steps in {r['plans']:,} plans: {r['us_per_step']} us a "
              f"step, {r['us_per_plan']} us a plan", flush=True)
    drex = rows[-1]
    budget = args.num_requests / TARGET_REQ_PER_S / drex["steps"] * 1e6
    machine = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    data = {"machine": machine, "num_requests": args.num_requests, "cases": rows,
            "drex_target_us_per_step_bound": round(budget, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    lines = ["# What one simulated step costs (issue 13)\n",
             f"Machine: {machine}. `Simulation.run` alone (CPU seconds; start-up, trace and records excluded), "
             f"{args.num_requests:,} requests of azure-conv, llama2-13b on h200, exit after layer 20, seed 0. Made by "
             "`taskset -c 1 python benchmarks/sim_step_cost.py`.\n",
             "| case | lookahead | CPU s | steps | plans | us / step | us / plan | early-exit fraction | rebatches |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['case']} | {r['max_lookahead_steps']} | {r['cpu_s']:.2f} | {r['steps']:,} | {r['plans']:,} | "
              f"{r['us_per_step']} | {r['us_per_plan']} | {r['early_exit_fraction']:.3f} | {r['num_rebatches']:,} |"
              for r in rows]
    bare = rows[1]
    lines += ["", f"drex's plans by kind (planning, running and applying each; timed in a second run, a little "
              f"slower):", "", "| kind | plans | steps | CPU s | us / plan |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {kind} | {v['plans']:,} | {v['steps']:,} | {v['cpu_s']:.2f} | {v['us_per_plan']} |"
              for kind, v in sorted(drex["by_kind"].items())]
    whole = args.num_requests / TARGET_REQ_PER_S
    mixed = drex["by_kind"].get("mixed", {"cpu_s": 0.0, "plans": 0})
    lines += ["", f"Issue 13's drex target ({TARGET_REQ_PER_S:,} requests per wall-second, whole command) gives "
              f"{args.num_requests:,} requests {whole:.2f} s: at most **{budget:.1f} us a step** for drex's "
              f"{drex['steps']:,} steps, even with start-up and records free. A bare step planned, run and applied "
              f"alone (off, one step a plan) costs {bare['us_per_step']} us. drex's {mixed['plans']:,} mixed steps "
              f"(prefill chunks beside decode rows that meet the exit point: one step a plan) take "
              f"{mixed['cpu_s']:.2f} s by themselves."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"drex target: at most {budget:.1f} us a step; wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
