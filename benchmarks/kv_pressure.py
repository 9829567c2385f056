"""Memory pressure: KV-bound cells under loads from half of capacity to 20x over it (issue 24).

    python benchmarks/kv_pressure.py --out DIR [--jobs 2]          # ~10 min with 2 jobs here
    (committed: benchmarks/results/kv_pressure.{csv,md,png}, made with --out DIR --runs DIR/runs --jobs 2, copied)

Each cell is a trace, a model, a device and a KV cache small enough to bind (``--num-kv-blocks``: about
``KV_REQUESTS`` average servable requests' worth of prompt and output, at most what the device holds). Its capacity
C (requests/s) is off's request throughput with every request queued at once; its loads are
``LOADS`` x C, replayed by ``--rate-scale``. At each load the cell runs off, drex, lazy and latency-only
under drex's default admission (``reserve``), off under vLLM's rule (``--admission vllm``) and off under the
oracle (``--admission oracle``, which knows output lengths: what an admission rule could reach).

``kv_pressure.csv``: one row per cell, load and run, with throughput, preemptions per request (mean, max),
TTFT and TPOT (mean, p99) and involuntary exits. ``kv_pressure.md``: the verdicts per cell (issue 24's
"Done when"): mean preemptions a request <= 1 (off and drex), off >= 90% of the oracle, throughput never
below 97% of the best lower load (off and drex), drex >= max(off, lazy, latency-only) - 0.5% with no
involuntary exit and mean and p99 TPOT <= 1.25x off's. ``kv_pressure.png``: throughput against load.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
LOADS = (0.5, 1.0, 2.0, 5.0, 20.0)
KV_REQUESTS = 12
EXIT_FLAGS = ["--threshold", "0.5", "--seed", "7"]  # the model's mid-depth exit, 60% of tokens confident
# name -> (trace, model, device, requests); models whose context holds the trace's requests
CELLS = {
    "conv-qwen14b-a100": ("azure-conv", "qwen-14b", "a100", 500),
    "conv-llama2-13b-h100": ("azure-conv", "llama2-13b", "h100", 500),
    "conv-llama2-7b-a100": ("azure-conv", "llama2-7b", "a100", 500),
    "conv-llama3-8b-h100": ("azure-conv", "llama3-8b", "h100", 500),
    "code-llama3-8b-a100": ("azure-code", "llama3-8b", "a100", 500),
    "code-qwen14b-h100": ("azure-code", "qwen-14b", "h100", 500),
    "mooncake-qwen14b-a100": ("mooncake", "qwen-14b", "a100", 200),
    "mooncake-qwen14b-h100": ("mooncake", "qwen-14b", "h100", 200),
}
# run name -> (policy, admission)
RUNS = {"off": ("off", "reserve"), "drex": ("drex", "reserve"), "lazy": ("lazy", "reserve"),
        "latency-only": ("latency-only", "reserve"), "off-vllm": ("off", "vllm"), "off-oracle": ("off", "oracle")}
KEYS = ("output_throughput", "request_throughput", "mean_preemptions_per_request", "max_preemptions_per_request",
        "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms", "involuntary_exits", "completed", "failed")


def simulate(out: Path, args: list[str]) -> dict:
    """One ``drex simulate`` (in this process); its summary."""
    from drex.cli import main

    if not (out / "summary.json").exists():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            rc = main(["simulate", *args, "--no-progress", "--out", str(out)])
        if rc:
            raise RuntimeError(f"drex simulate {' '.join(args)} failed")
    return json.loads((out / "summary.json").read_text())


def cell_flags(name: str) -> list[str]:
    """A cell's trace, model, device, request count and a KV cache small enough to bind: ``KV_REQUESTS`` of its
    servable requests' mean prompt and output, at most what the device holds."""
    from drex.core.blocks import num_kv_blocks
    from drex.devices import get_device
    from drex.models import get_model
    from drex.workload import load_trace

    trace, model, device, n = CELLS[name]
    shape = get_model(model)
    sizes = [w.prompt_tokens + w.output_tokens for w in load_trace(trace)[:n]]
    mean_tokens = float(np.mean([t for t in sizes if t <= shape.max_position]))
    held = num_kv_blocks(get_device(device).mem_bytes, shape.weight_bytes(2), shape.kv_bytes_per_token(2), 16)
    blocks = min(held, int(KV_REQUESTS * mean_tokens / 16))
    return ["--trace", trace, "--model", model, "--device", device, "--num-requests", str(n),
            "--num-kv-blocks", str(blocks), *EXIT_FLAGS]


def trace_rate(name: str) -> float:
    from drex.workload import load_trace

    trace, _, _, n = CELLS[name]
    work = load_trace(trace)[:n]
    return (len(work) - 1) / (work[-1].arrival_s - work[0].arrival_s)


def capacity(name: str, out: Path) -> float:
    """off's request throughput with every request queued at once (rate scaled 10^6 times)."""
    s = simulate(out / name / "capacity", [*cell_flags(name), "--policy", "off", "--rate-scale", "1e6"])
    return s["request_throughput"]


def one(name: str, load: float, run: str, scale: float, out: Path) -> dict:
    policy, admission = RUNS[run]
    s = simulate(out / name / f"x{load:g}" / run, [*cell_flags(name), "--policy", policy, "--admission", admission,
                                                   "--rate-scale", f"{scale:.6g}"])
    return {"cell": name, "load": load, "run": run, "policy": policy, "admission": admission,
            "rate_scale": scale} | {k: s[k] for k in KEYS}


def verdicts(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for cell, d in df.groupby("cell", sort=False):
        t = d.pivot(index="load", columns="run", values="output_throughput").sort_index()
        pre = d.pivot(index="load", columns="run", values="mean_preemptions_per_request")
        tpot = d.pivot(index="load", columns="run", values="mean_tpot_ms")
        p99 = d.pivot(index="load", columns="run", values="p99_tpot_ms")
        inv = d[d.run == "drex"].involuntary_exits.sum()
        mono = {r: min(t[r].iloc[i] / t[r].iloc[:i].max() for i in range(1, len(t))) for r in ("off", "drex")}
        best_base = t[["off", "lazy", "latency-only"]].max(axis=1)
        rows.append({"cell": cell, "max_preemptions_per_request": float(pre[["off", "drex"]].max().max()),
                     "off_over_oracle_min": float((t["off"] / t["off-oracle"]).min()),
                     "monotone_min_off": mono["off"], "monotone_min_drex": mono["drex"],
                     "drex_over_best_baseline_min": float((t["drex"] / best_base).min()),
                     "drex_involuntary_exits": int(inv),
                     "drex_mean_tpot_ratio_max": float((tpot["drex"] / tpot["off"]).max()),
                     "drex_p99_tpot_ratio_max": float((p99["drex"] / p99["off"]).max()),
                     "off_vllm_over_off_min": float((t["off-vllm"] / t["off"]).min())})
    v = pd.DataFrame(rows)
    v["ok"] = ((v.max_preemptions_per_request <= 1) & (v.off_over_oracle_min >= 0.9) & (v.monotone_min_off >= 0.97)
               & (v.monotone_min_drex >= 0.97) & (v.drex_over_best_baseline_min >= 0.995)
               & (v.drex_involuntary_exits == 0) & (v.drex_mean_tpot_ratio_max <= 1.25)
               & (v.drex_p99_tpot_ratio_max <= 1.25))
    return v


def markdown(df: pd.DataFrame) -> str:
    cells = [[f"{x:.3f}" if isinstance(x, float) else str(x) for x in row] for row in df.itertuples(index=False)]
    return "\n".join(["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
                     + ["| " + " | ".join(row) + " |" for row in cells])


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(dict.fromkeys(df.cell))
    fig, axes = plt.subplots(2, (len(cells) + 1) // 2, figsize=(4 * ((len(cells) + 1) // 2), 7), squeeze=False)
    for ax, cell in zip(axes.flat, cells):
        for run, d in df[df.cell == cell].groupby("run", sort=False):
            ax.plot(d.load, d.output_throughput, marker="o", label=run)
        ax.set_xscale("log")
        ax.set_title(cell, fontsize=9)
        ax.set_xlabel("offered load (x capacity)")
        ax.set_ylabel("output tok/s")
    axes.flat[0].legend(fontsize=7)
    for ax in list(axes.flat)[len(cells):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="kv_pressure.{csv,md,png} here; the runs under DIR/runs")
    ap.add_argument("--runs", type=Path, default=None, help="where the runs go (default: a scratch directory); "
                                                            "a run whose summary exists there is not run again")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cells", default=",".join(CELLS), help="comma-separated cell names")
    args = ap.parse_args()
    import tempfile

    runs = args.runs or Path(tempfile.mkdtemp(prefix="kv_pressure_"))
    cells = [c for c in args.cells.split(",") if c]
    with ProcessPoolExecutor(args.jobs) as pool:
        caps = dict(zip(cells, pool.map(capacity, cells, [runs] * len(cells))))
        todo = [(c, load, run, load * caps[c] / trace_rate(c)) for c in cells for load in LOADS for run in RUNS]
        futures = [pool.submit(one, c, load, run, scale, runs) for c, load, run, scale in todo]
        rows = []
        for i, f in enumerate(as_completed(futures), 1):
            r = f.result()
            rows.append(r)
            print(f"[{i}/{len(todo)}] {r['cell']} x{r['load']:g} {r['run']}: {r['output_throughput']:.1f} tok/s, "
                  f"{r['mean_preemptions_per_request']:.2f} preemptions/request", file=sys.stderr, flush=True)
    by_key = {(r["cell"], r["load"], r["run"]): r for r in rows}
    df = pd.DataFrame([by_key[(c, load, run)] for c, load, run, _ in todo])
    df["capacity_req_s"] = df.cell.map(caps)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "kv_pressure.csv", index=False, float_format="%.6g")
    v = verdicts(df)
    md = ["# KV pressure (issue 24)", "", f"Made by `python benchmarks/kv_pressure.py --out DIR --jobs {args.jobs}`; "
          f"cells, loads and runs in the script's docstring. Loads are multiples of each cell's capacity C "
          f"(off's request throughput with every request queued at once).", "",
          markdown(v), "",
          f"{int(v.ok.sum())} of {len(v)} cells meet every verdict.", "",
          "The oracle keeps room for every running request's whole remaining output: it never preempts, and where "
          "outputs are long it admits fewer requests than `reserve` does (so `off` can pass it). It is the "
          "no-preemption reference, not a ceiling on throughput."]
    (args.out / "kv_pressure.md").write_text("\n".join(md) + "\n")
    plot(df, args.out / "kv_pressure.png")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
