"""Every request of every simulated run is accounted for (finished, or rejected with its reason), and
the summary agrees with the per-request and per-step records it was computed from."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import drex.sim.simulator as simulator
from drex.settings import ROUTERS
from drex.traces import TraceRequest
from simkit import POLICIES, TINY_LAYERS, poisson_workload, sim_config


def check_accounted(res, work, max_model_len):
    q = res.requests
    s = res.summary
    assert q.request_id.tolist() == [w.request_id for w in work]
    assert (q.arrival_s.to_numpy() == [w.arrival_s for w in work]).all()
    assert s["completed"] + s["failed"] == len(work)
    assert set(q.status) <= {"finished", "rejected"}
    too_long = (q.prompt_tokens + q.output_tokens > max_model_len).to_numpy()
    rej = (q.status == "rejected").to_numpy()
    assert (rej == too_long).all()
    assert q.reason[rej].map(lambda r: f"exceeds max_model_len={max_model_len}" in r).all()
    assert (q.reason[~rej] == "").all()
    fin = q[~rej]
    assert (fin.generated_tokens == fin.output_tokens).all()
    assert (q.generated_tokens[rej] == 0).all()
    assert s["completed"] == len(fin) and s["failed"] == int(rej.sum())


@st.composite
def runs(draw):
    n = draw(st.integers(1, 40))
    return dict(policy=draw(st.sampled_from(POLICIES)),
                work=poisson_workload(n, draw(st.sampled_from([30.0, 300.0, 3000.0])), (1, 90), (1, 40),
                                      draw(st.integers(0, 10**6))),
                exits=draw(st.sampled_from([(1,), (2,), (1, 3), (1, 2, 3)])),
                threshold=draw(st.sampled_from([0.3, 0.6, 0.9])),
                replicas=draw(st.integers(1, 3)), router=draw(st.sampled_from(ROUTERS)),
                max_batch_size=draw(st.integers(1, 12)), seed=draw(st.integers(0, 99)))


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=runs())
def test_every_request_accounted_for(case):
    max_len = 100
    work = case.pop("work")
    exits = case.pop("exits")
    conf = "beta:" + "/".join(["3,2"] * len(exits))
    res = simulator.simulate(sim_config(exits=exits, confidence=conf, max_model_len=max_len, **case), work)
    check_accounted(res, work, max_len)
    s = res.summary
    assert 0.0 <= s["early_exit_fraction"] <= 1.0
    if s["completed"]:
        assert min(exits) <= s["mean_exit_layer"] <= TINY_LAYERS
    if case["policy"] not in ("eager", "average"):
        assert s["involuntary_exits"] == 0


def test_summary_agrees_with_the_records():
    work = poisson_workload(80, rate=300, prompt=(4, 56), output=(1, 40), seed=1)
    work.append(TraceRequest(80, work[-1].arrival_s + 0.01, 90, 30))  # rejected: 120 > 100
    res = simulator.simulate(sim_config("drex", exits=(1, 3), confidence="beta:4,2/5,2", max_model_len=100,
                                        profitability="knobs", max_tpot_inflation=float("inf")), work)
    q, steps, s = res.requests, res.steps, res.summary
    fin = q[q.status == "finished"]
    assert s["failed"] == 1 and s["completed"] == 80
    finish = fin.arrival_s + fin.e2el_ms / 1e3
    duration = finish.max() - q.arrival_s.min()
    assert s["duration"] == pytest.approx(duration)
    assert s["request_throughput"] == pytest.approx(80 / duration)
    assert s["output_throughput"] == pytest.approx(fin.output_tokens.sum() / duration)
    assert s["total_token_throughput"] == pytest.approx((fin.output_tokens.sum() + fin.prompt_tokens.sum()) / duration)
    assert s["mean_ttft_ms"] == pytest.approx(fin.ttft_ms.mean())
    assert s["median_ttft_ms"] == pytest.approx(fin.ttft_ms.median())
    assert s["p99_ttft_ms"] == pytest.approx(np.percentile(fin.ttft_ms, 99))
    assert s["mean_e2el_ms"] == pytest.approx(fin.e2el_ms.mean())
    multi = fin[fin.generated_tokens > 1]
    assert np.allclose(multi.tpot_ms, (multi.e2el_ms - multi.ttft_ms) / (multi.generated_tokens - 1))
    assert s["mean_tpot_ms"] == pytest.approx(multi.tpot_ms.mean())
    assert s["early_exit_fraction"] == pytest.approx(fin.early_exits.sum() / fin.generated_tokens.sum())
    assert s["involuntary_stays"] == q.involuntary_stays.sum()
    assert s["num_steps"] == len(steps)
    assert s["num_preemptions"] == q.preemptions.sum()
    assert s["num_rebatches"] > 0
    # Each step's rows are what it says it holds; the parked rows in the log are those that rebatched.
    assert (steps.num_rows >= steps.num_decode + steps.num_flush).all()
    assert steps.num_buffered.sum() >= s["num_rebatches"]
    # Inter-token latencies: one per decode token, all positive, and their mean bounds make sense.
    assert 0 < s["mean_itl_ms"] <= s["p99_itl_ms"]  # not a budget: simulated time
    # Steps tile time on the one replica: they never overlap.
    t, d = steps.time_s.to_numpy(), steps.duration_ms.to_numpy() / 1e3
    assert (t[1:] >= t[:-1] + d[:-1] - 1e-9).all()
