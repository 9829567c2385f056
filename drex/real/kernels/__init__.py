"""Kernels of the real backend, each with a pure-torch twin: Triton on CUDA, torch on CPU.

The dispatchers pick Triton when the tensors live on CUDA and triton imports;
tests call both twins directly (under TRITON_INTERPRET=1 without a GPU).
"""

from __future__ import annotations

from drex.real.kernels.kv_copy import kv_copy_torch, kv_copy_triton
from drex.real.kernels.paged_attention import paged_decode_attention_torch, paged_decode_attention_triton
from drex.real.kernels.paged_attention import triton as _triton


def use_triton(t) -> bool:
    return t.is_cuda and _triton is not None


def paged_decode_attention(q, k_cache, v_cache, block_tables, rows, context_lens, block_size, scale):
    fn = paged_decode_attention_triton if use_triton(q) else paged_decode_attention_torch
    return fn(q, k_cache, v_cache, block_tables, rows, context_lens, block_size, scale)


def kv_copy(k_cache, v_cache, slots, exit_layers) -> None:
    fn = kv_copy_triton if use_triton(k_cache) else kv_copy_torch
    fn(k_cache, v_cache, slots, exit_layers)


__all__ = ["paged_decode_attention", "kv_copy", "paged_decode_attention_torch", "paged_decode_attention_triton",
           "kv_copy_torch", "kv_copy_triton", "use_triton"]
