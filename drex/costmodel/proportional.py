"""A cost model for tests and quality studies: layer time proportional to rows, nothing fixed.

With no fixed per-layer cost every split pays, so ``drex`` honours every wish to exit
and rebatching alone must reproduce decoding each request alone.
"""

from __future__ import annotations

import numpy as np

from drex.costmodel.base import CostModel


class ProportionalCost(CostModel):
    """Layer time proportional to rows, no fixed per-layer cost: every split pays, so drex honours every exit."""

    name = "proportional"

    def layer_s(self, num_tokens, decode_context=0, prefill_attn=0):
        return 1e-4 * np.asarray(num_tokens, dtype=float)

    def head_s(self, num_rows):
        return 0.0 * np.asarray(num_rows, dtype=float)

    def step_overhead_s(self, num_rows):
        return 1e-5 + 0.0 * np.asarray(num_rows, dtype=float)

    def kv_copy_s(self, num_rows, num_layers):
        return 0.0 * np.asarray(num_rows, dtype=float)

    def buffer_s(self, num_rows):
        return 0.0 * np.asarray(num_rows, dtype=float)
