"""Workloads: a shipped trace, a trace file, generated arrivals (``synthetic:<spec>``) or real prompts
(``humaneval[:rate=R,output=N]``, lengths from the model's tokenizer), as TraceRequests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from drex.prompts import humaneval_requests, is_humaneval
from drex.synthetic import generate
from drex.traces import TraceRequest, check_scaling, check_stretch, load_trace


def make_workload(
    trace: str | Path, num_requests: int | None = None, rate_scale: float = 1.0, rng=None,
    tokenizer: str | Path | None = None,
) -> list[TraceRequest]:
    """The simulator's entry point: ``trace`` is a shipped name, a path, ``synthetic:<spec>`` (which needs
    ``rng``, a numpy Generator; see ``drex.synthetic`` for the grammar) or ``humaneval[:...]`` (which needs
    ``tokenizer``, a tokenizer.json or its directory; see ``drex.prompts``)."""
    check_scaling(num_requests, rate_scale)
    if is_humaneval(trace) or (isinstance(trace, str) and trace.startswith("synthetic:")):
        if rng is None:
            raise ValueError("a generated workload needs rng (a numpy.random.Generator)")
        if is_humaneval(trace):
            if tokenizer is None:
                raise ValueError("--trace humaneval needs a model with a tokenizer (smollm2, smollm2-ee, tiny-ee)")
            requests = humaneval_requests(trace, str(tokenizer), rng)
        else:
            requests = generate(trace[len("synthetic:") :], rng)
        if num_requests is not None:
            requests = requests[:num_requests]
        if rate_scale != 1.0:
            requests = [replace(r, arrival_s=r.arrival_s / rate_scale) for r in requests]
        if requests:
            check_stretch(requests[-1].arrival_s, rate_scale, trace)
        return requests
    return load_trace(trace, num_requests, rate_scale)
