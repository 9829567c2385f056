"""Workloads: a shipped trace, a trace file, or generated arrivals (``synthetic:<spec>``), as TraceRequests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from drex.synthetic import generate
from drex.traces import TraceRequest, check_scaling, load_trace


def make_workload(
    trace: str | Path, num_requests: int | None = None, rate_scale: float = 1.0, rng=None
) -> list[TraceRequest]:
    """The simulator's entry point: ``trace`` is a shipped name, a path, or
    ``synthetic:<spec>`` (which needs ``rng``, a numpy Generator; see ``drex.synthetic`` for the grammar)."""
    check_scaling(num_requests, rate_scale)
    if isinstance(trace, str) and trace.startswith("synthetic:"):
        if rng is None:
            raise ValueError("a synthetic workload needs rng (a numpy.random.Generator)")
        requests = generate(trace[len("synthetic:") :], rng)
        if num_requests is not None:
            requests = requests[:num_requests]
        if rate_scale != 1.0:
            requests = [replace(r, arrival_s=r.arrival_s / rate_scale) for r in requests]
        return requests
    return load_trace(trace, num_requests, rate_scale)
