"""Admission: which waiting requests join the running batch at a step, and what KV they take on joining.

Requests are admitted oldest first (a preempted request goes back to the head of the queue), while the
batch has room (``--max-batch-size``, parked rows counted) and the KV cache has the blocks the rule asks
for. Two rules (``SchedulerConfig.admission``, flag ``--admission``):

- ``first-chunk`` (the default): a request joins while blocks for its first prefill chunk fit in the free
  blocks less a watermark (``kv_watermark``, 1% as in vLLM) and less the blocks the running decode rows
  need for their next token; its later chunks take blocks as they run. It starts prompts early, and under
  KV pressure it admits requests that the next decode steps then preempt.
- ``vllm``: vLLM's rule (v0's block manager, and Vidur's Sarathi scheduler): a request joins only if blocks
  for its whole prompt (after a preemption, its prompt and the tokens it had generated, all recomputed)
  fit with the watermark kept free, and it takes them all at once.

When nothing runs, the headroom is not kept (nobody to protect): the oldest request joins if it fits at all.
"""

from __future__ import annotations

from typing import Iterable


def free_for_admission(rule: str, num_free: int, watermark_blocks: int, decode_needs_block: Iterable[bool]) -> int:
    """Blocks that admissions may take this step. ``decode_needs_block``: per running decode row, whether
    its next token needs a new block (the ``first-chunk`` rule keeps those free)."""
    if rule == "vllm":
        return num_free - watermark_blocks
    return num_free - (watermark_blocks + sum(decode_needs_block))


def tokens_on_admission(rule: str, context_tokens: int, chunk_size: int) -> int:
    """KV tokens a request of ``context_tokens`` (prompt, plus outputs lost to a preemption) needs to join."""
    return context_tokens if rule == "vllm" else min(chunk_size, context_tokens)


def takes_all_at_once(rule: str) -> bool:
    """Whether a request takes its admission blocks when it joins (else its chunks take blocks as they run)."""
    return rule == "vllm"
