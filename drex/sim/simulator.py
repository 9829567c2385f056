"""The SimPy simulation: arrivals routed to replicas, each a Scheduler driving a SimExecutor.

A replica runs its steps back to back without a SimPy event while they end
before the next arrival (nothing outside it can change meanwhile), and yields
to SimPy only for the step in which an arrival lands: the router then sees
every replica exactly as a step-by-step simulation would, at a fraction of the
events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import simpy

from drex.config import EEConfig, SchedulerConfig
from drex.confidence import make_confidence_source
from drex.core.blocks import num_kv_blocks
from drex.core.request import Request
from drex.core.scheduler import Scheduler
from drex.devices import get_device
from drex.metrics import request_records, summarize
from drex.models import ModelShape, get_model
from drex.sim.executor import SimExecutor
from drex.workload import TraceRequest

ROUTERS = ("round-robin", "least-outstanding")


@dataclass(frozen=True)
class SimConfig:
    model: str = "tiny"
    device: str = "cpu"
    ee: EEConfig = field(default_factory=EEConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    confidence: str = "beta"
    replicas: int = 1
    router: str = "round-robin"
    seed: int = 0
    dtype_bytes: int = 2
    mem_utilization: float = 0.9
    num_kv_blocks: int | None = None  # override the capacity derived from device memory
    cost_model: str = "auto"  # "auto" (profile if present, else roofline) or "roofline"
    tp: int = 1  # tensor-parallel degree of each replica (costmodel.tensor_parallel)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {self.router!r}")


@dataclass
class SimResult:
    requests: pd.DataFrame
    steps: pd.DataFrame
    summary: dict


def build_cost_model(cfg: SimConfig, shape: ModelShape):
    from drex.costmodel.tensor_parallel import TensorParallel, check_tp

    check_tp(get_device(cfg.device), cfg.tp)
    if cfg.cost_model == "roofline":
        from drex.costmodel.roofline import RooflineCostModel

        base = RooflineCostModel(shape, cfg.device, cfg.dtype_bytes, cfg.tp)
    else:
        from drex.costmodel.load import load_cost_model

        base = load_cost_model(cfg.device, shape, cfg.dtype_bytes, tp=cfg.tp)
    return base if cfg.tp == 1 else TensorParallel(base, get_device(cfg.device), shape.hidden_size, cfg.tp,
                                                   cfg.dtype_bytes)


class Replica:
    def __init__(self, index: int, sched: Scheduler, executor: SimExecutor, sim: "Simulation") -> None:
        self.index, self.sched, self.executor, self.sim = index, sched, executor, sim
        self.wake: simpy.Event | None = None

    def run(self, env: simpy.Environment):
        sched, sim = self.sched, self.sim
        t = env.now
        while True:
            plan = sched.schedule(t)
            if plan is None:
                self.wake = env.event()
                yield self.wake
                self.wake = None
                t = env.now
                continue
            nxt = sim.next_arrival_s
            result = self.executor.execute(plan, t, nxt)
            end = t + float(result.durations_s.sum())
            if end >= nxt:  # an arrival lands during this run of steps: let SimPy deliver it first
                yield env.timeout(end - env.now)
            sched.complete(plan, result, t)
            t = end


class Simulation:
    def __init__(self, cfg: SimConfig, workload: list[TraceRequest]) -> None:
        self.cfg = cfg
        self.shape = get_model(cfg.model)
        cfg.ee.check_model(self.shape.num_layers)
        self.cost = build_cost_model(cfg, self.shape)
        device = get_device(cfg.device)
        # A TP group holds the weights and the KV cache across its tp GPUs' memory.
        blocks = cfg.num_kv_blocks or num_kv_blocks(device.mem_bytes * cfg.tp, self.shape.weight_bytes(cfg.dtype_bytes),
                                                    self.shape.kv_bytes_per_token(cfg.dtype_bytes),
                                                    cfg.scheduler.block_size, cfg.mem_utilization)
        self.num_blocks = blocks
        self.source = make_confidence_source(cfg.confidence, cfg.ee.exits, self.shape.num_layers, cfg.seed)
        self.env = simpy.Environment()
        self.replicas = []
        for i in range(cfg.replicas):
            sched = Scheduler(self.shape, cfg.ee, cfg.scheduler, self.cost, blocks, replica=i)
            self.replicas.append(Replica(i, sched, SimExecutor(sched, self.cost, self.source), self))
        self.workload = workload
        self.requests = [Request(w.request_id, w.arrival_s, w.prompt_tokens, w.output_tokens, w.slo_ttft_ms,
                                 w.slo_tpot_ms) for w in workload]
        self.next_arrival_s = self.requests[0].arrival_s if self.requests else np.inf
        self._rr = 0

    def _route(self) -> Replica:
        if self.cfg.router == "least-outstanding":
            return min(self.replicas, key=lambda r: (r.sched.num_outstanding, r.index))
        rep = self.replicas[self._rr % len(self.replicas)]
        self._rr += 1
        return rep

    def _arrivals(self, env: simpy.Environment, progress):
        reqs = self.requests
        for i, req in enumerate(reqs):
            if req.arrival_s > env.now:
                yield env.timeout(req.arrival_s - env.now)
            self.next_arrival_s = reqs[i + 1].arrival_s if i + 1 < len(reqs) else np.inf
            rep = self._route()
            rep.sched.add_request(req, env.now)
            if rep.wake is not None and not rep.wake.triggered:
                rep.wake.succeed()
            if progress is not None and i % 256 == 255:
                progress.update(256)

    def run(self, progress: bool = False) -> SimResult:
        t0 = time.perf_counter()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(self.requests), unit="req", desc=f"simulate {self.cfg.scheduler.policy}",
                       mininterval=0.5)
        for rep in self.replicas:
            self.env.process(rep.run(self.env))
        self.env.process(self._arrivals(self.env, bar))
        self.env.run()
        if bar is not None:
            bar.update(len(self.requests) - bar.n)
            bar.close()
        lost = [r.request_id for r in self.requests if r.status not in ("finished", "rejected")]
        if lost:  # every request must be accounted for; a scheduler bug must not pass silently
            raise RuntimeError(f"simulation ended with {len(lost)} unfinished requests, e.g. {lost[:5]}")
        return self._result(time.perf_counter() - t0)

    def _result(self, wall_s: float) -> SimResult:
        req = request_records(self.requests)
        steps = pd.concat([pd.DataFrame(r.sched.log.columns()) for r in self.replicas], ignore_index=True)
        itl = np.concatenate([c for r in self.replicas for c in r.sched.itl_s] or [np.array([])])
        scheds = [r.sched for r in self.replicas]
        extra = {"num_rebatches": sum(s.num_rebatches for s in scheds),
                 "num_flushes": sum(s.num_flushes for s in scheds),
                 "num_drains": sum(s.num_drains for s in scheds),
                 "num_preemptions": sum(s.num_preemptions for s in scheds),
                 "kv_peak_blocks": max(s.blocks.peak_used for s in scheds),
                 "kv_total_blocks": self.num_blocks,
                 "cost_model": self.cost.name, "confidence_source": self.source.name,
                 "policy": self.cfg.scheduler.policy, "model": self.shape.name, "device": self.cfg.device,
                 "exits": list(self.cfg.ee.exits), "threshold": self.cfg.ee.threshold,
                 "replicas": self.cfg.replicas, "seed": self.cfg.seed,
                 "sim_wall_s": wall_s}
        return SimResult(req, steps, summarize(req, steps, itl, extra))


def simulate(cfg: SimConfig, workload: list[TraceRequest], progress: bool = False) -> SimResult:
    return Simulation(cfg, workload).run(progress)
