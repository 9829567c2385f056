"""``drex validate RUN_DIR``: replay a real run in the simulator and say how far apart they are.

The simulator gets the run's own arrivals (workload.csv), its recorded
confidences as the confidence source (``trace:RUN_DIR/confidence.csv``), its
settings and KV capacity (run.json) and the device's cost model (the fitted
profile when one is shipped, else the roofline). Compared:

- throughput, TTFT and TPOT (p50, p99): signed relative error (sim - real) / real;
- ``step_duration_mape``: every step the real run executed (plans.jsonl, with
  the decisions it took) re-priced by the simulator's own executor, against its
  measured duration — the cost model's error on exactly the work that ran;
- ``exit_decision_agreement``: the share of the real run's (request, token,
  exit point) decisions that the simulation took the same way.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from drex.config import EEConfig, SchedulerConfig
from drex.dtypes import DTYPE_BYTES
from drex.core.policies import PolicyDecision, get_policy
from drex.core.step import PrefillChunk, StepPlan
from drex.progress import add_progress_flag
from drex.sim.executor import SimExecutor
from drex.settings import RunSettings
from drex.sim.simulator import Simulation
from drex.traces import load_trace

KEYS = ("throughput_rel_error", "p50_ttft_rel_error", "p99_ttft_rel_error", "p50_tpot_rel_error",
        "p99_tpot_rel_error", "step_duration_mape", "exit_decision_agreement")
COMPARED = (("throughput_rel_error", "output_throughput"), ("p50_ttft_rel_error", "median_ttft_ms"),
            ("p99_ttft_rel_error", "p99_ttft_ms"), ("p50_tpot_rel_error", "median_tpot_ms"),
            ("p99_tpot_rel_error", "p99_tpot_ms"))


def _read(run_dir: Path, name: str) -> Path:
    path = run_dir / name
    if not path.exists():
        if not run_dir.is_dir():
            raise FileNotFoundError(f"{run_dir}: no such directory (drex validate takes a drex run --out directory)")
        if name == "run.json" and (run_dir / "summary.json").exists():
            raise ValueError(f"{run_dir} holds a simulation's records (drex simulate); drex validate replays a real "
                             "run: give the --out directory of drex run")
        raise FileNotFoundError(f"{path}: missing (is {run_dir} a drex run directory?)")
    return path


def run_settings(run_dir: Path, run: dict) -> RunSettings:
    ee = EEConfig(tuple(run["exits"]), run["threshold"], run["metric"])
    sched = SchedulerConfig(**run["scheduler"])
    conf_path = _read(run_dir, "confidence.csv")
    recorded = get_policy(sched.policy).uses_exits and ee.exits and len(pd.read_csv(conf_path))
    return RunSettings(model=run["model"], device=run["device"], ee=ee, scheduler=sched,
                     confidence=f"trace:{conf_path}" if recorded else "beta", seed=run["seed"],
                     dtype_bytes=DTYPE_BYTES[run["dtype"]], num_kv_blocks=run["num_kv_blocks"],
                     cost_model=run["cost_model"])


class _DecisionLog:
    """A scheduler's recorder: keeps the decisions of the steps that were actually completed."""

    def __init__(self) -> None:
        self.pending, self.taken = [], {}

    def decided(self, plan, exit_layer: int, active: np.ndarray, actions: np.ndarray) -> None:
        self.pending.append((plan, exit_layer, active.copy(), actions.copy()))

    def completed(self, plan, num_steps: int) -> None:
        for p, e, active, actions in self.pending:
            ids, tok = (p.flush_ids, p.flush_token_index) if p.kind == "flush" else (p.decode_ids, p.decode_token_index)
            for s, j in zip(*np.nonzero(active[:num_steps])):
                self.taken[(ids[j], tok[j] + int(s), e)] = int(actions[s, j])
        self.pending = []


class _Replay:
    """Stands in for the scheduler inside a SimExecutor: answers each exit with the real run's decision."""

    def __init__(self, exits, num_layers: int, policy, ee):
        self.exits, self.num_layers, self.policy, self.ee = exits, num_layers, policy, ee
        self.decisions: list = []

    def decide_at_exit(self, plan, i, conf, active, now):
        _, actions, forced, stayed, drain = self.decisions[i]
        return PolicyDecision(np.array([actions], dtype=np.int8), np.array([forced]), np.array([stayed]),
                              np.array([drain]))


class _NoConfidence:
    def confidence(self, request_ids, token_index, exit_index):
        return np.zeros(np.shape(token_index))


def reprice_steps(run_dir: Path, sim: Simulation) -> pd.DataFrame:
    """Measured vs predicted duration of every real step."""
    sched = sim.replicas[0].sched
    replay = _Replay(sched.exits, sched.num_layers, sched.policy, sched.ee)
    executor = SimExecutor(replay, sim.cost, _NoConfidence())
    executor.recompute_fill = sim.replicas[0].executor.recompute_fill
    names = {f.name for f in dataclasses.fields(StepPlan)}
    rows = []
    with open(_read(run_dir, "plans.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            plan = StepPlan(**{k: v for k, v in rec.items() if k in names and k != "prefill"},
                            prefill=[PrefillChunk(*c) for c in rec["prefill"]])
            replay.decisions = {d[0]: d for d in rec["decisions"]}
            predicted = float(executor.execute(plan, 0.0).durations_s[0])
            rows.append((plan.kind, rec["duration_s"], predicted))
    return pd.DataFrame(rows, columns=["kind", "measured_s", "predicted_s"])


def _rel(sim_value, real_value):
    if real_value is None or sim_value is None or not np.isfinite(real_value) or real_value == 0:
        return None
    return float((sim_value - real_value) / real_value)


def validate(run_dir, progress: bool = False) -> dict:
    run_dir = Path(run_dir)
    run = json.loads(_read(run_dir, "run.json").read_text())
    real = json.loads(_read(run_dir, "summary.json").read_text())
    if real.get("interrupted"):
        raise ValueError(f"{run_dir} is an interrupted drex run: its metrics cover only the requests that finished "
                         "before Ctrl-C, which a replay of the whole workload cannot match; run it to the end")
    workload = load_trace(_read(run_dir, "workload.csv"))
    log = _DecisionLog()
    sim = Simulation(run_settings(run_dir, run), workload, recorder=log)
    for replica in sim.replicas:  # price the run's KV fill: recompute runs the skipped layers next step
        replica.executor.recompute_fill = run.get("kv_fill") == "recompute"
    res = sim.run(progress)
    out: dict = {}
    for key, metric in COMPARED:
        out[key] = _rel(res.summary.get(metric), real.get(metric))
    steps = reprice_steps(run_dir, sim)
    ape = (steps.predicted_s - steps.measured_s).abs() / steps.measured_s
    out["step_duration_mape"] = float(ape.mean()) if len(steps) else None
    out["step_duration_mape_by_kind"] = {k: float(v) for k, v in ape.groupby(steps.kind).mean().items()}
    decisions = pd.read_csv(_read(run_dir, "decisions.csv"))
    if len(decisions):
        sim_actions = [log.taken.get(k) for k in zip(decisions.request_id.tolist(), decisions.token_index.tolist(),
                                                      decisions.exit_layer.tolist())]
        out["exit_decision_agreement"] = float(np.mean([a == b for a, b in zip(sim_actions, decisions.action)]))
    else:
        out["exit_decision_agreement"] = None  # no exit point was evaluated (policy off)
    out["num_decisions"] = int(len(decisions))
    out["num_steps"] = int(len(steps))
    out["cost_model"] = res.summary["cost_model"]
    out["real"] = {m: real.get(m) for _, m in COMPARED}
    out["sim"] = {m: res.summary.get(m) for _, m in COMPARED}
    (run_dir / "validate.json").write_text(json.dumps(out, indent=2, sort_keys=True, default=_nan_none) + "\n")
    return out


def _nan_none(x):
    if isinstance(x, (np.floating, np.integer)):
        return None if isinstance(x, np.floating) and math.isnan(x) else x.item()
    raise TypeError(f"not JSON serialisable: {type(x)}")


def format_report(v: dict) -> str:
    lines = [f"{'metric':<18}{'real':>12}{'sim':>12}{'rel error':>12}"]
    for key, metric in COMPARED:
        r, s, e = v["real"][metric], v["sim"][metric], v[key]
        lines.append(f"{metric:<18}{_fmt(r):>12}{_fmt(s):>12}{_fmt(e, pct=True):>12}")
    lines.append(f"step duration MAPE {_fmt(v['step_duration_mape'], pct=True)} over {v['num_steps']} steps "
                 f"(cost model {v['cost_model']})")
    agree = v["exit_decision_agreement"]
    lines.append(f"exit decisions agreeing: {'-' if agree is None else f'{100 * agree:.1f}%'} of {v['num_decisions']}")
    return "\n".join(lines)


def _fmt(x, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:+.1f}%" if pct else f"{x:.2f}"


def cmd_validate(args) -> int:
    print(format_report(validate(args.run_dir, progress=not args.no_progress)))
    print(f"written to {args.run_dir}/validate.json")
    return 0


def add_parsers(sub) -> None:
    v = sub.add_parser("validate", help="replay a drex run in the simulator; write RUN_DIR/validate.json")
    v.add_argument("run_dir", help="a directory written by drex run --out")
    add_progress_flag(v)
    v.set_defaults(func=cmd_validate)
