"""What ``drex profile`` times: the real backend's own modules, one grid point at a time.

One decoder layer of the model's real shape (``EEModel.random(..., num_layers=1)``:
random weights, so a 70B layer fits on one GPU), its paged KV cache, the
exit head, the rebatching pool and the KV state copy of ``drex.real`` — the
code the real executor runs, not a second implementation. ``Bench.fn(point)``
sets the point up (cache rows reserved, metadata built) and returns the
callable to time; setup is never inside the timing.

What each op covers (so the simulator's sum matches a real step):

- ``layer_*``: ``layer(h, meta, cache)`` (attention incl. its KV write, MLP, norms); the
  per-step metadata (``AttnMeta``, rotary tables) is built once per step, so it is in ``step``;
- ``attn_*``: ``layer.attn_block``; ``mlp``: ``layer.mlp_block``;
- ``head``: final norm + LM head + confidence (margin) over the rows;
- ``buffer``: one park and one fetch through ``HiddenPool``, halved (the cost model prices each);
- ``kv_copy``: ``PagedKVCache.copy_fill`` of rows that skipped the last ``num_layers`` layers
  of a cache as deep as the model;
- ``exit_eval``: one learned exit point (adapter, exit norm, estimator, decision, records) over the rows;
- ``regroup``: rows going on past an exit point where others left (hidden states gathered, new AttnMeta);
- ``step``: what a real decode step (``RealExecutor.execute``) does besides layers and heads: the
  executor's bookkeeping, token ids to the device, embedding, ``AttnMeta``, sampling (argmax back to
  Python), records, and the rotary tables (built once per ``AttnMeta``, so ``layer_*`` leaves them out).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from drex.costmodel.profile import Point
from drex.models import ModelShape
from drex.real.benchsteps import EXIT_POINTS, executor_steps
from drex.real.init import torch_dtype

BLOCK_SIZE = 16
STEP_CONTEXT = 128  # the step's bookkeeping does not depend on context length; any will do


# On CPU, per-layer ops cycle through at most this many bytes of distinct layers (see ``ring_layers``).
RING_BYTES = 1 << 30
KV_RING_BYTES = 1 << 28  # decode ops: distinct cache layers (K/V and decode mirror) up to this many bytes


class Bench:
    layers_built = 1

    def __init__(self, shape: ModelShape, dtype: str, device: str, points: list[Point], seed: int = 0):
        from drex.real.buffer import HiddenPool
        from drex.real.model import EEModel

        self.shape, self.device = shape, torch.device(device)
        self.dtype = torch_dtype(dtype)
        self.cuda = self.device.type == "cuda"
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        # CPU: a ring of distinct layers, each call on the next, so their weights come from memory as in a
        # real forward (one layer timed again and again stays in the caches: SmolLM2's decode layer measured
        # that way is half the time it takes inside a real 30-layer step). All share cache layer 0. The ring
        # streams what a real step streams between two uses of one layer (every layer and the LM head): a ring
        # of the model's depth alone (420 MB for SmolLM2) fits this VM's 480 MB L3 and timed layers at half
        # their real cost whenever the other core left the L3 alone. The LM head cycles likewise (``_head``).
        ring = 1 if self.cuda else ring_layers(shape, self.dtype)
        self.model = EEModel.random(shape, dtype=self.dtype, device=device, seed=seed, num_layers=ring)
        self.layer = self.model.layers[0]
        self.ring, self._turn = list(self.model.layers), 0
        for layer in self.ring:
            layer.layer_idx = layer.self_attn.layer_idx = 0
        self.layers_built = ring
        self.heads = [self.model.lm_head] + ([] if self.cuda else [
            torch.nn.Linear(shape.hidden_size, shape.vocab_size, bias=False).to(device=self.device, dtype=self.dtype)
            for _ in range(_head_ring(shape, self.dtype) - 1)])
        self._head_turn = 0
        # One-layer cache sized for the largest decode or prefill point, allocated once.
        att = [p for p in points if p.op.endswith(("_decode", "_prefill")) or p.op in ("step", "regroup")]
        need_blocks = max((self._blocks_for(p) for p in att), default=1)
        max_rows = max((p.num_rows + (p.op == "regroup") for p in points), default=1)
        max_tokens = max((self._context(p) + max(p.chunk, 1) for p in att), default=1)
        self.max_blocks_per_row = -(-max_tokens // BLOCK_SIZE) + 1
        self.cache = self._cache(need_blocks, max(max_rows, 1), 1)
        self.pool = HiddenPool(max(max_rows, 1), shape.hidden_size, self.dtype, self.device)

    # -- set-up helpers ----------------------------------------------------------------------------

    def _next(self):
        """The ring's next layer (the only one on GPU)."""
        self._turn = (self._turn + 1) % len(self.ring)
        layer = self.ring[self._turn]
        layer.layer_idx = layer.self_attn.layer_idx = 0  # cache layer 0 (decode ops then pick their own)
        return layer

    @staticmethod
    def _context(p: Point) -> int:
        return STEP_CONTEXT if p.op in ("step", "regroup") else p.context

    @classmethod
    def _blocks_for(cls, p: Point) -> int:
        if p.op.endswith("_prefill"):
            return -(-(p.context + p.chunk) // BLOCK_SIZE)
        return (p.num_rows + (p.op == "regroup")) * -(-(cls._context(p) + 1) // BLOCK_SIZE)

    def _cache(self, num_blocks: int, max_rows: int, num_layers: int):
        from drex.real.kvcache import PagedKVCache

        return PagedKVCache(self.shape, num_blocks, BLOCK_SIZE, max_rows=max_rows,
                            max_blocks_per_row=self.max_blocks_per_row, dtype=self.dtype, device=self.device,
                            num_layers=num_layers)

    def _hidden(self, n: int) -> torch.Tensor:
        h = torch.randn(n, self.shape.hidden_size, generator=self.gen)
        return h.to(device=self.device, dtype=self.dtype)

    def _reset_cache(self, rows: int, tokens_per_row: int):
        cache = self.cache
        for r in range(cache.max_rows):
            cache.release(r)
        for r in range(rows):
            cache.reserve(r, tokens_per_row)
        return cache

    # -- the timed callables -------------------------------------------------------------------------

    def fn(self, p: Point) -> Callable[[], object]:
        """The callable to time for a grid point (set up now, outside the timing)."""
        return getattr(self, "_" + p.op)(p)

    def _decode_meta(self, p: Point):
        cache = self._reset_cache(p.num_rows, p.context + 1)
        meta = cache.meta(range(p.num_rows), [p.context] * p.num_rows, [1] * p.num_rows)
        meta.rope(self.layer.self_attn.inv_freq, self.dtype)  # once per step: priced in ``step``
        return cache, meta

    def _prefill_meta(self, p: Point):
        cache = self._reset_cache(1, p.context + p.chunk)
        meta = cache.meta([0], [p.context], [p.chunk])
        meta.rope(self.layer.self_attn.inv_freq, self.dtype)
        return cache, meta

    def _decode_ring(self, p: Point):
        """A decode point's own cache (CPU) with one layer per ring layer, up to ``KV_RING_BYTES``: in a real
        step every layer attends its own K/V (its decode mirror), so a step reads all layers' K/V from memory
        (SmolLM2 at 16 rows of 170 tokens: 180 MB a step); one cache layer shared by the ring stays in the
        caches and timed decode attention at a fraction of its real cost. Returns (cache, meta, cache layers)."""
        if self.cuda:
            cache, meta = self._decode_meta(p)
            return cache, meta, 1
        blocks = self._blocks_for(p)
        per_layer = 2 * blocks * BLOCK_SIZE * self.shape.kv_dim * 2 * self.dtype.itemsize  # paged + mirror, K and V
        layers = max(1, min(len(self.ring), KV_RING_BYTES // max(per_layer, 1)))
        cache = self._cache(blocks, p.num_rows, layers)
        for r in range(p.num_rows):
            cache.reserve(r, p.context + 1)
        meta = cache.meta(range(p.num_rows), [p.context] * p.num_rows, [1] * p.num_rows)
        meta.rope(self.layer.self_attn.inv_freq, self.dtype)  # once per step: priced in ``step``
        return cache, meta, layers

    def _decode_call(self, p: Point, attn_only: bool):
        """A decode call repeated at one context, timed as a run of decode steps meets it: each ring layer on its
        own cache layer (``_decode_ring``); with the CPU's decode mirror (drex.real.kvmirror) each call appends
        one token to K/V already gathered, so the mirror takes that layer's last token back before each call
        (each layer's mirror is built by one call at set-up, like a run's first step, and not timed)."""
        cache, meta, kv_layers = self._decode_ring(p)
        h = self._hidden(p.num_rows)

        def call():
            layer = self._next()
            i = self._turn % kv_layers
            layer.layer_idx = layer.self_attn.layer_idx = i
            if cache.mirror is not None:
                cache.mirror.rewind(i)
            return layer.attn_block(h, meta, cache) if attn_only else layer(h, meta, cache)

        for _ in range(kv_layers):  # every cache layer's mirror built now, outside the timing
            call()
        return call

    def _layer_decode(self, p: Point):
        return self._decode_call(p, attn_only=False)

    def _attn_decode(self, p: Point):
        return self._decode_call(p, attn_only=True)

    def _layer_prefill(self, p: Point):
        cache, meta = self._prefill_meta(p)
        h = self._hidden(p.chunk)
        return lambda: self._next()(h, meta, cache)

    def _attn_prefill(self, p: Point):
        cache, meta = self._prefill_meta(p)
        h = self._hidden(p.chunk)
        return lambda: self._next().attn_block(h, meta, cache)

    def _mlp(self, p: Point):
        h = self._hidden(p.num_rows)
        return lambda: self._next().mlp_block(h)

    def _head(self, p: Point):
        from drex.real.model import confidence

        h, model = self._hidden(p.num_rows), self.model

        def head():
            self._head_turn = (self._head_turn + 1) % len(self.heads)
            model.lm_head = self.heads[self._head_turn]  # the next LM head of the ring (weights from memory)
            return confidence(model.exit_logits(h, model.num_layers), "margin")
        return head

    def _buffer(self, p: Point):
        rows = list(range(p.num_rows))
        h, pool = self._hidden(p.num_rows), self.pool

        def park_and_fetch():
            pool.park(rows, h, 1)
            return pool.take(rows)

        return _halved(park_and_fetch)

    def _kv_copy(self, p: Point):
        # A cache as deep as the model (the copy kernel's grid spans every layer), one slot per row.
        depth = max(self.shape.num_layers, p.num_layers + 1)
        cache = self._cache(p.num_rows, p.num_rows, depth)  # reserve() gives every row a block of its own
        for r in range(p.num_rows):
            cache.reserve(r, 1)
        rows, positions, exits = list(range(p.num_rows)), [0] * p.num_rows, [depth - p.num_layers] * p.num_rows
        return lambda: cache.copy_fill(rows, positions, exits)

    def _step(self, p: Point):
        """Real decode steps of num_rows requests through ``RealExecutor`` under the shared scheduler, with the
        layers taken out (identity) and the head's matmul too (precomputed logits; ``head`` prices it):
        what is left is the step's own work, timed by the executor's clock as a real run times it."""
        step = executor_steps(self, p.num_rows, exits=False)
        step.self_timed = True  # type: ignore[attr-defined]
        return step

    def _exit_eval(self, p: Point):
        """One learned exit point evaluated for num_rows decode rows: adapter, exit norm, estimator, the
        confidences back to the host, the scheduler's decision and the executor's records. Timed as real
        steps through ``RealExecutor`` (identity layers) evaluating ``EXIT_POINTS`` exits where no row clears
        the threshold, less the same steps without exits (interleaved), per exit."""
        with_exits = executor_steps(self, p.num_rows, exits=True)
        without = executor_steps(self, p.num_rows, exits=False)

        def per_exit() -> float:
            return max((with_exits() - without()) / EXIT_POINTS, 1e-7)

        per_exit.self_timed = True  # type: ignore[attr-defined]
        return per_exit

    def _regroup(self, p: Point):
        """What the executor does when rows leave at an exit point and num_rows go on: their hidden states
        gathered (``RealExecutor._regroup``), a new AttnMeta, and its rotary tables (built once per AttnMeta)."""
        from drex.real.batch import Batch
        from drex.real.benchsteps import RegroupHost
        from drex.real.buffer import CopyMeter
        from drex.real.executor import RealExecutor

        n, context = p.num_rows + 1, self._context(p)  # one row left
        cache = self._reset_cache(n, context + 1)
        ex = RegroupHost(cache, CopyMeter())
        h = self._hidden(n)
        computing = np.ones(n, dtype=bool)
        computing[n // 2] = False
        inv_freq = self.layer.self_attn.inv_freq

        def regroup():
            batch = Batch([("d", j) for j in range(n)], list(range(n)), [context] * n, [1] * n)
            batch.meta = cache.meta(batch.rows, batch.starts, batch.lens)
            out = RealExecutor._regroup(ex, batch, h, computing, [], [])
            batch.meta.rope(inv_freq, self.dtype)
            return out

        return regroup

def ring_layers(shape: ModelShape, dtype) -> int:
    """Distinct layers the CPU ring cycles through: as many bytes as a step's layers and LM head (a real
    step's reuse distance for a layer's weights), capped by ``RING_BYTES``; at least the model's depth
    when that fits."""
    per = max(_layer_bytes(shape, dtype), 1)
    step = shape.num_layers * per + _head_bytes(shape, dtype)
    return max(1, min(-(-step // per), RING_BYTES // per))


def _head_ring(shape: ModelShape, dtype) -> int:
    """Distinct LM heads ``head`` cycles through on CPU: a step's bytes' worth, capped by ``RING_BYTES``."""
    per = max(_head_bytes(shape, dtype), 1)
    step = shape.num_layers * _layer_bytes(shape, dtype) + per
    return max(1, min(-(-step // per), RING_BYTES // per))


def _head_bytes(shape: ModelShape, dtype) -> int:
    return shape.vocab_size * shape.hidden_size * torch.empty(0, dtype=dtype).element_size()


def _layer_bytes(shape: ModelShape, dtype) -> int:
    h, kv = shape.hidden_size, shape.kv_dim
    q = shape.num_heads * shape.head_dim
    params = h * q * 2 + h * kv * 2 + 3 * h * shape.intermediate_size
    return params * torch.empty(0, dtype=dtype).element_size()


def _halved(fn: Callable[[], object]) -> Callable[[], object]:
    """Mark a callable whose time counts twice the operation the cost model prices."""
    fn.time_scale = 0.5  # type: ignore[attr-defined]
    return fn


def inner_repeats(p: Point, cuda: bool) -> int:
    """Back-to-back calls per timed sample on GPU: a layer's steady-state time overlaps its launches
    with the previous layer's kernels, as in a real forward; one synchronised call would add launch latency."""
    if cuda and p.op.endswith(("_decode", "_prefill")) or (cuda and p.op == "mlp"):
        return 4
    return 1
