"""The decode mirror (contiguous K/V kept between decode steps on CPU) gives exactly what the paged cache gives."""

import torch

from drex.models import get_model
from drex.real.kvcache import PagedKVCache
from drex.real.model import EEModel

TINY = get_model("tiny")


def _twins():
    return [PagedKVCache(TINY, num_blocks=40, block_size=4, max_rows=4, mirror=m) for m in (False, True)]


def _prefill(model, caches, row, ids):
    for c in caches:
        c.reserve(row, len(ids) + 12)
        model.run_layers(model.embed(ids), c.meta([row], [0], [len(ids)]), c, 0, model.num_layers)


def _decode(model, caches, rows, starts, gen, layers=(0, None)):
    ids = torch.randint(TINY.vocab_size, (len(rows),), generator=gen)
    outs = [model.run_layers(model.embed(ids), c.meta(rows, starts, [1] * len(rows)), c, layers[0],
                             layers[1] or model.num_layers) for c in caches]
    assert torch.equal(outs[0], outs[1])
    return outs


@torch.inference_mode()
def test_mirror_matches_paged_attention_through_steps_exits_refills_and_row_reuse():
    model = EEModel.random(TINY, seed=5, exit_layers=(1, 2))
    L = model.num_layers
    gen = torch.Generator().manual_seed(0)
    caches = _twins()
    for row, n in ((0, 9), (1, 5), (2, 14)):  # contexts inside and across blocks
        _prefill(model, caches, row, torch.randint(TINY.vocab_size, (n,), generator=gen))
    pos = {0: 9, 1: 5, 2: 14}
    for _ in range(3):  # plain decode steps: the mirror is built once, then appended to
        _decode(model, caches, [0, 1, 2], [pos[r] for r in (0, 1, 2)], gen)
        pos = {r: p + 1 for r, p in pos.items()}
    mirror = caches[1].mirror
    assert all(m is not None and m.lens == [pos[0], pos[1], pos[2]] for m in mirror.layers)
    # Row 1 exits after layer 2: only rows 0 and 2 go deeper (a different row set at layers >= 2) ...
    _decode(model, caches, [0, 1, 2], [pos[r] for r in (0, 1, 2)], gen, layers=(0, 2))
    _decode(model, caches, [0, 2], [pos[0], pos[2]], gen, layers=(2, L))
    # ... its skipped layers recomputed (an append at row 1's end), then the full batch again.
    _decode(model, caches, [1], [pos[1]], gen, layers=(2, L))
    pos = {r: p + 1 for r, p in pos.items()}
    _decode(model, caches, [0, 1, 2], [pos[r] for r in (0, 1, 2)], gen)
    pos = {r: p + 1 for r, p in pos.items()}
    # Row 1 exits after layer 2 again, this time filled by state copy: the deep mirrors take its token ...
    _decode(model, caches, [0, 1, 2], [pos[r] for r in (0, 1, 2)], gen, layers=(0, 2))
    _decode(model, caches, [0, 2], [pos[0], pos[2]], gen, layers=(2, L))
    deep = [mirror.layers[i] for i in range(2, L)]
    for c in caches:
        c.copy_fill([1], [pos[1]], [2])
    assert [mirror.layers[i] for i in range(2, L)] == deep and all(m.lens[1] == pos[1] + 1 for m in deep)
    pos = {r: p + 1 for r, p in pos.items()}
    _decode(model, caches, [0, 1, 2], [pos[r] for r in (0, 1, 2)], gen)
    assert [mirror.layers[i] for i in range(2, L)] == deep  # appended to, not rebuilt
    pos = {r: p + 1 for r, p in pos.items()}
    # ... and a copy over a token the mirror already holds drops the layers it wrote (not the ones below).
    for c in caches:
        c.copy_fill([0], [pos[0] - 1], [1])
    assert mirror.layers[0] is not None and all(m is None for m in mirror.layers[1:])
    _decode(model, caches, [0, 1, 2], [pos[r] for r in (0, 1, 2)], gen)
    pos = {r: p + 1 for r, p in pos.items()}
    # Row 1 finishes and a new request takes it (new blocks, a new prompt), in a different order: its slot is
    # a hole until the new request joins into it (only its blocks gathered, the mirrors kept).
    kept = list(mirror.layers)
    for c in caches:
        c.release(1)
    assert mirror.layers == kept and all(m.rows == [0, -1, 2] for m in kept)
    _prefill(model, caches, 1, torch.randint(TINY.vocab_size, (6,), generator=gen))
    _decode(model, caches, [2, 0], [pos[2], pos[0]], gen)  # a hole among the rows attended
    pos = {r: p + 1 for r, p in pos.items()}
    _decode(model, caches, [2, 1, 0], [pos[2], 6, pos[0]], gen)
    assert all(a is b for a, b in zip(mirror.layers, kept)) and all(m.rows == [0, 1, 2] for m in kept)
    pos = {r: p + 1 for r, p in pos.items()}
    # Another request joins, into spare room in the mirror's buffer; a mirror mostly holes is dropped.
    _prefill(model, caches, 3, torch.randint(TINY.vocab_size, (4,), generator=gen))
    _decode(model, caches, [3, 2, 1, 0], [4, pos[2], 7, pos[0]], gen)
    assert all(a is b for a, b in zip(mirror.layers, kept)) and all(m.rows == [0, 1, 2, 3] for m in kept)
    for c in caches:
        c.release(0)
        c.release(2)
    _decode(model, caches, [1, 3], [8, 5], gen)  # half the slots holes: kept
    assert all(a is b for a, b in zip(mirror.layers, kept))
    for c in caches:
        c.release(3)
    assert all(m is None for m in mirror.layers)  # mostly holes: dropped
    _decode(model, caches, [1], [9], gen)


@torch.inference_mode()
def test_mirror_grows_past_its_headroom():
    model = EEModel.random(TINY, seed=6, exit_layers=(1,))
    gen = torch.Generator().manual_seed(1)
    caches = [PagedKVCache(TINY, num_blocks=40, block_size=4, max_rows=2, mirror=m) for m in (False, True)]
    caches[1].mirror.headroom = 2
    _prefill(model, caches, 0, torch.randint(TINY.vocab_size, (3,), generator=gen))
    for p in range(3, 14):  # crosses the mirror's capacity several times
        _decode(model, caches, [0], [p], gen)
    assert caches[1].mirror.layers[0].lens == [14]
