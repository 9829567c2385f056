"""The analytic cost model: each operation costs max(compute time, memory time) on the device.

FLOPs and bytes per layer come from the model shape; peak FLOP/s and bandwidth
(derated by achievable efficiencies) from the device table. Used whenever no
measured profile exists for the device and model.

GPUs with a fitted ``EfficiencyCurve`` (devices.py) price a layer as its linear
work on that curve (efficiency against tokens per step, fitted to Vidur's
measured profiles) plus attention from the law calibrated on Vidur's attention
profile (``attention_law``): the same attention an imported profile uses.
Devices without a curve (the CPU) keep the single max(compute, memory).
"""

from __future__ import annotations

import numpy as np

from drex.costmodel.base import CostModel
from drex.costmodel.fitted import smooth_max
from drex.devices import Device, get_device
from drex.models import ModelShape

_TABLE_TOKENS = 1 << 16  # token counts whose curve values are memoised in one table (larger ones: computed)


class RooflineCostModel(CostModel):
    name = "roofline"

    def __init__(self, shape: ModelShape, device: Device | str, dtype_bytes: int = 2, tp: int = 1) -> None:
        """``tp`` > 1: one GPU's share of each layer (weights, heads and LM head split tp ways; KV heads too, down
        to one); ``tensor_parallel.TensorParallel`` adds the all-reduces."""
        self.shape = shape
        self.device = get_device(device) if isinstance(device, str) else device
        self.dtype_bytes = dtype_bytes
        d = self.device
        self.tp = tp
        from drex.costmodel.attention_law import per_gpu_heads

        q_gpu, kv_gpu = per_gpu_heads(shape, tp)
        layer_params, head_params = shape.layer_params / tp, shape.head_params / tp
        self._flops_s = d.peak_flops * d.flops_efficiency
        self._bw = d.mem_bw_bytes_per_s * d.bw_efficiency
        self._layer_weight_bytes = layer_params * dtype_bytes
        self._kv_token_bytes = 2 * kv_gpu * shape.head_dim * dtype_bytes
        self._head_bytes = head_params * dtype_bytes
        self._attn_flops = 4 * q_gpu * shape.head_dim  # QK^T and PV, per query-key pair
        self._launch_s = d.step_overhead_s / 50  # one kernel launch, roughly
        launches = 8 * self._launch_s  # per layer: norms, projections, attention, MLP
        self._c_tok = 2.0 * layer_params / self._flops_s
        self._c_pair = self._attn_flops / self._flops_s
        # Weights once, the KV read by every decode row, the KV written for every new token.
        self._m_fixed = self._layer_weight_bytes / self._bw + launches
        self._m_kv = self._kv_token_bytes / self._bw
        self._h_row = 2.0 * head_params / self._flops_s
        self._h_fixed = self._head_bytes / self._bw + 3 * self._launch_s
        self._kv_move = 2.0 * self._kv_token_bytes / self._bw
        self._buf_move = 2.0 * shape.hidden_size * dtype_bytes / self._bw
        self._curve = d.curve
        if d.curve is not None:
            self._init_curve(shape, d, dtype_bytes, layer_params, head_params)

    def _init_curve(self, shape: ModelShape, d: Device, dtype_bytes: int, layer_params: float, head_params: float):
        from drex.costmodel.attention_law import attention_law

        c = d.curve
        bw = d.mem_bw_bytes_per_s * c.bw_efficiency
        flops = d.peak_flops * c.flops_efficiency
        # t(n) = launch + smax_p(weights / bw, 2 * params * (n + n_half) / flops) + elementwise bytes * n / bw
        # The norms and residual adds are replicated on every GPU: the elementwise term is not split.
        self._lin = (c.layer_launch_s, layer_params * dtype_bytes / bw, 2.0 * layer_params / flops,
                     c.flops_half_tokens, c.elementwise_bytes * shape.hidden_size * dtype_bytes / bw, c.p)
        self._head = (3 * self._launch_s, self._head_bytes / bw, 2.0 * head_params / flops, c.flops_half_tokens,
                      0.0, c.p)
        self._attn = attention_law(shape, d, self.tp, dtype_bytes)
        # The attention law's terms, in its order: c0 + a*decode_context + a*prefill_attn + a*decode_rows.
        assert self._attn.z == ("decode_context", "prefill_attn", "decode_rows") and not self._attn.x
        self._attn_coef = (self._attn.c0, *self._attn.a)
        self._tables: dict[tuple, np.ndarray] = {}
        self._floats: dict[tuple, list[float]] = {}
        self._memo: dict[tuple, float] = {}

    @staticmethod
    def _curve_s(coef, n):
        launch, mem, per_tok, n_half, elem, p = coef
        return launch + smooth_max(mem, per_tok * (n + n_half), p) + elem * n

    def _curve_memo(self, coef, n: np.ndarray):
        """``_curve_s(coef, n)`` bit for bit, from memos of whole token counts (the simulator prices the same
        counts millions of times). numpy's power differs in the last bit between a 0-d operand (libm) and
        an array (SIMD), so scalars and arrays keep memos of their own, each filled the way it is computed."""
        if n.ndim == 0:
            key = (coef, float(n))
            v = self._memo.get(key)
            if v is None:
                v = self._memo[key] = float(self._curve_s(coef, n))
            return v
        table = self._tables.get(coef)
        if table is None:
            table = self._tables[coef] = self._curve_s(coef, np.arange(_TABLE_TOKENS, dtype=float))
            self._floats[coef] = table.tolist()  # the same values as Python floats, for _curve_one
        if n.size == 1:  # the commonest array: checked as a Python number
            v = n.item()
            if 0 <= v < _TABLE_TOKENS and v == int(v):
                return table[n.astype(np.intp)]
            return self._curve_s(coef, n)
        idx = n.astype(np.intp)
        if n.size and (idx == n).all() and 0 <= idx.min() and idx.max() < _TABLE_TOKENS:
            return table[idx]
        return self._curve_s(coef, n)

    def _curve_one(self, coef, n: float) -> float:
        """``_curve_memo`` of a one-element array, as a float (the table's values, kept as Python floats)."""
        values = self._floats.get(coef)
        if values is not None and 0 <= n < _TABLE_TOKENS and n == int(n):
            return values[int(n)]
        return float(self._curve_memo(coef, np.array([n]))[0])

    def layer_s_one(self, num_tokens, decode_context=0.0, prefill_attn=0.0) -> float:
        if self._curve is None:
            return super().layer_s_one(num_tokens, decode_context, prefill_attn)
        t, cd, pa = float(num_tokens), float(decode_context), float(prefill_attn)
        c0, a_ctx, a_pair, a_rows = self._attn_coef
        rows = (t / 2 if cd > 0 else 0.0) if pa > 0 else t  # layer_features' decode_rows
        attn = (c0 + a_ctx * cd) + a_pair * pa + a_rows * rows
        return (self._curve_one(self._lin, t) + attn) * (t > 0)

    def head_s_one(self, num_rows) -> float:
        if self._curve is None:
            return super().head_s_one(num_rows)
        rows = float(num_rows)
        return self._curve_one(self._head, rows) * (rows > 0)

    fast_one = True  # (the three below are plain arithmetic: a float gives an array element's value)

    def step_overhead_s_one(self, num_rows) -> float:
        return self.device.step_overhead_s + 1e-7 * float(num_rows)

    def kv_copy_s_one(self, num_rows, num_layers) -> float:
        moved = self._kv_move * float(num_rows) * num_layers
        return (moved + self._launch_s) * (moved > 0)

    def buffer_s_one(self, num_rows) -> float:
        moved = self._buf_move * float(num_rows)
        return (moved + self._launch_s) * (moved > 0)

    def linear_s(self, num_tokens):
        """The layer less its attention (what Vidur's mlp.csv measures)."""
        tokens = np.asarray(num_tokens, dtype=float)
        if self._curve is None:
            return np.maximum(self._c_tok * tokens, self._m_fixed + self._m_kv * tokens) * (tokens > 0)
        return self._curve_s(self._lin, tokens) * (tokens > 0)

    # Each method is max(compute, memory) with coefficients folded at construction: a handful of numpy
    # operations per call, because the scheduler prices every decision with them.

    def layer_s(self, num_tokens, decode_context=0, prefill_attn=0):
        tokens = np.asarray(num_tokens, dtype=float)
        if self._curve is not None:
            # The attention law over layer_features, with the arithmetic of Law.__call__ in its order (the one
            # feature it needs beside its inputs is decode_rows: the tokens, without prefill work).
            c0, a_ctx, a_pair, a_rows = self._attn_coef
            cd = np.asarray(decode_context, dtype=float)
            pa = np.asarray(prefill_attn, dtype=float)
            if pa.ndim == 0 and pa == 0:
                rows = tokens  # (broadcast with the context below, as layer_features' np.where would)
            else:  # layer_features' decode_rows
                rows = np.where(pa > 0, np.where(cd > 0, tokens / 2, 0.0), tokens)
            attn = (c0 + a_ctx * cd) + a_pair * pa + a_rows * rows
            return (self._curve_memo(self._lin, tokens) + attn) * (tokens > 0)
        compute = (self._c_tok * tokens + self._c_pair * decode_context) + self._c_pair * prefill_attn
        memory = self._m_fixed + self._m_kv * (tokens + decode_context)
        return np.maximum(compute, memory) * (tokens > 0)

    def head_s(self, num_rows):
        rows = np.asarray(num_rows, dtype=float)
        if self._curve is not None:
            return self._curve_memo(self._head, rows) * (rows > 0)
        return np.maximum(self._h_row * rows, self._h_fixed) * (rows > 0)

    def step_overhead_s(self, num_rows):
        return self.device.step_overhead_s + 1e-7 * np.asarray(num_rows, dtype=float)

    def kv_copy_s(self, num_rows, num_layers):
        moved = self._kv_move * np.asarray(num_rows, dtype=float) * num_layers
        return (moved + self._launch_s) * (moved > 0)

    def buffer_s(self, num_rows):
        moved = self._buf_move * np.asarray(num_rows, dtype=float)
        return (moved + self._launch_s) * (moved > 0)
