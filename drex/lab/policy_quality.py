"""Output quality of the exit policies under concurrent load, on a trained EE model (``drex quality --policies``).

Every held-out prompt is decoded three ways:

- **reference**: alone (batch of one), with the per-row exit rule
  (``greedy_decode`` at the same exits, metric, threshold and KV fill): what
  the request produces when nothing else runs;
- **full**: alone at full depth;
- **served**: all prompts arriving together through the real executor and the
  shared scheduler (``drex.real.run.run_real``) under each policy.

``eager`` and ``average`` force rows out below the threshold (involuntary
exits): tokens change and, through those tokens, the rest of the output.
``drex`` never forces an exit, but where the cost model says a split does not
pay it keeps the rows that wanted out (involuntary stays): they get the
full-depth token, which can differ from the reference's exit token. Two cost
models separate the two effects:

- ``roofline``: drex's own prediction for this device (what a real run does);
- ``proportional``: layer time proportional to rows, no fixed cost, so every
  split pays: every wish to exit is honoured, and rebatching alone must
  reproduce the reference exactly.

One row per (cost model, KV fill, policy); ``drex quality --policies`` writes
them to ``policies.csv``.
"""

from __future__ import annotations

import sys

import numpy as np

from drex.config import EEConfig, SchedulerConfig
from drex.costmodel.proportional import ProportionalCost
from drex.progress import say

POLICY_COLUMNS = ("policy", "cost_model", "kv_fill", "exit_layers", "metric", "threshold", "num_requests",
                  "max_batch_size", "output_tokens", "token_agreement", "rouge_l", "token_agreement_full",
                  "rouge_l_full", "early_exit_fraction", "involuntary_exits", "involuntary_stays",
                  "output_throughput", "num_rebatches", "num_flushes")
COST_MODELS = ("roofline", "proportional")


def serve(model, model_name: str, prompts: list[list[int]], max_new_tokens: int, ee: EEConfig, policy: str,
          max_batch_size: int, kv_fill: str = "copy", cost_model: str = "roofline", seed: int = 0):
    """All prompts arrive at t=0 and are served by the real executor (``model``) under ``policy``.

    Returns (tokens per request, exit layers per request, summary dict).
    """
    from drex.real.run import RunConfig, run_real
    from drex.settings import RunSettings
    from drex.traces import TraceRequest

    if cost_model not in COST_MODELS:
        raise ValueError(f"cost model must be one of {COST_MODELS}, got {cost_model!r}")
    sched = SchedulerConfig(policy=policy, max_batch_size=max_batch_size)
    cfg = RunConfig(sim=RunSettings(model=model_name, device="cpu", ee=ee, scheduler=sched, seed=seed,
                                  cost_model="roofline"), kv_fill=kv_fill)
    workload = [TraceRequest(i, 0.0, len(p), max_new_tokens) for i, p in enumerate(prompts)]
    cost = ProportionalCost() if cost_model == "proportional" else None
    res = run_real(cfg, workload, prompts=dict(enumerate(prompts)), model=model, cost=cost)
    ex = res.executor
    tokens = [ex.outputs[i] for i in range(len(prompts))]
    exits = [ex.exit_layers[i] for i in range(len(prompts))]
    return tokens, exits, res.summary


def compare_policies(model_name: str, policies=("drex", "eager", "lazy", "average", "latency-only", "off"),
                     metric: str = "margin", threshold: float = 0.4, max_new_tokens: int = 48, num_code: int = 12,
                     num_text: int = 12, max_batch_size: int = 8, exits: tuple[int, ...] | None = None,
                     kv_fill: str = "recompute", cost_models=COST_MODELS) -> list[dict]:
    import torch

    from drex.real.generate import greedy_decode
    from drex.lab.quality import rouge_l, heldout_prompts, load_model

    torch.set_num_threads(1)
    model, tokenizer, directory = load_model(model_name)
    if exits is not None and tuple(exits) != model.exit_layers:
        from drex.real.model import EEModel

        model = EEModel.from_pretrained(directory, exit_layers=tuple(exits))
    ee = EEConfig(exits=model.exit_layers, threshold=threshold, metric=metric)
    prompts = [p for ps in heldout_prompts(tokenizer, num_code, num_text) for p in ps.ids]
    reference = [greedy_decode(model, [p], max_new_tokens, ee, kv_fill=kv_fill).tokens[0] for p in prompts]
    full = [greedy_decode(model, [p], max_new_tokens, None).tokens[0] for p in prompts]
    ref_text = [tokenizer.decode(t) for t in reference]
    full_text = [tokenizer.decode(t) for t in full]

    rows = []
    for cost_model in cost_models:
        for policy in policies:
            tokens, exit_layers, summary = serve(model, model_name, prompts, max_new_tokens, ee, policy,
                                                 max_batch_size, kv_fill, cost_model)
            text = [tokenizer.decode(t) for t in tokens]
            flat_exit = np.concatenate([np.asarray(e) for e in exit_layers])
            rows.append({
                "policy": policy, "cost_model": cost_model, "kv_fill": kv_fill,
                "exit_layers": "/".join(map(str, model.exit_layers)), "metric": metric, "threshold": threshold,
                "num_requests": len(prompts), "max_batch_size": max_batch_size, "output_tokens": int(flat_exit.size),
                "token_agreement": _agreement(tokens, reference),
                "rouge_l": float(np.mean(rouge_l(text, ref_text))),
                "token_agreement_full": _agreement(tokens, full),
                "rouge_l_full": float(np.mean(rouge_l(text, full_text))),
                "early_exit_fraction": float((flat_exit < model.num_layers).mean()),
                "involuntary_exits": int(summary.get("involuntary_exits", 0)),
                "involuntary_stays": int(summary.get("involuntary_stays", 0)),
                "output_throughput": float(summary.get("output_throughput", np.nan)),
                "num_rebatches": int(summary.get("num_rebatches", 0)),
                "num_flushes": int(summary.get("num_flushes", 0)),
            })
            r = rows[-1]
            say(f"{cost_model:12s} {kv_fill:9s} {policy:12s} agree {r['token_agreement']:.3f} "
                f"rougeL {r['rouge_l']:.3f} (vs full {r['token_agreement_full']:.3f}/{r['rouge_l_full']:.3f}) "
                f"exit {r['early_exit_fraction']:.3f} forced {r['involuntary_exits']} "
                f"stays {r['involuntary_stays']} {r['output_throughput']:.0f} tok/s", sys.stdout)  # above the bar
    return rows


def _agreement(tokens, reference) -> float:
    return float(np.concatenate([np.asarray(t) == np.asarray(r) for t, r in zip(tokens, reference)]).mean())
