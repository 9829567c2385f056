"""Admission rules (core/admission.py): first-chunk (the default) and vLLM's whole-prompt rule."""

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


def test_whole_prompt_admission_does_not_thrash():
    """The same KV-bound workload: first-chunk admission preempts over and over (358 times for 40 requests
    here), vLLM's rule a few times; every request finishes under both."""
    preemptions = {}
    for rule in ("first-chunk", "vllm"):
        work = [TraceRequest(i, 0.01 * i, 200 + 37 * (i % 5), 40 + 13 * (i % 7)) for i in range(40)]
        sched = make_scheduler("off", num_blocks=80, admission=rule, chunk_size=64, max_batch_size=16)
        done = drive(sched, work)
        assert len(done) == 40 and all(r.status.value == "finished" for r in done)
        preemptions[rule] = sched.num_preemptions
    assert preemptions["vllm"] <= len(work) < preemptions["first-chunk"]


def test_an_unknown_rule_names_the_flag():
    with pytest.raises(ValueError, match="--admission"):
        make_scheduler("off", admission="sglang")
