"""Triton kernels against their torch twins: under TRITON_INTERPRET=1 on CPU (tiny shapes), in bf16 on a GPU."""

import os

import pytest
import torch

from drex.real.kernels import kv_copy_torch, kv_copy_triton, paged_decode_attention_torch
from drex.real.kernels import paged_decode_attention_triton
from drex.real.kernels.paged_attention import triton

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(triton is None or not (CUDA or os.environ.get("TRITON_INTERPRET") == "1"),
                                reason="needs triton with CUDA or TRITON_INTERPRET=1")
DEVICE = "cuda" if CUDA else "cpu"


def _paged_case(dtype, num_q_heads, num_kv_heads, head_dim=16, block_size=4, device=DEVICE, seed=0):
    """Rows with scattered, shuffled blocks; queries address a subset of rows in a shuffled order."""
    gen = torch.Generator().manual_seed(seed)
    num_blocks, max_rows, max_blocks = 32, 6, 5
    k = torch.randn(num_blocks * block_size, num_kv_heads, head_dim, generator=gen).to(device, dtype)
    v = torch.randn(num_blocks * block_size, num_kv_heads, head_dim, generator=gen).to(device, dtype)
    tables = torch.randperm(num_blocks, generator=gen)[: max_rows * max_blocks].view(max_rows, max_blocks)
    rows = torch.tensor([4, 1, 5, 0], dtype=torch.int32)
    context = torch.tensor([1, 7, 20, 13], dtype=torch.int32)  # one token, a partial block, full blocks
    q = torch.randn(len(rows), num_q_heads, head_dim, generator=gen).to(device, dtype)
    return q, k, v, tables.to(device, torch.int32), rows.to(device), context.to(device)


def _dense_reference(q, k, v, tables, rows, context, block_size, scale):
    """Attention written out per row in fp64: the ground truth both twins must match."""
    out = []
    for i in range(q.shape[0]):
        n = int(context[i])
        slots = torch.stack([tables[rows[i], p // block_size] * block_size + p % block_size for p in range(n)])
        kk, vv = k[slots.long()].double(), v[slots.long()].double()  # [n, Hkv, D]
        groups = q.shape[1] // k.shape[1]
        kk, vv = kk.repeat_interleave(groups, 1), vv.repeat_interleave(groups, 1)
        w = torch.softmax(torch.einsum("hd,nhd->hn", q[i].double(), kk) * scale, -1)
        out.append(torch.einsum("hn,nhd->hd", w, vv))
    return torch.stack(out)


@pytest.mark.slow
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 2)])  # MHA, GQA, a group count that is not a power of 2
def test_paged_decode_attention_matches_reference(dtype, tol, heads):
    q, k, v, tables, rows, context = _paged_case(dtype, *heads)
    scale = 0.25
    ref = _dense_reference(q, k, v, tables, rows, context, 4, scale)
    ours_torch = paged_decode_attention_torch(q, k, v, tables, rows, context, 4, scale)
    ours_triton = paged_decode_attention_triton(q, k, v, tables, rows, context, 4, scale, block_n=8)
    assert ours_triton.dtype == dtype
    torch.testing.assert_close(ours_torch.double(), ref, atol=tol, rtol=tol)
    torch.testing.assert_close(ours_triton.double(), ref, atol=tol, rtol=tol)


@pytest.mark.slow  # a bf16 kernel under the Triton interpreter: about a second
def test_paged_decode_attention_bf16_is_upcast_inside_the_kernel():
    q, k, v, tables, rows, context = _paged_case(torch.bfloat16, 4, 2)
    ref = _dense_reference(q, k, v, tables, rows, context, 4, 0.25)
    out = paged_decode_attention_triton(q, k, v, tables, rows, context, 4, 0.25, block_n=8)
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)


def _kv_copy_case(dtype):
    gen = torch.Generator().manual_seed(1)
    k = torch.randn(5, 40, 2, 8, generator=gen).to(DEVICE, dtype)  # [L, slots, Hkv, D]
    v = torch.randn(5, 40, 2, 8, generator=gen).to(DEVICE, dtype)
    slots = torch.tensor([3, 17, 39, 8], device=DEVICE)
    exits = torch.tensor([1, 4, 2, 3], dtype=torch.int32, device=DEVICE)
    return k, v, slots, exits


def _assert_kv_copy_semantics(k0, v0, k, v, slots, exits):
    """Against the tensors *before* the copy (k0, v0): at each copied slot, layers >= its exit hold layer
    exit-1's K and V, layers below the exit keep their own; every other slot is untouched, in K and in V."""
    for s, e in zip(slots.tolist(), exits.tolist()):
        for layer in range(k0.shape[0]):
            src = e - 1 if layer >= e else layer
            assert torch.equal(k[layer, s], k0[src, s]), f"K slot {s} layer {layer} (exit {e})"
            assert torch.equal(v[layer, s], v0[src, s]), f"V slot {s} layer {layer} (exit {e})"
    untouched = torch.ones(k0.shape[1], dtype=torch.bool)
    untouched[slots.cpu()] = False
    untouched = untouched.to(k0.device)
    assert torch.equal(k[:, untouched], k0[:, untouched]) and torch.equal(v[:, untouched], v0[:, untouched])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kv_copy_scatter_matches_torch(dtype):
    k, v, slots, exits = _kv_copy_case(dtype)
    k0, v0 = k.clone(), v.clone()
    k_ref, v_ref = k.clone(), v.clone()
    kv_copy_torch(k_ref, v_ref, slots, exits)
    kv_copy_triton(k, v, slots, exits)
    assert torch.equal(k, k_ref) and torch.equal(v, v_ref)
    _assert_kv_copy_semantics(k0, v0, k_ref, v_ref, slots, exits)


def test_kv_copy_check_catches_wrong_copies():
    """The semantics check fails on a copy that writes a shallow layer, or that copies K but not V (the old
    check compared shallow layers with themselves and looked at K only)."""
    k, v, slots, exits = _kv_copy_case(torch.float32)
    k0, v0 = k.clone(), v.clone()
    kv_copy_torch(k, v, slots, exits)
    shallow = k.clone()
    shallow[0, slots[1]] = k0[2, slots[1]]  # slot 17 exits at 4: layer 0 must keep its own K
    with pytest.raises(AssertionError):
        _assert_kv_copy_semantics(k0, v0, shallow, v, slots, exits)
    with pytest.raises(AssertionError):
        _assert_kv_copy_semantics(k0, v0, k, v0.clone(), slots, exits)  # K copied, V not


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_paged_decode_attention_bf16_on_gpu_at_real_shape():
    q, k, v, tables, rows, context = _paged_case(torch.bfloat16, 32, 8, head_dim=128, block_size=16)
    ref = paged_decode_attention_torch(q.float(), k.float(), v.float(), tables, rows, context, 16, 128 ** -0.5)
    out = paged_decode_attention_triton(q, k, v, tables, rows, context, 16, 128 ** -0.5)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
