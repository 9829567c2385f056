"""The most early exit can gain on smollm2-ee on this CPU, at each threshold and KV fill, priced by the profile.

    python benchmarks/smollm2_exit_bound.py        # seconds; reads profiles/cpu/smollm2 (fit.json)

One full-batch decode step (16 rows, 170 cached tokens each) priced with the profile's fitted laws,
against the same step where the tokens that exit (the per-exit fractions ``drex quality`` measured,
benchmarks/quality_smollm2_ee_exits.csv, recompute fill) simply leave the batch at their exit:
- ``free``: exits cost nothing (no estimator, no regrouping, no KV fill): the ceiling of any policy
  that decides per step;
- ``copy``: plus the state-copy scatter of the exited tokens' K/V into the layers they skipped;
- ``recompute``: plus, next step, their skipped layers run again as one pass per exit layer (what
  ``RealExecutor`` does; a pass over a few rows still streams those layers' weights).
- ``*_priced``: plus the learned exit points' evaluation (adapter, norm, estimator, decision) over the rows
  reaching each and the regroup of the rows going on, as the profile's exit_eval and regroup laws price them.
Speedup = full step / that step. Writes benchmarks/results/smollm2_loop/exit_bound.csv.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drex.costmodel.load import load_fitted  # noqa: E402

ROWS, CONTEXT, LAYERS = 16, 170, 30


def step_s(cost, exits: dict[int, float], fill: str | None, priced: bool = False) -> float:
    """A decode step whose tokens leave at each exit layer e with probability exits[e] (expected rows);
    ``priced``: plus each exit point's learned evaluation over the rows reaching it and the regroup of the
    rows going on (the profile's exit_eval and regroup)."""
    t, rows, start = 0.0, float(ROWS), 0
    for e in sorted(exits) + [LAYERS]:
        t += (e - start) * float(cost.layer_s(rows, rows * CONTEXT))
        start = e
        if e < LAYERS:
            if priced:
                t += float(cost.exit_eval_s(rows))
            rows -= ROWS * exits[e]
            if priced and exits[e] > 0:
                t += float(cost.regroup_s(rows))
    t += float(cost.head_s(float(ROWS))) + float(cost.step_overhead_s(float(ROWS)))
    for e, f in exits.items():
        if fill == "copy":
            t += float(cost.kv_copy_s(ROWS * f, LAYERS - e))
        elif fill == "recompute":
            t += (LAYERS - e) * float(cost.layer_s(ROWS * f, ROWS * f * CONTEXT))
    return t


def main() -> None:
    cost = load_fitted(ROOT / "profiles/cpu/smollm2")
    q = pd.read_csv(ROOT / "benchmarks/quality_smollm2_ee.csv")
    ex = pd.read_csv(ROOT / "benchmarks/quality_smollm2_ee_exits.csv")
    full = step_s(cost, {}, None)
    rows = []
    for (metric, th), g in ex[ex.kv_fill == "recompute"].groupby(["metric", "threshold"]):
        exits = dict(zip(g.exit_layer.astype(int), g.fraction.astype(float)))
        qual = q[(q.metric == metric) & (q.threshold == th)].iloc[0]
        row = {"metric": metric, "threshold": th, "early_exit_fraction": sum(exits.values()),
               "rouge_l": qual.rouge_l, "full_step_ms": full * 1e3}
        for fill in ("free", "copy", "recompute"):
            row[f"speedup_{fill}"] = full / step_s(cost, exits, None if fill == "free" else fill)
        for fill in ("copy", "recompute"):  # what drex pays besides: evaluating the exits, regrouping
            row[f"speedup_{fill}_priced"] = full / step_s(cost, exits, fill, priced=True)
        rows.append(row)
    # What exiting would need: every token leaving at one exit layer, no fill.
    meta = json.loads((ROOT / "benchmarks/quality_smollm2_ee_meta.json").read_text())
    for e in meta["exit_layers"]:
        rows.append({"metric": f"all at {e}", "threshold": None, "early_exit_fraction": 1.0, "rouge_l": None,
                     "full_step_ms": full * 1e3, "speedup_free": full / step_s(cost, {e: 1.0}, None),
                     "speedup_copy": full / step_s(cost, {e: 1.0}, "copy"), "speedup_recompute": None})
    df = pd.DataFrame(rows).round(4)
    out = ROOT / "benchmarks/results/smollm2_loop/exit_bound.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
