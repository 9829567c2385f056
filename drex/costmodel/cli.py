"""Subcommands ``drex costmodel fit|show|import-vidur|predict``: argument parsing only (``drex profile`` is
the real backend's)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_parsers(sub) -> None:
    cm = sub.add_parser("costmodel", help="fit a profile, or show its predictions")
    cm_sub = cm.add_subparsers(dest="costmodel_command", required=True)
    f = cm_sub.add_parser("fit", help="fit the cost laws of a profile directory; writes fit.json + fit_report.txt")
    f.add_argument("dir", help="a profile directory written by drex profile (or import-vidur)")
    f.add_argument("--overwrite", action="store_true", help="allow replacing the fit of a profile shipped with drex")
    f.add_argument("--timing", default="cpu", choices=("cpu", "wall"),
                   help="fit the profile's own clock (cpu: the clock meta.json names; wall time for CPU profiles made "
                        "now, thread time in older ones) or the wall times kept beside it (wall: as drex run times "
                        "its steps)")
    f.set_defaults(func=_fit, uses_torch=False)
    s = cm_sub.add_parser("show", help="predictions beside the measurements for a few points")
    s.add_argument("dir", help="a fitted profile directory (e.g. profiles/cpu/tiny)")
    s.set_defaults(func=_show, uses_torch=False)
    v = cm_sub.add_parser("import-vidur", help="a drex profile (fitted) from a Vidur profile folder (mlp.csv "
                          "[+ attention.csv])")
    v.add_argument("dir", help="folder holding Vidur's mlp.csv (and optionally attention.csv)")
    v.add_argument("--device", required=True, help="the GPU it was measured on (a100, h100, ...)")
    v.add_argument("--model", required=True, help="drex model name of the same shape (llama2-7b, ...)")
    v.add_argument("--tp", type=int, default=1, help="tensor-parallel degree to import (default 1)")
    v.add_argument("--out", required=True, help="output directory (profiles/<device>/<model>/ ships it)")
    v.add_argument("--fit-rule", default="measured", choices=("measured", "vidur"),
                   help="measured: a model of the GPU Vidur measured (default); vidur: priced as Vidur's predictor "
                        "prices a step (straight lines, no LM head or step overhead), for side-by-side runs")
    v.set_defaults(func=_import_vidur, uses_torch=False)
    q = cm_sub.add_parser("predict", help="one step's pieces (layer, attention, linear, head, overhead) as JSON")
    q.add_argument("dir", help="a fitted profile directory")
    q.add_argument("--num-tokens", type=int, required=True, help="rows through the layer (decode rows + prefill tokens)")
    q.add_argument("--decode-context", type=int, default=0, help="cached tokens read by all decode rows together")
    q.add_argument("--prefill-attn", type=float, default=0.0,
                   help="query-key pairs of the prefill chunks: sum of chunk * (prior context + chunk / 2)")
    q.set_defaults(func=_predict, uses_torch=False)


def _profile_dir(path: str, shipped_too: bool = False) -> str:
    """The profile folder named; for reading (show, predict), a shipped one's repository-relative path
    (profiles/cpu/tiny) works from any directory."""
    from drex import REPO_ROOT

    p = Path(path)
    if shipped_too and not p.exists() and not p.is_absolute() and (REPO_ROOT / p).is_dir():
        return str(REPO_ROOT / p)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such directory")
    if not p.is_dir():
        raise ValueError(f"{path}: not a directory (give the profile's directory, e.g. profiles/cpu/tiny)")
    return path


def _fit(args: argparse.Namespace) -> int:
    from drex.costmodel import profile as pf
    from drex.costmodel.fit import fit_profile
    from drex.costmodel.vidur_fit import fit_imported
    from drex.outputs import refuse_shipped

    _profile_dir(args.dir)
    if not args.overwrite and (Path(args.dir) / pf.FIT).exists():
        refuse_shipped(Path(args.dir) / pf.FIT, "fitting", "copy the profile elsewhere, or --overwrite")
    t0 = time.perf_counter()
    imported = (pf.read_meta(args.dir).get("source") or {}).get("kind") == "vidur"  # fitted with its own laws
    _, report = fit_imported(args.dir) if imported else fit_profile(args.dir, args.timing)
    print(report, end="")
    print(f"fit written to {args.dir}/fit.json in {time.perf_counter() - t0:.2f} s")
    return 0


def _import_vidur(args: argparse.Namespace) -> int:
    from drex.costmodel.vidur import import_vidur

    t0 = time.perf_counter()
    out, report = import_vidur(args.dir, args.device, args.model, args.tp, args.out, fit_rule=args.fit_rule)
    print(report, end="")
    print(f"imported and fitted into {out} in {time.perf_counter() - t0:.2f} s")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from drex.costmodel.predict import predict_json

    print(predict_json(_profile_dir(args.dir, shipped_too=True), args.num_tokens, args.decode_context, args.prefill_attn))
    return 0


def _show(args: argparse.Namespace) -> int:
    from drex.costmodel.show import show

    print(show(_profile_dir(args.dir, shipped_too=True)))
    return 0
