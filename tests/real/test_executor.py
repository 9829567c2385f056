"""The real executor under the shared scheduler: exact tokens, rebatching that never changes a token."""

import numpy as np
import pytest
import torch

from drex.config import EEConfig, SchedulerConfig
from drex.models import get_model
from drex.real.generate import greedy_decode
from drex.real.model import EEModel
from drex.costmodel.proportional import ProportionalCost  # every split and drain pays
from drex.real.run import RunConfig, run_real
from drex.settings import RunSettings
from drex.traces import TraceRequest

pytestmark = pytest.mark.slow  # seconds each: the `not slow` subset stays under 20 s

TINY = get_model("tiny")
EE = EEConfig(exits=(1, 2), threshold=0.3)
# One exit point for the exactness of rebatching: a parked row resumes at its exit and runs to the top
# (flush or inline drain), so with several exits it would skip the deeper ones a lone request reaches.
EE_ONE = EEConfig(exits=(2,), threshold=0.3)


@pytest.fixture(scope="module")
def model():
    return EEModel.random(TINY, seed=7, exit_layers=EE.exits)


def _workload(n, seed, max_prompt=70, max_out=24, spread_s=0.0):
    rng = np.random.default_rng(seed)
    reqs = [TraceRequest(i, float(spread_s * i / n), int(rng.integers(1, max_prompt)), int(rng.integers(1, max_out)))
            for i in range(n)]
    prompts = {r.request_id: rng.integers(0, TINY.vocab_size, r.prompt_tokens).tolist() for r in reqs}
    return reqs, prompts


def _run(model, policy, workload, prompts, kv_fill="copy", cost=None, ee=EE, **sched):
    kw = dict(policy=policy, max_batch_size=64, chunk_size=48, block_size=8, max_model_len=256) | sched
    cfg = RunConfig(RunSettings(model="tiny", device="cpu", ee=ee, scheduler=SchedulerConfig(**kw),
                              cost_model="roofline"), kv_fill=kv_fill)
    return run_real(cfg, workload, prompts=prompts, model=model, cost=cost)


def test_policy_off_emits_exactly_hf_generate(model, tmp_path):
    transformers = pytest.importorskip("transformers")
    workload, prompts = _workload(12, seed=1, spread_s=0.05)  # arrivals while others decode: mixed steps
    res = _run(model, "off", workload, prompts)
    assert res.summary["completed"] == 12 and res.summary["early_exit_fraction"] == 0
    assert (res.steps.kind == "mixed").any()
    model.save_pretrained(tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    for r in workload:
        with torch.no_grad():
            ids = torch.tensor([prompts[r.request_id]])
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=r.output_tokens,
                              do_sample=False, eos_token_id=None, pad_token_id=0)
        assert res.executor.outputs[r.request_id] == ref[0, r.prompt_tokens:].tolist(), r


EE_THREE = EEConfig(exits=(1, 2, 3), threshold=0.3)


@pytest.fixture(scope="module")
def model3():
    return EEModel.random(TINY, seed=7, exit_layers=EE_THREE.exits)


# Parking forced (knobs: split whenever a row wants to exit, unbounded TPOT inflation) so that rebatching,
# flushes and drains all happen; "go" lets the staying rows continue at once instead.
REBATCH = dict(profitability="knobs", split_fraction=0.0, max_tpot_inflation=float("inf"))


@pytest.mark.parametrize("kv_fill", ["copy", "recompute"])
@pytest.mark.parametrize("exits", ["one", "three", "three-go"])
def test_rebatching_never_changes_a_token(model, model3, kv_fill, exits):
    """drex emits exactly the tokens and exit layers of decoding each request alone."""
    workload, prompts = _workload(36, seed=2)
    ee, m = (EE_ONE, model) if exits == "one" else (EE_THREE, model3)
    sched = dict(REBATCH, split_continue=True, split_fraction=0.0) if exits == "three-go" else REBATCH
    res = _run(m, "drex", workload, prompts, kv_fill=kv_fill, cost=ProportionalCost(), ee=ee, **sched)
    s = res.summary
    assert s["completed"] == 36
    if exits == "three-go":
        assert s["num_rebatches"] == 0
    else:
        assert s["num_rebatches"] > 0 and s["num_flushes"] > 0
        # Drains only from the deepest exit point; rows parked shallower meet the deeper ones in a flush.
        assert s["num_drains"] > 0 or exits == "three"
    assert s["involuntary_exits"] == 0 and s["involuntary_stays"] == 0  # splits always pay here
    assert 0.05 < s["early_exit_fraction"] < 0.9
    layers = set()
    for r in workload:
        alone = greedy_decode(m, [prompts[r.request_id]], r.output_tokens, ee=ee, kv_fill=kv_fill, block_size=8)
        assert res.executor.outputs[r.request_id] == alone.tokens[0], r
        assert res.executor.exit_layers[r.request_id] == alone.exit_layers[0], r
        layers |= set(alone.exit_layers[0])
    assert layers >= set(ee.exits), "every exit point was used"
    # Rebatching moved hidden states only; KV moved only by the state-copy fill.
    moved = s["copied_bytes_by_kind"]
    if exits != "three-go":
        assert moved["buffer_park"] > 0 and moved["buffer_park"] == moved["buffer_fetch"]
    assert (moved.get("kv_copy", 0) > 0) == (kv_fill == "copy")
    assert (s["recompute_token_layers"] > 0) == (kv_fill == "recompute")


@pytest.mark.parametrize("policy", ["eager", "average", "lazy", "latency-only", "drex"])
def test_policies_report_involuntary_exits(model, policy):
    workload, prompts = _workload(16, seed=3)
    res = _run(model, policy, workload, prompts)
    s, req = res.summary, res.requests
    assert s["completed"] == 16 and s["involuntary_exits"] == req.involuntary_exits.sum()
    if policy in ("eager", "average"):
        assert s["involuntary_exits"] > 0
    else:
        assert s["involuntary_exits"] == 0
    if policy == "lazy":
        assert s["involuntary_stays"] > 0
    if policy == "latency-only":  # tokens leave early, yet every row runs full depth: no KV to fill
        assert s["early_exit_fraction"] > 0 and s["kv_copy_bytes"] == 0


def test_learned_estimator_exits_exactly_with_one_head_pass_per_step(monkeypatch):
    import drex.real.run

    learned = EEModel.random(TINY, seed=11, exit_layers=(2,))
    head = learned.add_exit_head(2, norm=True, lm_head=False, adapter_rank=8, estimator_width=16)
    with torch.no_grad():
        head.adapter.up.weight.normal_(std=0.1)  # not the identity: the exit token goes through the adapter
    ee = EEConfig(exits=(2,), threshold=0.5, metric="learned")
    calls = []  # (exit layer, rows) of every LM-head pass
    plain = learned.head_logits

    def counting(x, e):
        calls.append((e, x.shape[0]))
        return plain(x, e)

    workload, prompts = _workload(24, seed=5)
    monkeypatch.setattr(drex.real.run, "warm_up", lambda ex: None)  # its reference decode would be counted
    learned.head_logits = counting
    res = _run(learned, "drex", workload, prompts, cost=ProportionalCost(), ee=ee)
    learned.head_logits = plain
    s = res.summary
    assert s["completed"] == 24 and 0.05 < s["early_exit_fraction"] < 0.95
    # One shared-head pass per step, at the top, over exactly the rows that got a token: never per exit.
    assert {e for e, _ in calls} == {TINY.num_layers}
    assert sum(n for _, n in calls) == sum(r.output_tokens for r in workload)
    for r in workload:
        alone = greedy_decode(learned, [prompts[r.request_id]], r.output_tokens, ee=ee, block_size=8)
        assert res.executor.outputs[r.request_id] == alone.tokens[0], r
        assert res.executor.exit_layers[r.request_id] == alone.exit_layers[0], r


def test_learned_metric_without_estimator_is_a_clear_error(model):
    workload, prompts = _workload(2, seed=6)
    with pytest.raises(ValueError, match="trained confidence estimator"):
        _run(model, "drex", workload, prompts, ee=EEConfig(exits=(2,), threshold=0.5, metric="learned"))


def test_learned_exits_in_a_flush_that_meets_a_deeper_exit():
    """Issue 26 item 1: parked rows flushed through a deeper learned exit ask that exit's estimator (the
    flush used to ask ``confidence(logits, 'learned')`` and crashed with a bad-input error)."""
    learned = EEModel.random(TINY, seed=13, exit_layers=EE_THREE.exits)
    for e in EE_THREE.exits:
        head = learned.add_exit_head(e, norm=True, lm_head=False, adapter_rank=8, estimator_width=16)
        with torch.no_grad():
            head.adapter.up.weight.normal_(std=0.1)
    ee = EEConfig(exits=EE_THREE.exits, threshold=0.5, metric="learned")
    workload, prompts = _workload(36, seed=2)
    res = _run(learned, "drex", workload, prompts, cost=ProportionalCost(), ee=ee, **REBATCH)
    s = res.summary
    assert s["completed"] == 36 and s["num_flushes"] > 0 and s["involuntary_exits"] == 0
    flushed = res.steps[res.steps.kind == "flush"]
    assert (flushed.layer_start < max(EE_THREE.exits)).any()  # a flush from a shallow exit meets a deeper one
    for r in workload:
        alone = greedy_decode(learned, [prompts[r.request_id]], r.output_tokens, ee=ee, block_size=8)
        assert res.executor.outputs[r.request_id] == alone.tokens[0], r
        assert res.executor.exit_layers[r.request_id] == alone.exit_layers[0], r
