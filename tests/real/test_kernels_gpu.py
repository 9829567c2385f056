"""Triton kernels on CUDA at a 7B model's shape, in fp16 and bf16, against their torch twins.

Skipped without CUDA; benchmarks/gpu/run.sh runs them on the GPU machine (tests/real/test_kernels.py
checks the same kernels at small shapes under TRITON_INTERPRET=1 on CPU).
"""

import pytest
import torch

from drex.real.kernels import kv_copy_torch, kv_copy_triton, paged_decode_attention_torch
from drex.real.kernels import paged_decode_attention_triton
from drex.real.kernels.paged_attention import triton

CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA or triton is None, reason="needs CUDA and triton")]
# llama2-7b: 32 layers, 32 KV heads of 128; llama3-8b's grouped shape: 32 query heads on 8 KV heads.
LAYERS, HEAD_DIM, BLOCK = 32, 128, 16


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kv_copy_at_7b_shape(dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    num_slots = 2048
    k = torch.randn(LAYERS, num_slots, 32, HEAD_DIM, generator=gen, device="cuda").to(dtype)
    v = torch.randn(LAYERS, num_slots, 32, HEAD_DIM, generator=gen, device="cuda").to(dtype)
    slots = torch.randperm(num_slots, generator=gen, device="cuda")[:200]
    exits = torch.randint(1, LAYERS, (200,), generator=gen, device="cuda", dtype=torch.int32)
    k_ref, v_ref = k.clone(), v.clone()
    kv_copy_torch(k_ref, v_ref, slots, exits)
    kv_copy_triton(k, v, slots, exits)
    torch.cuda.synchronize()
    assert torch.equal(k, k_ref) and torch.equal(v, v_ref)  # a copy: bit-exact
    assert not torch.equal(k_ref[LAYERS - 1, slots], k_ref[0, slots])  # and it did move something


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("kv_heads", [32, 8])
def test_paged_attention_at_7b_shape(dtype, tol, kv_heads):
    gen = torch.Generator(device="cuda").manual_seed(1)
    rows, max_blocks = 64, 1024 // BLOCK + 1
    num_blocks = rows * max_blocks
    k = torch.randn(num_blocks * BLOCK, kv_heads, HEAD_DIM, generator=gen, device="cuda").to(dtype)
    v = torch.randn(num_blocks * BLOCK, kv_heads, HEAD_DIM, generator=gen, device="cuda").to(dtype)
    tables = torch.randperm(num_blocks, generator=gen, device="cuda").view(rows, max_blocks).to(torch.int32)
    which = torch.randperm(rows, generator=gen, device="cuda")[:48].to(torch.int32)
    context = torch.randint(1, 1024 + 1, (48,), generator=gen, device="cuda", dtype=torch.int32)
    q = torch.randn(48, 32, HEAD_DIM, generator=gen, device="cuda").to(dtype)
    scale = HEAD_DIM ** -0.5
    ref = paged_decode_attention_torch(q.float(), k.float(), v.float(), tables, which, context, BLOCK, scale)
    out = paged_decode_attention_triton(q, k, v, tables, which, context, BLOCK, scale)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
