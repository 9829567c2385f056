"""The CPU profile times what a real run times: wall time, with repeats and a median (issue 9, item 17)."""

import time

import pytest

from drex.real import profiler


def test_cpu_samples_are_wall_time(monkeypatch):
    """A call that waits (sleeps, or is descheduled on a busy core) costs its wall time, as in a real step;
    thread CPU time would call it free. The wall clock is a fake one that the call moves on by 4 ms while
    using no CPU: the samples are what that clock says, not a measured time held to a constant."""
    wall = [100.0]

    def wait() -> None:
        wall[0] += 0.004

    monkeypatch.setattr(time, "perf_counter", lambda: wall[0])
    budget = profiler.Budget(rounds=1, warmup=0, min_reps=3, max_reps=3, min_time_s=0.0)
    samples, walls = profiler.time_calls(wait, budget, cuda=False)
    assert samples == pytest.approx([0.004] * 3, rel=1e-9)  # not a budget: the fake clock's own time
    assert samples == walls


def test_cpu_budget_repeats_each_point():
    b = profiler.Budget.for_run(quick=True, cuda=False)
    assert b.rounds * b.min_reps >= 10


def test_median_ignores_a_few_slow_samples():
    """A loaded moment makes a few samples slow: the median (the profile's statistic) does not move."""
    t = profiler.summarize([1.0] * 12 + [5.0, 6.0, 7.0])
    assert t.median_s == 1.0 and t.p90_s > t.median_s
