"""``drex simulate`` and ``drex compare``: flags -> SimConfig -> simulate -> records and a table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from drex.config import EEConfig, SchedulerConfig
from drex.metrics import format_table, write_run
from drex.sim.simulator import ROUTERS, SimConfig, simulate
from drex.slo import add_slo_flags, with_default_slos

POLICY_ORDER = ("off", "eager", "lazy", "average", "latency-only", "drex")


def parse_exits(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--exits takes layer numbers like 20 or 10,20,30, got {text!r}") from None


def add_run_flags(p: argparse.ArgumentParser, *, policy: bool = True) -> None:
    """Flags shared by simulate, compare and the real backend's run."""
    p.add_argument("--trace", default="azure-code", help="azure-code | azure-conv | mooncake | PATH | synthetic:SPEC")
    p.add_argument("--model", default="tiny", help="model name (tiny, llama2-7b, ...) or path to config.json")
    p.add_argument("--device", default="cpu", help="h100 | h200 | a100 | cpu")
    if policy:
        p.add_argument("--policy", default="drex", help=", ".join(POLICY_ORDER))
    p.add_argument("--exits", type=parse_exits, default=None,
                   help="exit layers, e.g. 20 or 10,20,30 (default: the model's trained exits, else mid-depth)")
    p.add_argument("--threshold", type=float, default=0.8)
    p.add_argument("--metric", default="margin", choices=("margin", "maxprob", "entropy"))
    p.add_argument("--confidence", default="beta", help="beta[:A,B[/A,B..]] | trace:PATH")
    p.add_argument("--max-batch-size", type=int, default=256)
    p.add_argument("--chunk-size", type=int, default=512, help="token budget per step (chunked prefill)")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--max-model-len", type=int, default=None, help="default: the model's max position")
    p.add_argument("--profitability", default="costmodel", choices=("costmodel", "art"))
    p.add_argument("--no-inline-drain", action="store_true")
    p.add_argument("--num-requests", type=int, default=None, help="replay only the first N requests")
    p.add_argument("--rate-scale", type=float, default=1.0, help="X > 1 compresses time (X times the rate)")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--router", default="round-robin", choices=ROUTERS)
    p.add_argument("--num-kv-blocks", type=int, default=None, help="override KV capacity (blocks)")
    p.add_argument("--cost-model", default="auto", choices=("auto", "roofline"))
    p.add_argument("--seed", type=int, default=0)
    add_slo_flags(p)
    p.add_argument("--no-progress", action="store_true")


def sim_config(args: argparse.Namespace, policy: str) -> SimConfig:
    from drex.models import get_model

    shape = get_model(args.model)
    exits = args.exits
    if exits is None:
        exits = shape.trained_exits or (shape.num_layers // 2,)
    sched = SchedulerConfig(policy=policy, max_batch_size=args.max_batch_size, chunk_size=args.chunk_size,
                            block_size=args.block_size, max_model_len=args.max_model_len or shape.max_position,
                            profitability=args.profitability, inline_drain=not args.no_inline_drain)
    return SimConfig(model=args.model, device=args.device, ee=EEConfig(exits, args.threshold, args.metric),
                     scheduler=sched, confidence=args.confidence, replicas=args.replicas, router=args.router,
                     seed=args.seed, num_kv_blocks=args.num_kv_blocks, cost_model=args.cost_model)


def load_workload(args: argparse.Namespace):
    from drex.workload import make_workload

    workload = make_workload(args.trace, num_requests=args.num_requests, rate_scale=args.rate_scale,
                             rng=np.random.default_rng(args.seed))
    return with_default_slos(workload, args.slo_ttft_ms, args.slo_tpot_ms)


def cmd_simulate(args: argparse.Namespace) -> int:
    workload = load_workload(args)
    res = simulate(sim_config(args, args.policy), workload, progress=not args.no_progress and sys.stderr.isatty())
    write_run(args.out, res.requests, res.steps, res.summary)
    print(format_table({args.policy: res.summary}))
    print(f"cost model: {res.summary['cost_model']}; {len(workload)} requests in {res.summary['sim_wall_s']:.2f} s "
          f"wall; records in {args.out}/")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    if args.plot and not args.out:
        raise ValueError("--plot draws from the runs' records: give --out DIR too")
    workload = load_workload(args)
    summaries = {}
    for policy in args.policies.split(","):
        res = simulate(sim_config(args, policy), workload, progress=False)
        summaries[policy] = res.summary
        if args.out:
            write_run(Path(args.out) / policy, res.requests, res.steps, res.summary)
    first = next(iter(summaries.values()))
    print(f"{len(workload)} requests of {args.trace} | model {first['model']} on {args.device} | exits "
          f"{first['exits']} threshold {args.threshold} | confidence {first['confidence_source']} | "
          f"cost model {first['cost_model']}")
    print(format_table(summaries))
    if args.plot:
        from drex.plots import plot_path

        print("figures: " + ", ".join(str(f) for f in plot_path(args.out)))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("simulate", help="replay a trace through the scheduler in the discrete-event simulator")
    add_run_flags(p)
    p.add_argument("--out", required=True, help="directory for requests.csv, steps.csv, summary.json")
    p.set_defaults(func=cmd_simulate, uses_torch=False)
    c = sub.add_parser("compare", help="simulate every policy on the same workload and print them side by side")
    add_run_flags(c, policy=False)
    c.add_argument("--policies", default=",".join(POLICY_ORDER))
    c.add_argument("--out", default=None, help="optional directory: one sub-directory of records per policy")
    c.add_argument("--plot", action="store_true", help="also draw the policies side by side into --out (drex plot)")
    # Decode-heavy conversation traffic: where early exit matters (azure-code is prefill-bound).
    c.set_defaults(func=cmd_compare, trace="azure-conv", num_requests=1000, uses_torch=False)
    return None
