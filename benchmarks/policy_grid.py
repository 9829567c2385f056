"""The policy grid: how close the drex decision comes to what early exit makes achievable (issue 11).

Per cell (a trace, model, device, confident fraction, load, exit points and max batch; 1,000
requests each) it simulates off, lazy, latency-only, eager, art (drex with the authors' rule),
drex and bound, plus ``best-in-hindsight``: the best output throughput over the knobs family
below, found by trying every one of its settings on that very cell.

best-in-hindsight's family (``--profitability knobs``, under drex's own TPOT-inflation bound):
- split-and-continue: split when at least a fraction f of the active rows wants to exit; the others
  go on at once in a smaller batch. f in {0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1}: 8 settings;
- split-and-park: split when at least f want to exit (f in {0.2, 0.4, 0.6, 0.8}); the others park;
  the buffer flushes at max_batch/8, /2 or max_batch rows, or after 1 or 4 steps: 24 settings.
32 settings per cell; the best is kept (its knobs are in the CSV).

bound: the simulator's ``bound`` policy (per-token early exit with free, perfect rebatching; see
``SimExecutor._ideal``).

Load: "saturated" replays the trace compressed (every request queued within seconds); "half"
offers half of off's saturated output throughput. Goodput: requests that met a TTFT SLO of off's p90
TTFT and a TPOT SLO of 1.25 x off's p90 TPOT (post hoc, per cell), per second of the run.

    PYTHONPATH=$PWD python benchmarks/policy_grid.py [--jobs 2] [--only NAME,..] [--no-bih]

Runs are cached under --work (default: drex_policy_grid in the temporary folder) so a cut run resumes; results go to
benchmarks/results/policy_grid.{csv,md,png}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SATURATED_RATE = {"azure-conv": 20.0, "azure-code": 50.0, "mooncake": 30.0}
THRESHOLD = {15: 0.8, 30: 0.7, 60: 0.5, 85: 0.3}  # confident fraction (%) of the default Beta at mid depth
POLICIES = {"off": [], "lazy": [], "latency-only": [], "eager": [], "art": ["--profitability", "art"],
            "drex": [], "bound": []}


# Cells without best-in-hindsight's search (to fit the grid in its hour on a shared machine; none now).
NO_BIH: tuple[str, ...] = ()


def cells() -> list[dict]:
    base = dict(trace="azure-conv", model="llama2-13b", device="h200", conf=60, load="saturated", exits="mid",
                max_batch=256, tp=1)
    out = []

    def add(name, **kw):
        out.append({**base, **kw, "name": name})

    for pct in (15, 30, 60, 85):  # the three cells of the issue (15/60/85) and 30%
        add(f"13b-h200-conv-{pct}", conf=pct)
    for pct in (15, 60, 85):
        add(f"13b-h200-conv-{pct}-half", conf=pct, load="half")
        add(f"13b-h200-conv-{pct}-3exits", conf=pct, exits="three")
        add(f"13b-h200-conv-{pct}-b32", conf=pct, max_batch=32)
    add("13b-h200-code-60", trace="azure-code")
    add("13b-h200-mooncake-60", trace="mooncake")
    add("7b-h200-conv-60", model="llama2-7b")
    add("qwen14b-h200-conv-60", model="qwen-14b")
    add("70b-tp4-h200-conv-60", model="llama2-70b", tp=4)
    add("13b-a100-conv-60", device="a100")
    add("13b-a100-conv-85-b32", device="a100", conf=85, max_batch=32)
    add("7b-a100-code-30-half", model="llama2-7b", device="a100", trace="azure-code", conf=30, load="half")
    add("tiny-cpu-conv-60", model="tiny", device="cpu")
    add("tiny-cpu-conv-trace", model="tiny", device="cpu", conf="trace:traces/tiny-ee-text.csv")
    add("tiny-cpu-code-trace-b32", model="tiny", device="cpu", trace="azure-code",
        conf="trace:traces/tiny-ee-humaneval.csv", max_batch=32)
    # A real LLM's recorded confidences (needs `drex model fetch smollm2` for its shape): measured CPU profile,
    # at the middle one of the exits the trace recorded (smollm2-ee's 22, 26, 28).
    add("smollm2-cpu-code-trace", model="smollm2", device="cpu", trace="azure-code",
        conf="trace:traces/smollm2-ee-humaneval.csv", exits="26")
    return out


def exits_of(cell: dict) -> list[str]:
    from drex.models import get_model

    L = get_model(cell["model"]).num_layers
    if cell["exits"] not in ("mid", "three"):  # the cell's own exit points
        return [cell["exits"]]
    if cell["exits"] == "mid":
        return [str(L // 2)]
    return [f"{L // 4},{L // 2},{3 * L // 4}"]


def base_flags(cell: dict, rate_scale: float) -> list[str]:
    flags = ["--trace", cell["trace"], "--model", cell["model"], "--device", cell["device"], "--num-requests", "1000",
             "--rate-scale", f"{rate_scale:.6g}", "--max-batch-size", str(cell["max_batch"]), "--seed", "7",
             "--exits", exits_of(cell)[0], "--tp", str(cell["tp"])]
    conf = cell["conf"]
    if isinstance(conf, str):
        flags += ["--confidence", conf, "--threshold", "0.5"]
    else:
        flags += ["--threshold", str(THRESHOLD[conf])]
    return flags


def bih_family(max_batch: int) -> list[tuple[str, list[str]]]:
    fam = [(f"go f={f}", ["--profitability", "knobs", "--split-continue", "--split-fraction", str(f)])
           for f in (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)]
    for f in (0.2, 0.4, 0.6, 0.8):
        for rows in (max(max_batch // 8, 1), max_batch // 2, max_batch):
            for wait in (1, 4):
                fam.append((f"park f={f} rows={rows} wait={wait}",
                            ["--profitability", "knobs", "--split-fraction", str(f), "--flush-min-rows", str(rows),
                             "--flush-max-wait-steps", str(wait)]))
    return fam


def run(flags: list[str], work: Path) -> dict:
    """One simulation (cached by its flags): the summary plus per-request TTFT/TPOT for goodput."""
    key = hashlib.sha1(json.dumps(flags).encode()).hexdigest()[:16]
    path = work / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    from drex.settings import load_workload, settings_from_args
    from drex.sim.cli import add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    ns = parser.parse_args(["simulate", *flags, "--no-progress", "--out", "unused"])
    from drex.sim.simulator import simulate

    res = simulate(settings_from_args(ns, ns.policy), load_workload(ns))
    q = res.requests
    rec = {"flags": flags, "summary": res.summary, "ttft_ms": q.ttft_ms.tolist(), "tpot_ms": q.tpot_ms.tolist()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec))
    tmp.rename(path)
    return rec


def _run_task(task):
    flags, work = task
    try:
        return run(flags, Path(work))
    except Exception as e:  # noqa: BLE001 - reported per run, the grid goes on
        return {"flags": flags, "error": f"{type(e).__name__}: {e}"}


def _cached(task) -> dict:
    flags, work = task
    path = Path(work) / f"{hashlib.sha1(json.dumps(flags).encode()).hexdigest()[:16]}.json"
    return json.loads(path.read_text()) if path.exists() else {"flags": flags, "error": "not run"}


def offered_rate(trace: str) -> float:
    from drex.workload import make_workload

    w = make_workload(trace, num_requests=1000, rate_scale=1.0, rng=np.random.default_rng(7))
    span = w[-1].arrival_s - w[0].arrival_s
    return sum(r.output_tokens for r in w) / span


def goodput(rec: dict, slo_ttft_ms: float, slo_tpot_ms: float) -> float:
    ttft, tpot = np.array(rec["ttft_ms"], dtype=float), np.array(rec["tpot_ms"], dtype=float)
    met = (ttft <= slo_ttft_ms) & (np.nan_to_num(tpot, nan=0.0) <= slo_tpot_ms)
    return float(met.sum()) / rec["summary"]["duration"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "drex_policy_grid"))
    ap.add_argument("--only", default=None, help="comma-separated cell names")
    ap.add_argument("--no-bih", action="store_true", help="skip best-in-hindsight's 32 runs per cell")
    ap.add_argument("--collect-only", action="store_true", help="run nothing: tabulate the cached runs")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    from tqdm import tqdm

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cells() if not args.only or c["name"] in args.only.split(",")]
    t0 = time.time()
    # Saturated runs of off first: a "half" cell's arrival rate is half of what off sustains saturated.
    sat_off = {c["name"]: base_flags({**c, "load": "saturated"}, SATURATED_RATE[c["trace"]]) + ["--policy", "off"]
               for c in todo}
    with Pool(args.jobs) as pool:
        fn = _cached if args.collect_only else _run_task
        offs = dict(zip(sat_off, tqdm(pool.imap(fn, [(f, str(work)) for f in sat_off.values()]),
                                      total=len(sat_off), desc="off saturated", file=sys.stderr)))
        tasks, index, bih_tasks, bih_index = [], [], [], []
        for c in todo:
            rate = SATURATED_RATE[c["trace"]]
            if c["load"] == "half" and "error" not in offs[c["name"]]:
                rate = 0.5 * offs[c["name"]]["summary"]["output_throughput"] / offered_rate(c["trace"])
            c["rate_scale"] = rate
            flags = base_flags(c, rate)
            runs = [(p, extra) for p, extra in POLICIES.items()]
            if c["exits"] == "three":
                L = int(exits_of(c)[0].split(",")[1]) * 2
                runs += [(f"drex@{e}", ["--exits", str(e)]) for e in (L // 4, L // 2, 3 * L // 4)]
            for p, extra in runs:
                pol = "drex" if p == "art" or p.startswith("drex@") else p
                tasks.append((flags + ["--policy", pol] + extra, str(work)))
                index.append((c["name"], p))
            if not args.no_bih and c["name"] not in NO_BIH:
                for name, extra in bih_family(c["max_batch"]):
                    bih_tasks.append((flags + ["--policy", "drex"] + extra, str(work)))
                    bih_index.append((c["name"], f"bih:{name}"))
        # Every cell's policies first, then best-in-hindsight's searches: a cut run still covers every cell.
        tasks, index = tasks + bih_tasks, index + bih_index
        if args.collect_only:
            results = [_cached(t) for t in tasks]
        else:
            results = list(tqdm(pool.imap(_run_task, tasks, chunksize=1), total=len(tasks), desc="policy grid",
                                file=sys.stderr))
    table = summarise(todo, index, results)
    write(table, Path(args.out), None if args.collect_only else time.time() - t0)
    return 0


def summarise(todo, index, results) -> pd.DataFrame:
    by_cell: dict[str, dict] = {}
    for (cell, p), rec in zip(index, results):
        by_cell.setdefault(cell, {})[p] = rec
    rows = []
    for c in todo:
        recs = {p: r for p, r in by_cell[c["name"]].items() if r.get("error") != "not run"}
        if any(p not in recs or "error" in recs[p] for p in ("off", "drex")):
            continue
        off = recs["off"]["summary"]
        slo_ttft = float(np.nanpercentile(recs["off"]["ttft_ms"], 90))
        slo_tpot = 1.25 * float(np.nanpercentile(recs["off"]["tpot_ms"], 90))
        row = {k: c[k] for k in ("name", "trace", "model", "device", "conf", "load", "exits", "max_batch", "tp")}
        row["rate_scale"] = c["rate_scale"]
        errors = [f"{p}: {r['error']}" for p, r in recs.items() if "error" in r]
        row["errors"] = "; ".join(errors)
        for p, r in recs.items():
            if "error" in r or p.startswith("bih:"):
                continue
            s = r["summary"]
            row[f"{p}_tput"] = s["output_throughput"]
            if not p.startswith("drex@"):
                row[f"{p}_goodput"] = goodput(r, slo_ttft, slo_tpot)
        bih = {p[4:]: r for p, r in recs.items() if p.startswith("bih:") and "error" not in r}
        row["bih_settings"] = len(bih)
        if len(bih) >= 32:  # a search cut short is not best-in-hindsight: left out
            best = max(bih, key=lambda k: bih[k]["summary"]["output_throughput"])
            row["bih_tput"] = bih[best]["summary"]["output_throughput"]
            row["bih_knobs"] = best
        d = recs["drex"]["summary"]
        row["early_exit_fraction"] = d["early_exit_fraction"]
        row["drex_involuntary_exits"] = d["involuntary_exits"]
        row["drex_mean_tpot_ratio"] = d["mean_tpot_ms"] / off["mean_tpot_ms"]
        row["drex_p99_tpot_ratio"] = d["p99_tpot_ms"] / off["p99_tpot_ms"]
        rows.append(row)
    t = pd.DataFrame(rows)
    if t.empty:
        return t
    for p in list(POLICIES) + ["bih"]:
        if f"{p}_tput" in t:
            t[f"{p}/off"] = t[f"{p}_tput"] / t["off_tput"]
    t["baseline_best"] = t[["off_tput", "lazy_tput", "latency-only_tput"]].max(axis=1)
    t["drex_vs_baselines"] = t["drex_tput"] / t["baseline_best"]
    if "bih_tput" in t:
        gain = t["bih_tput"] / t["off_tput"] - 1
        t["drex_share_of_bih_gain"] = np.where(gain >= 0.02, (t["drex/off"] - 1) / gain, np.nan)
    singles = [c for c in t if c.startswith("drex@")]
    if singles:
        t["three_vs_best_single"] = t["drex_tput"] / t[singles].max(axis=1)
    return t


def write(t: pd.DataFrame, out: Path, wall_s: float | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if t.empty:
        print("no cell has its off and drex runs yet", file=sys.stderr)
        return
    t.to_csv(out / "policy_grid.csv", index=False, float_format="%.6g")
    cols = ["name", "conf", "load", "exits", "max_batch", "early_exit_fraction", "off_tput"]
    cols += [f"{p}/off" for p in ("lazy", "latency-only", "eager", "art", "drex", "bih", "bound") if f"{p}/off" in t]
    cols += ["drex_share_of_bih_gain", "drex_mean_tpot_ratio", "drex_p99_tpot_ratio", "off_goodput", "drex_goodput",
             "bih_knobs", "three_vs_best_single", "errors"]
    cols = [c for c in cols if c in t]
    made = "tabulated from its cached runs (--collect-only)" if wall_s is None else f"in {wall_s / 60:.0f} min"
    n_bih = int(t["bih_tput"].notna().sum()) if "bih_tput" in t else 0
    lines = ["# Policy grid (issue 11)", "",
             f"Made by `PYTHONPATH=$PWD python benchmarks/policy_grid.py`, {made}; best-in-hindsight's full "
             f"search (32 settings) on {n_bih} of {len(t)} cells (see the script's docstring for the cells, "
             "best-in-hindsight's family, bound and goodput). Throughputs are output tokens/s; x/off is the "
             "ratio to off; eager forces exits (not a fair competitor).", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in t.iterrows():
        cells_ = []
        for c in cols:
            v = r[c]
            cells_.append(f"{v:.3f}" if isinstance(v, float) and c != "off_tput" else
                          (f"{v:.0f}" if isinstance(v, float) else str(v)))
        lines.append("| " + " | ".join(x.replace("nan", "") for x in cells_) + " |")
    (out / "policy_grid.md").write_text("\n".join(lines) + "\n")
    figure(t, out / "policy_grid.png")


def figure(t: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    names = [p for p in ("lazy", "latency-only", "eager", "art", "drex", "bih", "bound") if f"{p}/off" in t]
    long = t.melt(id_vars="name", value_vars=[f"{p}/off" for p in names], var_name="policy", value_name="tput/off")
    long["policy"] = long["policy"].str.replace("/off", "").str.replace("bih", "best-in-hindsight")
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(t) + 1.5))
    sns.barplot(data=long, y="name", x="tput/off", hue="policy", ax=ax, orient="h")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("output throughput / off")
    ax.set_ylabel("")
    ax.set_xlim(0.5, max(1.6, float(long["tput/off"].max()) + 0.05))
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
