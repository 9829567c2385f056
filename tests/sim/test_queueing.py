"""The simulator against queueing theory: one server, batch size 1, constant service time, Poisson
arrivals is an M/D/1 queue, whose mean wait is Pollaczek-Khinchine's rho / (2 mu (1 - rho))."""

from __future__ import annotations

import numpy as np
import pytest

import drex.sim.simulator as simulator
from drex.traces import TraceRequest
from simkit import ConstantCost, sim_config

pytestmark = pytest.mark.slow  # seconds each: the `not slow` subset stays under 20 s

SERVICE_S = 0.01  # one step = one whole request (1-token prompt, 1 output token from the prefill)
RHO = 0.5
# The sample mean wait of an M/D/1 queue converges slowly (waits are correlated): at rho=0.5 and
# 20,000 requests its relative standard error is about 2% over seeds (measured with the recursion
# below). The seed is fixed, so the test is deterministic; Lindley's exact check carries the rest.
NUM_REQUESTS = 20_000


def md1_workload(n: int, rate: float, seed: int) -> list[TraceRequest]:
    rng = np.random.default_rng(seed)
    arrivals = np.concatenate([[0.0], np.cumsum(rng.exponential(1.0 / rate, n - 1))])
    return [TraceRequest(i, float(t), 1, 1) for i, t in enumerate(arrivals.tolist())]


@pytest.fixture(scope="module")
def md1():
    work = md1_workload(NUM_REQUESTS, RHO / SERVICE_S, seed=7)
    res = simulator.simulate(sim_config("off", exits=(), max_batch_size=1), work, cost=ConstantCost(SERVICE_S))
    return work, res


def test_every_request_is_one_step_of_constant_service(md1):
    work, res = md1
    assert res.summary["cost_model"] == "constant"
    assert res.summary["completed"] == len(work)
    assert len(res.steps) == len(work) and (res.steps.num_rows == 1).all()
    assert np.allclose(res.steps.duration_ms, SERVICE_S * 1e3)
    # One server: steps never overlap.
    t = res.steps.time_s.to_numpy()
    assert (np.diff(t) >= SERVICE_S * (1 - 1e-9)).all()  # not a budget: simulated time


def test_mean_wait_matches_pollaczek_khinchine(md1):
    work, res = md1
    wait_s = res.requests.ttft_ms.to_numpy() / 1e3 - SERVICE_S
    # Pollaczek-Khinchine for M/D/1 at the arrival rate the sample actually has.
    rate = (len(work) - 1) / work[-1].arrival_s
    rho = rate * SERVICE_S
    assert abs(rho - RHO) < 0.02
    expected = rho / (2 * (1 / SERVICE_S) * (1 - rho))
    assert wait_s.mean() == pytest.approx(expected, rel=0.05)
    # Little's law's cousin: the server is busy a fraction rho of the time.
    busy = res.steps.duration_ms.sum() / 1e3 / (res.steps.time_s.iloc[-1] + SERVICE_S)
    assert busy == pytest.approx(rho, rel=0.02)


def test_waits_follow_lindleys_recursion_exactly(md1):
    """Stronger than the mean: each request's wait is W[n+1] = max(0, W[n] + D - gap[n+1])."""
    work, res = md1
    gaps = np.diff([w.arrival_s for w in work])
    expected = np.zeros(len(work))
    w = 0.0
    for i, g in enumerate(gaps.tolist(), start=1):
        w = max(0.0, w + SERVICE_S - g)
        expected[i] = w
    got = res.requests.ttft_ms.to_numpy() / 1e3 - SERVICE_S
    assert np.allclose(got, expected, rtol=0, atol=1e-9)
