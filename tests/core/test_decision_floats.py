"""drex's decision priced in floats (one planned step, or a few) takes the actions the array path takes: the
same roofline with its float path switched off must decide every case alike (issue 11's speed, issue 13's
identical outputs) in the steps a run keeps: up to the first that parks or drains (``StepOutcome.record``
cuts there; the float path does not price the steps after a park)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from drex.config import EEConfig, SchedulerConfig
from drex.core.profitability import FEW_STEPS
from drex.core.request import Request, RequestStatus
from drex.core.scheduler import Scheduler
from drex.core.step import BUFFER, PrefillChunk, StepPlan
from drex.costmodel.roofline import RooflineCostModel
from drex.models import get_model



def scheduler(cost, n: int, rng, exits=(10, 20, 30), parked: int = 0) -> tuple[Scheduler, StepPlan]:
    cfg = SchedulerConfig(policy="drex", max_batch_size=256)
    s = Scheduler(get_model("llama2-13b"), EEConfig(exits, 0.5), cfg, cost, num_blocks=200_000)
    ctx = rng.integers(20, 4000, size=n).tolist()
    for i in range(n + parked):
        r = Request(i, 0.0, 16, 4000)
        r.status, r.num_prefilled, r.prefill_target, r.num_generated, r.last_token_s = \
            RequestStatus.RUNNING, 16, 16, int(rng.integers(1, 400)), 0.0
        s.live[i] = r
        if i < n:
            s.running.append(r)
        else:  # rows already parked at one of the exits, some steps ago
            s.buffer.park(r, exits[i % len(exits)], -int(rng.integers(0, 6)))
    prefill = [PrefillChunk(n + parked, 0, int(rng.integers(1, 512)), True)] if rng.random() < 0.3 else []
    plan = StepPlan(0, "decode", decode_ids=list(range(n)), decode_context=ctx,
                    decode_token_index=[s.live[i].num_generated for i in range(n)], prefill=prefill)
    return s, plan


def kept_steps(d) -> int:
    cut = np.flatnonzero((d.actions == BUFFER).any(axis=1) | d.drain)
    return int(cut[0]) + 1 if len(cut) else len(d.drain)


@pytest.mark.parametrize("device", ["h200", "a100"])
def test_float_and_array_prices_decide_alike(device):
    fast = RooflineCostModel(get_model("llama2-13b"), device)
    slow = copy.copy(fast)
    slow.fast_one = False
    rng = np.random.default_rng(11)
    split_seen = set()
    for case in range(60):
        n = int(rng.integers(2, 200))
        k = [1, 1, 2, FEW_STEPS, FEW_STEPS + 3][case % 5]
        p = rng.uniform(0.05, 0.95) if case % 4 else 0.97  # many exiting: where parking pays
        conf = np.where(rng.random((k, n)) < p, 0.9, 0.1)
        active = rng.random((k, n)) < 0.97
        seed = int(rng.integers(1 << 30))
        parked = int(rng.integers(0, 4)) if case % 3 == 0 else 0
        out = []
        for cost in (fast, slow):
            s, plan = scheduler(cost, n, np.random.default_rng(seed), parked=parked)
            out.append(s.decide_at_exit(plan, case % 3, conf, active, 0.0))
        a, b = out
        kept = kept_steps(a)
        assert kept == kept_steps(b), (case, n, k)
        assert np.array_equal(a.actions[:kept], b.actions[:kept]), (case, n, k)
        assert np.array_equal(a.stayed[:kept], b.stayed[:kept]) and np.array_equal(a.drain, b.drain), (case, n, k)
        split_seen.update(np.unique(a.actions[:kept]).tolist())
    assert split_seen == {0, 1, 2}  # exits, continues and parks all occurred: the cases reach every action
