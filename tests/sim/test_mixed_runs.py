"""Runs of mixed steps (issue 13: one plan for the chunks of a long prompt beside the same decode rows) give
byte-identical records to planning those steps one at a time: times added step by step, one log entry per
step with the KV blocks its single step held, the same KV peak."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import drex.sim.simulator as simulator
from drex.metrics import write_run
from simkit import poisson_workload, sim_config


def _run(cfg, work, mixed_runs: bool, tmp_path, name):
    sim = simulator.Simulation(cfg, work)
    planned = []
    for rep in sim.replicas:
        rep.sched.kv_free_executor = mixed_runs
        execute = rep.executor.execute

        def counted(plan, now, until=np.inf, execute=execute):
            planned.append(len(plan.later_prefill))
            return execute(plan, now, until)

        rep.executor.execute = counted
    res = sim.run()
    res.summary.pop("sim_wall_s")
    write_run(tmp_path / name, res.request_columns, res.step_columns, res.summary)
    return planned, {f: (tmp_path / name / f).read_bytes() for f in ("requests.csv", "steps.csv", "summary.json")}


@pytest.mark.parametrize("case", ["roomy", "kv-pressure", pytest.param("kv-pressure-first-chunk", marks=pytest.mark.slow),
                                  pytest.param("kv-pressure-vllm", marks=pytest.mark.slow), "replicas", "full-batch"])
def test_mixed_runs_give_the_same_records_as_single_steps(tmp_path, case):
    # Prompts of several chunks (chunk budget 64 less the decode rows), arrivals that cut runs.
    work = poisson_workload(120, rate=150, prompt=(40, 400), output=(2, 50), seed=5)
    kw = {"roomy": {}, "kv-pressure": dict(num_kv_blocks=60), "kv-pressure-first-chunk": dict(num_kv_blocks=60),
          "kv-pressure-vllm": dict(num_kv_blocks=60), "replicas": dict(replicas=2),
          "full-batch": dict(max_batch_size=4)}[case]
    rule = {"kv-pressure-first-chunk": "first-chunk", "kv-pressure-vllm": "vllm"}.get(case, "reserve")
    cfg = sim_config("off", exits=(2,), admission=rule, **kw)
    cfg = replace(cfg, scheduler=replace(cfg.scheduler, max_lookahead_steps=16))
    runs, with_runs = _run(cfg, work, True, tmp_path, "runs")
    singles, single = _run(cfg, work, False, tmp_path, "single")
    # Runs were planned (fewer under reserve's KV pressure: requests wait with room in the batch), fewer plans made.
    if case == "kv-pressure-vllm":  # a request takes its prompt's blocks on joining: no mixed runs planned
        assert not any(runs) and with_runs == single
        return
    assert sum(n > 0 for n in runs) > (2 if case == "kv-pressure" else 10) and not any(singles)
    assert len(runs) < len(singles)
    for f in with_runs:
        assert with_runs[f] == single[f], f
