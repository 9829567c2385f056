"""Admission: which waiting requests join the running batch at a step, and what KV they take on joining.

Requests are admitted oldest first (a preempted request goes back to the head of the queue), while the
batch has room (``--max-batch-size``, parked rows counted) and the KV cache has the blocks the rule asks
for. Every rule keeps a watermark of free blocks (``kv_watermark``, 1% as in vLLM) while anything runs;
when nothing runs there is nobody to protect, and the oldest request joins if it fits at all. The rules
(``SchedulerConfig.admission``, flag ``--admission``):

- ``first-chunk``: a request joins while blocks for its first prefill chunk fit, less the blocks the
  running decode rows need for their next token; its later chunks take blocks as they run. It starts
  prompts early, and under KV pressure it admits requests that the next decode steps then preempt, again
  and again (thrashing: tens of preemptions a request on long prompts).
- ``vllm``: vLLM's rule (v0's block manager, and Vidur's Sarathi scheduler): a request joins only if blocks
  for its whole prompt (after a preemption, its prompt and the tokens it had generated, all recomputed)
  fit, and it takes them all at once. Nothing is kept for the running rows' growth.
- ``reserve`` (the default): as ``vllm``, and room is also kept for the growth of every running request and
  of the one joining, without knowing output lengths: ``ratio`` times the tokens a request is expected to
  generate still (the mean output length of the requests finished so far, ``PRIOR_OUTPUT_TOKENS`` before any
  has, less what it has generated). The ratio adapts as SGLang's ``new_token_ratio`` does: a preemption
  raises it (``RAISE``, at most ``RATIO_MAX``), each step without one lets it decay toward ``RATIO_MIN``.
- ``oracle`` (the simulator only, a reference like ``bound``): knows every request's output length and keeps
  room for exactly the tokens each will still generate: no preemption ever, as many admissions as that
  allows. It says what an admission rule could reach.
"""

from __future__ import annotations

import math
from typing import Iterable

from drex.core.request import Request

PRIOR_OUTPUT_TOKENS = 256  # expected output length before any request has finished (one pseudo-request)
RATIO_INIT, RATIO_MIN, RATIO_MAX = 0.5, 0.1, 1.0
RAISE = 0.25  # ratio += RAISE at a preemption (at most RATIO_MAX)
DECAY = 0.002  # ratio -= DECAY per step without a preemption (at least RATIO_MIN)


class Admission:
    """The admission rule and its state (the reserve ratio, what finished requests generated)."""

    def __init__(self, rule: str, watermark_blocks: int, block_size: int, chunk_size: int) -> None:
        self.rule, self.watermark_blocks, self.block_size, self.chunk_size = rule, watermark_blocks, block_size, chunk_size
        self.ratio = RATIO_INIT
        self._out_sum, self._out_n = float(PRIOR_OUTPUT_TOKENS), 1

    # -- what the scheduler tells it ------------------------------------------------------------------

    def preempted(self) -> None:
        self.ratio = min(RATIO_MAX, self.ratio + RAISE)

    def stepped(self, num_steps: int) -> None:
        self.ratio = max(RATIO_MIN, self.ratio - DECAY * num_steps)

    def finished(self, num_generated: int) -> None:
        self._out_sum += num_generated
        self._out_n += 1

    # -- what it answers ---------------------------------------------------------------------------

    @property
    def takes_all_at_once(self) -> bool:
        """Whether a request takes blocks for its whole context when it joins (vllm), else its chunks take
        them as they run (reserve and oracle count the rest of its prompt as reserved: see ``reserved_blocks``)."""
        return self.rule == "vllm"

    def blocks_to_join(self, req: Request, needed, headroom: bool = True) -> int:
        """Blocks a waiting request must find to join; ``needed(tokens)``: the blocks it lacks for that many.
        Without headroom (nothing runs) its first chunk is enough, whatever the rule."""
        context = req.prompt_tokens + req.num_generated  # its prompt, plus outputs lost to a preemption
        if self.rule == "first-chunk" or (not headroom and not self.takes_all_at_once):
            return needed(min(self.chunk_size, context))
        if self.rule == "vllm":
            return needed(context)
        return self.reserved_blocks(req)

    def tokens_taken_on_joining(self, req: Request) -> int:
        """KV tokens a request takes when it joins: its whole context under vllm, none otherwise."""
        return req.prompt_tokens + req.num_generated if self.takes_all_at_once else 0

    def free_blocks(self, num_free: int, running: Iterable[Request]) -> int:
        """Blocks that admissions may take this step: the free ones less the watermark and what the rule
        keeps for the running requests."""
        if self.rule == "vllm":
            return num_free - self.watermark_blocks
        if self.rule == "first-chunk":  # a decode row holds all but at most its next token: one block or none
            return num_free - (self.watermark_blocks + sum([r.prompt_tokens + r.num_generated > r.kv_tokens
                                                            for r in running if r.num_prefilled >= r.prefill_target]))
        return num_free - self.watermark_blocks - sum([self.reserved_blocks(r) for r in running])

    def reserved_blocks(self, r: Request) -> int:
        """reserve and oracle: the blocks a request will still take, for the rest of its prompt and its future
        tokens, beyond those it holds. Not clamped at 0: a decode row holding blocks ahead (a planned run) gives
        them back to the count, so the answer does not depend on how far ahead the executor takes blocks."""
        if self.rule == "oracle":
            grow = r.output_tokens - r.num_generated
        else:
            grow = math.ceil(self.ratio * max(self._out_sum / self._out_n - r.num_generated, 0.0))
        bs = self.block_size
        return -(-(r.prompt_tokens + r.num_generated + grow) // bs) - -(-r.kv_tokens // bs)

    def victim(self, running: list[Request], protect: Request) -> Request:
        """The running request to preempt (recompute later) so that ``protect`` can go on: the newest one under
        first-chunk and vllm (vLLM's choice); otherwise the one whose preemption loses the least work (the
        fewest tokens in its KV cache to recompute), the newest among equals. ``protect`` goes last."""
        others = [r for r in running if r is not protect] or [protect]
        if self.rule in ("first-chunk", "vllm"):
            return others[-1]
        return min(reversed(others), key=lambda r: r.num_prefilled if r.num_prefilled < r.prefill_target
                   else r.prompt_tokens + r.num_generated)
