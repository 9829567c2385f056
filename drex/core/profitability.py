"""Is a split, a hold, a flush or an inline drain worth it? Predicted from the per-layer cost model.

Two rules decide whether splitting a decode batch at exit layer e pays:

- ``costmodel`` (drex): compare the device time of holding (all b rows run
  [e, L) now) with splitting (the b' exiting rows fill their skipped KV by state
  copy; the s = b - b' staying rows are parked and later run [e, L) inside a
  flush of F rows, so they cost s/F of that flush plus parking, and they miss
  decode steps while parked). F is the flush size the buffer is predicted to
  reach before its rules force a flush; see ``split_saving_s``.
- ``art`` (the authors'): running averages t_f (full step), t_s (split step)
  and t_d (flush step); overhead c = t_s + t_d - t_f; split when b' > ART =
  b*c/t_d (b/2 before the first measurement).

Every function is pure: state lives in ``ArtAverages`` and in the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drex.costmodel.base import CostModel
from drex.costmodel.price import step_s, step_s_one


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
                   flush_rows, base_tokens=0, base_attn=0.0, parked_steps=1, drained=False, soon_rows=None):
    """Predicted device seconds saved by splitting and parking instead of holding (positive: split pays).

    Holding runs all rows through [e, L) now. Splitting skips that for the
    exiting rows, but (a) the staying rows still need [e, L) later: as their
    share of a flush of ``flush_rows`` rows, or, when ``drained`` (inline
    drain), as what they add to the next step's batch at layer e; plus
    parking; (b) the exiting rows need their skipped KV filled by state copy;
    and (c) each parked row misses ``parked_steps`` decode steps: it is absent
    from the next shallow pass, a lost row-step worth the part of this step's
    cost (prefill tokens included) that does not shrink with its rows,
    T(b)/b - dT/db: its layers it runs anyway, shallow now and deep in the flush
    or drain, so over its tokens it pays one more step's fixed share, no more
    layer work. (c) is what running averages miss: when decode is
    memory-bound, T barely depends on b, and (c) turns the rule into "split
    when more than half want to exit".

    Counts may be arrays (one entry per planned step). base_tokens are prefill
    tokens of the same step, which run the deep layers whatever the decode rows do.

    With ``soon_rows``: also the saving of parking on a flush at the very next step, of soon_rows rows (the
    stayers miss no decode step), from the same terms; a pair (that option second).
    """
    if _few_steps(cost, rows, exiting, context, stay_context, flush_rows):
        waits = np.broadcast_to(parked_steps, rows.shape).tolist()  # (one per step, or one for all)
        soon = [None] * len(waits) if soon_rows is None else np.broadcast_to(soon_rows, rows.shape).tolist()
        got = [split_saving_one(cost, exit_layer, num_layers, *v, base_tokens, base_attn, w, drained, n)
               for *v, w, n in zip(rows.tolist(), exiting.tolist(), context.tolist(), stay_context.tolist(),
                                   flush_rows.tolist(), waits, soon)]
        return np.array(got) if soon_rows is None else tuple(np.array(x) for x in zip(*got))
    rows = np.asarray(rows, dtype=float)
    staying = rows - exiting
    flush_rows = np.maximum(flush_rows, staying)
    # Stayers' per-row context stands for the whole flush; every row's for the "one more row" probe.
    stay_ctx_row = np.where(staying > 0, stay_context / np.maximum(staying, 1), 0.0)
    ctx_row = context / np.maximum(rows, 1)
    deep = num_layers - exit_layer
    # Whole steps priced in one stacked call (this runs at every partial exit): the flush that will carry the
    # stayers, a full-depth step of these rows (and the step's prefill), the same with one row more, and with
    # soon_rows the flush at the next step.
    steps = [(deep, flush_rows, stay_ctx_row * flush_rows, 0.0), (num_layers, rows + base_tokens, context, base_attn),
             (num_layers, rows + base_tokens + 1, context + ctx_row, base_attn)]
    if soon_rows is not None:
        soon_rows = np.maximum(soon_rows, staying)
        steps.append((deep, soon_rows, stay_ctx_row * soon_rows, 0.0))
    layers, step_rows, step_ctx, attn = zip(*steps)
    stacked = _stack(step_rows)
    priced = step_s(cost, np.array(layers)[None, :, None], stacked[None], _stack(step_ctx)[None],
                    np.array(attn)[:, None], stacked[None], stacked)
    flush, full, full_plus = priced[:3]
    # Holding: these rows through [e, L) now, beside the step's prefill tokens, which run those layers anyway.
    hold_layer = cost.layer_s(base_tokens + rows, context, base_attn)
    if base_tokens:
        hold_layer = hold_layer - cost.layer_s(base_tokens + 0 * rows, 0 * rows, base_attn)
    hold = deep * hold_layer + cost.head_s(rows)
    if drained:  # they join the next step's rows at layer e: what they add there
        share = (deep * (cost.layer_s(exiting + staying * 2, context + stay_context)
                         - cost.layer_s(exiting + staying, context)) + cost.head_s(staying))
    else:
        share = staying / flush_rows * flush
    park = 2 * cost.buffer_s(staying)  # park now, fetch at flush
    kv_fill = cost.kv_copy_s(exiting, deep)
    # A lost row-step: the row's share of this step's cost that does not shrink with its rows (its layers run
    # anyway: shallow now, deep in the flush or drain that carries it).
    fixed_per_row = np.maximum(full / np.maximum(rows, 1) - (full_plus - full), 0.0)
    lost = staying * parked_steps * fixed_per_row
    saving = hold - (share + park + kv_fill + lost)
    if soon_rows is None:
        return saving
    return saving, hold - (staying / soon_rows * priced[3] + park + kv_fill)


def _stack(arrays) -> np.ndarray:
    """Equal-shape arrays (or scalars, broadcast) stacked on a new first axis (np.stack is slow on the tiny arrays
    decisions use)."""
    arrays = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in arrays))
    return np.concatenate([a.ravel() for a in arrays]).reshape((len(arrays),) + arrays[0].shape)


def drain_saving_s(cost: CostModel, exit_layer: int, num_layers: int, rows, context, drain_rows, drain_context,
                   base_tokens=0, base_attn=0.0):
    """Seconds saved by joining drain_rows onto a live batch at the exit layer instead of flushing them later."""
    if _few_steps(cost, rows, context):
        return np.array([drain_saving_one(cost, exit_layer, num_layers, r, c, drain_rows, drain_context, base_tokens,
                                          base_attn) for r, c in zip(rows.tolist(), context.tolist())])
    added = (marginal_deep_s(cost, exit_layer, num_layers, rows + drain_rows, context + drain_context, base_tokens,
                             base_attn)
             - marginal_deep_s(cost, exit_layer, num_layers, rows, context, base_tokens, base_attn))
    alone = step_s(cost, np.array([num_layers - exit_layer]), np.array([drain_rows]), np.array([drain_context]),
                   0.0, [drain_rows], drain_rows)
    return alone - added


def continue_saving_s(cost: CostModel, exit_layer: int, num_layers: int, rows, exiting, context, stay_context,
                      base_tokens=0, base_attn=0.0):
    """Predicted device seconds saved by split-and-continue instead of holding (positive: it pays).

    The exiting rows emit their exit-head token now (their skipped KV filled by state copy); the staying rows
    go on through [e, L) in this very step, in a smaller batch. Nobody waits, so no decode step is lost: it
    pays exactly when the deep layers' cost shrinks with the rows that leave (KV reads, compute-bound steps).
    Where the backend attends the rows that go on in place among the whole batch (``decode_attends_batch``:
    the CPU decode mirror), their attention reads every row's K/V: only the linear layers shrink.
    """
    if cost.decode_attends_batch:
        stay_context = context
    if _few_steps(cost, rows, exiting, context, stay_context):
        return np.array([continue_saving_one(cost, exit_layer, num_layers, *v, base_tokens, base_attn)
                         for v in zip(rows.tolist(), exiting.tolist(), context.tolist(), stay_context.tolist())])
    rows = np.asarray(rows, dtype=float)
    staying = rows - exiting
    hold = marginal_deep_s(cost, exit_layer, num_layers, rows, context, base_tokens, base_attn)
    stay = marginal_deep_s(cost, exit_layer, num_layers, staying, stay_context, base_tokens, base_attn)
    stay = np.where(staying > 0, stay, 0.0) if not base_tokens else stay
    return hold - stay - cost.kv_copy_s(exiting, num_layers - exit_layer)


# -- a few planned steps (the common case), priced step by step in floats -----------------------------------
# Each function below repeats its vectorised namesake's arithmetic for one step, in the same order, through
# the cost model's *_one methods (an array element's value), so the result is the vectorised one bit for bit
# (tests/core/test_profitability_one.py); a 0-d call stays a 0-d call, as numpy may round it differently.
# Beyond FEW_STEPS steps the vectorised call is as fast (measured on the Vidur-calibrated roofline: a step in
# floats 5.6 us to split and 4.7 us to continue, a vectorised call 160 and 70-120 us whatever its length).
FEW_STEPS = 20


def _few_steps(cost: CostModel, *counts) -> bool:
    if not cost.fast_one:
        return False
    shape = getattr(counts[0], "shape", None)
    return (shape is not None and len(shape) == 1 and 1 <= shape[0] <= FEW_STEPS
            and all(type(c) is np.ndarray and c.shape == shape for c in counts))


def drain_saving_one(cost: CostModel, e: int, L: int, rows, context, drain_rows, drain_context, base_tokens=0,
                     base_attn=0.0) -> float:
    """One step of drain_saving_s."""
    alone = step_s_one(cost, L - e, drain_rows, drain_context, 0.0, drain_rows, drain_rows)
    return alone - (_marginal_one(cost, e, L, rows + drain_rows, context + drain_context, base_tokens, base_attn)
                    - _marginal_one(cost, e, L, rows, context, base_tokens, base_attn))


def continue_saving_one(cost: CostModel, e: int, L: int, rows, exiting, context, stay_context, base_tokens,
                  base_attn) -> float:
    r = float(rows)
    if cost.decode_attends_batch:  # (see continue_saving_s)
        stay_context = context
    hold = _marginal_one(cost, e, L, r, context, base_tokens, base_attn)
    stay = _marginal_one(cost, e, L, r - exiting, stay_context, base_tokens, base_attn)
    stay = stay if base_tokens or r - exiting > 0 else 0.0
    return hold - stay - cost.kv_copy_s_one(exiting, L - e)


def _deep_one(cost: CostModel, e: int, L: int, rows, context) -> float:
    layers = (L - e) * cost.layer_s_one(rows, context) if L > e else 0.0
    return layers + cost.head_s_one(rows)


def _marginal_one(cost: CostModel, e: int, L: int, rows, context, base_tokens, base_attn) -> float:
    if not base_tokens:
        return _deep_one(cost, e, L, rows, context)
    with_rows = (L - e) * cost.layer_s_one(base_tokens + rows, context, base_attn) if L > e else 0.0
    alone = float(cost.layers_s(e, L, base_tokens, 0, base_attn))  # a 0-d call in marginal_deep_s too
    return with_rows - alone + cost.head_s_one(rows)


def _step_one(cost: CostModel, layers: int, rows, context, attn) -> float:
    """One entry of split_saving_s's stacked step_s call (overhead rows given as an array there)."""
    t = layers * cost.layer_s_one(rows, context, attn)
    return t + cost.head_s_one(rows) + cost.step_overhead_s_one(rows)


def split_saving_one(cost: CostModel, e: int, L: int, rows, exiting, context, stay_context, flush_rows, base_tokens,
               base_attn, parked_steps, drained, soon_rows=None):
    """One step of split_saving_s; with soon_rows, also the saving of parking on a flush at the next step of
    soon_rows rows (no step lost): a pair, the terms both share computed once, each what its own call gives."""
    rows = float(rows)
    staying = rows - exiting
    flush_rows = max(float(flush_rows), staying)
    stay_ctx_row = stay_context / max(staying, 1.0) if staying > 0 else 0.0
    ctx_row = context / max(rows, 1.0)
    deep = L - e
    full = _step_one(cost, L, rows + base_tokens, float(context), base_attn)
    full_plus = _step_one(cost, L, rows + base_tokens + 1, context + ctx_row, base_attn)
    hold_layer = cost.layer_s_one(base_tokens + rows, context, base_attn)
    if base_tokens:
        hold_layer = hold_layer - cost.layer_s_one(base_tokens + 0 * rows, 0 * rows, base_attn)
    hold = deep * hold_layer + cost.head_s_one(rows)
    if drained:
        share = (deep * (cost.layer_s_one(exiting + staying * 2, context + stay_context)
                         - cost.layer_s_one(exiting + staying, context)) + cost.head_s_one(staying))
    else:  # (the flush's pass priced only here: a drained row has none)
        share = staying / flush_rows * _step_one(cost, deep, flush_rows, stay_ctx_row * flush_rows, 0.0)
    park = 2 * cost.buffer_s_one(staying)
    kv_fill = cost.kv_copy_s_one(exiting, deep)
    fixed_per_row = max(full / max(rows, 1.0) - (full_plus - full), 0.0)
    lost = staying * parked_steps * fixed_per_row
    saving = hold - (share + park + kv_fill + lost)
    if soon_rows is None:
        return saving
    soon_rows = max(float(soon_rows), staying)
    return saving, hold - (staying / soon_rows * _step_one(cost, deep, soon_rows, stay_ctx_row * soon_rows, 0.0)
                           + park + kv_fill)
