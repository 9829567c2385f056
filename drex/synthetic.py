"""Synthetic workloads: arrivals and lengths drawn from a one-line spec.

Grammar (``make_workload("synthetic:<spec>")`` strips the prefix)::

    <process>:rate=R,n=N[,burstiness=B],prompt=<len>,output=<len>[,slo_ttft_ms=T][,slo_tpot_ms=P]
    <process> = poisson | gamma
    <len>     = fixed:N | uniform:LO:HI | lognormal:mean=M:sigma=S | trace:NAME

``gamma`` matches vLLM's ``--burstiness``: inter-arrival times are Gamma with
shape=B and scale=1/(R*B), so the mean rate stays R while the coefficient of
variation is 1/sqrt(B); B=1 is Poisson, B<1 burstier, B>1 smoother. The first
request arrives at 0. ``lognormal`` takes the desired *mean* M of the length
(not of its log); draws are rounded and clipped to >= 1. ``trace:NAME`` resamples
rows of a trace (a shipped name or a path); when prompt and output name the same
trace, one row gives both, keeping their correlation.

All randomness comes from the Generator passed in: one seed, one workload.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from drex.limits import INT64_MAX, horizon_problem, int64_problem, past_horizon
from drex.traces import TraceRequest, load_trace

PROCESSES = ("poisson", "gamma")
_KEYS = ("rate", "n", "burstiness", "prompt", "output", "slo_ttft_ms", "slo_tpot_ms")
_REQUIRED = ("rate", "n", "prompt", "output")
MAX_REQUESTS = 10**7  # each request is held in memory, with its records: more is no workload a host holds


def generate(spec: str, rng: np.random.Generator) -> list[TraceRequest]:
    """The workload a spec describes; raises ValueError naming a bad key or value."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    process, params = _parse(spec)
    n = _positive_int(params["n"], "n")
    if n > MAX_REQUESTS:
        raise ValueError(f"synthetic spec {spec!r}: n={n} requests is more than one workload holds in memory "
                         f"(at most {MAX_REQUESTS:,})")
    rate = _positive_float(params["rate"], "rate")
    burstiness = 1.0
    if "burstiness" in params:
        burstiness = _positive_float(params["burstiness"], "burstiness")
        if process == "poisson" and burstiness != 1.0:
            raise ValueError(f"burstiness={params['burstiness']} needs the gamma process, not poisson")
    slos = {k: _positive_float(params[k], k) if k in params else None for k in ("slo_ttft_ms", "slo_tpot_ms")}

    arrivals = _arrivals(process, rate, burstiness, n, rng)
    if np.isnan(arrivals[-1]) or past_horizon(arrivals[-1]):  # a rate so low the gaps overflow
        raise ValueError(f"synthetic spec {spec!r}: rate={params['rate']} is too low for n={n}: "
                         + horizon_problem(f"the last arrival, at {arrivals[-1]:.4g} s,"))
    prompt, output = _lengths(params["prompt"], params["output"], n, rng)
    return [
        TraceRequest(i, t, p, o, slos["slo_ttft_ms"], slos["slo_tpot_ms"])
        for i, (t, p, o) in enumerate(zip(arrivals.tolist(), prompt.tolist(), output.tolist()))
    ]


def _parse(spec: str) -> tuple[str, dict[str, str]]:
    process, sep, rest = spec.strip().partition(":")
    if process not in PROCESSES:
        raise ValueError(f"synthetic spec {spec!r}: unknown arrival process {process!r} (known: {', '.join(PROCESSES)})")
    if not sep or not rest.strip():
        raise ValueError(f"synthetic spec {spec!r}: expected '{process}:rate=R,n=N,prompt=...,output=...'")
    params: dict[str, str] = {}
    for item in rest.split(","):
        key, eq, value = item.strip().partition("=")
        if not eq or not value.strip():
            raise ValueError(f"synthetic spec {spec!r}: {item.strip()!r} is not key=value")
        if key not in _KEYS:
            raise ValueError(f"synthetic spec {spec!r}: unknown key {key!r} (known: {', '.join(_KEYS)})")
        if key in params:
            raise ValueError(f"synthetic spec {spec!r}: key {key!r} given twice")
        params[key] = value.strip()
    missing = [k for k in _REQUIRED if k not in params]
    if missing:
        raise ValueError(f"synthetic spec {spec!r}: missing key(s) {', '.join(missing)}")
    return process, params


def _arrivals(process: str, rate: float, burstiness: float, n: int, rng: np.random.Generator) -> np.ndarray:
    # n requests need n-1 gaps: like vLLM's benchmark, the first one is sent at t=0.
    # A rate of 1e-300 makes gaps of 1e300 s and their sum infinite: the caller refuses what is past the clock.
    with np.errstate(over="ignore", invalid="ignore"):
        if process == "poisson":
            gaps = rng.exponential(1.0 / rate, size=n - 1)
        else:
            gaps = rng.gamma(shape=burstiness, scale=1.0 / rate / burstiness, size=n - 1)
        return np.concatenate(([0.0], np.cumsum(gaps)))


def _lengths(prompt_spec: str, output_spec: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if prompt_spec.startswith("trace:") and prompt_spec == output_spec:
        prompts, outputs = _trace_lengths(prompt_spec[len("trace:") :], f"prompt={prompt_spec}")
        rows = rng.integers(0, len(prompts), size=n)
        return prompts[rows], outputs[rows]
    return _draw(prompt_spec, "prompt", n, rng), _draw(output_spec, "output", n, rng)


def _draw(spec: str, key: str, n: int, rng: np.random.Generator) -> np.ndarray:
    kind, _, arg = spec.partition(":")
    where = f"{key}={spec}"
    if kind == "fixed":
        return np.full(n, _positive_int(arg, where), dtype=np.int64)
    if kind == "uniform":
        parts = arg.split(":")
        if len(parts) != 2:
            raise ValueError(f"{where}: expected uniform:LO:HI")
        lo, hi = _positive_int(parts[0], where), _positive_int(parts[1], where)
        if lo > hi:
            raise ValueError(f"{where}: LO={lo} is above HI={hi}")
        return rng.integers(lo, hi, size=n, endpoint=True)  # inclusive of HI, as the spec reads
    if kind == "lognormal":
        fields = dict(p.partition("=")[::2] for p in arg.split(":"))
        if set(fields) != {"mean", "sigma"}:
            raise ValueError(f"{where}: expected lognormal:mean=M:sigma=S")
        mean = _positive_float(fields["mean"], f"{where} (mean)")
        sigma = _nonnegative_float(fields["sigma"], f"{where} (sigma)")
        # E[exp(N(mu, s^2))] = exp(mu + s^2/2): pick mu so the lengths average `mean`.
        mu = math.log(mean) - sigma * sigma / 2  # -inf for an absurd sigma: its draws are refused below
        with np.errstate(all="ignore"):
            draws = np.maximum(np.rint(rng.lognormal(mu, sigma, size=n)), 1)
        if not (draws < 2.0**63).all():  # NaN too; 2.0**63 is the first double past INT64_MAX
            raise ValueError(f"{where}: draws lengths no 64-bit integer holds (up to {np.nanmax(draws):.4g} tokens, "
                             f"at most {INT64_MAX}); lower the mean or sigma")
        return draws.astype(np.int64)
    if kind == "trace":
        prompts, outputs = _trace_lengths(arg, where)
        pool = prompts if key == "prompt" else outputs
        return pool[rng.integers(0, len(pool), size=n)]
    raise ValueError(f"{where}: unknown length distribution {kind!r} (known: fixed, uniform, lognormal, trace)")


def _trace_lengths(name: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return _trace_rows(name)
    except ValueError as e:  # unknown name, or a defect in the file
        raise ValueError(f"{where}: {e}") from None


@lru_cache(maxsize=8)
def _trace_rows(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, output) token counts of every row of a trace; cached, as a sweep of
    synthetic runs would otherwise re-read the same file for each point."""
    requests = load_trace(name)
    prompts = np.array([r.prompt_tokens for r in requests], dtype=np.int64)
    outputs = np.array([r.output_tokens for r in requests], dtype=np.int64)
    prompts.flags.writeable = outputs.flags.writeable = False  # shared by the cache
    return prompts, outputs


def _positive_int(text: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"{where}: must be >= 1, got {value}")
    if int64_problem(value):
        raise ValueError(f"{where}: {int64_problem(value, 'the number')}")
    return value


def _positive_float(text: str, where: str) -> float:
    value = _nonnegative_float(text, where)
    if value == 0:
        raise ValueError(f"{where}: must be > 0, got {text!r}")
    return value


def _nonnegative_float(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: must be a finite number >= 0, got {text!r}")
    return value
