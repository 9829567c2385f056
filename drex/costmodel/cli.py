"""Subcommands ``drex costmodel fit|show``: argument parsing only (``drex profile`` is the real backend's)."""

from __future__ import annotations

import argparse
import time


def add_parsers(sub) -> None:
    cm = sub.add_parser("costmodel", help="fit a profile, or show its predictions")
    cm_sub = cm.add_subparsers(dest="costmodel_command", required=True)
    f = cm_sub.add_parser("fit", help="fit the cost laws of a profile directory; writes fit.json + fit_report.txt")
    f.add_argument("dir")
    f.set_defaults(func=_fit)
    s = cm_sub.add_parser("show", help="predictions beside the measurements for a few points")
    s.add_argument("dir")
    s.set_defaults(func=_show)


def _fit(args: argparse.Namespace) -> int:
    from drex.costmodel.fit import fit_profile

    t0 = time.perf_counter()
    _, report = fit_profile(args.dir)
    print(report, end="")
    print(f"fit written to {args.dir}/fit.json in {time.perf_counter() - t0:.2f} s")
    return 0


def _show(args: argparse.Namespace) -> int:
    from drex.costmodel.show import show

    print(show(args.dir))
    return 0
