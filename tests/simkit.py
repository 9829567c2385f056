"""Shared helpers for the core, policy and simulator tests: small workloads, configs, cost models,
and a step-by-step driver that runs a Scheduler + SimExecutor without SimPy so tests can inspect
the scheduler's state between steps."""

from __future__ import annotations

import math

import numpy as np

from drex.config import EEConfig, SchedulerConfig
from drex.confidence import make_confidence_source
from drex.core.request import Request
from drex.core.scheduler import Scheduler
from drex.costmodel.base import CostModel
from drex.costmodel.roofline import RooflineCostModel
from drex.models import get_model
from drex.sim.executor import SimExecutor
from drex.settings import RunSettings
from drex.traces import TraceRequest

POLICIES = ("off", "eager", "lazy", "average", "latency-only", "bound", "drex")
TINY_LAYERS = get_model("tiny").num_layers


def poisson_workload(n: int, rate: float, prompt=(4, 64), output=(1, 40), seed: int = 0) -> list[TraceRequest]:
    """n Poisson arrivals (first at 0) with uniform integer prompt/output lengths (inclusive bounds)."""
    rng = np.random.default_rng(seed)
    t = np.concatenate([[0.0], np.cumsum(rng.exponential(1.0 / rate, n - 1))])
    p = rng.integers(prompt[0], prompt[1] + 1, n)
    o = rng.integers(output[0], output[1] + 1, n)
    return [TraceRequest(i, float(t[i]), int(p[i]), int(o[i])) for i in range(n)]


def burst_workload(n: int, prompt=(4, 64), output=(2, 40), seed: int = 0) -> list[TraceRequest]:
    """n requests all arriving at t=0: the batches then do not depend on step durations."""
    rng = np.random.default_rng(seed)
    return [TraceRequest(i, 0.0, int(rng.integers(prompt[0], prompt[1] + 1)),
                         int(rng.integers(output[0], output[1] + 1))) for i in range(n)]


def sim_config(policy: str, exits=(2,), threshold: float = 0.5, confidence: str = "beta:2,2", seed: int = 0,
               replicas: int = 1, router: str = "round-robin", num_kv_blocks=None, **sched) -> RunSettings:
    sched.setdefault("max_batch_size", 8)
    sched.setdefault("chunk_size", 64)
    return RunSettings(model="tiny", device="cpu", ee=EEConfig(tuple(exits), threshold),
                     scheduler=SchedulerConfig(policy=policy, **sched), confidence=confidence, replicas=replicas,
                     router=router, seed=seed, num_kv_blocks=num_kv_blocks, cost_model="roofline")


class ConstantCost(CostModel):
    """Every step costs ``step_s`` whatever it holds; nothing else costs anything."""

    name = "constant"

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s

    @staticmethod
    def _zero(x):
        return np.zeros_like(np.asarray(x, dtype=float))

    def layer_s(self, num_tokens, decode_context=0, prefill_attn=0):
        return self._zero(num_tokens)

    def head_s(self, num_rows):
        return self._zero(num_rows)

    def step_overhead_s(self, num_rows):
        return self._zero(num_rows) + self.step_s

    def kv_copy_s(self, num_rows, num_layers):
        return self._zero(num_rows)

    def buffer_s(self, num_rows):
        return self._zero(num_rows)


class FreeHeadRoofline(RooflineCostModel):
    """The roofline model with free exit heads: then early exit by itself changes no step's duration."""

    def head_s(self, num_rows):
        return np.zeros_like(np.asarray(num_rows, dtype=float))


def make_scheduler(policy: str, exits=(2,), threshold: float = 0.5, num_blocks: int = 4096, **sched):
    sched.setdefault("max_batch_size", 8)
    sched.setdefault("chunk_size", 64)
    shape = get_model("tiny")
    cost = RooflineCostModel(shape, "cpu")
    return Scheduler(shape, EEConfig(tuple(exits), threshold), SchedulerConfig(policy=policy, **sched), cost,
                     num_blocks)


def drive(sched: Scheduler, workload: list[TraceRequest], confidence: str = "beta:2,2", seed: int = 0,
          check=None, max_plans: int = 100_000) -> list[Request]:
    """Replay a workload through one scheduler step by step, like a single simulated replica.

    ``check(sched, plan, result)`` runs after every completed plan. Returns the Request objects.
    """
    source = make_confidence_source(confidence, sched.ee.exits, sched.num_layers, seed)
    ex = SimExecutor(sched, sched.cost, source)
    reqs = [Request(w.request_id, w.arrival_s, w.prompt_tokens, w.output_tokens, w.slo_ttft_ms, w.slo_tpot_ms)
            for w in workload]
    t, i = 0.0, 0
    for _ in range(max_plans):
        while i < len(reqs) and reqs[i].arrival_s <= t:
            sched.add_request(reqs[i], t)
            i += 1
        plan = sched.schedule(t)
        if plan is None:
            assert not sched.has_work(), "the scheduler has work but planned nothing"
            if i == len(reqs):
                return reqs
            t = reqs[i].arrival_s
            continue
        nxt = reqs[i].arrival_s if i < len(reqs) else math.inf
        result = ex.execute(plan, t, nxt)
        sched.complete(plan, result, t)
        t += float(np.sum(result.durations_s))
        if check is not None:
            check(sched, plan, result)
    raise AssertionError(f"no end after {max_plans} plans")
