"""drex beside the reference simulator (Vidur) on identical requests: one row per trace and admission rule.

    python benchmarks/vs_vidur.py --out DIR                 # ../shared/vidur-runs: 3 traces x 3 rules, ~40 s
    python benchmarks/vs_vidur.py --runs OTHER --out DIR    # any directory of that layout

A runs directory holds ``traces/*.csv`` (drex's trace format) and ``vidur_metrics.csv`` (Vidur's figures per
trace, its column ``trace`` naming the file as ``traces/NAME.csv``; any subset of the columns below). Each
trace is simulated with ``drex simulate`` under Vidur's setup (Llama-2-70B, TP 2, A100, Sarathi chunk 512,
batch cap 128, 16-token blocks, 3,328 KV blocks: flags in ``SETUP``), once per admission rule: ``reserve``
(drex's default), ``vllm`` (Vidur's) and ``first-chunk`` (drex's previous default, which thrashed). ``DIR/vs_vidur.csv`` has, for every column of Vidur's file that drex
measures, ``vidur_X``, ``drex_X`` and ``rel_X`` (drex / Vidur - 1); ``DIR/vs_vidur.md`` the same as a table.

drex's figures are computed as Vidur's README defines them: throughput is output tokens over the makespan
(first arrival to last completion); TTFT and end-to-end latency in seconds; TPOT in ms; ITL per token in ms;
``restarts`` are preemptions (``reqs_restarted`` the requests hit); ``steps`` the steps run,
``decode_only_steps`` those without a prefill chunk; ``prefill_tokens_run`` includes recomputed prompts.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SETUP = ["--model", "llama2-70b", "--device", "a100", "--tp", "2", "--policy", "off", "--max-batch-size", "128",
         "--chunk-size", "512", "--block-size", "16", "--num-kv-blocks", "3328"]
ADMISSIONS = ("reserve", "vllm", "first-chunk")


def drex_metrics(run: Path) -> dict[str, float]:
    """Vidur's metrics (vidur_metrics.csv's names and units) from a drex run directory."""
    req = pd.read_csv(run / "requests.csv")
    steps = pd.read_csv(run / "steps.csv")
    s = json.loads((run / "summary.json").read_text())
    done = req[req.status == "finished"]
    finish_s = done.arrival_s + done.e2el_ms / 1e3
    makespan = float(finish_s.max() - req.arrival_s.min())
    ttft, e2e = done.ttft_ms / 1e3, done.e2el_ms / 1e3
    tpot = done.tpot_ms.dropna()
    return {"thru_tok_s": float(done.output_tokens.sum()) / makespan, "makespan_s": makespan,
            "ttft_mean": ttft.mean(), "ttft_p50": ttft.median(), "ttft_p99": float(np.percentile(ttft, 99)),
            "tpot_mean_ms": tpot.mean(), "tpot_p50_ms": tpot.median(), "tpot_p99_ms": float(np.percentile(tpot, 99)),
            "e2e_mean": e2e.mean(), "e2e_p50": e2e.median(), "e2e_p99": float(np.percentile(e2e, 99)),
            "restarts": float(s["num_preemptions"]), "reqs_restarted": float((req.preemptions > 0).sum()),
            "itl_mean_ms": s["mean_itl_ms"], "itl_p50_ms": s["median_itl_ms"], "itl_p99_ms": s["p99_itl_ms"],
            "steps": float(len(steps)), "decode_only_steps": float((steps.kind == "decode").sum()),
            "prefill_tokens_run": float(steps.num_prefill_tokens.sum())}


def compare(runs: Path, out: Path) -> pd.DataFrame:
    from drex.cli import main as drex

    vidur = pd.read_csv(runs / "vidur_metrics.csv")
    rows = []
    for i, v in enumerate(vidur.itertuples(index=False)):
        trace = runs / v.trace
        for admission in ADMISSIONS:
            run = out / "runs" / f"{trace.stem}-{admission}"
            n = len(ADMISSIONS)
            print(f"[{n * i + ADMISSIONS.index(admission) + 1}/{n * len(vidur)}] {v.trace} --admission {admission}",
                  file=sys.stderr, flush=True)
            with contextlib.redirect_stdout(io.StringIO()):  # drex simulate's own table
                rc = drex(["simulate", "--trace", str(trace), *SETUP, "--admission", admission, "--no-progress",
                           "--out", str(run)])
            if rc:
                raise SystemExit(f"drex simulate failed on {trace} ({rc})")
            mine = drex_metrics(run)
            row = {"trace": v.trace, "admission": admission}
            for col in vidur.columns:
                if col in mine:
                    ref = float(getattr(v, col))
                    row |= {f"vidur_{col}": ref, f"drex_{col}": mine[col],
                            f"rel_{col}": mine[col] / ref - 1 if ref else np.nan}
            rows.append(row)
    return pd.DataFrame(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, default=REPO.parent / "shared" / "vidur-runs",
                    help="a directory with traces/*.csv and vidur_metrics.csv (default: ../shared/vidur-runs)")
    ap.add_argument("--out", type=Path, required=True, help="where vs_vidur.csv, vs_vidur.md and the runs go")
    args = ap.parse_args()
    if not (args.runs / "vidur_metrics.csv").is_file():
        raise SystemExit(f"{args.runs}: no vidur_metrics.csv (see this script's docstring for the layout)")
    args.out.mkdir(parents=True, exist_ok=True)
    table = compare(args.runs, args.out)
    table.to_csv(args.out / "vs_vidur.csv", index=False, float_format="%.6g")
    keys = [c for c in ("thru_tok_s", "restarts", "itl_p50_ms", "ttft_mean", "steps") if f"vidur_{c}" in table]
    lines = ["| trace | admission | " + " | ".join(f"{k} Vidur / drex (rel)" for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for r in table.itertuples(index=False):
        d = r._asdict()
        lines.append(f"| {d['trace']} | {d['admission']} | " + " | ".join(
            f"{d['vidur_' + k]:.4g} / {d['drex_' + k]:.4g} ({d['rel_' + k]:+.1%})" for k in keys) + " |")
    (args.out / "vs_vidur.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
