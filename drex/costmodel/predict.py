"""``drex costmodel predict``: one step's pieces, in seconds, as the simulator prices them from a profile."""

from __future__ import annotations

import json
from pathlib import Path

from drex.costmodel.load import load_fitted


def predict(path: str | Path, num_tokens: int, decode_context: int = 0, prefill_attn: float = 0.0) -> dict:
    """``layer_s`` (one decoder layer) = ``attn_s`` (its attention kernel) + ``linear_s`` (the rest); the exit head
    and the per-step overhead over ``num_tokens`` rows."""
    if num_tokens < 1:
        raise ValueError(f"--num-tokens must be >= 1, got {num_tokens}")
    if decode_context < 0 or prefill_attn < 0:
        raise ValueError("--decode-context and --prefill-attn must be >= 0")
    model = load_fitted(path)
    layer = float(model.layer_s(num_tokens, decode_context, prefill_attn))
    attn = float(model.attn_s(num_tokens, decode_context, prefill_attn))
    # Imported profiles fit the linear work apart; the layer law is its sum with attention, so this is exact there.
    linear = float(model.linear_s(num_tokens)) if "linear" in model.laws else layer - attn
    # The inputs as counts: a whole number of query-key pairs prints as one (96, not 96.0).
    pairs = int(prefill_attn) if float(prefill_attn).is_integer() else prefill_attn
    return {"profile": model.name, "num_tokens": num_tokens, "decode_context": int(decode_context),
            "prefill_attn": pairs, "layer_s": layer, "attn_s": attn, "linear_s": linear,
            "head_s": float(model.head_s(num_tokens)), "step_overhead_s": float(model.step_overhead_s(num_tokens))}


def predict_json(*args, **kw) -> str:
    return json.dumps(predict(*args, **kw))
