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
    # Index of the output token each decode row produces in the first planned step.
    decode_token_index: list[int] = field(default_factory=list)
    flush_context: list[int] = field(default_factory=list)
    # Index of the output token each flushed row produces (flushed rows meet every exit point deeper than
    # flush_layer, where they may exit).
    flush_token_index: list[int] = field(default_factory=list)
    drain_context: list[int] = field(default_factory=list)
    # Exit points (indices) the decode rows do not evaluate in this plan: drex saw no split that could pay.
    skip_exits: list[int] = field(default_factory=list)
    # Memory bookkeeping for an executor that holds KV: requests whose blocks were freed (finished or
    # preempted) since the previous plan, and the block manager's tables (request id -> block ids; read only).
    released_ids: list[int] = field(default_factory=list)
    block_tables: dict[int, list[int]] | None = None
    # A run of mixed steps (num_steps > 1 with prefill; the simulator's executor only, see
    # Scheduler.kv_free_executor): the one prefill chunk of each step after the first, whose chunk is ``prefill``.
    later_prefill: list[PrefillChunk] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return len(self.decode_ids) + len(self.prefill) + len(self.flush_ids)


class StepOutcome:
    """Where each decode row of a run of k planned steps ended, built exit point by exit point.

    ``reach[j, r]`` is the layer after which row r's token of step j was
    produced (num_layers: full depth) or, if ``buffered[j, r]``, the layer it
    waits at. A step that parks rows or drains the buffer changes the batch,
    so the run is cut right after it (``num_steps`` shrinks).
    """

    is_plain = False  # True: every row ran every layer and emitted (no exit points were evaluated)

    @classmethod
    def plain(cls, num_steps: int, num_rows: int, num_layers: int) -> "StepOutcome":
        out = cls.__new__(cls)
        out.num_steps, out.num_layers, out.num_rows, out.is_plain, out.drain_layer = \
            num_steps, num_layers, num_rows, True, -1
        return out

    def __init__(self, num_steps: int, num_rows: int, num_layers: int) -> None:
        self.num_steps = num_steps
        self.num_rows = num_rows
        self.num_layers = num_layers
        self.reach = np.full((num_steps, num_rows), num_layers, dtype=np.int32)
        self.exited = np.zeros((num_steps, num_rows), dtype=bool)  # token taken from an exit head
        self.buffered = np.zeros((num_steps, num_rows), dtype=bool)
        self.forced = np.zeros((num_steps, num_rows), dtype=bool)
        self.stayed = np.zeros((num_steps, num_rows), dtype=bool)
        self.active = np.ones((num_steps, num_rows), dtype=bool)
        self.computing = np.ones((num_steps, num_rows), dtype=bool)  # still running layers
        self.drain_layer = -1  # layer the drain rows joined at, in the last step

    def record(self, exit_layer: int, actions: np.ndarray, forced: np.ndarray, stayed: np.ndarray,
               drain: np.ndarray, keeps_batch: bool) -> None:
        k = self.num_steps
        parked = actions == BUFFER
        if k > 1:
            cut = np.flatnonzero(parked.any(axis=1) | drain)
            if len(cut):
                k = int(cut[0]) + 1
                self.truncate(k)
                actions, forced, stayed, drain, parked = actions[:k], forced[:k], stayed[:k], drain[:k], parked[:k]
        exiting = actions == EXIT
        self.exited |= exiting
        self.forced |= forced
        self.stayed |= stayed
        stopped = parked | exiting
        if not keeps_batch:
            self.computing &= ~stopped
        self.reach[stopped] = exit_layer
        self.buffered |= parked
        self.active &= actions == CONTINUE
        if drain[k - 1]:
            self.drain_layer = exit_layer

    def truncate(self, k: int) -> None:
        if k < self.num_steps:
            self.drain_layer = -1  # a drain only ever happens in the last step
        self.num_steps = k
        for name in ("reach", "exited", "buffered", "forced", "stayed", "active", "computing"):
            setattr(self, name, getattr(self, name)[:k])


@dataclass
class StepResult:
    """What the executor did for a plan: per-step durations and, for decode rows, the outcome."""

    durations_s: np.ndarray  # [num_steps]
    outcome: StepOutcome | None = None  # None when the plan had no decode rows
    # Offset from step start at which each decode row's token became available [k, n]; None: step end.
    token_offset_s: np.ndarray | None = None
    # Real backend only: request id -> token ids sampled in this run of steps (the scheduler appends them
    # to Request.tokens).
    tokens: dict[int, list[int]] | None = None
    # Bytes copied by rebatching / KV state copy (measured or priced).
    copied_bytes: int = 0

    @property
    def num_steps(self) -> int:
        return len(self.durations_s)
