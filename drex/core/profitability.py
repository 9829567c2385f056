"""Is a split, a hold, a flush or an inline drain worth it? Predicted from the per-layer cost model.

Two rules decide whether splitting a decode batch at exit layer e pays:

- ``costmodel`` (drex): compare the device time of holding (all b rows run
  [e, L) now) with splitting (the b' exiting rows fill their skipped KV by state
  copy; the s = b - b' staying rows are parked and later run [e, L) inside a
  flush of F rows, so they cost s/F of that flush plus parking). F is the flush
  size the buffer is predicted to reach before its rules force a flush.
- ``art`` (the authors'): running averages t_f (full step), t_s (split step)
  and t_d (flush step); overhead c = t_s + t_d - t_f; split when b' > ART =
  b*c/t_d (b/2 before the first measurement).

Every function is pure: state lives in ``ArtAverages`` and in the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drex.costmodel.base import CostModel


@dataclass
class ArtAverages:
    """Exponential running averages of the three iteration kinds (seconds)."""

    full_s: float = 0.0
    split_s: float = 0.0
    flush_s: float = 0.0
    weight: float = 0.1

    def update(self, kind: str, duration_s: float) -> None:
        old = getattr(self, f"{kind}_s")
        setattr(self, f"{kind}_s", duration_s if old == 0.0 else (1 - self.weight) * old + self.weight * duration_s)

    def art(self, batch_rows):
        """Adaptive rebatching threshold: split only when more than ART rows want to exit."""
        if self.full_s == 0.0 or self.split_s == 0.0 or self.flush_s == 0.0:
            return np.asarray(batch_rows) / 2.0
        overhead = self.split_s + self.flush_s - self.full_s
        return np.asarray(batch_rows) * overhead / self.flush_s


def deep_s(cost: CostModel, exit_layer: int, num_layers: int, rows, context):
    """Layers [exit, L) plus the final head for rows with the given context sum."""
    return cost.layers_s(exit_layer, num_layers, rows, context) + cost.head_s(rows)


def marginal_deep_s(cost: CostModel, exit_layer: int, num_layers: int, rows, context, base_tokens=0, base_attn=0.0):
    """What rows add to layers [exit, L) of a step whose prefill tokens (base) run them anyway."""
    if not base_tokens:
        return deep_s(cost, exit_layer, num_layers, rows, context)
    with_rows = cost.layers_s(exit_layer, num_layers, base_tokens + rows, context, base_attn)
    return with_rows - cost.layers_s(exit_layer, num_layers, base_tokens, 0, base_attn) + cost.head_s(rows)


def split_saving_s(cost: CostModel, exit_layer: int, num_layers: int, rows, exiting, context, stay_context,
                   flush_rows, base_tokens=0, base_attn=0.0):
    """Predicted device seconds saved by splitting instead of holding (positive: split pays).

    rows/exiting/context/stay_context may be arrays (one entry per planned step);
    flush_rows is the predicted size of the flush the stayers will ride in; base_tokens
    are prefill tokens of the same step, which run the deep layers whatever the decode rows do.
    """
    rows = np.asarray(rows, dtype=float)
    staying = rows - exiting
    hold = marginal_deep_s(cost, exit_layer, num_layers, rows, context, base_tokens, base_attn)
    flush_rows = np.maximum(flush_rows, staying)
    # The stayers' share of a flush of flush_rows rows, with contexts like theirs.
    per_row_ctx = np.where(staying > 0, stay_context / np.maximum(staying, 1), 0.0)
    flush = deep_s(cost, exit_layer, num_layers, flush_rows, per_row_ctx * flush_rows) + cost.step_overhead_s(flush_rows)
    share = staying / flush_rows * flush
    park = 2 * cost.buffer_s(staying)  # park now, fetch at flush
    kv_fill = cost.kv_copy_s(exiting, num_layers - exit_layer)
    return hold - (share + park + kv_fill)


def drain_saving_s(cost: CostModel, exit_layer: int, num_layers: int, rows, context, drain_rows, drain_context,
                   base_tokens=0, base_attn=0.0):
    """Seconds saved by joining drain_rows onto a live batch at the exit layer instead of flushing them later."""
    added = (marginal_deep_s(cost, exit_layer, num_layers, rows + drain_rows, context + drain_context, base_tokens,
                             base_attn)
             - marginal_deep_s(cost, exit_layer, num_layers, rows, context, base_tokens, base_attn))
    alone = deep_s(cost, exit_layer, num_layers, drain_rows, drain_context) + cost.step_overhead_s(drain_rows)
    return alone - added
