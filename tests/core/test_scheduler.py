"""The scheduler, driven step by step (no SimPy) so its state can be checked between steps: the
rebatching buffer, KV blocks, admission limits and preemption, on random small workloads."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import drex.sim.simulator as simulator
import numpy as np

from drex.core.request import Request, RequestStatus
from drex.sim.executor import SimExecutor

WAITING, RUNNING, BUFFERED, FINISHED = (RequestStatus.WAITING, RequestStatus.RUNNING, RequestStatus.BUFFERED,
                                       RequestStatus.FINISHED)
from simkit import POLICIES, drive, make_scheduler, poisson_workload, sim_config


class Invariants:
    """Checks run after every completed plan; also counts rows parked and rows brought back."""

    def __init__(self) -> None:
        self.parked = self.returned = self.steps = self.drains = self.flushes = 0
        # Per request, what the executor's outcomes say happened to its tokens.
        self.early, self.forced, self.stayed = Counter(), Counter(), Counter()
        self.max_rows = 0

    def __call__(self, sched, plan, result) -> None:
        self.steps += result.num_steps
        running = {r.request_id for r in sched.running}
        buffered = [r for rows in sched.buffer.values() for r in rows]
        buffered_ids = {r.request_id for r in buffered}
        waiting = {r.request_id for r in sched.waiting}
        assert len(running) == len(sched.running) and len(buffered_ids) == len(buffered)
        assert not running & buffered_ids, "a row is both running and parked"
        assert not (running | buffered_ids) & waiting
        assert set(sched.live) == running | buffered_ids | waiting, "a live request is nowhere, or a dead one lingers"
        assert all(r.status == RUNNING for r in sched.running)
        assert all(r.status == WAITING for r in sched.waiting)
        for layer, rows in sched.buffer.items():
            assert rows, "an empty buffer entry"
            assert layer in sched.exits
            assert all(r.status == BUFFERED and r.buffer_layer == layer for r in rows)
            assert [r.buffered_step for r in rows] == sorted(r.buffered_step for r in rows), "buffer not oldest first"
        assert len(sched.running) + len(buffered) <= sched.cfg.max_batch_size
        # KV blocks: only admitted requests hold them, each block once, enough for what is cached.
        owners = set(sched.blocks.tables)
        assert owners <= running | buffered_ids
        blocks = [b for t in sched.blocks.tables.values() for b in t]
        assert len(blocks) == len(set(blocks)) == sched.blocks.num_used
        for r in list(sched.running) + buffered:
            cached = r.num_prefilled if r.in_prefill else r.context_len + (r.status == BUFFERED)
            assert sched.blocks.capacity_tokens(r.request_id) >= cached
        for r in sched.finished:
            assert r.request_id not in sched.blocks.tables
            assert r.status in (FINISHED, "rejected")
        for r in sched.live.values():
            assert 0 <= r.num_generated < r.output_tokens
        out = result.outcome
        if out is not None and not getattr(out, "is_plain", False):  # a plain outcome: all rows at full depth
            self.parked += int(out.buffered[-1].sum())
            early = (out.exited & ~out.buffered).sum(axis=0)
            forced, stayed = out.forced.sum(axis=0), out.stayed.sum(axis=0)
            for j, rid in enumerate(plan.flush_ids if plan.kind == "flush" else plan.decode_ids):
                self.early[rid] += int(early[j])
                self.forced[rid] += int(forced[j])
                self.stayed[rid] += int(stayed[j])
            assert not out.buffered[:-1].any(), "a run of steps must end at the step that parks rows"
            if out.drain_layer >= 0:
                self.returned += len(plan.drain_ids)
                self.drains += 1
                # Drained rows ran the deep layers with the batch: they emitted and left the buffer.
                assert buffered_ids.isdisjoint(plan.drain_ids), (
                    f"step {plan.step_id}: rows {plan.drain_ids} drained at layer {out.drain_layer} "
                    f"but are still parked")
        if plan.kind == "flush":
            self.returned += len(plan.flush_ids)
            self.flushes += 1
            assert buffered_ids.isdisjoint(plan.flush_ids)
        self.max_rows = max(self.max_rows, len(plan.decode_ids))


def finish_checks(sched, reqs, inv: Invariants) -> None:
    assert not sched.has_work() and not sched.buffer and not sched.live
    assert sched.num_buffered == 0
    assert sched.blocks.num_free == sched.blocks.num_blocks and not sched.blocks.tables
    for r in reqs:
        assert r.status in (FINISHED, "rejected"), r
        if r.status == FINISHED:
            assert r.num_generated == r.output_tokens
            assert r.arrival_s <= r.first_token_s <= r.last_token_s == r.finish_s
        else:
            assert r.reject_reason
    assert inv.parked == inv.returned, "a parked row never came back (or came back twice)"
    # The requests' exit counters are exactly what the outcomes recorded, token by token.
    for r in reqs:
        assert (r.num_early_exits, r.num_involuntary_exits, r.num_involuntary_stays) == \
            (inv.early[r.request_id], inv.forced[r.request_id], inv.stayed[r.request_id]), (
                f"request {r.request_id}: counters (early, forced, stayed) disagree with the step outcomes")
    assert sched.num_rebatches == 0 or sched.num_flushes + sched.num_drains > 0
    assert (sched.num_drains, sched.num_flushes) == (inv.drains, inv.flushes)
    assert sched.num_preemptions == sum(r.num_preemptions for r in reqs)
    assert len(sched.log) == inv.steps


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 25))
    return dict(
        policy=draw(st.sampled_from(POLICIES)),
        n=n,
        rate=draw(st.sampled_from([20.0, 200.0, 2000.0])),
        prompt=(1, draw(st.integers(1, 80))),
        output=(1, draw(st.integers(1, 40))),
        seed=draw(st.integers(0, 2**16)),
        exits=draw(st.sampled_from([(1,), (2,), (3,), (1, 3), (1, 2, 3)])),
        threshold=draw(st.sampled_from([0.2, 0.5, 0.8])),
        confidence=draw(st.sampled_from(["beta:2,2", "beta:4,2", "beta:1,1", "beta"])),
        max_batch_size=draw(st.integers(1, 10)),
        chunk_size=draw(st.sampled_from([8, 32, 128])),
        block_size=draw(st.sampled_from([4, 16])),
        num_blocks=draw(st.sampled_from([8, 16, 40, 4096])),
        inline_drain=draw(st.booleans()),
        profitability=draw(st.sampled_from(["costmodel", "art"])),
        flush_max_wait_steps=draw(st.integers(1, 20)),
        max_lookahead_steps=draw(st.sampled_from([1, 4, 64])),
    )


def run_scenario(sc):
    sched = make_scheduler(sc["policy"], exits=sc["exits"], threshold=sc["threshold"], num_blocks=sc["num_blocks"],
                           max_batch_size=sc["max_batch_size"], chunk_size=sc["chunk_size"],
                           block_size=sc["block_size"], inline_drain=sc["inline_drain"],
                           profitability=sc["profitability"], flush_max_wait_steps=sc["flush_max_wait_steps"],
                           max_lookahead_steps=sc["max_lookahead_steps"])
    work = poisson_workload(sc["n"], sc["rate"], sc["prompt"], sc["output"], sc["seed"])
    inv = Invariants()
    reqs = drive(sched, work, confidence=sc["confidence"], seed=sc["seed"], check=inv)
    return sched, reqs, inv


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenarios())
def test_scheduler_invariants_on_random_workloads(sc):
    sched, reqs, inv = run_scenario(sc)
    finish_checks(sched, reqs, inv)
    if sc["policy"] in ("off", "lazy", "latency-only", "drex"):
        assert all(r.num_involuntary_exits == 0 for r in reqs)
    if sc["policy"] != "drex":
        assert inv.parked == 0 and sched.num_rebatches == 0


DRAIN_IN_A_QUIET_STEP = {  # found by hypothesis: an inline drain in a step where nobody exits or parks
    'policy': 'drex', 'n': 12, 'rate': 2000.0, 'prompt': (1, 1), 'output': (1, 4), 'seed': 1, 'exits': (1,),
    'threshold': 0.8, 'confidence': 'beta:4,2', 'max_batch_size': 6, 'chunk_size': 8, 'block_size': 4,
    'num_blocks': 4096, 'inline_drain': True, 'profitability': 'art', 'flush_max_wait_steps': 2,
    'max_lookahead_steps': 1}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(sc=DRAIN_IN_A_QUIET_STEP)
@given(sc=scenarios().map(lambda s: s | dict(policy="drex", confidence="beta:4,2", n=max(s["n"], 12),
                                               rate=2000.0, max_batch_size=max(s["max_batch_size"], 6),
                                               num_blocks=4096)))
@pytest.mark.slow
def test_drex_buffer_invariants(sc):
    """Under drex with confident exits and full batches the buffer is used; it always empties."""
    sched, reqs, inv = run_scenario(sc)
    finish_checks(sched, reqs, inv)
    assert all(r.num_involuntary_exits == 0 for r in reqs)
    assert sched.num_rebatches <= inv.parked


def test_stays_of_parked_tokens_are_counted():
    """Three exit points, one step at a time: a token held back at one exit and parked at the next
    was an involuntary stay, whether or not the same run of steps emitted other tokens."""
    # The knobs rule parks (drex's own rarely does on the tiny model with several exits): buffer mechanics.
    sched = make_scheduler("drex", exits=(1, 2, 3), threshold=0.5, max_batch_size=12, max_lookahead_steps=1, profitability="knobs", max_tpot_inflation=float("inf"))
    inv = Invariants()
    reqs = drive(sched, poisson_workload(100, 250.0, (4, 48), (4, 60), seed=21), confidence="beta:4,2/4,2/4,2",
                 check=inv)
    assert inv.parked > 0 and sum(inv.stayed.values()) > 0
    finish_checks(sched, reqs, inv)


def test_drex_buffer_is_exercised():
    """A fixed scenario where parking certainly happens, so the invariants above are not vacuous."""
    sched = make_scheduler("drex", exits=(1, 2), threshold=0.5, max_batch_size=16, chunk_size=128, profitability="knobs", max_tpot_inflation=float("inf"))
    inv = Invariants()
    reqs = drive(sched, poisson_workload(60, 2000.0, (4, 32), (8, 40), seed=3), confidence="beta:4,2/5,2",
                 check=inv)
    finish_checks(sched, reqs, inv)
    assert sched.num_rebatches > 0 and inv.parked > sched.num_rebatches
    assert inv.max_rows >= 8


# --- admission and rejection -----------------------------------------------------------------------


def test_rejects_what_can_never_fit_with_a_reason():
    sched = make_scheduler("drex", num_blocks=4, block_size=16, max_model_len=100)
    work = poisson_workload(3, 10.0, (10, 10), (5, 5))
    from drex.core.request import Request

    too_long = Request(10, 0.0, 90, 20)
    assert not sched.add_request(too_long, 0.0)
    assert too_long.status == "rejected" and "max_model_len=100" in too_long.reject_reason
    too_big = Request(11, 0.0, 60, 20)  # 80 tokens = 5 blocks > 4 on the device
    assert not sched.add_request(too_big, 0.0)
    assert too_big.status == "rejected" and "KV blocks" in too_big.reject_reason
    assert sched.finished == [too_long, too_big] and not sched.live and not sched.waiting
    reqs = drive(sched, work)
    assert all(r.status == FINISHED for r in reqs)


def test_admission_respects_max_batch_size():
    inv = Invariants()
    sched = make_scheduler("eager", max_batch_size=3)
    reqs = drive(sched, poisson_workload(30, 5000.0, (4, 16), (4, 20), seed=1), check=inv)
    finish_checks(sched, reqs, inv)
    assert inv.max_rows == 3


# --- preemption under KV pressure ------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_preemption_under_kv_pressure_loses_nothing(policy):
    work = poisson_workload(40, rate=300, prompt=(16, 64), output=(8, 48), seed=4)
    cfg = sim_config(policy, exits=(1, 3), confidence="beta:4,2/5,2", num_kv_blocks=24, max_batch_size=8)
    r = simulator.simulate(cfg, work)
    q = r.requests
    assert r.summary["num_preemptions"] > 0
    assert q.preemptions.sum() == r.summary["num_preemptions"]
    assert r.summary["mean_preemptions_per_request"] == pytest.approx(q.preemptions.mean())
    assert r.summary["max_preemptions_per_request"] == q.preemptions.max() > 0
    assert (q.status == "finished").all() and r.summary["completed"] == len(work)
    assert (q.generated_tokens == q.output_tokens).all()
    assert r.summary["kv_peak_blocks"] <= 24 and r.summary["kv_total_blocks"] == 24
    # Preempted requests finish later than they would have, never with fewer tokens.
    assert r.summary["total_output_tokens"] == sum(w.output_tokens for w in work)


def test_preemption_recomputes_prompt_and_generated_tokens():
    """Driven by hand: a preempted request re-prefills its prompt plus what it had generated."""
    inv = Invariants()
    sched = make_scheduler("off", num_blocks=10, block_size=4, max_batch_size=4, chunk_size=16)
    seen = Counter()
    orig = sched._preempt

    def spy(protect):
        before = {r.request_id: r.num_generated for r in sched.running}
        orig(protect)
        victim = sched.waiting[0]
        seen[victim.request_id] += 1
        assert victim.num_prefilled == 0 and victim.num_generated == before[victim.request_id]

    sched._preempt = spy

    def check(sched, plan, result):
        inv(sched, plan, result)
        for r in sched.running:  # a readmitted request prefills its prompt and every token it had made
            if r.num_preemptions and r.in_prefill:
                assert r.prefill_target == r.prompt_tokens + r.num_generated

    reqs = drive(sched, poisson_workload(12, 1000.0, (6, 12), (6, 16), seed=2), check=check)
    finish_checks(sched, reqs, inv)
    assert sum(seen.values()) > 0
    assert all(r.num_preemptions == seen[r.request_id] for r in reqs)


# --- inter-token latency, admission headroom, runs cut short ---------------------------------------------


def test_itl_counts_every_gap_a_client_sees_preemptions_included():
    """One ITL per token after the first, and they add up to first -> last token of every request."""
    work = poisson_workload(40, rate=300, prompt=(16, 64), output=(8, 48), seed=4)
    sched = make_scheduler("off", num_blocks=24, max_batch_size=8)
    reqs = drive(sched, work)
    assert sum(r.num_preemptions for r in reqs) > 0
    itl = np.concatenate(sched.itl_s)
    assert len(itl) == sum(r.num_generated - 1 for r in reqs)
    assert itl.sum() == pytest.approx(sum(r.last_token_s - r.first_token_s for r in reqs), rel=1e-9)


def test_admission_keeps_the_running_rows_next_blocks_free():
    """A waiting request is not admitted into blocks the running decode rows need for their next token."""
    sched = make_scheduler("off", num_blocks=12, block_size=4, max_batch_size=4, chunk_size=16, kv_watermark=0.0)
    a = Request(0, 0.0, 8, 20)
    sched.add_request(a, 0.0)
    plan = sched.schedule(0.0)  # a's prompt: 2 blocks
    sched.complete(plan, SimExecutor(sched, sched.cost, None).execute(plan, 0.0), 0.0)
    assert a.num_generated == 1 and a.kv_tokens == 8
    hog = sched.blocks.num_free - 1  # leave exactly the block a's next token needs
    sched.blocks.allocate(999, hog * 4)
    b = Request(1, 0.0, 4, 4)
    sched.add_request(b, 0.0)
    plan = sched.schedule(0.0)
    assert b.status == RequestStatus.WAITING and plan.decode_ids == [0] and not plan.prefill
    assert sched.num_preemptions == 0


def test_a_run_cut_short_gives_back_the_blocks_taken_ahead():
    sched = make_scheduler("off", num_blocks=64, block_size=4, max_batch_size=2, chunk_size=16)
    r = Request(0, 0.0, 4, 40)
    sched.add_request(r, 0.0)
    ex = SimExecutor(sched, sched.cost, None)
    plan = sched.schedule(0.0)
    sched.complete(plan, ex.execute(plan, 0.0), 0.0)
    plan = sched.schedule(0.0)
    assert plan.kind == "decode" and plan.num_steps > 8 and r.kv_tokens >= 4 + plan.num_steps
    result = ex.execute(plan, 0.0)
    result.durations_s = result.durations_s[:3]  # an arrival cut the run after 3 steps
    sched.complete(plan, result, 0.0)
    # Step by step it would hold the slots of its 3 decode steps: prompt + 1 + 3 - 1 tokens.
    assert r.kv_tokens == sched.blocks.blocks_for(4 + 3) * 4 == sched.blocks.capacity_tokens(0)
