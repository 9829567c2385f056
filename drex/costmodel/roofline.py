"""The analytic cost model: each operation costs max(compute time, memory time) on the device.

FLOPs and bytes per layer come from the model shape; peak FLOP/s and bandwidth
(derated by achievable efficiencies) from the device table. Used whenever no
measured profile exists for the device and model.
"""

from __future__ import annotations

import numpy as np

from drex.costmodel.base import CostModel
from drex.devices import Device, get_device
from drex.models import ModelShape


class RooflineCostModel(CostModel):
    name = "roofline"

    def __init__(self, shape: ModelShape, device: Device | str, dtype_bytes: int = 2) -> None:
        self.shape = shape
        self.device = get_device(device) if isinstance(device, str) else device
        self.dtype_bytes = dtype_bytes
        d = self.device
        self._flops_s = d.peak_flops * d.flops_efficiency
        self._bw = d.mem_bw_bytes_per_s * d.bw_efficiency
        self._layer_weight_bytes = shape.layer_params * dtype_bytes
        self._kv_token_bytes = shape.kv_bytes_per_token_layer(dtype_bytes)
        self._head_bytes = shape.head_params * dtype_bytes
        self._attn_flops = 4 * shape.num_heads * shape.head_dim  # QK^T and PV, per query-key pair
        self._launch_s = d.step_overhead_s / 50  # one kernel launch, roughly

    def layer_s(self, num_tokens, decode_context=0, prefill_attn=0):
        tokens = np.asarray(num_tokens, dtype=float)
        pairs = np.asarray(decode_context, dtype=float) + np.asarray(prefill_attn, dtype=float)
        flops = 2.0 * self.shape.layer_params * tokens + self._attn_flops * pairs
        # Weights once, the KV read by every decode row, the KV written for every new token.
        bytes_ = self._layer_weight_bytes + self._kv_token_bytes * (np.asarray(decode_context, dtype=float) + tokens)
        t = np.maximum(flops / self._flops_s, bytes_ / self._bw) + 8 * self._launch_s
        return np.where(tokens > 0, t, 0.0) if np.ndim(t) else (float(t) if tokens > 0 else 0.0)

    def head_s(self, num_rows):
        rows = np.asarray(num_rows, dtype=float)
        flops = 2.0 * self.shape.head_params * rows
        t = np.maximum(flops / self._flops_s, self._head_bytes / self._bw) + 3 * self._launch_s
        return np.where(rows > 0, t, 0.0) if np.ndim(t) else (float(t) if rows > 0 else 0.0)

    def step_overhead_s(self, num_rows):
        return self.device.step_overhead_s + 1e-7 * np.asarray(num_rows, dtype=float)

    def kv_copy_s(self, num_rows, num_layers):
        moved = 2.0 * np.asarray(num_rows, dtype=float) * np.asarray(num_layers, dtype=float) * self._kv_token_bytes
        return np.where(moved > 0, moved / self._bw + self._launch_s, 0.0)

    def buffer_s(self, num_rows):
        moved = 2.0 * np.asarray(num_rows, dtype=float) * self.shape.hidden_size * self.dtype_bytes
        return np.where(moved > 0, moved / self._bw + self._launch_s, 0.0)
