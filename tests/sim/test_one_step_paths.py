"""Issue 13's one-step shortcuts change no result: a drex run with them gives, bit for bit, what it gives with
every one of them switched off (the array paths they stand for).

The shortcuts: a one-step plan priced in floats (``SimExecutor._step_float``), drex's decision priced in floats
(the roofline's ``fast_one``), ``drex`` decided on one step's row vector (``policies._drex_one``), a planned run
decided at its first step alone first (``Scheduler.decisions_mark``), and one step applied row by row
(``ApplyMixin._apply_decode_one``)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest

import drex.core.policies as policies
from drex.config import EEConfig
from drex.core.apply import ApplyMixin
from drex.core.scheduler import Scheduler
from drex.models import get_model
from drex.settings import build_cost_model
from drex.sim.simulator import Simulation
from drex.slo import with_default_slos
from simkit import poisson_workload, sim_config

CASES = {
    # 13b/h200 at threshold 0.3: drex parks and drains nearly every step (the speed issue's case).
    "one-exit": dict(exits=(20,), threshold=0.3, confidence="beta:2.5,2"),
    "three-exits": dict(exits=(10, 20, 30), threshold=0.5, confidence="beta:2.5,2"),
    "tpot-slo": dict(exits=(20,), threshold=0.3, confidence="beta:2.5,2", slo_tpot_ms=40.0),
}


def settings(name: str):
    kw = dict(CASES[name])
    kw.pop("slo_tpot_ms", None)
    cfg = sim_config("drex", max_batch_size=64, chunk_size=512, **kw)
    return replace(cfg, model="llama2-13b", device="h200", ee=EEConfig(kw["exits"], kw["threshold"]))


def workload(name: str, n: int):
    w = poisson_workload(n, rate=40, prompt=(16, 900), output=(8, 300), seed=5)
    slo = CASES[name].get("slo_tpot_ms")
    return with_default_slos(w, None, slo) if slo else w


def run(name: str, n: int, shortcuts: bool):
    cfg = settings(name)
    cost = build_cost_model(cfg, get_model(cfg.model))
    if not shortcuts:
        cost = copy.copy(cost)
        cost.fast_one = False  # prices every decision and step with the array path
    sim = Simulation(cfg, workload(name, n), cost=cost)
    assert sim.replicas[0].executor.float_steps == shortcuts
    res = sim.run()
    summary = {k: v for k, v in res.summary.items() if k != "sim_wall_s"}
    return res.request_columns, res.step_columns, summary


def without_shortcuts(monkeypatch):
    monkeypatch.setattr(policies, "_drex_one", policies._drex_steps)
    monkeypatch.setattr(Scheduler, "decisions_mark", lambda self: None)
    monkeypatch.setattr(ApplyMixin, "_apply_decode_one",
                        lambda self, plan, out, t: self._apply_decode_run(plan, out, np.array([t]), None, None))


def assert_same(a, b):
    (req_a, steps_a, sum_a), (req_b, steps_b, sum_b) = a, b
    for cols_a, cols_b in ((req_a, req_b), (steps_a, steps_b)):
        assert list(cols_a) == list(cols_b)
        for name in cols_a:
            x, y = np.asarray(cols_a[name]), np.asarray(cols_b[name])
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name
    assert json.dumps(sum_a, sort_keys=True) == json.dumps(sum_b, sort_keys=True)


@pytest.mark.parametrize("name", ["one-exit"])
def test_shortcuts_change_nothing_quick(name, monkeypatch):
    fast = run(name, 40, shortcuts=True)
    assert fast[2]["num_rebatches"] > 0 and fast[2]["early_exit_fraction"] > 0.3  # the shortcuts' case
    without_shortcuts(monkeypatch)
    assert_same(fast, run(name, 40, shortcuts=False))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_shortcuts_change_nothing(name, monkeypatch):
    fast = run(name, 200, shortcuts=True)
    assert fast[2]["num_rebatches"] > 0 and fast[2]["num_drains"] > 0
    without_shortcuts(monkeypatch)
    assert_same(fast, run(name, 200, shortcuts=False))


def test_the_switches_reach_the_shortcuts(monkeypatch):
    """A shortcut that answered differently would show: the comparison above is not vacuous."""
    fast = run("one-exit", 40, shortcuts=True)
    wrong = policies._drex_one

    def parks_nobody(ctx):
        d = wrong(ctx)
        d.actions[d.actions == policies.BUFFER] = policies.CONTINUE
        return d

    monkeypatch.setattr(policies, "_drex_one", parks_nobody)
    other = run("one-exit", 40, shortcuts=True)
    assert other[2]["num_rebatches"] < fast[2]["num_rebatches"]
