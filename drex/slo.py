"""Per-request SLOs: flags that give every request without one a TTFT/TPOT SLO, and the share of
requests meeting theirs (vLLM ``bench serve``'s goodput rule: a request counts when it finished
with TTFT <= its TTFT SLO and TPOT <= its TPOT SLO; a rejected request meets none)."""

from __future__ import annotations

import argparse
from dataclasses import replace


def add_slo_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slo-ttft-ms", type=float, default=None,
                   help="TTFT SLO (ms) for every request whose trace gives none")
    p.add_argument("--slo-tpot-ms", type=float, default=None,
                   help="TPOT SLO (ms) for every request whose trace gives none")


def check_slos(ttft_ms: float | None, tpot_ms: float | None) -> None:
    for name, v in (("--slo-ttft-ms", ttft_ms), ("--slo-tpot-ms", tpot_ms)):
        if v is not None and not v > 0:  # also refuses NaN
            raise ValueError(f"{name} must be > 0, got {v}")


def with_default_slos(workload: list, ttft_ms: float | None, tpot_ms: float | None) -> list:
    """The trace's own SLOs win; the flags fill in requests that have none."""
    check_slos(ttft_ms, tpot_ms)
    if ttft_ms is None and tpot_ms is None:
        return workload
    return [replace(r, slo_ttft_ms=ttft_ms if r.slo_ttft_ms is None else r.slo_ttft_ms,
                    slo_tpot_ms=tpot_ms if r.slo_tpot_ms is None else r.slo_tpot_ms) for r in workload]


def goodput_fraction(requests) -> float:
    """Share of all requests in a requests table (rejected ones included) that met every SLO."""
    return float(requests.slo_met.sum()) / max(len(requests), 1)
