"""The SimPy simulation: arrivals routed to replicas, each a Scheduler driving a SimExecutor.

A replica runs its steps back to back without a SimPy event while they end
before the next arrival (nothing outside it can change meanwhile), and yields
to SimPy only for the step in which an arrival lands: the router then sees
every replica exactly as a step-by-step simulation would, at a fraction of the
events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np
import simpy

from drex.errors import InternalError
from drex.progress import Progress

from drex.confidence import make_confidence_source
from drex.core.blocks import num_kv_blocks
from drex.core.request import Request
from drex.core.scheduler import Scheduler
from drex.costmodel.base import CostModel
from drex.devices import get_device
from drex.metrics import Columns, check_accounted, request_columns, run_fields, summarize
from drex.models import get_model
from drex.settings import RunSettings, build_cost_model
from drex.sim.executor import SimExecutor
from drex.traces import TraceRequest

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class SimResult:
    """A run's records as Columns (``request_columns``, and ``replica_steps``: each replica's step columns) and its
    summary; ``requests`` and ``steps`` are DataFrames of them, made when first asked for (``drex simulate``
    writes the columns without importing pandas)."""

    request_columns: Columns
    replica_steps: list[Columns]
    summary: dict

    @property
    def requests(self) -> "pd.DataFrame":
        if "_requests" not in self.__dict__:
            self.__dict__["_requests"] = self.request_columns.frame()
        return self.__dict__["_requests"]

    @property
    def steps(self) -> "pd.DataFrame":
        if "_steps" not in self.__dict__:
            import pandas as pd

            self.__dict__["_steps"] = pd.concat([c.frame() for c in self.replica_steps], ignore_index=True)
        return self.__dict__["_steps"]

    @property
    def step_columns(self) -> "Columns | pd.DataFrame":
        """Every replica's steps, one after another: Columns where they join as numpy arrays would (every
        replica ran steps), else the DataFrame (pandas types the columns of a replica without steps)."""
        if len(self.replica_steps) == 1:
            return self.replica_steps[0]
        if all(c.num_rows for c in self.replica_steps):
            return Columns((name, np.concatenate([c[name] for c in self.replica_steps]))
                           for name in self.replica_steps[0])
        return self.steps


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
            dur = result.durations_s
            if plan.later_prefill:  # a run of mixed steps stands for single steps: their times add one by one
                end = t
                for d in dur.tolist():
                    end += d
            else:
                end = t + (float(dur[0]) if len(dur) == 1 else float(dur.sum()))
            if end >= nxt:  # an arrival lands during this run of steps: let SimPy deliver it first
                yield env.timeout(end - env.now)
            sched.complete(plan, result, t)
            t = end


class Simulation:
    """``cost`` overrides the cost model the settings name; ``recorder`` (see ``Scheduler``) sees every decision."""

    def __init__(self, cfg: RunSettings, workload: list[TraceRequest], cost: CostModel | None = None,
                 recorder=None) -> None:
        self.cfg = cfg
        self.shape = get_model(cfg.model)
        cfg.ee.check_model(self.shape.num_layers)
        self.cost = cost or build_cost_model(cfg, self.shape)
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
            sched = Scheduler(self.shape, cfg.ee, cfg.scheduler, self.cost, blocks, replica=i, recorder=recorder)
            sched.kv_free_executor = True  # SimExecutor: no KV held, mixed runs run
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
        n = len(self.requests)
        with Progress(f"simulate {self.cfg.scheduler.policy}", n, "req", enabled=progress) as bar:
            for rep in self.replicas:
                self.env.process(rep.run(self.env))
            self.env.process(self._arrivals(self.env, bar if progress else None))
            try:
                self.env.run()
            except Exception as e:  # every input was checked before: whatever fails now is drex's own bug
                raise InternalError(f"the simulation failed at t={self.env.now:.3f} s: {type(e).__name__}: {e}") from e
            bar.set(n)
        check_accounted(self.requests, "simulation")
        return self._result(time.perf_counter() - t0)

    def _result(self, wall_s: float) -> SimResult:
        req = request_columns(self.requests)
        steps = [Columns(r.sched.log.columns()) for r in self.replicas]
        itl = np.concatenate([c for r in self.replicas for c in r.sched.itl_s] or [np.array([])])
        for r in self.replicas:  # 8 bytes a token: one copy is enough (a 100k-request run has ~20 million)
            r.sched.itl_s.clear()
        extra = run_fields([r.sched for r in self.replicas], self.num_blocks, self.cost.name, self.source.name,
                           self.cfg, self.shape.name)
        extra["sim_wall_s"] = wall_s
        res = SimResult(req, steps, {})
        res.summary = summarize(req, res.step_columns, itl, extra)
        return res


def simulate(cfg: RunSettings, workload: list[TraceRequest], progress: bool = False,
             cost: CostModel | None = None) -> SimResult:
    return Simulation(cfg, workload, cost).run(progress)
