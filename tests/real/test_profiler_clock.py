"""The CPU profile times what a real run times: wall time, with repeats and a median (issue 9, item 17)."""

import statistics
import time

from drex.real import profiler


def test_cpu_samples_are_wall_time():
    """A call that waits (sleeps, or is descheduled on a busy core) costs its wall time, as in a real step;
    thread CPU time would call it free."""
    budget = profiler.Budget(rounds=1, warmup=0, min_reps=3, max_reps=3, min_time_s=0.0)
    samples, walls = profiler.time_calls(lambda: time.sleep(0.004), budget, cuda=False)
    assert len(samples) == 3 and statistics.median(samples) >= 0.0035
    assert samples == walls


def test_cpu_budget_repeats_each_point():
    b = profiler.Budget.for_run(quick=True, cuda=False)
    assert b.rounds * b.min_reps >= 10


def test_median_ignores_a_few_slow_samples():
    """A loaded moment makes a few samples slow: the median (the profile's statistic) does not move."""
    t = profiler.summarize([1.0] * 12 + [5.0, 6.0, 7.0])
    assert t.median_s == 1.0 and t.p90_s > t.median_s
