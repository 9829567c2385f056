"""Admission rules (core/admission.py): reserve (the default), vLLM's whole-prompt rule, first-chunk, oracle."""

from __future__ import annotations

import pytest

from drex.core.request import Request
from drex.traces import TraceRequest
from simkit import drive, make_scheduler


def _two_long_prompts(rule: str):
    # 40 blocks of 16 tokens; two prompts of 300 tokens (19 blocks each) and a third one: the whole prompts
    # of two fit with the watermark (0 blocks at 1% of 40), a third does not.
    sched = make_scheduler("off", num_blocks=40, admission=rule, chunk_size=64, max_batch_size=8)
    reqs = [Request(i, 0.0, 300, 4) for i in range(3)]
    for r in reqs:
        sched.add_request(r, 0.0)
    sched.schedule(0.0)
    return sched, reqs


def test_vllm_admits_only_whole_prompts_that_fit_and_takes_their_blocks_at_once():
    sched, reqs = _two_long_prompts("vllm")
    assert [r.request_id for r in sched.running] == [0, 1] and [r.request_id for r in sched.waiting] == [2]
    assert all(len(sched.blocks.tables[r.request_id]) == 19 for r in sched.running)


def test_first_chunk_admits_on_the_first_chunk():
    sched, reqs = _two_long_prompts("first-chunk")
    assert [r.request_id for r in sched.running] == [0, 1, 2]


def _kv_bound(rule, policy="off"):
    work = [TraceRequest(i, 0.01 * i, 200 + 37 * (i % 5), 40 + 13 * (i % 7)) for i in range(40)]
    sched = make_scheduler(policy, num_blocks=80, admission=rule, chunk_size=64, max_batch_size=16)
    done = drive(sched, work)
    assert len(done) == 40 and all(r.status.value == "finished" for r in done)
    return sched


@pytest.mark.slow  # four KV-bound runs
def test_admission_that_does_not_thrash():
    """The same KV-bound workload: first-chunk admission preempts over and over (358 times for 40 requests
    here), vLLM's rule and reserve at most once a request, the oracle never; every request finishes."""
    preemptions = {rule: _kv_bound(rule).num_preemptions for rule in ("first-chunk", "vllm", "reserve", "oracle")}
    assert preemptions["oracle"] == 0
    assert max(preemptions["vllm"], preemptions["reserve"]) <= 40 < preemptions["first-chunk"]


def test_reserve_keeps_room_for_growth_and_learns_from_preemptions():
    from drex.core.admission import RAISE, RATIO_INIT, Admission

    adm = Admission("reserve", watermark_blocks=0, block_size=16, chunk_size=64)
    r = Request(0, 0.0, 100, 500)
    r.num_generated, r.kv_tokens = 10, 112  # 7 blocks held for 110 tokens
    before = adm.reserved_blocks(r)  # ratio 0.5 of (256 expected - 10 generated) = 123 tokens more
    assert before == -(-(110 + 123) // 16) - 7
    adm.preempted()
    assert adm.ratio == RATIO_INIT + RAISE and adm.reserved_blocks(r) > before
    adm.stepped(10_000)
    assert adm.ratio == 0.1
    for _ in range(99):
        adm.finished(10)  # outputs turn out short: the expected length falls toward them
    assert adm.reserved_blocks(r) <= 0


def test_oracle_is_refused_by_the_real_backend(tmp_path, capsys):
    from drex.cli import main

    assert main(["run", "--admission", "oracle", "--num-requests", "2", "--out", str(tmp_path / "o")]) == 2
    assert "--admission oracle" in capsys.readouterr().err


def test_an_unknown_rule_names_the_flag():
    with pytest.raises(ValueError, match="--admission"):
        make_scheduler("off", admission="sglang")


@pytest.mark.slow  # a KV-bound drex run, watched step by step
def test_parking_counts_the_wait_of_a_preemption_against_the_tpot_bound():
    """Issue 24 item 3: a row's time waiting after a preemption counts against --max-tpot-inflation, so drex
    does not park a row that preemption has already delayed past the bound: whenever a row parks, the steps
    it has waited so far, parked or preempted, are within (x - 1) times the tokens it has (one step of slack)."""
    from collections import Counter

    parked, waited, late = Counter(), Counter(), {}
    before: set[int] = set()

    def watch(sched, plan, result):
        nonlocal before
        now = {r.request_id: r for rows in sched.buffer.values() for r in rows}
        for rid, r in now.items():
            if rid not in before and parked[rid] + waited[rid] > 0.25 * r.num_generated + 1:
                late[rid] = (parked[rid], waited[rid], r.num_generated)
            parked[rid] += result.num_steps
        for r in sched.waiting:
            if r.num_generated:  # preempted, waiting to be re-prefilled
                waited[r.request_id] += result.num_steps
        before = set(now)

    work = [TraceRequest(i, 0.002 * i, 60 + 29 * (i % 5), 60 + 17 * (i % 7)) for i in range(60)]
    sched = make_scheduler("drex", num_blocks=90, admission="first-chunk", chunk_size=64, max_batch_size=24,
                           profitability="knobs", split_fraction=0.0, max_tpot_inflation=1.25)
    drive(sched, work, check=watch)
    assert sched.num_preemptions > 20 and sum(parked.values()) > 0 and sum(waited.values()) > 0  # all happen here
    assert not late, late  # rows parked although their waits had used the bound up
