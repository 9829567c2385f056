"""Helpers of the real executor: the batch of sequences running through a layer segment, and the
records it keeps of each step's plan (what ``drex validate`` re-prices)."""

from __future__ import annotations

import dataclasses

import numpy as np

from drex.core.step import StepOutcome, StepPlan


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
