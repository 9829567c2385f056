"""Paged KV cache: chunked prefill, block accounting, KV fill by state copying and by recompute."""

import pytest
import torch

from drex.config import EEConfig
from drex.models import get_model
from drex.real.buffer import CopyMeter, HiddenPool
from drex.real.generate import greedy_decode
from drex.real.kvcache import PagedKVCache
from drex.real.model import EEModel

TINY = get_model("tiny")


@pytest.fixture(scope="module")
def model():
    return EEModel.random(TINY, seed=3, exit_layers=(1, 2))


@torch.inference_mode()
def test_chunked_prefill_equals_one_shot(model):
    ids = torch.randint(TINY.vocab_size, (37,), generator=torch.Generator().manual_seed(0))
    one = PagedKVCache(TINY, num_blocks=8, block_size=8, max_rows=2)
    one.reserve(1, 37)
    h_one = model.run_layers(model.embed(ids), one.meta([1], [0], [37]), one, 0, 4)
    chunked = PagedKVCache(TINY, num_blocks=8, block_size=8, max_rows=2)
    chunked.reserve(0, 37)
    parts = []
    for start, n in ((0, 13), (13, 16), (29, 8)):  # chunk boundaries inside blocks
        meta = chunked.meta([0], [start], [n])
        parts.append(model.run_layers(model.embed(ids[start:start + n]), meta, chunked, 0, 4))
    torch.testing.assert_close(torch.cat(parts), h_one, atol=1e-5, rtol=1e-5)
    slots_one, slots_chunked = one.slots([1] * 37, range(37)), chunked.slots([0] * 37, range(37))
    torch.testing.assert_close(chunked.k[:, slots_chunked], one.k[:, slots_one], atol=1e-5, rtol=1e-5)


def test_block_accounting_and_errors():
    cache = PagedKVCache(TINY, num_blocks=4, block_size=4, max_rows=3, max_blocks_per_row=3)
    cache.reserve(0, 5)
    assert cache.reserved_tokens(0) == 8 and cache.num_free_blocks == 2
    with pytest.raises(ValueError, match="reserved"):
        cache.meta([0], [6], [3])
    with pytest.raises(ValueError, match="max_blocks_per_row"):
        cache.reserve(1, 13)
    cache.reserve(1, 8)
    with pytest.raises(MemoryError, match="KV cache full"):
        cache.reserve(2, 1)
    cache.release(0)
    cache.reserve(2, 1)
    assert cache.num_free_blocks == 1
    meta = cache.meta([1, 2], [3, 0], [1, 1])
    assert meta.all_decode and meta.slot_mapping.tolist() == cache.slots([1, 2], [3, 0]).tolist()


def test_copy_fill_writes_every_skipped_layer_and_reports_bytes():
    cache = PagedKVCache(TINY, num_blocks=4, block_size=4, max_rows=2)
    cache.reserve(0, 8)
    cache.reserve(1, 8)
    cache.k.normal_()
    cache.v.normal_()
    before = cache.k.clone()
    copied = cache.copy_fill([0, 1], [5, 2], [1, 3])
    assert copied == (3 + 1) * cache.bytes_per_token_layer
    s0, s1 = cache.slots([0, 1], [5, 2]).tolist()
    for layer in range(1, 4):
        assert torch.equal(cache.k[layer, s0], before[0, s0])
    assert torch.equal(cache.k[3, s1], before[2, s1]) and torch.equal(cache.k[:3, s1], before[:3, s1])
    untouched = [s for s in range(16) if s not in (s0, s1)]
    assert torch.equal(cache.k[:, untouched], before[:, untouched])


def _dense_exit_tokens(model, prompt, decoded_tokens, exit_layers):
    """What a full causal pass over prompt + outputs predicts at each output's exit layer."""
    seq = torch.tensor([prompt + decoded_tokens[:-1]])
    logits = model.forward_train(seq)
    return [int(logits[e][0, len(prompt) - 1 + i].argmax()) for i, e in enumerate(exit_layers)]


@torch.inference_mode()
def test_recompute_fill_gives_the_true_kv(model):
    """With recompute, every token equals a full-depth pass's prediction at its exit layer."""
    ee = EEConfig(exits=(1, 2), threshold=0.3)
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(TINY.vocab_size, (n,), generator=gen).tolist() for n in (4, 11, 23)]
    out = greedy_decode(model, prompts, 24, ee=ee, kv_fill="recompute", block_size=4)
    exited = sum(e < 4 for layers in out.exit_layers for e in layers)
    assert 5 < exited < 60  # the rule exits some tokens, not all
    for p, toks, layers in zip(prompts, out.tokens, out.exit_layers):
        assert toks == _dense_exit_tokens(model, p, toks, layers)
    # state copying approximates the skipped K/V: same first exits, then its own tokens
    copy = greedy_decode(model, prompts, 24, ee=ee, kv_fill="copy", block_size=4)
    assert [t[0] for t in copy.tokens] == [t[0] for t in out.tokens]


def test_hidden_pool_counts_bytes():
    meter = CopyMeter()
    pool = HiddenPool(8, 4, torch.float32, "cpu", meter)
    pool.park([5, 2], torch.ones(2, 4), layer=3)
    assert 5 in pool and pool.layer[2] == 3
    assert torch.equal(pool.take([2]), torch.ones(1, 4))
    assert meter.take_step() == {"buffer_park": 32, "buffer_fetch": 16} and len(pool) == 1
    assert meter.take_step() == {} and meter.total["buffer_park"] == 32
