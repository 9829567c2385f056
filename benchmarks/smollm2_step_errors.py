"""Which real steps the cost model misprices: signed error by step kind, decode rows and exits taken.

    python benchmarks/smollm2_step_errors.py RUN_DIR [RUN_DIR ...]

Each RUN_DIR is a ``drex run`` directory (plans.jsonl, steps.csv). Every executed step is re-priced as
``drex validate`` does (the run's own cost model, the run's own decisions replayed); the table gives,
per group, the steps, the measured and predicted median milliseconds, the mean signed error
(predicted / measured - 1) and the mean absolute one. Writes nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drex.outputs import recorded_path  # noqa: E402
from drex.sim.simulator import Simulation  # noqa: E402
from drex.traces import load_trace  # noqa: E402
from drex.validate import reprice_steps, run_settings  # noqa: E402


def step_errors(run_dir: Path) -> pd.DataFrame:
    run = json.loads((run_dir / "run.json").read_text())
    sim = Simulation(run_settings(run_dir, run), load_trace(run_dir / "workload.csv"))
    sim.replicas[0].executor.recompute_fill = run.get("kv_fill") == "recompute"  # as drex validate prices it
    priced = reprice_steps(run_dir, sim)
    steps = pd.read_csv(run_dir / "steps.csv")
    if len(steps) != len(priced):
        raise ValueError(f"{run_dir}: {len(steps)} steps in steps.csv, {len(priced)} plans")
    df = pd.concat([steps[["kind", "num_decode", "num_prefill_tokens", "num_exited"]], priced[["measured_s",
                                                                                             "predicted_s"]]], axis=1)
    df["err"] = df.predicted_s / df.measured_s - 1
    df["abs_err"] = df.err.abs()
    df["group"] = df.kind + df.apply(lambda r: f" rows={r.num_decode}" if r.kind == "decode" else "", axis=1)
    df["exits"] = (df.num_exited > 0).map({True: "some exit", False: "no exit"})
    return df


def table(df: pd.DataFrame, by) -> pd.DataFrame:
    g = df.groupby(by)
    return pd.DataFrame({"steps": g.size(), "measured_ms": g.measured_s.median() * 1e3,
                         "predicted_ms": g.predicted_s.median() * 1e3, "mean_err": g.err.mean(),
                         "mape": g.abs_err.mean()}).round(3)


def main() -> None:
    pd.set_option("display.width", 160)
    for arg in sys.argv[1:]:
        df = step_errors(Path(arg))
        print(f"== {recorded_path(arg)}: {len(df)} steps, MAPE {df.err.abs().mean():.3f}, "
              f"mean signed error {df.err.mean():+.3f}")
        print(table(df, ["kind", "exits"]).to_string())
        dec = df[df.kind == "decode"]
        if len(dec):
            print(table(dec, ["num_decode"]).to_string())


if __name__ == "__main__":
    main()
