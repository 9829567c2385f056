"""A plain batched greedy decoder over the paged cache, with an optional per-row exit rule.

No scheduler, no buffer: every row leaves at the first exit point where its own
confidence clears the threshold, the others go on at once. It is the reference
the serving path is checked against (run one request at a time it is
"decoding each request alone with the same exit rule"), and a quick way to
exercise a model: ``greedy_decode(model, [[1, 2, 3]], 16)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from drex.config import EEConfig
from drex.real.kvcache import PagedKVCache, RecomputeFill
from drex.real.model import EEModel, confidence


@dataclass
class Decoded:
    tokens: list[list[int]]  # per request: output tokens
    exit_layers: list[list[int]]  # per request, per output token: layer count it ran (num_layers = full depth)
    confidences: list[list[dict[int, float]]] = field(default_factory=list)  # exit layer -> confidence


@torch.inference_mode()
def greedy_decode(model: EEModel, prompts: list[list[int]], max_new_tokens, ee: EEConfig | None = None,
                  kv_fill: str = "copy", block_size: int = 16) -> Decoded:
    """Greedy decode of all prompts in one batch (prefill chunks, then lockstep decode steps)."""
    num = len(prompts)
    max_new = [max_new_tokens] * num if isinstance(max_new_tokens, int) else list(max_new_tokens)
    exits = tuple(ee.exits) if ee else ()
    num_layers = model.num_layers
    total_tokens = [len(p) + n for p, n in zip(prompts, max_new)]
    num_blocks = sum(-(-t // block_size) for t in total_tokens)
    cache = PagedKVCache(model.shape, num_blocks, block_size, max_rows=num, dtype=model.dtype, device=model.device,
                         max_blocks_per_row=max(-(-t // block_size) for t in total_tokens))
    recompute = RecomputeFill(num, model.shape.hidden_size, model.dtype, model.device) if kv_fill == "recompute" else None
    for row, t in enumerate(total_tokens):
        cache.reserve(row, t)
    out = Decoded([[] for _ in range(num)], [[] for _ in range(num)], [[] for _ in range(num)])

    # Prefill: full depth (early exit applies to decode tokens only).
    meta = cache.meta(range(num), [0] * num, [len(p) for p in prompts])
    ids = torch.tensor([t for p in prompts for t in p], device=model.device)
    h = model.run_layers(model.embed(ids), meta, cache, 0, num_layers)
    last = torch.tensor([meta.token_start[i] + meta.lens[i] - 1 for i in range(num)], device=model.device)
    first = model.exit_logits(h[last], num_layers).argmax(-1).tolist()
    for row in range(num):
        out.tokens[row].append(first[row])
        out.exit_layers[row].append(num_layers)
        out.confidences[row].append({})

    while True:
        rows = [r for r in range(num) if len(out.tokens[r]) < max_new[r]]
        if not rows:
            return out
        if recompute is not None:
            recompute.run(model, cache, rows)
        positions = [len(prompts[r]) + len(out.tokens[r]) - 1 for r in rows]
        ids = torch.tensor([out.tokens[r][-1] for r in rows], device=model.device)
        h = model.embed(ids)  # [n, H]
        done_layer = 0
        confs: dict[int, dict[int, float]] = {r: {} for r in rows}
        for e in exits + (num_layers,):
            meta = cache.meta(rows, positions, [1] * len(rows))
            h = model.run_layers(h, meta, cache, done_layer, e)
            done_layer = e
            logits = model.exit_logits(h, e)
            tokens = logits.argmax(-1).tolist()
            if e == num_layers:
                leave = [True] * len(rows)
            else:
                conf = (model.estimate(model.exit_hidden(h, e), e) if ee.metric == "learned"
                        else confidence(logits, ee.metric)).tolist()
                for r, c in zip(rows, conf):
                    confs[r][e] = c
                leave = [ee.clears(c) for c in conf]
            for r, tok, go in zip(rows, tokens, leave):
                if go:
                    out.tokens[r].append(tok)
                    out.exit_layers[r].append(e)
                    out.confidences[r].append(confs[r])
            gone = [i for i, go in enumerate(leave) if go]
            if e < num_layers and gone:
                gone_rows = [rows[i] for i in gone]
                gone_pos = [positions[i] for i in gone]
                if recompute is not None:
                    recompute.add(gone_rows, h[gone], e, gone_pos)
                else:
                    cache.copy_fill(gone_rows, gone_pos, [e] * len(gone))
            keep = [i for i, go in enumerate(leave) if not go]
            if not keep:
                break
            if gone:
                h = h[keep]
                rows = [rows[i] for i in keep]
                positions = [positions[i] for i in keep]
