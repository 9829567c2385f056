"""The one place a step is priced: the simulator's executor and every profitability prediction call it.

A step is a sum over layer segments (rows and attention work constant within
a segment), the exit heads it evaluated, a per-step overhead, and, for the
rebatching buffer, parking and KV state copy. ``step_s`` composes the cost
model's per-layer pieces in that fixed order, so that what the scheduler
predicts for a flush or a decode step is what the simulator then charges.
"""

from __future__ import annotations

import numpy as np

from drex.costmodel.base import CostModel


def prefill_work(chunks) -> tuple[int, float, int]:
    """Prefill chunks' tokens, their causal attention work (query-key pairs), and how many end a prompt."""
    if not chunks:  # (a decode step's: the sums of nothing)
        return 0, 0, 0
    tokens = sum(c.num_tokens for c in chunks)
    attn = sum(c.num_tokens * (c.start + c.num_tokens / 2) for c in chunks)
    return tokens, attn, sum(c.last for c in chunks)


def step_s(cost: CostModel, layers, rows, context, prefill_attn=0.0, head_rows=None, overhead_rows=None,
           buffer_rows=None, kv_rows=None, kv_layers=None, eval_rows=None, regroup_rows=None):
    """Seconds of a step (or of many stacked ones: trailing axes broadcast).

    - ``layers``, ``rows``, ``context``: segment axis first; segment i runs ``layers[i]`` layers over
      ``rows[i]`` rows whose cached context sums to ``context[i]``; ``prefill_attn`` is the step's prefill work.
    - ``head_rows``: rows of each exit-head evaluation, evaluation axis first (None: no head).
    - ``overhead_rows``: rows the step's fixed overhead scales with (None: a part of a step, no overhead).
    - ``buffer_rows``: rows parked in or fetched from the rebatching pool; ``kv_rows`` x ``kv_layers``:
      KV state copy of exited tokens into the layers they skipped.
    - ``eval_rows``: rows of each learned exit point evaluated (adapter, norm, estimator, decision), evaluation
      axis first; ``regroup_rows``: rows going on past each exit point where others stopped (0: no regroup).
    """
    t = (np.asarray(layers) * cost.layer_s(rows, context, prefill_attn)).sum(axis=0)
    if head_rows is not None:
        t = t + cost.head_s(np.asarray(head_rows, dtype=float)).sum(axis=0)
    if eval_rows is not None:
        t = t + cost.exit_eval_s(np.asarray(eval_rows, dtype=float)).sum(axis=0)
    if regroup_rows is not None:
        t = t + cost.regroup_s(np.asarray(regroup_rows, dtype=float)).sum(axis=0)
    if overhead_rows is not None:
        t = t + cost.step_overhead_s(overhead_rows)
    if buffer_rows is not None and kv_rows is not None:
        t = t + (cost.buffer_s(buffer_rows) + cost.kv_copy_s(kv_rows, kv_layers))
    elif buffer_rows is not None:
        t = t + cost.buffer_s(buffer_rows)
    return t


def step_s_one(cost: CostModel, layers: int, rows, context, prefill_attn, head_rows, overhead_rows) -> float:
    """One step of one layer segment and one head evaluation (a plain step), as a float: bit for bit what
    ``step_s`` gives for it with one-element arrays, without their cost (the simulator's commonest step)."""
    t = layers * cost.layer_s_one(rows, context, prefill_attn)
    t = t + cost.head_s_one(head_rows)
    # (a fast_one model's overhead is plain arithmetic: its float is the 0-d call's value)
    overhead = cost.step_overhead_s_one(overhead_rows) if cost.fast_one else cost.step_overhead_s(overhead_rows)
    return float(t + overhead)


def plain_run_s(cost: CostModel, layers: int, rows, context0, context_step, prefill_attn, head_rows, overhead_rows):
    """Steps of a run of identical plain steps whose context grows by ``context_step`` a step, one at a time
    (the caller stops when it has enough): step j is ``step_s_one`` at context ``context0 + context_step * j``,
    bit for bit what ``step_s`` gives for the run's steps stacked. Only for ``cost.fast_one`` models."""
    head = cost.head_s_one(head_rows)
    overhead = cost.step_overhead_s_one(overhead_rows) if cost.fast_one else cost.step_overhead_s(overhead_rows)
    layer_s_one = cost.layer_s_one
    j = 0
    while True:
        t = layers * layer_s_one(rows, context0 + context_step * j, prefill_attn)
        t = t + head
        yield float(t + overhead)
        j += 1


def step_s_float(cost: CostModel, layers, rows, context, prefill_attn, head_rows, overhead_rows, buffer_rows=None,
                 kv_rows=None, kv_layers=None) -> float:
    """One step of ``step_s`` given as lists (layer segments, head evaluations; fewer than 8 of each), as a float:
    bit for bit its value, composed in its order from a ``fast_one`` model's *_one methods (numpy sums fewer
    than 8 terms of an axis one after another). The simulator's commonest step with exit points."""
    layer_s_one, head_s_one = cost.layer_s_one, cost.head_s_one
    t = layers[0] * layer_s_one(rows[0], context[0], prefill_attn)
    for i in range(1, len(layers)):
        t += layers[i] * layer_s_one(rows[i], context[i], prefill_attn)
    heads = head_s_one(head_rows[0])
    for h in head_rows[1:]:
        heads += head_s_one(h)
    t = (t + heads) + cost.step_overhead_s_one(overhead_rows)
    if buffer_rows is not None and kv_rows is not None:
        return t + (cost.buffer_s_one(buffer_rows) + cost.kv_copy_s_one(kv_rows, kv_layers))
    if buffer_rows is not None:
        return t + cost.buffer_s_one(buffer_rows)
    return t
