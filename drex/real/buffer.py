"""The rebatching pool: hidden states of rows waiting between layers, in preallocated memory.

Rows are addressed by their request's cache row (the same index the KV block
table uses), so forming a deep batch from buffered rows is an index tensor
into this pool and into the block table; the KV cache is never copied. What
does move — hidden states parked or fetched, rows gathered out of a batch —
is counted in a ``CopyMeter`` so every step can report its copied bytes.
"""

from __future__ import annotations

from collections import Counter

import torch


class CopyMeter:
    """Bytes moved by rebatching and KV fill, by kind (``park``, ``fetch``, ``gather``, ``kv_copy``...)."""

    def __init__(self):
        self.total: Counter = Counter()
        self._step: Counter = Counter()

    def add(self, kind: str, num_bytes: int) -> None:
        self.total[kind] += int(num_bytes)
        self._step[kind] += int(num_bytes)

    def take_step(self) -> dict[str, int]:
        """This step's bytes by kind, and start the next step."""
        step, self._step = dict(self._step), Counter()
        return step


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class HiddenPool:
    """h [max_rows, H]: one parked hidden state per cache row, with the layer it resumes at."""

    def __init__(self, max_rows: int, hidden_size: int, dtype, device, meter: CopyMeter | None = None,
                 kind: str = "buffer"):
        self.h = torch.zeros(max_rows, hidden_size, dtype=dtype, device=device)
        self.layer: dict[int, int] = {}  # row -> layer its hidden state enters next
        self.meter = meter or CopyMeter()
        self.kind = kind

    def __contains__(self, row: int) -> bool:
        return row in self.layer

    def __len__(self) -> int:
        return len(self.layer)

    def park(self, rows: list[int], h: torch.Tensor, layer: int) -> None:
        """Store h [n, H] for rows that resume at ``layer``."""
        if not rows:
            return
        idx = torch.tensor(rows, device=self.h.device)
        self.h.index_copy_(0, idx, h.to(self.h.dtype))
        self.meter.add(f"{self.kind}_park", nbytes(h))
        for r in rows:
            self.layer[r] = layer

    def take(self, rows: list[int]) -> torch.Tensor:
        """The parked states [n, H] of rows (which leave the pool)."""
        idx = torch.tensor(rows, device=self.h.device)
        h = self.h.index_select(0, idx)
        self.meter.add(f"{self.kind}_fetch", nbytes(h))
        for r in rows:
            del self.layer[r]
        return h

    def drop(self, row: int) -> None:
        self.layer.pop(row, None)
