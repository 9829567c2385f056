"""Paged KV cache: a preallocated pool, block tables per cache row, and KV fill for early exits.

The pool holds every layer's K and V as [L, num_slots, Hkv, D] with slot =
block * block_size + offset (``k_blocks`` views it as [L, blocks, block_size,
Hkv, D]). Each request owns a cache *row*: a line of the block table
``block_tables [max_rows, max_blocks]`` that lists its blocks. A forward over
any set of rows — decode rows, prefill chunks, a rebatched deep batch — is
described by an ``AttnMeta`` (rows, first position, token count of each):
attention writes the new K/V at the rows' slots and reads each row's context
through its block table, so regrouping rows never moves KV.

KV fill for tokens that exited at layer e (layers [e, L) never ran for them):

- **state copying** (``copy_fill``): the token's layer e-1 K/V is written into
  every layer in [e, L) at its slot, all tokens of a step in one scatter;
- **recompute** (``RecomputeFill``): the token's hidden state is kept and, before
  its request's next token runs, pushed through layers [e, L) as a one-token
  chunk, which writes the true K/V.

Example (what the profiler needs)::

    cache = PagedKVCache(shape, num_blocks=64, block_size=16, max_rows=8, dtype=dtype, device=dev)
    for row in range(8): cache.reserve(row, 129)
    meta = cache.meta(rows=range(8), starts=[128] * 8, lens=[1] * 8)    # 8 decode rows at context 129
    h = model.layers[0](h, meta, cache)                                   # h [8, H]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from drex.models import ModelShape
from drex.real.buffer import CopyMeter, HiddenPool
from drex.real.kernels import kv_copy, paged_decode_attention
from drex.real.kernels.paged_attention import dense_decode_attention
from drex.real.kvmirror import DecodeMirror
from drex.real.model import rope_cos_sin


class AttnMeta:
    """The rows of one forward pass against the paged cache (a varlen batch).

    Sequence i is cache row ``rows[i]`` with ``lens[i]`` new tokens at positions
    ``starts[i] ..``; its tokens are contiguous in the hidden states h [N, H].
    """

    def __init__(self, cache: "PagedKVCache", rows, starts, lens):
        self.rows_list, self.starts, self.lens = list(rows), list(starts), list(lens)
        num_seqs = len(self.rows_list)
        if not (num_seqs == len(self.starts) == len(self.lens)) or num_seqs == 0:
            raise ValueError(f"AttnMeta needs equally many rows, starts and lens (>0), got "
                             f"{num_seqs}, {len(self.starts)}, {len(self.lens)}")
        for row, start, n in zip(self.rows_list, self.starts, self.lens):
            if n <= 0 or start + n > cache.reserved_tokens(row):
                raise ValueError(f"cache row {row}: tokens [{start}, {start + n}) exceed its "
                                 f"{cache.reserved_tokens(row)} reserved slots")
        lens_t = torch.tensor(self.lens)
        rows_t = torch.tensor(self.rows_list)
        self.token_start = [0] * num_seqs  # index of each sequence's first token in h
        for i in range(1, num_seqs):
            self.token_start[i] = self.token_start[i - 1] + self.lens[i - 1]
        self.num_tokens = sum(self.lens)
        seq_of_tok = torch.repeat_interleave(torch.arange(num_seqs), lens_t)
        offset_in_seq = torch.arange(self.num_tokens) - torch.tensor(self.token_start)[seq_of_tok]
        positions = torch.tensor(self.starts)[seq_of_tok] + offset_in_seq
        pages = cache.block_tables_cpu[rows_t[seq_of_tok], positions // cache.block_size].long()
        device = cache.device
        self.positions = positions.to(device)  # [N]
        self.slot_mapping = (pages * cache.block_size + positions % cache.block_size).to(device)  # [N]
        decode = [i for i, n in enumerate(self.lens) if n == 1]
        self.all_decode = len(decode) == num_seqs
        self.decode_tokens = torch.tensor([self.token_start[i] for i in decode], dtype=torch.long, device=device)
        self.decode_rows = rows_t[decode].to(device=device, dtype=torch.int32)
        self.decode_context = torch.tensor([self.starts[i] + 1 for i in decode], dtype=torch.int32, device=device)
        # Multi-token chunks: (first token in h, token count, context slots [C], causal mask [T, C]),
        # built once here for every layer of the forward.
        self.chunks = []
        for i in range(num_seqs):
            n, start = self.lens[i], self.starts[i]
            if n > 1:
                context = start + n
                pages = cache.block_tables_cpu[self.rows_list[i], : -(-context // cache.block_size)].long()
                slots = (pages[:, None] * cache.block_size + torch.arange(cache.block_size)).reshape(-1)[:context]
                causal = torch.arange(context)[None, :] <= start + torch.arange(n)[:, None]
                self.chunks.append((self.token_start[i], n, slots.to(device), causal.to(device)))
        self._rope: dict = {}

    @property
    def num_seqs(self) -> int:
        return len(self.rows_list)

    def rope(self, inv_freq: torch.Tensor, dtype: torch.dtype):
        """cos, sin [N, D], computed once per forward and shared by all layers."""
        if dtype not in self._rope:
            self._rope[dtype] = rope_cos_sin(self.positions, inv_freq, dtype)
        return self._rope[dtype]


class PagedKVCache:
    def __init__(self, shape: ModelShape, num_blocks: int, block_size: int = 16, max_rows: int = 256,
                 max_blocks_per_row: int | None = None, dtype=torch.float32, device="cpu",
                 num_layers: int | None = None, mirror: bool | None = None):
        """``mirror``: keep decode batches' K/V contiguous between steps (drex.real.kvmirror); by default
        on CPU, where gathering blocks every layer of every step is a third of a small model's step."""
        self.shape, self.block_size, self.max_rows = shape, block_size, max_rows
        self.num_layers = num_layers or shape.num_layers
        self.num_blocks = num_blocks
        self.device = torch.device(device)
        num_slots = num_blocks * block_size
        self.k = torch.zeros(self.num_layers, num_slots, shape.num_kv_heads, shape.head_dim, dtype=dtype,
                             device=device)  # [L, slots, Hkv, D]
        self.v = torch.zeros_like(self.k)
        self.max_blocks_per_row = max_blocks_per_row or -(-shape.max_position // block_size)
        self.block_tables_cpu = torch.zeros(max_rows, self.max_blocks_per_row, dtype=torch.int32)
        self.block_tables = self.block_tables_cpu.to(device)  # what kernels read
        self._dirty: set[int] = set()
        self._free = list(range(num_blocks - 1, -1, -1))
        self._blocks: list[list[int]] = [[] for _ in range(max_rows)]
        use_mirror = self.device.type == "cpu" if mirror is None else mirror
        self.mirror = DecodeMirror(self.num_layers, block_size) if use_mirror else None

    @property
    def k_blocks(self) -> torch.Tensor:
        return self.k.view(self.num_layers, self.num_blocks, self.block_size, *self.k.shape[2:])

    @property
    def bytes_per_token_layer(self) -> int:
        return 2 * self.k.shape[2] * self.k.shape[3] * self.k.element_size()

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    # -- block accounting ------------------------------------------------------------------------

    def reserved_tokens(self, row: int) -> int:
        return len(self._blocks[row]) * self.block_size

    def reserve(self, row: int, num_tokens: int) -> None:
        """Make sure cache row ``row`` has slots for its first num_tokens positions."""
        need = -(-num_tokens // self.block_size) - len(self._blocks[row])
        if need <= 0:
            return
        if len(self._blocks[row]) + need > self.max_blocks_per_row:
            raise ValueError(f"cache row {row}: {num_tokens} tokens exceed max_blocks_per_row "
                             f"{self.max_blocks_per_row} x {self.block_size}")
        if need > len(self._free):
            raise MemoryError(f"KV cache full: row {row} needs {need} blocks, {len(self._free)} free")
        new = [self._free.pop() for _ in range(need)]
        first = len(self._blocks[row])
        self._blocks[row].extend(new)
        self.block_tables_cpu[row, first:first + need] = torch.tensor(new, dtype=torch.int32)
        self._dirty.add(row)

    def release(self, row: int) -> None:
        self._free.extend(reversed(self._blocks[row]))
        self._blocks[row] = []
        if self.mirror is not None:
            self.mirror.forget_row(row)

    def set_blocks(self, row: int, blocks: list[int]) -> None:
        """Take a row's block ids from an outside allocator (the scheduler's BlockManager).

        A cache is driven either this way or by reserve/release, never both.
        """
        if self._blocks[row] == blocks:
            return
        if self.mirror is not None and self._blocks[row] != blocks[:len(self._blocks[row])]:
            self.mirror.forget_row(row)  # not just a block appended: what the mirror holds may be stale
        if len(blocks) > self.max_blocks_per_row:
            raise ValueError(f"cache row {row}: {len(blocks)} blocks exceed max_blocks_per_row {self.max_blocks_per_row}")
        self._blocks[row] = list(blocks)
        self.block_tables_cpu[row, :len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        self._dirty.add(row)

    def clear_row(self, row: int) -> None:
        """Forget a row's blocks (their owner freed them)."""
        self._blocks[row] = []
        if self.mirror is not None:
            self.mirror.forget_row(row)

    def meta(self, rows, starts, lens) -> AttnMeta:
        if self._dirty:  # push new block-table entries to the device once per forward
            idx = sorted(self._dirty)
            self.block_tables[idx] = self.block_tables_cpu[idx].to(self.device)
            self._dirty.clear()
        return AttnMeta(self, rows, starts, lens)

    def slots(self, rows, positions) -> torch.Tensor:
        """Flat slot [M] of each (row, position)."""
        rows_t, pos_t = torch.as_tensor(rows), torch.as_tensor(positions)
        pages = self.block_tables_cpu[rows_t, pos_t // self.block_size].long()
        return (pages * self.block_size + pos_t % self.block_size).to(self.device)

    # -- attention ---------------------------------------------------------------------------------

    def attend(self, layer: int, q, k, v, meta: AttnMeta, scale: float) -> torch.Tensor:
        """Write this layer's k/v [N, Hkv, D] at the rows' slots, then attend: q [N, Hq, D] -> [N, Hq, D]."""
        k_layer, v_layer = self.k[layer], self.v[layer]  # [slots, Hkv, D]
        k_layer.index_copy_(0, meta.slot_mapping, k.to(k_layer.dtype))
        v_layer.index_copy_(0, meta.slot_mapping, v.to(v_layer.dtype))
        if self.mirror is not None:
            self.mirror.written(layer, meta.rows_list, meta.starts, meta.lens, k, v)
            if meta.all_decode:
                context = [s + 1 for s in meta.starts]
                k_m, v_m, lens, pick = self.mirror.view(layer, meta.rows_list, context) or self.mirror.build(
                    layer, meta.rows_list, context, k_layer, v_layer, self.block_tables_cpu)
                if pick is None:
                    return dense_decode_attention(q, k_m, v_m, meta.decode_context, scale)
                q_all = q.new_zeros(k_m.shape[0], *q.shape[1:])
                q_all[pick] = q
                return dense_decode_attention(q_all, k_m, v_m, lens, scale)[pick]
        if meta.all_decode:
            return paged_decode_attention(q, k_layer, v_layer, self.block_tables, meta.decode_rows,
                                          meta.decode_context, self.block_size, scale)
        out = torch.empty_like(q)
        if meta.decode_tokens.numel():
            out[meta.decode_tokens] = paged_decode_attention(
                q[meta.decode_tokens], k_layer, v_layer, self.block_tables, meta.decode_rows, meta.decode_context,
                self.block_size, scale)
        for first, n, slots, causal in meta.chunks:
            out[first:first + n] = self._chunk_attention(q[first:first + n], k_layer, v_layer, slots, causal, scale)
        return out

    def _chunk_attention(self, q, k_layer, v_layer, slots, causal, scale: float) -> torch.Tensor:
        """Causal attention of a chunk q [T, Hq, D] over its context slots [C] (mask [T, C])."""
        k, v = k_layer[slots], v_layer[slots]  # [C, Hkv, D]
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        # 4-D inputs: torch's CPU flash kernel takes them (3-D falls back to the ~5x slower math path).
        o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                           attn_mask=causal, scale=scale)
        return o[0].transpose(0, 1)

    # -- KV fill: state copying ----------------------------------------------------------------------

    def copy_fill(self, rows, positions, exit_layers) -> int:
        """Copy layer e-1 K/V of each exited token into layers [e, L); returns bytes written."""
        if not len(rows):
            return 0
        slots = self.slots(rows, positions)
        exits = torch.as_tensor(exit_layers, dtype=torch.int32).to(self.device)
        kv_copy(self.k, self.v, slots, exits)
        if self.mirror is not None:
            self.mirror.filled(list(rows), list(positions), [int(e) for e in exit_layers], self.k, self.v, slots)
        token_layers = sum(self.num_layers - int(e) for e in exit_layers)
        return token_layers * self.bytes_per_token_layer


class RecomputeFill:
    """KV fill by recompute: exited tokens' hidden states wait here until their request's next step.

    ``run`` pushes them through their skipped layers [e, L) as one-token chunks
    (grouped by exit layer), writing the true K/V. It must run before the
    request's next token reaches layer e; the executor runs it at step start.
    """

    def __init__(self, max_rows: int, hidden_size: int, dtype, device, meter: CopyMeter | None = None):
        self.pool = HiddenPool(max_rows, hidden_size, dtype, device, meter, kind="recompute")
        self.position: dict[int, int] = {}

    def add(self, rows: list[int], h: torch.Tensor, exit_layer: int, positions: list[int]) -> None:
        self.pool.park(rows, h, exit_layer)
        self.position.update(zip(rows, positions))

    def pending(self, rows) -> list[int]:
        return [r for r in rows if r in self.pool]

    def drop(self, row: int) -> None:
        self.pool.drop(row)
        self.position.pop(row, None)

    def run(self, model, cache: PagedKVCache, rows) -> int:
        """Recompute the pending tokens of ``rows``; returns token-layers computed."""
        by_layer: dict[int, list[int]] = {}
        for r in self.pending(rows):
            by_layer.setdefault(self.pool.layer[r], []).append(r)
        token_layers = 0
        for exit_layer, group in sorted(by_layer.items()):
            h = self.pool.take(group)
            starts = [self.position.pop(r) for r in group]
            meta = cache.meta(group, starts, [1] * len(group))
            model.run_layers(h, meta, cache, exit_layer, cache.num_layers)
            token_layers += len(group) * (cache.num_layers - exit_layer)
        return token_layers
