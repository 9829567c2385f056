"""The sequences of one step's current layer segment, in the order of the hidden-state rows (the executor's
bookkeeping when rows exit, park or are drained in)."""

from __future__ import annotations


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
