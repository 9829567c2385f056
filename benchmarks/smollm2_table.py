"""One table of the smollm2 loop: per policy run, throughput, exits, and validate's errors (issue 12).

    python benchmarks/smollm2_table.py      # reads benchmarks/results/smollm2_loop/<run>/, writes table.csv there
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

RES = Path(__file__).resolve().parent / "results" / "smollm2_loop"


def main() -> None:
    rows = []
    for d in sorted(p for p in RES.iterdir() if (p / "summary.json").exists()):
        s, run = json.loads((d / "summary.json").read_text()), json.loads((d / "run.json").read_text())
        v = json.loads((d / "validate.json").read_text()) if (d / "validate.json").exists() else {}
        rows.append({"run": d.name, "policy": s.get("policy"), "kv_fill": run.get("kv_fill"),
                     "metric": run.get("metric"), "threshold": run.get("threshold"),
                     "output_throughput": s.get("output_throughput"), "early_exit_fraction": s.get("early_exit_fraction"),
                     "involuntary_exits": s.get("involuntary_exits"), "mean_tpot_ms": s.get("mean_tpot_ms"),
                     "throughput_rel_error": v.get("throughput_rel_error"),
                     "p50_tpot_rel_error": v.get("p50_tpot_rel_error"), "step_duration_mape": v.get("step_duration_mape"),
                     "exit_decision_agreement": v.get("exit_decision_agreement")})
    df = pd.DataFrame(rows)
    off = df.loc[df.policy == "off", "output_throughput"]
    if len(off):
        df["over_off"] = df.output_throughput / off.iloc[0]
    df.to_csv(RES / "table.csv", index=False, float_format="%.4f")
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
