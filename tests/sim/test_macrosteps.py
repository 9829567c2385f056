"""Macro-steps are exact: planning runs of identical decode steps at once (the simulator's speed-up)
gives the same per-request and per-step results as planning one step at a time."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import drex.sim.simulator as simulator
from drex.slo import with_default_slos
from drex.sim.executor import SimExecutor
from simkit import POLICIES, poisson_workload, sim_config

pytestmark = pytest.mark.slow  # seconds each: the `not slow` subset stays under 20 s

REQUEST_COLUMNS = ["ttft_ms", "e2el_ms", "tpot_ms", "generated_tokens", "early_exits", "involuntary_exits",
                   "involuntary_stays", "mean_exit_layer", "preemptions", "status", "replica"]
SLO_TPOT_MS = 3.0  # about one tiny/cpu decode step and a half here: binds when a parked row waits
SETTINGS = {
    "one-exit": dict(exits=(2,), confidence="beta:4,2"),
    "three-exits": dict(exits=(1, 2, 3), confidence="beta:4,2/4,2/4,2"),
    # drex's own rule rarely parks on the tiny model: the knobs rule parks (flushes meet deeper exits).
    "three-exits-park": dict(exits=(1, 2, 3), confidence="beta:4,2/4,2/4,2", profitability="knobs",
                             max_tpot_inflation=float("inf")),
    "kv-pressure": dict(exits=(1, 3), confidence="beta:4,2/5,2", num_kv_blocks=40),
    # Issue 9 item 14: TPOT SLOs on decode rows (parking must still make each row's next-token deadline),
    # the fitted (profile) cost model, and several replicas.
    "tpot-slo": dict(exits=(1, 3), confidence="beta:4,2/5,2", slo_tpot_ms=SLO_TPOT_MS),
    "fitted-cost": dict(exits=(1, 2, 3), confidence="beta:4,2/4,2/4,2", cost_model="auto"),
    "replicas": dict(exits=(1, 3), confidence="beta:4,2/5,2", replicas=2, slo_tpot_ms=SLO_TPOT_MS),
    # Few rows confident: drex skips exit heads (read once an epoch, cut runs where the decision changes).
    "rare-exits": dict(exits=(1, 2), confidence="beta:1,5/1,4"),
}
# Load that fills batches (so runs of steps are planned) with gaps that let them run long.
WORKLOAD = poisson_workload(100, rate=250, prompt=(4, 48), output=(4, 60), seed=21)


def run(policy, name, lookahead):
    kw = dict(SETTINGS[name])
    slo = kw.pop("slo_tpot_ms", None)
    cost_model = kw.pop("cost_model", "roofline")
    cfg = replace(sim_config(policy, max_batch_size=12, max_lookahead_steps=lookahead, **kw), cost_model=cost_model)
    return simulator.simulate(cfg, with_default_slos(WORKLOAD, None, slo) if slo else WORKLOAD)


def assert_frames_match(a, b, exact, close, what):
    assert a.shape == b.shape, f"{what}: {a.shape} vs {b.shape}"
    for c in exact:
        bad = np.flatnonzero(a[c].to_numpy() != b[c].to_numpy())
        assert len(bad) == 0, f"{what}: column {c} differs at rows {bad[:10].tolist()}"
    for c in close:
        x, y = a[c].to_numpy(dtype=float), b[c].to_numpy(dtype=float)
        ok = np.isclose(x, y, rtol=1e-9, atol=1e-12) | (np.isnan(x) & np.isnan(y))
        bad = np.flatnonzero(~ok)
        assert len(bad) == 0, (f"{what}: column {c} differs at rows {bad[:10].tolist()}, e.g. "
                               f"{x[bad[0]]!r} vs {y[bad[0]]!r}")


@pytest.fixture(scope="module")
def macro_runs():
    """Default lookahead, recording the longest run of steps each policy planned."""
    planned, current = {}, {}
    orig = SimExecutor.execute

    def execute(self, plan, now, until=np.inf):
        planned[current["key"]] = max(planned.get(current["key"], 1), plan.num_steps)
        return orig(self, plan, now, until)

    out = {}
    patch = pytest.MonkeyPatch()
    patch.setattr(SimExecutor, "execute", execute)
    try:
        for name in SETTINGS:
            for p in POLICIES:
                current["key"] = (p, name)
                out[p, name] = run(p, name, 64)
    finally:
        patch.undo()
    return out, planned


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("policy", POLICIES)
def test_macro_steps_give_the_same_requests(macro_runs, policy, name):
    runs, planned = macro_runs
    if not (policy == "drex" and SETTINGS[name].get("slo_tpot_ms")):  # drex plans single steps under TPOT SLOs
        assert planned[policy, name] > 4, "no runs of steps were planned: the comparison would be vacuous"
    macro, single = runs[policy, name], run(policy, name, 1)
    if name == "kv-pressure":
        assert single.summary["num_preemptions"] > 0
    exact = [c for c in REQUEST_COLUMNS if c not in ("ttft_ms", "e2el_ms", "tpot_ms", "mean_exit_layer")]
    assert_frames_match(macro.requests, single.requests, exact, ["ttft_ms", "e2el_ms", "tpot_ms", "mean_exit_layer"],
                        f"{policy}/{name} requests")


@pytest.mark.parametrize("policy", ["off", "latency-only", "drex"])
def test_macro_steps_give_the_same_step_records(macro_runs, policy):
    """steps.csv too: the same steps with the same durations; buffer_size is checked apart below."""
    runs, _ = macro_runs
    macro, single = runs[policy, "three-exits"], run(policy, "three-exits", 1)
    # kv_blocks differs by design: a planned run of steps allocates its blocks up front
    cols = [c for c in macro.steps.columns if c not in ("time_s", "duration_ms", "buffer_size", "kv_blocks")]
    assert_frames_match(macro.steps, single.steps, cols, ["time_s", "duration_ms"], f"{policy} steps")
    for key in ("num_rebatches", "num_flushes", "num_drains", "num_steps", "kv_peak_blocks"):
        assert macro.summary[key] == single.summary[key], key


def test_macro_steps_log_the_buffer_size_of_each_step(macro_runs):
    runs, _ = macro_runs
    macro, single = runs["drex", "three-exits-park"], run("drex", "three-exits-park", 1)
    assert single.summary["num_rebatches"] > 0 and single.summary["num_flushes"] > 0
    assert_frames_match(macro.steps, single.steps, ["buffer_size"], [], "drex steps")


@st.composite
def small_runs(draw):
    exits = draw(st.sampled_from([(1,), (2,), (1, 3), (1, 2, 3)]))
    a = draw(st.sampled_from([2, 4, 6]))
    return dict(
        policy=draw(st.sampled_from(POLICIES)),
        work=with_default_slos(
            poisson_workload(draw(st.integers(5, 40)), draw(st.sampled_from([50.0, 300.0, 3000.0])),
                             (1, draw(st.integers(1, 64))), (1, draw(st.integers(2, 60))), draw(st.integers(0, 999))),
            None, draw(st.sampled_from([None, 2.0, 3.0, 6.0]))),
        settings=dict(exits=exits, confidence="/".join([f"beta:{a},2"] + [f"{a},2"] * (len(exits) - 1)),
                      threshold=draw(st.sampled_from([0.5, 0.8])), max_batch_size=draw(st.integers(2, 12)),
                      chunk_size=draw(st.sampled_from([16, 64])),
                      flush_max_wait_steps=draw(st.integers(1, 20)), inline_drain=draw(st.booleans()),
                      num_kv_blocks=draw(st.sampled_from([None, 24, 60])), seed=draw(st.integers(0, 9))),
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=small_runs())
def test_macro_steps_are_exact_on_random_runs(case):
    kv = case["settings"]
    single = simulator.simulate(sim_config(case["policy"], max_lookahead_steps=1, **kv), case["work"])
    macro = simulator.simulate(sim_config(case["policy"], **kv), case["work"])
    exact = [c for c in REQUEST_COLUMNS if c not in ("ttft_ms", "e2el_ms", "tpot_ms", "mean_exit_layer")]
    assert_frames_match(macro.requests, single.requests, exact, ["ttft_ms", "e2el_ms", "tpot_ms", "mean_exit_layer"],
                        "requests")
