"""KV state copying: fill the skipped layers of tokens that exited early, in one scatter.

A token that exited after layer e-1 (exit e) has K/V in layers [0, e) only.
State copying writes its layer e-1 K/V into every layer in [e, L) at the same
slot, for all of a step's exited tokens at once. The Triton kernel serves CUDA;
the torch function is the CPU path and the reference.

Shapes: k_cache / v_cache [L, num_slots, Hkv, D]; slots [M] (flat slot of each
exited token); exit_layers [M] (e: the first layer the token skipped).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None


def kv_copy_torch(k_cache, v_cache, slots, exit_layers) -> None:
    num_layers = k_cache.shape[0]
    layer = torch.arange(num_layers, device=slots.device)[None, :]  # [1, L]
    exit_layers = exit_layers.long()
    deep = layer >= exit_layers[:, None]  # [M, L]: the layers each token skipped
    dst_layer = layer.expand_as(deep)[deep]
    dst_slot = slots.long()[:, None].expand_as(deep)[deep]
    src_layer = (exit_layers - 1)[:, None].expand_as(deep)[deep]
    for cache in (k_cache, v_cache):
        cache[dst_layer, dst_slot] = cache[src_layer, dst_slot]


if triton is not None:

    @triton.jit
    def _kv_copy_kernel(k_ptr, v_ptr, slots_ptr, exit_ptr, stride_layer, stride_slot,
                        KV_DIM: tl.constexpr, BLOCK: tl.constexpr):
        tok = tl.program_id(0)
        layer = tl.program_id(1)
        exit_layer = tl.load(exit_ptr + tok)
        if layer >= exit_layer:
            slot = tl.load(slots_ptr + tok).to(tl.int64)
            offs = tl.arange(0, BLOCK)
            ok = offs < KV_DIM
            src = (exit_layer - 1).to(tl.int64) * stride_layer + slot * stride_slot + offs
            dst = layer.to(tl.int64) * stride_layer + slot * stride_slot + offs
            tl.store(k_ptr + dst, tl.load(k_ptr + src, mask=ok), mask=ok)
            tl.store(v_ptr + dst, tl.load(v_ptr + src, mask=ok), mask=ok)


def kv_copy_triton(k_cache, v_cache, slots, exit_layers) -> None:
    if triton is None:
        raise RuntimeError("triton is not installed")
    num_layers, _, num_kv_heads, head_dim = k_cache.shape
    if slots.numel() == 0:
        return
    kv_dim = num_kv_heads * head_dim
    grid = (slots.numel(), num_layers)
    _kv_copy_kernel[grid](k_cache, v_cache, slots, exit_layers, k_cache.stride(0), k_cache.stride(1),
                          KV_DIM=kv_dim, BLOCK=triton.next_power_of_2(kv_dim))
