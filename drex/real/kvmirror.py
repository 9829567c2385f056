"""Decode rows' K/V kept contiguous between steps, so CPU decode attention does not gather blocks each step.

The paged cache (drex.real.kvcache) stays the source of truth. Reading a batch's context through its block
tables means gathering every row's blocks into one tensor, every layer of every step: on one CPU core,
for SmolLM2 at batch 16 and ~170 tokens, 130 MB copied a step, a third of the step. A ``DecodeMirror``
keeps, per layer, the last decode batch's rows gathered ([S, capacity, Hkv, D]) with how many tokens of
each row it holds; the next step with the same rows at the next positions appends one token per row
and attends in place. Anything else rebuilds it with one gather (what every step cost before).

Every write into the paged cache passes through ``written`` (a decode token appended at a row's end
keeps the row; any other write to a mirrored row drops the layer's mirror), ``filled`` (state-copy KV
fill: the copied token is appended to the layers it skipped) or ``forget_row`` (a row's blocks
changing), so the mirror never holds what the cache does not. Rows that go on past an exit point are
a subset of the mirror's rows: they are gathered from it and it stays for the next full step.
"""

from __future__ import annotations

import torch


class _Layer:
    def __init__(self, rows: list[int], lens: list[int], k: torch.Tensor, v: torch.Tensor):
        self.rows, self.lens, self.k, self.v = rows, lens, k, v  # k, v [S, capacity, Hkv, D]
        self.index = {r: i for i, r in enumerate(rows)}


class DecodeMirror:
    def __init__(self, num_layers: int, block_size: int, headroom: int = 64):
        self.block_size, self.headroom = block_size, headroom
        self.layers: list[_Layer | None] = [None] * num_layers
        self._buffers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers  # reused by build

    def invalidate(self, layer: int | None = None) -> None:
        if layer is None:
            self.layers = [None] * len(self.layers)
        else:
            self.layers[layer] = None

    def forget_row(self, row: int) -> None:
        """A row's blocks or owner changed: every layer's mirror that holds it lets its slot go. The slot stays
        a hole (its stale K/V attended with a zero query, the output dropped, as a subset view does) until a
        joining row takes it; a mirror mostly holes is dropped."""
        for i, m in enumerate(self.layers):
            if m is not None and row in m.index:
                m.rows[m.index.pop(row)] = -1
                if 2 * m.rows.count(-1) > len(m.rows):
                    self.layers[i] = None

    def written(self, layer: int, rows: list[int], starts: list[int], lens: list[int], k, v) -> None:
        """Tokens [start, start + n) of ``rows`` were written at ``layer`` (k, v [N, Hkv, D] in row order):
        one token at a mirrored row's end is appended; any other write to a mirrored row drops the layer."""
        m = self.layers[layer]
        if m is None:
            return
        append_at, append_tok, t = [], [], 0
        for row, start, n in zip(rows, starts, lens):
            i = m.index.get(row)
            if i is not None:
                if n != 1 or start != m.lens[i] or start >= m.k.shape[1]:
                    self.layers[layer] = None
                    return
                append_at.append(i)
                append_tok.append(t)
            t += n
        if append_at:
            at = torch.tensor(append_at)
            pos = torch.tensor([m.lens[i] for i in append_at])
            tok = torch.tensor(append_tok)
            m.k[at, pos] = k[tok].to(m.k.dtype)
            m.v[at, pos] = v[tok].to(m.v.dtype)
            for i in append_at:
                m.lens[i] += 1

    def filled(self, rows: list[int], positions: list[int], exit_layers: list[int], k_cache, v_cache, slots) -> None:
        """State copy wrote each token's layer e-1 K/V into its layers [e, L): append it there too."""
        for layer in range(min(exit_layers), len(self.layers)):
            pick = [i for i, e in enumerate(exit_layers) if e <= layer]
            if self.layers[layer] is None or not pick:
                continue
            src = slots[pick]
            e_of = torch.tensor([exit_layers[i] - 1 for i in pick], device=slots.device)
            self.written(layer, [rows[i] for i in pick], [positions[i] for i in pick], [1] * len(pick),
                         k_cache[e_of, src], v_cache[e_of, src])

    def rewind(self, layer: int) -> None:
        """Take back the last token of every row (the profiler times one decode step again and again at the
        same context: the step a run of decode steps takes, not a rebuild)."""
        m = self.layers[layer]
        if m is not None:
            m.lens = [n - 1 for n in m.lens]

    def view(self, layer: int, rows: list[int], context: list[int]):
        """K, V [S, T, Hkv, D] of the mirror (T = ``context`` rounded up to whole blocks), their rows' context
        lengths [S], and where decode ``rows`` are among them (None: they are the mirror's rows, in order);
        None when the mirror does not hold ``rows`` at ``context`` (tokens, the new one included). A subset of
        its rows (the rows that went on past an exit point, a recompute group) is attended in place with the
        others' queries left zero, cheaper than gathering it; the mirror stays for the next full step."""
        m = self.layers[layer]
        if m is None:
            return None
        span = -(-max(context) // self.block_size) * self.block_size
        if span > m.k.shape[1]:
            return None
        if m.rows == rows:
            return (m.k[:, :span], m.v[:, :span], None, None) if m.lens == context else None
        idx = [m.index.get(r) for r in rows]
        if any(i is None for i in idx) or any(m.lens[i] != c for i, c in zip(idx, context)):
            return None
        # The others' lengths clipped to the rows' span: their outputs are dropped, and the rows' own are then
        # computed over the very keys the paged path would read (the same numbers, bit for bit).
        return (m.k[:, :span], m.v[:, :span], torch.tensor([min(n, span) for n in m.lens], device=m.k.device),
                torch.tensor(idx, device=m.k.device))

    def build(self, layer: int, rows: list[int], context: list[int], k_cache, v_cache, block_tables_cpu):
        """Gather the rows' blocks (one copy, as an uncached step would) into a new mirror; returns its view.
        Where the mirror holds every other row at its context, only the joining rows are gathered, into holes
        or spare slots."""
        if self._join(layer, rows, context, k_cache, v_cache, block_tables_cpu):
            return self.view(layer, rows, context)  # (it holds every row at its context, within its span)
        bs = self.block_size
        capacity = -(-(max(context) + self.headroom) // bs) * bs
        buf = self._buffers[layer]
        if buf is None or buf[0].shape[0] < len(rows) or buf[0].shape[1] < capacity:
            # Zeros (finite) where nothing is gathered; grown, never shrunk: a fresh multi-MB tensor on CPU
            # costs more in page faults than the gather itself.
            old = (0, 0) if buf is None else buf[0].shape[:2]
            # (a quarter more rows than the batch: room for requests that join it, see _join)
            shape = (max(len(rows) + len(rows) // 4 + 1, old[0]), max(capacity, old[1]), k_cache.shape[1],
                     k_cache.shape[2])
            with torch.inference_mode(False):  # a normal tensor: written in and outside inference mode
                buf = self._buffers[layer] = (torch.zeros(shape, dtype=k_cache.dtype, device=k_cache.device),
                                              torch.zeros(shape, dtype=k_cache.dtype, device=k_cache.device))
        k, v = buf[0][:len(rows), :capacity], buf[1][:len(rows), :capacity]
        gk, gv = self._gather(rows, context, k_cache, v_cache, block_tables_cpu)
        k[:, :gk.shape[1]], v[:, :gv.shape[1]] = gk, gv
        self.layers[layer] = _Layer(list(rows), list(context), k, v)
        return self.view(layer, rows, context)

    def _gather(self, rows: list[int], context: list[int], k_cache, v_cache, block_tables_cpu):
        """The rows' K/V from their blocks, whole blocks up to the longest context: [S, blocks * bs, Hkv, D] each."""
        bs = self.block_size
        tables = block_tables_cpu[rows, : -(-max(context) // bs)].long().to(k_cache.device)  # [S, nb]
        per_block = bs * k_cache.shape[1] * k_cache.shape[2]
        span = (len(rows), tables.shape[1] * bs, *k_cache.shape[1:])
        return k_cache.view(-1, per_block)[tables].view(span), v_cache.view(-1, per_block)[tables].view(span)

    def _join(self, layer: int, rows: list[int], context: list[int], k_cache, v_cache, block_tables_cpu) -> bool:
        """Gather only the rows the layer's mirror lacks (a request that finished its prefill), when it holds
        the others at their context and has room (holes, or spare slots in its buffer; the span it covers)."""
        m, buf = self.layers[layer], self._buffers[layer]
        if m is None or buf is None or m.k.data_ptr() != buf[0].data_ptr():
            return False
        new = [(r, c) for r, c in zip(rows, context) if r not in m.index]
        if not new or any(m.lens[m.index[r]] != c for r, c in zip(rows, context) if r in m.index):
            return False
        bs, cap = self.block_size, m.k.shape[1]
        if -(-max(context) // bs) * bs > cap:
            return False
        slots = [i for i, r in enumerate(m.rows) if r == -1][:len(new)]
        size = len(m.rows) + len(new) - len(slots)
        if size > buf[0].shape[0]:
            return False
        slots += list(range(len(m.rows), size))
        m.rows += [-1] * (size - len(m.rows))
        m.lens += [0] * (size - len(m.lens))
        m.k, m.v = buf[0][:size, :cap], buf[1][:size, :cap]
        gk, gv = self._gather([r for r, _ in new], [c for _, c in new], k_cache, v_cache, block_tables_cpu)
        at = torch.tensor(slots, device=m.k.device)
        m.k[at, :gk.shape[1]], m.v[at, :gv.shape[1]] = gk, gv
        for slot, (r, c) in zip(slots, new):
            m.rows[slot], m.lens[slot], m.index[r] = r, c, slot
        return True
