"""``drex simulate`` and ``drex compare``: flags -> RunSettings -> simulate -> records and a table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from drex.core.policies import POLICIES
from drex.metrics import counted, format_table, rejection_lines, write_run
from drex.settings import add_run_flags, load_workload, settings_from_args
from drex.sim.simulator import simulate


def _tell_rejections(res, policy: str | None = None) -> None:
    for line in rejection_lines(res.request_columns):
        print((f"{policy}: " if policy else "") + line, file=sys.stderr)


def cmd_simulate(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, args.policy)  # every flag checked before a trace is read
    workload = load_workload(args)
    res = simulate(settings, workload, progress=not args.no_progress)
    write_run(args.out, res.request_columns, res.step_columns, res.summary)
    print(format_table({args.policy: res.summary}))
    _tell_rejections(res)
    print(f"cost model: {res.summary['cost_model']}; {counted(len(workload), 'request')} in "
          f"{res.summary['sim_wall_s']:.2f} s wall; records in {args.out}/")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    if args.plot and not args.out:
        raise ValueError("--plot draws from the runs' records: give --out DIR too")
    policies = [p for p in args.policies.split(",") if p]
    settings = {policy: settings_from_args(args, policy) for policy in policies}  # all checked before any work
    workload = load_workload(args)
    summaries, rejections = {}, {}
    if args.out:
        from drex.outputs import check_out_dir

        for policy in policies:
            check_out_dir(Path(args.out) / policy, "--out")
    for policy in policies:
        res = simulate(settings[policy], workload, progress=not args.no_progress)
        summaries[policy] = res.summary
        rejections[policy] = rejection_lines(res.request_columns)
        if args.out:
            write_run(Path(args.out) / policy, res.request_columns, res.step_columns, res.summary)
    first = next(iter(summaries.values()))
    print(f"{counted(len(workload), 'request')} of {args.trace} | model {first['model']} on {args.device} | exits "
          f"{first['exits']} threshold {first['threshold']} | confidence {first['confidence_source']} | "
          f"cost model {first['cost_model']}")
    print(format_table(summaries))
    for policy, lines in rejections.items():  # the same requests fail under every policy, usually: say it once
        if lines and (policy == policies[0] or lines != rejections[policies[0]]):
            print("\n".join((f"{policy}: " if len(set(map(tuple, rejections.values()))) > 1 else "") + line
                            for line in lines), file=sys.stderr)
    if args.plot:
        from drex.plots import plot_path

        print("figures: " + ", ".join(str(f) for f in plot_path(args.out)))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("simulate", help="replay a trace through the scheduler in the discrete-event simulator")
    add_run_flags(p)
    p.add_argument("--out", required=True, help="directory for requests.csv, steps.csv, summary.json")
    p.set_defaults(func=cmd_simulate, uses_torch=False)
    c = sub.add_parser("compare", help="simulate every policy on the same workload and print them side by side",
                       description="Simulate every policy on the same workload and print them side by side. Its "
                                   "defaults differ from drex simulate's: --trace azure-conv --num-requests 1000 "
                                   "(decode-heavy conversations, where early exit matters).")
    add_run_flags(c, policy=False)
    c.add_argument("--policies", default=",".join(POLICIES), help="comma-separated policies to compare")
    c.add_argument("--out", default=None, help="optional directory: one sub-directory of records per policy")
    c.add_argument("--plot", action="store_true", help="also draw the policies side by side into --out (drex plot)")
    # Decode-heavy conversation traffic: where early exit matters (azure-code is prefill-bound).
    c.set_defaults(func=cmd_compare, trace="azure-conv", num_requests=1000, uses_torch=False)
    for action in c._actions:  # its help must show compare's default, not simulate's "the whole trace"
        if action.dest == "num_requests":
            action.help = "replay only the first N requests (default: %(default)s)"
    return None
