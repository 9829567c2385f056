"""The paged-KV block manager: property tests on random allocate/free sequences, and capacity sizing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drex.core.blocks import BlockManager, num_kv_blocks

ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(0, 7), st.integers(0, 120)),
        st.tuples(st.just("free"), st.integers(0, 7), st.just(0)),
    ),
    max_size=60,
)


def check_consistent(bm: BlockManager) -> None:
    owned = [b for table in bm.tables.values() for b in table]
    free = list(bm._free)
    assert len(owned) == len(set(owned)), "a block is owned twice"
    assert len(free) == len(set(free)), "a block is free twice"
    assert not set(owned) & set(free), "a block is both owned and free"
    assert set(owned) | set(free) == set(range(bm.num_blocks)), "a block was lost or invented"
    assert bm.num_free + bm.num_used == bm.num_blocks
    assert bm.num_used == len(owned)
    assert bm.peak_used >= bm.num_used


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(num_blocks=st.integers(1, 24), block_size=st.integers(1, 16), ops=ops)
def test_random_allocate_free_sequences(num_blocks, block_size, ops):
    bm = BlockManager(num_blocks, block_size)
    tokens: dict[int, int] = {}  # what each request asked to hold (its high-water mark)
    peak = 0
    for op, rid, n in ops:
        if op == "alloc":
            before = ({k: list(v) for k, v in bm.tables.items()}, list(bm._free), bm.peak_used)
            need = max(0, -(-n // block_size) - len(bm.tables.get(rid, ())))
            assert bm.needed(rid, n) == need
            ok = bm.allocate(rid, n)
            if need > before[1].__len__():
                assert not ok
                # A failed allocation changes nothing.
                assert ({k: list(v) for k, v in bm.tables.items()}, list(bm._free), bm.peak_used) == before
            else:
                assert ok
                tokens[rid] = max(tokens.get(rid, 0), n)
                assert bm.capacity_tokens(rid) >= n
                # Never more blocks than needed for the largest request made.
                assert len(bm.tables.get(rid, ())) == -(-tokens[rid] // block_size)
        else:
            had = len(bm.tables.get(rid, ()))
            free_before = bm.num_free
            bm.free(rid)
            tokens.pop(rid, None)
            assert bm.num_free == free_before + had, "free must return every block the request held"
            assert rid not in bm.tables and bm.capacity_tokens(rid) == 0
        peak = max(peak, bm.num_used)
        check_consistent(bm)
        assert bm.peak_used == peak
    for rid in list(bm.tables):
        bm.free(rid)
    assert bm.num_free == bm.num_blocks and not bm.tables
    check_consistent(bm)


def test_low_ids_first_and_reuse_after_free():
    bm = BlockManager(4, 2)
    assert bm.allocate(1, 3) and bm.tables[1] == [0, 1]
    assert bm.allocate(2, 2) and bm.tables[2] == [2]
    bm.free(1)
    assert bm.allocate(3, 6) and sorted(bm.tables[3]) == [0, 1, 3]
    assert not bm.allocate(4, 1)
    assert bm.peak_used == 4


@pytest.mark.parametrize("num_blocks,block_size", [(0, 16), (4, 0), (-1, 1)])
def test_rejects_nonpositive_sizes(num_blocks, block_size):
    with pytest.raises(ValueError):
        BlockManager(num_blocks, block_size)


def test_capacity_from_memory_minus_weights():
    # 10 GiB at 90%, 4 GiB of weights: 5 GiB left = 5 * 2**30 / (2048 B/token * 16 tokens) blocks.
    gib = 2**30
    assert num_kv_blocks(10 * gib, 4 * gib, 2048, 16, 0.9) == int((9 * gib - 4 * gib) // (2048 * 16))
    with pytest.raises(ValueError, match="do not fit"):
        num_kv_blocks(10 * gib, 9 * gib + 1, 2048, 16, 0.9)
    with pytest.raises(ValueError, match="single KV block"):
        num_kv_blocks(10 * gib, 9 * gib - 100, 2048, 16, 0.9)
