"""The drex decision on crafted cases whose answer is known by hand: which of hold, park and
split-and-continue (GO) it takes, that what it takes costs no more device time than holding, and that a
flushed batch exits at a deeper exit point."""

from __future__ import annotations

import numpy as np

from drex.config import EEConfig, SchedulerConfig
from drex.core.request import Request, RequestStatus
from drex.core.scheduler import Scheduler
from drex.core.step import BUFFER, CONTINUE, EXIT, StepPlan
from drex.costmodel.base import CostModel
from drex.costmodel.proportional import ProportionalCost
from drex.models import get_model
from drex.sim.executor import SimExecutor

W_S = 1e-3  # weight-bound: one layer's cost, whatever its rows


class WeightBound(CostModel):
    """A layer costs W_S if any row runs it, whatever the rows (weight reads): nothing shrinks with rows."""

    name = "weight-bound"

    def layer_s(self, num_tokens, decode_context=0, prefill_attn=0):
        return np.where(np.asarray(num_tokens, dtype=float) > 0, W_S, 0.0)

    def head_s(self, num_rows):
        return 0.0 * np.asarray(num_rows, dtype=float)

    def step_overhead_s(self, num_rows):
        return 1e-6 + 0.0 * np.asarray(num_rows, dtype=float)

    def kv_copy_s(self, num_rows, num_layers):
        return 0.0 * np.asarray(num_rows, dtype=float)

    def buffer_s(self, num_rows):
        return 0.0 * np.asarray(num_rows, dtype=float)


class Fixed:
    """A confidence source with given confidences per exit index: conf[exit_index] is [n] (one per row)."""

    name = "fixed"

    def __init__(self, conf: dict[int, list[float]]) -> None:
        self.conf = conf

    def confidence(self, request_ids, token_index, exit_index):
        return np.broadcast_to(np.asarray(self.conf[exit_index], dtype=float), np.shape(token_index)).copy()


def decoding(cost, n, exits=(2,), **sched) -> tuple[Scheduler, StepPlan]:
    """A scheduler with n requests mid-decode (10 tokens each out) and the decode plan of their next step."""
    cfg = SchedulerConfig(policy="drex", max_batch_size=16, **sched)
    s = Scheduler(get_model("tiny"), EEConfig(tuple(exits), 0.5), cfg, cost, num_blocks=256)
    for i in range(n):
        r = Request(i, 0.0, 8, 50)
        r.status, r.num_prefilled, r.prefill_target, r.num_generated, r.last_token_s = \
            RequestStatus.RUNNING, 8, 8, 10, 0.0
        s.live[i] = r
        s.running.append(r)
    plan = StepPlan(0, "decode", decode_ids=list(range(n)), decode_context=[17] * n, decode_token_index=[10] * n)
    return s, plan


def decide(cost, wants: list[bool], **sched):
    s, plan = decoding(cost, len(wants), **sched)
    conf = np.where(np.array(wants), 0.9, 0.1)[None, :]
    return s.decide_at_exit(plan, 0, conf, np.ones_like(conf, dtype=bool), 0.0).actions[0]


def step_time(cost, wants: list[bool], **sched) -> float:
    s, plan = decoding(cost, len(wants), **sched)
    ex = SimExecutor(s, cost, Fixed({0: np.where(np.array(wants), 0.9, 0.1)}))
    return float(ex.execute(plan, 0.0).durations_s.sum())


HOLD = dict(profitability="knobs", split_fraction=1.0)  # never splits a partial batch


def test_compute_bound_split_and_continue_pays():
    """Layer time proportional to rows: the confident half exits, the rest go on at once (no one parks)."""
    wants = [True, True, False, False]
    acts = decide(ProportionalCost(), wants)
    assert acts.tolist() == [EXIT, EXIT, CONTINUE, CONTINUE]
    # By hand: holding runs 4 rows through layers [2, 4), continuing runs 2: half the deep time saved.
    held, went = step_time(ProportionalCost(), wants, **HOLD), step_time(ProportionalCost(), wants)
    assert went < held
    assert np.isclose(held - went, 2 * 2 * 1e-4)


def test_weight_bound_lone_stayer_is_not_split():
    """Weight reads only: a split of two rows saves nothing (the stayer pays the deep weights alone, and
    parking it loses its next step worth as much): drex holds, the confident row stays."""
    acts = decide(WeightBound(), [True, False])
    assert acts.tolist() == [CONTINUE, CONTINUE]
    assert step_time(WeightBound(), [True, False]) == step_time(WeightBound(), [True, False], **HOLD)


def test_weight_bound_lone_stayer_parks_when_many_exit():
    """Weight reads only, seven of eight confident: letting the stayer continue alone saves nothing, but
    parking it skips the deep layers this step (the deep weights are read once, later, for many)."""
    wants = [True] * 7 + [False]
    acts = decide(WeightBound(), wants)
    assert acts.tolist() == [EXIT] * 7 + [BUFFER]
    assert step_time(WeightBound(), wants) < step_time(WeightBound(), wants, **HOLD)
    # Without a latency budget for parking it holds instead: split-and-continue never pays here.
    assert decide(WeightBound(), wants, max_tpot_inflation=1.0).tolist() == [CONTINUE] * 8


def test_parking_respects_the_tpot_inflation_budget():
    """A row may park only while its parked steps stay within (x - 1) of the steps it decoded."""
    wants = [True] * 7 + [False]
    s, plan = decoding(WeightBound(), 8)
    s.live[7].num_parked_steps = 2  # (1.25 - 1) * 10 tokens = 2.5: one more parked step would make 3
    conf = np.where(np.array(wants), 0.9, 0.1)[None, :]
    acts = s.decide_at_exit(plan, 0, conf, np.ones_like(conf, dtype=bool), 0.0).actions[0]
    assert acts.tolist() == [CONTINUE] * 8


def test_flushed_rows_exit_at_a_deeper_exit_point():
    """Rows parked at exit 1 run on in a flush and meet exit 3: the confident ones exit there."""
    cost = ProportionalCost()
    s, plan = decoding(cost, 4, exits=(1, 3))
    for r in list(s.running):
        s.running.remove(r)
        s.buffer.park(r, 1, 0)
    flush = s.schedule(0.0)
    assert flush is not None and flush.kind == "flush" and flush.flush_layer == 1
    assert flush.flush_token_index == [10] * 4
    ex = SimExecutor(s, cost, Fixed({0: [0.1] * 4, 1: [0.9, 0.9, 0.1, 0.1]}))
    res = ex.execute(flush, 0.0)
    assert res.outcome.reach[0].tolist() == [3, 3, 4, 4]
    # Priced by hand: 4 rows through layer [1, 3), 2 rows through [3, 4), the overhead.
    assert np.isclose(res.durations_s[0], 1e-4 * (4 * 2 + 2 * 1) + 1e-5)
    s.complete(flush, res, 0.0)
    assert [s.live[i].num_early_exits for i in range(4)] == [1, 1, 0, 0]
    assert [s.live[i].sum_exit_layer for i in range(4)] == [3, 3, 4, 4]
    assert not s.buffer and len(s.running) == 4


def test_no_parking_right_after_a_preemption():
    """Under KV pressure a parked row holds its blocks without producing: drex parks nothing for
    park_calm_steps after a preemption (here it holds: continuing the lone stayer alone saves nothing)."""
    wants = [True] * 7 + [False]
    s, plan = decoding(WeightBound(), 8)
    s.decider.no_park_until = 1  # as a preemption at step 1 - park_calm_steps would leave it
    conf = np.where(np.array(wants), 0.9, 0.1)[None, :]
    acts = s.decide_at_exit(plan, 0, conf, np.ones_like(conf, dtype=bool), 0.0).actions[0]
    assert acts.tolist() == [CONTINUE] * 8
    s.running.append(s.running.pop())  # a preemption sets it from the scheduler's step and the setting
    s._preempt(protect=s.running[0])
    assert s.decider.no_park_until == s.step_id + s.cfg.park_calm_steps


def test_park_on_a_flush_at_the_next_step():
    """Weight reads only, seven rows already parked at the exit: a new stayer parked under the flush rules would
    wait 16 steps (too many lost steps), but a flush at the very next step of the eight reads the deep weights
    once for them all. drex parks it and the buffer flushes before the next decode step."""
    cost = WeightBound()
    s, plan = decoding(cost, 8)
    for i in range(8, 15):  # seven parked rows, not drainable into a decode step that parks
        r = Request(i, 0.0, 8, 50)
        r.num_prefilled, r.prefill_target, r.num_generated, r.last_token_s = 8, 8, 10, 0.0
        s.live[i] = r
        s.buffer.park(r, 2, 0)
    wants = [True] * 7 + [False]
    conf = np.where(np.array(wants), 0.9, 0.1)
    assert s.buffer.flush_in(s.buffer[2], 1) > 1  # the rules alone would keep them waiting
    ex = SimExecutor(s, cost, Fixed({0: conf}))
    res = ex.execute(plan, 0.0)
    assert res.outcome.buffered[0].tolist() == [False] * 7 + [True]
    s.complete(plan, res, 0.0)
    flush = s.schedule(float(res.durations_s.sum()))
    assert flush is not None and flush.kind == "flush" and sorted(flush.flush_ids) == [7, *range(8, 15)]
