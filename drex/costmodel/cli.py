"""Subcommands ``drex profile`` and ``drex costmodel fit|show``: argument parsing only."""

from __future__ import annotations

import argparse
import time


def add_parsers(sub) -> None:
    p = sub.add_parser("profile", help="measure per-layer costs on a device into profiles/<gpu>/<model>/")
    p.add_argument("--gpu", required=True, help="device name: h100, h200, a100 or cpu")
    p.add_argument("--model", required=True, help="model name (e.g. llama2-7b, tiny) or a path to config.json")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                   help="weights and activations (default: fp32 on cpu, bf16 on GPU)")
    p.add_argument("--quick", action="store_true", help="small grid (CI, smoke tests)")
    p.add_argument("--out", default=None, help="output directory (default profiles/<gpu>/<model>/)")
    p.add_argument("--force", action="store_true", help="profile even when the device found is not the one named")
    p.add_argument("--restart", action="store_true", help="discard a partial profile instead of resuming it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_profile)

    cm = sub.add_parser("costmodel", help="fit a profile, or show its predictions")
    cm_sub = cm.add_subparsers(dest="costmodel_command", required=True)
    f = cm_sub.add_parser("fit", help="fit the cost laws of a profile directory; writes fit.json + fit_report.txt")
    f.add_argument("dir")
    f.set_defaults(func=_fit)
    s = cm_sub.add_parser("show", help="predictions beside the measurements for a few points")
    s.add_argument("dir")
    s.set_defaults(func=_show)


def _profile(args: argparse.Namespace) -> int:
    from drex.costmodel.profiler import profile

    t0 = time.perf_counter()
    out = profile(args.gpu, args.model, args.dtype, args.quick, args.out, args.force, args.restart,
                  progress=not args.no_progress)
    print(f"profile written to {out} in {time.perf_counter() - t0:.1f} s; next: drex costmodel fit {out}")
    return 0


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
