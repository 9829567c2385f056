"""Tensor parallelism in the simulator: one GPU's share of each layer plus the all-reduces that join them.

The layer's own cost comes from a profile measured at that TP degree (``profiles/<device>/<model>/tp<N>/``,
imported from Vidur) or from the roofline at that degree; ``TensorParallel`` adds, per layer, the two
all-reduces of Megatron-style TP (after the attention output projection and after the MLP down projection)
of each token's hidden vector (tokens x hidden x dtype bytes). Each is priced by

- the measured collective where there is one for the device and degree (``collectives.tp_all_reduce``:
  Vidur's medians against message size, A100 and H100 at 2, 4 and 8 GPUs in one node), plus Vidur's launch
  cost ``collectives.LAUNCH_S``;
- otherwise a device-level law (a ring all-reduce, not measured)::

    t = ALLREDUCE_LATENCY_S + 2 (N - 1) / N * tokens * hidden * dtype_bytes / (LINK_EFFICIENCY * link bandwidth)

``allreduce_source`` says which, and the model's ``name`` (a run's summary ``cost_model``) ends with it.
The exit head is vocab-parallel (its logits gather is left out), the step overhead is the one GPU's.
"""

from __future__ import annotations

import numpy as np

from drex.costmodel.base import CostModel
from drex.costmodel.collectives import LAUNCH_S, tp_all_reduce
from drex.devices import Device
from drex.models import ModelShape

ALLREDUCE_LATENCY_S = 8e-6  # NCCL small-message all-reduce within one NVLink node, roughly
LINK_EFFICIENCY = 0.8  # achieved fraction of the link's one-way bandwidth (NCCL bus bandwidth)
ALLREDUCES_PER_LAYER = 2


def check_tp(device: Device, tp: int, shape: ModelShape | None = None) -> None:
    """``tp`` must be priceable on ``device`` and, given a model ``shape``, split it evenly: its attention heads
    and MLP width divide by ``tp``, its KV heads too (or ``tp`` by them: each KV head then sits on several GPUs)."""
    if tp < 1:
        raise ValueError(f"--tp must be >= 1, got {tp}")
    if tp > 1 and device.link_bw_bytes_per_s <= 0:
        raise ValueError(f"device {device.name} has no GPU-to-GPU link in the device table: --tp {tp} is not priced")
    if shape is None or tp == 1:
        return
    heads, kv, width = shape.num_heads, shape.num_kv_heads, shape.intermediate_size
    uneven = [text for bad, text in ((heads % tp, f"{heads} attention heads"),
                                     (kv % tp and tp % kv, f"{kv} KV heads"),
                                     (width % tp, f"MLP width {width:,}")) if bad]
    if uneven:
        raise ValueError(f"--tp {tp} does not divide model {shape.name}'s {', '.join(uneven)}: each GPU of a "
                         f"tensor-parallel replica needs an equal share")


class TensorParallel(CostModel):
    """``base`` (one GPU's share at TP ``tp``) + the all-reduces per layer; everything else as ``base``."""

    def __init__(self, base: CostModel, device: Device, hidden_size: int, tp: int, dtype_bytes: int = 2):
        check_tp(device, tp)
        self.base, self.tp = base, tp
        self._bytes_per_token = hidden_size * dtype_bytes
        self.measured = tp_all_reduce(device.name, tp)
        if self.measured is not None:
            self.allreduce_source = f"{self.measured.label}+launch{LAUNCH_S * 1e6:.0f}us"
        else:
            self.allreduce_source = f"law(no measured all-reduce for {device.name} tp{tp})"
            self._per_token = (ALLREDUCES_PER_LAYER * 2.0 * (tp - 1) / tp * self._bytes_per_token
                               / (LINK_EFFICIENCY * device.link_bw_bytes_per_s))
            self._fixed = ALLREDUCES_PER_LAYER * ALLREDUCE_LATENCY_S
        self.name = f"{base.name} tp{tp} allreduce:{self.allreduce_source}"

    def allreduce_s(self, num_tokens):
        """Seconds of one layer's all-reduces over num_tokens rows (zero for none)."""
        tokens = np.asarray(num_tokens, dtype=float)
        if self.measured is not None:
            one = self.measured.time_s(tokens * self._bytes_per_token) + LAUNCH_S
            return ALLREDUCES_PER_LAYER * one * (tokens > 0)
        return (self._fixed + self._per_token * tokens) * (tokens > 0)

    def layer_s(self, num_tokens, decode_context=0, prefill_attn=0):
        return self.base.layer_s(num_tokens, decode_context, prefill_attn) + self.allreduce_s(num_tokens)

    def head_s(self, num_rows):
        return self.base.head_s(num_rows)

    def step_overhead_s(self, num_rows):
        return self.base.step_overhead_s(num_rows)

    def kv_copy_s(self, num_rows, num_layers):
        return self.base.kv_copy_s(num_rows, num_layers)

    def buffer_s(self, num_rows):
        return self.base.buffer_s(num_rows)

    def __getattr__(self, name):  # attn_s, linear_s, laws ... of the base model
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)
