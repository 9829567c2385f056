"""``drex sweep``, ``drex capacity`` and ``drex plot``: flags -> explore/plots functions -> files and one summary line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from drex.progress import Progress, add_progress_flag


def _search_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-goodput-fraction", type=float, default=0.9,
                   help="a load passes when at least this share of all requests meets every SLO")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="stop when the passing and failing rates are within this relative gap")
    p.add_argument("--max-runs", type=int, default=20, help="simulations per capacity search, at most")


def _search(args: argparse.Namespace) -> dict:
    from drex.explore.capacity import check_search

    check_search(args.min_goodput_fraction, args.tolerance, args.max_runs)
    return {"min_fraction": args.min_goodput_fraction, "tolerance": args.tolerance, "max_runs": args.max_runs}


def cmd_capacity(args: argparse.Namespace) -> int:
    from drex.explore.capacity import search
    from drex.explore.grid import check
    from drex.explore.sweep import write_capacity
    from drex.metrics import counted

    check(args)
    limits = _search(args)  # checked before the bar starts
    with Progress("capacity search", args.max_runs, "run", enabled=not args.no_progress) as bar:
        def show(n, rate, frac):
            bar.note(f"{rate:.2f} req/s: {frac:.1%} meet SLOs")
            bar.set(n)

        out = search(args, progress=show, **limits)
    cap = out["capacity"]
    knee = out["knee"]
    write_capacity(Path(args.out), {"capacity": cap, "knee": None if knee is None else {
        "summary": knee.summary, "requests": knee.request_columns, "steps": knee.step_columns}})
    if cap["max_request_rate"] is None:
        print(f"no load tried met the SLOs for {args.min_goodput_fraction:.0%} of requests "
              f"({counted(cap['num_runs'], 'run')}); records in {args.out}/")
    else:
        bound = "" if cap["bracketed"] else " (a lower bound: the search hit its limit before a load failed)"
        print(f"max request rate {cap['max_request_rate']:.3f} req/s (rate scale {cap['max_rate_scale']:.3f}; "
              f"{cap['goodput_fraction_at_knee']:.1%} of requests meet the SLOs there){bound}; "
              f"{counted(cap['num_runs'], 'run')}; {args.out}/capacity.json")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from drex.explore import grid, sweep
    from drex.metrics import counted

    t0 = time.perf_counter()
    if args.ray != "off" and args.ray != "auto" and not args.ray.strip():
        raise ValueError("--ray takes auto, off or a cluster address")
    search = _search(args) if args.capacity else None
    configs = grid.configurations(grid.grid_axes(args, args.grid))
    p = sweep.plan(configs, Path(args.out), "capacity" if args.capacity else "simulate", search)
    for cfg, err in p.invalid:
        print(f"skipped invalid configuration {grid.to_argv(cfg)}: {err}", file=sys.stderr)
    if not p.rows:
        raise ValueError(f"no valid configuration in the grid ({len(p.invalid)} invalid)")
    n_todo = len(p.todo)
    sweep.run(p, args.ray, progress=not args.no_progress)
    df = sweep.write_table(p)
    runs = df.config_id.nunique()  # configurations that cannot differ share a run
    failed = df[df.status == "failed"].config_id.nunique()
    shared = f" in {runs} runs" if runs != len(df) else ""
    print(f"{counted(len(df), 'configuration')}{shared} ({runs - n_todo} already done, {n_todo} run, {failed} failed; "
          f"{len(p.invalid)} invalid skipped) in {time.perf_counter() - t0:.1f} s; {args.out}/sweep.csv")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from drex.outputs import check_out_dir
    from drex.plots import plot_path

    if args.out is None:  # the figures go into PATH itself (drex's main checked --out)
        check_out_dir(args.path, "PATH")
    files = plot_path(Path(args.path), Path(args.out) if args.out else None)
    for f in files:
        print(f)
    return 0


def add_parsers(sub) -> None:
    from drex.explore.grid import add_axis_flags
    from drex.settings import add_run_flags

    s = sub.add_parser("sweep", help="simulate every combination of flag values (on Ray), one row each in sweep.csv")
    add_axis_flags(s)
    s.add_argument("--grid", default=None, help="YAML file: axis -> list of values (flags on the command line win)")
    s.add_argument("--out", required=True, help="directory for sweep.csv and runs/<config_id>/")
    s.add_argument("--ray", default="auto", help="auto (a local Ray instance), off (in-process) or ADDRESS")
    s.add_argument("--capacity", action="store_true", help="one capacity search per configuration instead of one run")
    _search_flags(s)
    add_progress_flag(s)
    s.set_defaults(func=cmd_sweep, uses_torch=False)

    c = sub.add_parser("capacity", help="the highest request rate that meets the SLOs (searches --rate-scale)")
    add_run_flags(c)
    _search_flags(c)
    c.add_argument("--out", required=True, help="directory for capacity.json and knee/ (the knee's records)")
    c.set_defaults(func=cmd_capacity, uses_torch=False)

    p = sub.add_parser("plot", help="figures from a run, a compare, a sweep or a capacity directory")
    p.add_argument("path", help="a directory written by drex simulate, compare --out, sweep or capacity")
    p.add_argument("--out", default=None, help="directory for the PNG files (default: PATH itself)")
    p.set_defaults(func=cmd_plot, uses_torch=False)
