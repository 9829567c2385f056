"""Where one full-batch decode step of SmolLM2-135M goes on this CPU (fp32, one thread): the matmul floor.

    taskset -c N python benchmarks/step_floor_smollm2.py      # ~1 minute; needs `drex model fetch smollm2`

At batch 16, a 160-200 token context in scattered cache blocks, interleaved rounds (medians) of:
- ``floor_layers`` / ``floor_head``: only the step's matmuls, on the model's own weights in layer order
  (30 x q, k, v, o, gate, up, down; the 49,152 x 576 LM head): the weights (540 MB) stream from memory
  once a step, which no implementation of fp32 decoding at this batch avoids;
- ``drex_step``: drex's real backend's decode step (embed, 30 layers over the paged cache, norm, LM head,
  argmax), what ``drex run`` times (on CPU with the decode mirror: K/V kept contiguous between steps);
- ``drex_step_gather``: the same without the mirror (every layer gathers the rows' blocks every step);
- ``drex_step_no_attention``: the same with attention replaced by the identity (what the paged-cache
  gather and attention cost is the difference);
- ``hf_step``: transformers' LlamaForCausalLM decode forward on the same weights (its KV cache filled
  by a 160-token prefill, growing a token a round) and the argmax: ``generate``'s step, minus its
  few logits processors.
Writes benchmarks/results/step_floor_cpu_smollm2.json (hf_generate_smollm2.py puts it beside HF's step).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drex.lab.quality import load_model  # noqa: E402
from drex.real.kvcache import PagedKVCache  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def hf_decoder(batch: int, context: int):
    """transformers' LlamaForCausalLM on the same weights, its cache filled with ``context`` tokens a row."""
    from transformers import LlamaForCausalLM

    from drex.models import get_model

    hf = LlamaForCausalLM.from_pretrained(get_model("smollm2").path, dtype=torch.float32).eval()
    ids = torch.randint(0, hf.config.vocab_size, (batch, context), generator=torch.Generator().manual_seed(1))
    print("HF prefill for its cache ...", file=sys.stderr, flush=True)
    out = hf(input_ids=ids, use_cache=True, logits_to_keep=1)
    return hf, out.past_key_values


@torch.inference_mode()
def main(batch: int = 16, context: int = 160, rounds: int = 15) -> dict:
    torch.set_num_threads(1)
    model, _, _ = load_model("smollm2")
    L, bs = model.num_layers, 16
    blocks = torch.randperm(4096, generator=torch.Generator().manual_seed(0)).tolist()
    per_row = -(-(context + rounds + 8) // bs)
    caches = {m: PagedKVCache(model.shape, 4096, bs, batch, mirror=m) for m in (True, False)}
    for c in caches.values():
        for r in range(batch):  # scattered blocks, as a serving cache holds them
            c.set_blocks(r, blocks[r * per_row:(r + 1) * per_row])
    cache = caches[True]
    ids = torch.randint(0, model.shape.vocab_size, (batch,), generator=torch.Generator().manual_seed(0))
    weights = [p for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("layers.")]
    x = {d: torch.randn(batch, d) for d in {w.shape[1] for w in weights}}

    def step(s, cache=cache):
        meta = cache.meta(range(batch), [context + s] * batch, [1] * batch)
        h = model.run_layers(model.embed(ids), meta, cache, 0, L)
        return model.exit_logits(h, L).argmax(-1).tolist()

    def no_attention(s):
        cache.attend = lambda layer, q, k, v, meta, scale: q
        try:
            return step(s)
        finally:
            del cache.attend

    hf, past = hf_decoder(batch, context)
    hf_ids = ids[:, None]
    mask = torch.ones(batch, context, dtype=torch.long)

    def hf_step(s):
        nonlocal mask
        mask = torch.cat([mask, mask[:, :1]], dim=1)
        out = hf(input_ids=hf_ids, attention_mask=mask, past_key_values=past, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].argmax(-1).tolist()

    cases = {"floor_layers": lambda s: [F.linear(x[w.shape[1]], w) for w in weights],
             "floor_head": lambda s: F.linear(x[model.shape.hidden_size], model.lm_head.weight),
             "drex_step": step, "drex_step_gather": lambda s: step(s, caches[False]),
             "drex_step_no_attention": no_attention,
             "hf_step": hf_step}
    times = {k: [] for k in cases}
    for s in range(rounds + 2):
        for name, fn in cases.items():
            t = time.perf_counter()
            fn(s)
            if s >= 2:
                times[name].append(time.perf_counter() - t)
        print(f"round {s + 1}/{rounds + 2}", file=sys.stderr, flush=True)
    med = {k: round(float(np.median(v)) * 1e3, 2) for k, v in times.items()}
    med["floor_step"] = round(med["floor_layers"] + med["floor_head"], 2)
    weight_bytes = sum(w.numel() * w.element_size() for w in weights) + model.lm_head.weight.numel() * 4
    return {"model": "smollm2", "batch": batch, "context": f"{context}..{context + rounds + 1}", "rounds": rounds,
            "threads": 1, "median_ms": med, "weight_mb_read_per_step": round(weight_bytes / 1e6, 1),
            "floor_gb_per_s": round(weight_bytes / med["floor_step"] / 1e6, 2),
            "drex_over_floor": round(med["drex_step"] / med["floor_step"], 3),
            "hf_over_floor": round(med["hf_step"] / med["floor_step"], 3),
            "drex_step_speedup_over_hf": round(med["hf_step"] / med["drex_step"], 3),
            "mirror_saves_ms": round(med["drex_step_gather"] - med["drex_step"], 2),
            "attention_ms": round(med["drex_step"] - med["drex_step_no_attention"], 2),
            "other_ops_ms": round(med["drex_step_no_attention"] - med["floor_step"], 2),
            "load_average": os.getloadavg(), "torch": torch.__version__}


if __name__ == "__main__":
    out = main()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "step_floor_cpu_smollm2.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
