"""Capacity: the highest request rate a configuration sustains under SLOs.

A request meets its SLOs when it finishes with TTFT <= its TTFT SLO and TPOT <= its TPOT SLO
(vLLM ``bench serve``'s goodput rule; rejected requests meet none). A load passes when the
requests meeting their SLOs are at least ``min_fraction`` of all requests. The search scales
the trace's arrival times (``--rate-scale``; for a Poisson trace that is its rate): it doubles or
halves from the starting scale until one load passes and a higher one fails, then bisects in
log space until the two are within ``tolerance`` of each other. The offered request rate of a
scaled trace is (N - 1) / (last arrival - first arrival).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

from drex.slo import goodput_fraction
from drex.traces import TraceRequest

MAX_SCALE, MIN_SCALE = 2.0 ** 16, 2.0 ** -16


def offered_rate(workload: list[TraceRequest]) -> float:
    span = workload[-1].arrival_s - workload[0].arrival_s if workload else 0.0
    if len(workload) < 2 or span <= 0:
        raise ValueError("a capacity search needs at least two requests arriving at different times")
    return (len(workload) - 1) / span


def scaled(workload: list[TraceRequest], scale: float) -> list[TraceRequest]:
    return [replace(r, arrival_s=r.arrival_s / scale) for r in workload]


def check_search(min_fraction: float, tolerance: float, max_runs: int) -> None:
    if not 0 < min_fraction <= 1:
        raise ValueError(f"--min-goodput-fraction must be in (0, 1], got {min_fraction}")
    if not tolerance > 0:
        raise ValueError(f"--tolerance must be > 0, got {tolerance}")
    if max_runs < 2:
        raise ValueError(f"--max-runs must be >= 2, got {max_runs}")


def search(ns: argparse.Namespace, min_fraction: float = 0.9, tolerance: float = 0.05, max_runs: int = 20,
           progress=None) -> dict:
    """Run the search for one configuration (``ns`` as drex simulate parses it); no files written.

    Returns ``{"capacity": <capacity.json contents>, "knee": SimResult or None}``.
    """
    from drex.settings import load_workload, settings_from_args

    check_search(min_fraction, tolerance, max_runs)
    start = ns.rate_scale
    base = load_workload(argparse.Namespace(**{**vars(ns), "rate_scale": 1.0}))  # --slo-* applied
    if not any(r.slo_ttft_ms is not None or r.slo_tpot_ms is not None for r in base):
        raise ValueError("a capacity search needs an SLO: give --slo-ttft-ms and/or --slo-tpot-ms "
                         "(or a trace with slo_ttft_ms/slo_tpot_ms columns)")
    base_rate = offered_rate(base)
    prober = _Prober(settings_from_args(ns, ns.policy), base, base_rate, min_fraction, max_runs, progress)
    lo, hi = prober.bracket(start)
    while lo is not None and hi is not None and hi / lo > 1 + tolerance and prober.more():
        mid = math.sqrt(lo * hi)
        if prober.probe(mid):
            lo = mid
        else:
            hi = mid
    return {"capacity": _report(prober.runs, lo, hi, base_rate, min_fraction, tolerance, ns),
            "knee": prober.results.get(lo)}


class _Prober:
    """Runs the simulation at a load and remembers every run."""

    def __init__(self, cfg, base, base_rate, min_fraction, max_runs, progress) -> None:
        self.cfg, self.base, self.base_rate = cfg, base, base_rate
        self.min_fraction, self.max_runs, self.progress = min_fraction, max_runs, progress
        self.runs: list[dict] = []
        self.results: dict[float, object] = {}

    def more(self) -> bool:
        return len(self.runs) < self.max_runs

    def probe(self, scale: float) -> bool:
        from drex.sim.simulator import simulate

        res = simulate(self.cfg, scaled(self.base, scale))
        frac = goodput_fraction(res.requests)
        self.results[scale] = res
        self.runs.append({"rate_scale": scale, "request_rate": scale * self.base_rate, "goodput_fraction": frac,
                          "meets_slo": frac >= self.min_fraction, "summary": res.summary})
        if self.progress is not None:
            self.progress(len(self.runs), scale * self.base_rate, frac)
        return frac >= self.min_fraction

    def bracket(self, start: float) -> tuple[float | None, float | None]:
        """(highest passing scale, lowest failing scale above it); None where the limits came first."""
        if self.probe(start):
            lo, s = start, start * 2
            while s <= MAX_SCALE and self.more():
                if not self.probe(s):
                    return lo, s
                lo, s = s, s * 2
            return lo, None
        hi, s = start, start / 2
        while s >= MIN_SCALE and self.more():
            if self.probe(s):
                return s, hi
            hi, s = s, s / 2
        return None, hi


def _report(runs: list[dict], lo, hi, base_rate: float, min_fraction: float, tolerance: float,
            ns: argparse.Namespace) -> dict:
    knee = next((r for r in runs if r["rate_scale"] == lo), None)
    return {"max_request_rate": None if lo is None else lo * base_rate,
            "max_rate_scale": lo,
            "first_failing_rate": None if hi is None else hi * base_rate,
            "bracketed": lo is not None and hi is not None,
            "base_request_rate": base_rate,
            "min_goodput_fraction": min_fraction, "tolerance": tolerance,
            "slo_ttft_ms": ns.slo_ttft_ms, "slo_tpot_ms": ns.slo_tpot_ms,
            "num_runs": len(runs),
            "goodput_fraction_at_knee": None if knee is None else knee["goodput_fraction"],
            "knee": None if knee is None else knee["summary"],
            "runs": sorted(runs, key=lambda r: r["rate_scale"])}
