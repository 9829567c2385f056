"""Helpers of the real executor: the batch of sequences running through a layer segment, the records it
keeps of each step (its plan, what ``drex validate`` re-prices; the bytes it moved), and synthetic prompts."""

from __future__ import annotations

import dataclasses

import numpy as np

from drex.core.step import StepOutcome, StepPlan
from drex.real.buffer import nbytes


class Batch:
    """The sequences running through the current layer segment, in the order of h's rows.

    A tag names each: ("d", j) decode row j of the plan, ("c", chunk) a prefill chunk, ("r", rid) a drained row.
    """

    def __init__(self, tags, rows, starts, lens):
        self.tags, self.rows, self.starts, self.lens = tags, rows, starts, lens
        self.meta = None

    def add(self, tag, row: int, start: int, num_tokens: int) -> None:
        self.tags.append(tag)
        self.rows.append(row)
        self.starts.append(start)
        self.lens.append(num_tokens)

    def keep(self, idx: list[int]) -> None:
        for name in ("tags", "rows", "starts", "lens"):
            values = getattr(self, name)
            setattr(self, name, [values[k] for k in idx])

    def first_tokens(self, tags) -> list[int]:
        """Index in h of each tagged sequence's first token."""
        where = {tag: k for k, tag in enumerate(self.tags)}
        return [self.meta.token_start[where[tag]] for tag in tags]


_NOT_RECORDED = ("block_tables", "released_ids")


def plan_record(plan: StepPlan) -> dict:
    """The plan as plans.jsonl keeps it (what drex validate re-prices), without the executor's memory bookkeeping."""
    rec = {f.name: getattr(plan, f.name) for f in dataclasses.fields(StepPlan) if f.name not in _NOT_RECORDED}
    rec["num_steps"] = 1
    rec["prefill"] = [[c.request_id, c.start, c.num_tokens, c.last] for c in plan.prefill]
    rec["decisions"] = []  # [exit index, actions, forced, stayed, drain] per exit point asked
    return rec


def concat_outcomes(outs: list[StepOutcome]) -> StepOutcome:
    """One outcome for a run of single steps, as if decided as one k-step plan."""
    if len(outs) == 1:
        return outs[0]
    first = outs[0]
    merged = StepOutcome(len(outs), first.reach.shape[1], first.num_layers)
    for name in ("reach", "exited", "buffered", "forced", "stayed", "active", "computing"):
        setattr(merged, name, np.concatenate([getattr(o, name) for o in outs]))
    merged.drain_layer = outs[-1].drain_layer
    return merged


def synthetic_prompt(seed: int, request_id: int, num_tokens: int, vocab_size: int) -> list[int]:
    """Trace requests carry lengths only: token ids drawn per (seed, request), independent of order."""
    return np.random.default_rng([seed, request_id]).integers(0, vocab_size, num_tokens).tolist()


def copy_record(by_kind: dict) -> dict:
    """steps.csv's columns of the bytes a step moved, from the copy meter's per-kind counts."""
    return {"copied_bytes": sum(by_kind.values()), "kv_copy_bytes": by_kind.get("kv_copy", 0),
            "buffer_bytes": by_kind.get("buffer_park", 0) + by_kind.get("buffer_fetch", 0),
            "gather_bytes": by_kind.get("gather", 0)}


def memory_totals(total, pool, cache, recompute) -> dict:
    """summary.json's byte counts: copied by kind (the copy meter's totals), and the pools and cache held."""
    pending = recompute.pool.h if recompute is not None else None
    return {"kv_copy_bytes": int(total.get("kv_copy", 0)),
            "recompute_pool_bytes": nbytes(pending) if pending is not None else 0,
            "buffer_pool_bytes": nbytes(pool.h),
            "copied_bytes_by_kind": {k: int(v) for k, v in sorted(total.items())},
            "kv_cache_bytes": nbytes(cache.k) + nbytes(cache.v)}
