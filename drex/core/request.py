"""A request's life: waiting -> running (prefill, then decode) <-> buffered -> finished | rejected.

Preemption (recompute) sends a running request back to waiting with its KV freed;
it prefills prompt + generated tokens again when readmitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum


class RequestStatus(str, Enum):
    """Where a request is; the value is what requests.csv says."""

    WAITING = "waiting"
    RUNNING = "running"
    BUFFERED = "buffered"
    FINISHED = "finished"
    REJECTED = "rejected"

    def __str__(self) -> str:
        return self.value

    @property
    def done(self) -> bool:
        """Accounted for: finished or rejected with a reason."""
        return self in (RequestStatus.FINISHED, RequestStatus.REJECTED)


@dataclass(slots=True, eq=False)
class Request:
    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    status: RequestStatus = RequestStatus.WAITING
    reject_reason: str = ""
    num_prefilled: int = 0  # tokens of the prefill target already in the KV cache
    prefill_target: int = 0  # set at admission: the prompt, plus outputs lost to a preemption
    kv_tokens: int = 0  # KV slots its blocks hold (kept by the scheduler to skip needless allocations)
    num_generated: int = 0
    first_token_s: float = math.nan
    last_token_s: float = math.nan
    finish_s: float = math.nan
    # Early-exit accounting (per output token).
    num_early_exits: int = 0
    num_involuntary_exits: int = 0
    num_involuntary_stays: int = 0
    sum_exit_layer: int = 0
    num_preemptions: int = 0
    buffer_layer: int = -1  # exit layer the request waits at while BUFFERED
    buffered_step: int = -1  # scheduler step it entered the buffer
    # Decode steps it spent waiting, parked or preempted (the TPOT-inflation budget parking draws on).
    num_parked_steps: int = 0
    preempted_step: int = -1  # scheduler step its decoding was preempted at, until it is re-prefilled
    replica: int = 0
    tokens: list[int] = field(default_factory=list)  # real backend only: applied from StepResult.tokens

    def admit(self) -> None:
        self.status = RequestStatus.RUNNING
        self.prefill_target = self.prompt_tokens + self.num_generated

    @property
    def in_prefill(self) -> bool:
        return self.num_prefilled < self.prefill_target

    @property
    def context_len(self) -> int:
        """Tokens in the KV cache once prefilled (the next decode attends to these)."""
        return self.prompt_tokens + self.num_generated - 1 if self.num_generated else self.prompt_tokens

    @property
    def remaining_tokens(self) -> int:
        return self.output_tokens - self.num_generated

    def reject(self, reason: str) -> None:
        self.status = RequestStatus.REJECTED
        self.reject_reason = reason

    def preempt(self) -> None:
        self.status = RequestStatus.WAITING
        self.num_prefilled = 0
        self.kv_tokens = 0
        self.num_preemptions += 1
