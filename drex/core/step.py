"""The executor interface: what the scheduler asks for, and what comes back.

A step is one forward pass. Decode rows and prefill chunks enter at layer 0;
a flush runs buffered rows through [flush_layer, L). At each exit point the
executor computes confidences for the rows still going and asks the
scheduler (``Scheduler.decide_at_exit``) what each row does; it never decides
on its own. ``num_steps > 1`` marks identical decode steps the scheduler
planned ahead (nothing it controls can change between them); an executor may
run them one by one and report how many it ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Row actions at an exit point.
EXIT, CONTINUE, BUFFER = 0, 1, 2


@dataclass(frozen=True)
class PrefillChunk:
    request_id: int
    start: int  # prompt tokens already in the KV cache
    num_tokens: int
    last: bool  # this chunk ends the prompt: the step samples the first output token


@dataclass
class StepPlan:
    step_id: int
    kind: str  # "decode" | "prefill" | "mixed" | "flush"
    decode_ids: list[int] = field(default_factory=list)
    prefill: list[PrefillChunk] = field(default_factory=list)
    flush_ids: list[int] = field(default_factory=list)
    flush_layer: int = 0
    # Buffered rows waiting at drain_layer that may join the decode rows there (inline drain).
    drain_ids: list[int] = field(default_factory=list)
    drain_layer: int = 0
    num_steps: int = 1
    # Context length (tokens already cached) of each decode row, for executors and cost models.
    decode_context: list[int] = field(default_factory=list)
    flush_context: list[int] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return len(self.decode_ids) + len(self.prefill) + len(self.flush_ids)


@dataclass
class ExitDecision:
    """What each row does at one exit point: EXIT, CONTINUE or BUFFER (aligned with the rows asked about)."""

    actions: np.ndarray  # int8
    drain: bool = False  # the plan's drain rows join the continuing rows here
    forced: np.ndarray | None = None  # bool: exits below the threshold (involuntary)


@dataclass
class StepResult:
    """What the executor did. Per-row outcomes were reported through decide_at_exit."""

    duration_s: float
    num_steps: int = 1
    # Real backend only: request id -> sampled token ids for this step.
    tokens: dict[int, int] | None = None
    # Bytes copied by rebatching / KV state copy in this step (measured or priced).
    copied_bytes: int = 0
