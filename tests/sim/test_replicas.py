"""Several replicas behind a router: round-robin spreads requests evenly, least-outstanding sends each
request to the replica with the fewest unfinished requests, and every request is accounted for."""

from __future__ import annotations

import numpy as np
import pytest

import drex.sim.simulator as simulator
from drex.traces import TraceRequest
from simkit import poisson_workload, sim_config

pytestmark = pytest.mark.slow  # seconds each: the `not slow` subset stays under 20 s

WORK = poisson_workload(150, rate=600, prompt=(4, 64), output=(2, 40), seed=9)


def check_accounted(res, work, replicas):
    q = res.requests
    assert sorted(q.request_id) == [w.request_id for w in work]
    assert res.summary["completed"] + res.summary["failed"] == len(work)
    assert (q.status == "finished").all() and (q.generated_tokens == q.output_tokens).all()
    assert set(q.replica) <= set(range(replicas)) and set(res.steps.replica) == set(range(replicas))
    assert res.summary["replicas"] == replicas
    # Each replica is one device: its steps never overlap.
    for _, s in res.steps.groupby("replica"):
        t, d = s.time_s.to_numpy(), s.duration_ms.to_numpy() / 1e3
        assert (t[1:] >= (t + d)[:-1] - 1e-9).all()


@pytest.mark.parametrize("policy", ["off", "drex"])
@pytest.mark.parametrize("replicas", [2, 3])
def test_round_robin_spreads_requests_evenly(policy, replicas):
    res = simulator.simulate(sim_config(policy, replicas=replicas, router="round-robin"), WORK)
    check_accounted(res, WORK, replicas)
    q = res.requests
    assert (q.replica == q.request_id % replicas).all()
    counts = q.replica.value_counts()
    assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("policy", ["off", "drex"])
def test_least_outstanding_accounts_for_everything(policy):
    res = simulator.simulate(sim_config(policy, replicas=3, router="least-outstanding"), WORK)
    check_accounted(res, WORK, 3)
    counts = res.requests.replica.value_counts()
    assert counts.min() >= len(WORK) / 3 * 0.5, counts.to_dict()


def test_least_outstanding_avoids_the_busy_replica():
    """A long request keeps replica 0 busy; short requests arriving one by one, each finished before
    the next arrives, all go to the idle replica 1. Round-robin sends every other one to replica 0."""
    work = [TraceRequest(0, 0.0, 16, 3000)] + [TraceRequest(i, 0.05 * i, 4, 2) for i in range(1, 11)]
    lo = simulator.simulate(sim_config("off", replicas=2, router="least-outstanding"), work)
    rr = simulator.simulate(sim_config("off", replicas=2, router="round-robin"), work)
    long_end = lo.requests.e2el_ms[0] / 1e3
    assert long_end > work[-1].arrival_s, "the long request must outlast the short ones"
    assert lo.requests.replica.tolist() == [0] + [1] * 10
    assert rr.requests.replica.tolist() == [i % 2 for i in range(11)]
    # Sharing a batch with the long request costs the short ones nothing here but never helps.
    assert (lo.requests.ttft_ms[1:].to_numpy() <= rr.requests.ttft_ms[1:].to_numpy() * (1 + 1e-9)).all()


def test_least_outstanding_breaks_ties_by_index():
    burst = [TraceRequest(i, 0.0, 8, 4) for i in range(7)]  # all at once: counts grow 0,0,0 -> 1,0,0 -> ...
    res = simulator.simulate(sim_config("off", replicas=3, router="least-outstanding"), burst)
    assert res.requests.replica.tolist() == [0, 1, 2, 0, 1, 2, 0]
    sparse = [TraceRequest(i, 10.0 * i, 8, 4) for i in range(5)]  # each done before the next: all idle
    res = simulator.simulate(sim_config("off", replicas=3, router="least-outstanding"), sparse)
    assert res.requests.replica.tolist() == [0] * 5


def test_more_replicas_wait_less():
    one = simulator.simulate(sim_config("off", replicas=1), WORK)
    three = simulator.simulate(sim_config("off", replicas=3), WORK)
    assert three.summary["mean_ttft_ms"] < one.summary["mean_ttft_ms"]
    assert np.isclose(three.summary["total_output_tokens"], one.summary["total_output_tokens"])


@pytest.mark.parametrize("kw,match", [(dict(replicas=0), "replicas"), (dict(router="random"), "router")])
def test_bad_replica_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        sim_config("off", **kw)
