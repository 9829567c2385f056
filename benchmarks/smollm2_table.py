"""One table of the smollm2 loop: per policy run, throughput, exits, and validate's errors (issue 12).

    python benchmarks/smollm2_table.py          # reads benchmarks/results/smollm2_loop/<run>/, writes table.csv there
    python benchmarks/smollm2_table.py --grid   # reads .../smollm2_loop/grid/<run>/ (benchmarks/smollm2_grid.sh),
                                                # writes grid/table.csv; each drex run against the off run made
                                                # just before it (off_before_<threshold>)
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

RES = Path(__file__).resolve().parent / "results" / "smollm2_loop"


def main() -> None:
    import sys

    res = RES / "grid" if "--grid" in sys.argv[1:] else RES
    rows = []
    for d in sorted(p for p in res.iterdir() if (p / "summary.json").exists()):
        s, run = json.loads((d / "summary.json").read_text()), json.loads((d / "run.json").read_text())
        v = json.loads((d / "validate.json").read_text()) if (d / "validate.json").exists() else {}
        rows.append({"run": d.name, "policy": s.get("policy"), "kv_fill": run.get("kv_fill"),
                     "metric": run.get("metric"), "threshold": run.get("threshold"),
                     "output_throughput": s.get("output_throughput"), "early_exit_fraction": s.get("early_exit_fraction"),
                     "involuntary_exits": s.get("involuntary_exits"), "mean_tpot_ms": s.get("mean_tpot_ms"),
                     "throughput_rel_error": v.get("throughput_rel_error"),
                     "p50_tpot_rel_error": v.get("p50_tpot_rel_error"), "step_duration_mape": v.get("step_duration_mape"),
                     "exit_decision_agreement": v.get("exit_decision_agreement"),
                     # output tokens per CPU-second the run got: what the core-sharing did not take
                     "cpu_throughput": (s["total_output_tokens"] / s["run_cpu_s"]) if s.get("run_cpu_s") else None})
    df = pd.DataFrame(rows)
    if res is RES:
        off = df.loc[df.policy == "off", "output_throughput"]
        if len(off):
            df["over_off"] = df.output_throughput / off.iloc[0]
    else:  # each threshold's drex runs against the off run made just before them
        thr = df.run.str.rsplit("_", n=1).str[-1]
        off = df[df.policy == "off"].assign(t=thr).set_index("t")
        df["over_off"] = df.output_throughput.values / off.output_throughput.reindex(thr).values
        df["cpu_over_off"] = df.cpu_throughput.values / off.cpu_throughput.reindex(thr).values
    df.to_csv(res / "table.csv", index=False, float_format="%.4f")
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
