"""Paged decode attention: one query token per row, K/V read in place through the block table.

A row finds its cache through ``block_tables[rows[i]]``: a rebatched deep batch
passes a different ``rows`` index tensor and nothing is gathered or copied.
The Triton kernel serves CUDA; ``paged_decode_attention_torch`` is the CPU path
and the reference the kernel is tested against.

Shapes: q [S, Hq, D]; k_cache / v_cache [num_slots, Hkv, D] (one layer, slot =
block * block_size + offset); block_tables [R, max_blocks] int32; rows [S]
(row of each query in block_tables); context_lens [S] (tokens to attend,
including the query's own, already written). Output [S, Hq, D] in q's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs need no triton
    triton = None


_SCRATCH: dict[tuple, torch.Tensor] = {}


def _scratch(name: str, like: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A [rows, cols] view of a buffer kept between calls (grown when too small)."""
    key = (name, like.dtype, like.device)
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < rows * cols:
        with torch.inference_mode(False):  # a normal tensor: writable inside and outside inference mode
            buf = _SCRATCH[key] = torch.empty(rows * cols, dtype=like.dtype, device=like.device)
    return buf[: rows * cols].view(rows, cols)


# Gather at most this many cached tokens at once: past a few MB the gather falls off the CPU caches
# and costs several times more per token (a cliff the profiler measured between 64k and 128k tokens).
MAX_GATHER_TOKENS = 16384


def paged_decode_attention_torch(q, k_cache, v_cache, block_tables, rows, context_lens, block_size: int,
                                 scale: float) -> torch.Tensor:
    span = -(-int(context_lens.max()) // block_size) * block_size
    group = max(1, MAX_GATHER_TOKENS // span)
    if q.shape[0] <= group:
        return _decode_attention_group(q, k_cache, v_cache, block_tables, rows, context_lens, block_size, scale)
    return torch.cat([_decode_attention_group(q[i:i + group], k_cache, v_cache, block_tables, rows[i:i + group],
                                              context_lens[i:i + group], block_size, scale)
                      for i in range(0, q.shape[0], group)])


def _decode_attention_group(q, k_cache, v_cache, block_tables, rows, context_lens, block_size: int,
                            scale: float) -> torch.Tensor:
    num_seqs, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    num_blocks = -(-int(context_lens.max()) // block_size)
    tables = block_tables[rows, :num_blocks].reshape(-1)  # [S * nb]
    # Gather whole blocks (contiguous runs), not slots, into reused scratch memory: on CPU a fresh
    # multi-MB tensor costs more in page faults than the copy itself.
    per_block = block_size * num_kv_heads * head_dim
    k = torch.index_select(k_cache.view(-1, per_block), 0, tables, out=_scratch("k", k_cache, tables.numel(), per_block))
    v = torch.index_select(v_cache.view(-1, per_block), 0, tables, out=_scratch("v", v_cache, tables.numel(), per_block))
    return dense_decode_attention(q, k.view(num_seqs, -1, num_kv_heads, head_dim),
                                  v.view(num_seqs, -1, num_kv_heads, head_dim), context_lens, scale)


def dense_decode_attention(q, k, v, context_lens, scale: float) -> torch.Tensor:
    """q [S, Hq, D] over its rows' gathered context k, v [S, T, Hkv, D] (any strides; the first
    context_lens[i] positions of row i are attended) -> [S, Hq, D]."""
    k, v = k.transpose(1, 2), v.transpose(1, 2)  # [S, Hkv, T, D], strided views
    valid = torch.arange(k.shape[2], device=q.device)[None, :] < context_lens[:, None].long()  # [S, T]
    # torch's fused attention reads the strided views in place (a per-head matmul would first copy K and V
    # into [S, Hkv, T, D], as much memory traffic again as the gather: a tenth of a SmolLM2 decode step).
    o = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=valid[:, None, None, :], scale=scale,
                                       enable_gqa=True)  # [S, Hq, 1, D]
    return o[:, :, 0]


if triton is not None:

    @triton.jit
    def _paged_decode_kernel(q_ptr, k_ptr, v_ptr, o_ptr, bt_ptr, rows_ptr, ctx_ptr, scale,
                             stride_qs, stride_qh, stride_ks, stride_kh, stride_bt, stride_os, stride_oh,
                             GROUPS: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr,
                             BS: tl.constexpr, BLOCK_N: tl.constexpr):
        seq = tl.program_id(0)
        kv_head = tl.program_id(1)
        row = tl.load(rows_ptr + seq).to(tl.int64)
        ctx = tl.load(ctx_ptr + seq)
        g = tl.arange(0, G_PAD)
        d = tl.arange(0, D)
        g_ok = g < GROUPS
        heads = kv_head * GROUPS + g
        # Upcast right after loading: fp32 math (the interpreter's bf16 arithmetic is wrong, and it is more exact).
        q = tl.load(q_ptr + seq * stride_qs + heads[:, None] * stride_qh + d[None, :],
                    mask=g_ok[:, None], other=0.0).to(tl.float32)  # [G, D]
        m = tl.full([G_PAD], float("-inf"), tl.float32)
        l_sum = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, D], tl.float32)
        for start in range(0, ctx, BLOCK_N):
            tok = start + tl.arange(0, BLOCK_N)
            t_ok = tok < ctx
            page = tl.load(bt_ptr + row * stride_bt + tok // BS, mask=t_ok, other=0).to(tl.int64)
            slot = page * BS + tok % BS  # [N]
            kv_off = slot[:, None] * stride_ks + kv_head * stride_kh + d[None, :]
            k = tl.load(k_ptr + kv_off, mask=t_ok[:, None], other=0.0).to(tl.float32)  # [N, D]
            s = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale  # [G, N]
            s = tl.where(t_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m - m_new)
            v = tl.load(v_ptr + kv_off, mask=t_ok[:, None], other=0.0).to(tl.float32)  # [N, D]
            l_sum = l_sum * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
            m = m_new
        out = acc / l_sum[:, None]
        tl.store(o_ptr + seq * stride_os + heads[:, None] * stride_oh + d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=g_ok[:, None])


def paged_decode_attention_triton(q, k_cache, v_cache, block_tables, rows, context_lens, block_size: int,
                                  scale: float, block_n: int = 64) -> torch.Tensor:
    if triton is None:
        raise RuntimeError("triton is not installed")
    num_seqs, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    groups = num_q_heads // num_kv_heads
    if head_dim & (head_dim - 1):
        raise ValueError(f"head_dim {head_dim} must be a power of two for the Triton kernel")
    q = q.contiguous()
    out = torch.empty_like(q)
    grid = (num_seqs, num_kv_heads)
    _paged_decode_kernel[grid](
        q, k_cache, v_cache, out, block_tables, rows, context_lens, scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUPS=groups, G_PAD=triton.next_power_of_2(groups), D=head_dim, BS=block_size, BLOCK_N=block_n,
    )
    return out
