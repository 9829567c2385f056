"""``drex costmodel show``: a fitted profile's predictions beside its measurements."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from drex.costmodel import profile as pf
from drex.costmodel.load import load_fitted

PER_OP = 6  # rows shown per operation, spread over its range


def _pick(rows: list[dict], n: int) -> list[dict]:
    if len(rows) <= n:
        return rows
    idx = np.unique(np.linspace(0, len(rows) - 1, n).round().astype(int))
    return [rows[i] for i in idx]


def _us(x: float) -> str:
    return f"{x * 1e6:10.1f}"


def _coord(r: dict, key: str, width: int) -> str:
    """A point's coordinate, or "-" where its operation has none (the profile stores 0 there)."""
    op = r["op"]
    has = {"context": op.endswith(("_decode", "_prefill")), "chunk": op.endswith("_prefill"),
           "num_layers": op == "kv_copy"}[key]
    return f"{r[key] if has else '-':>{width}}"


LEGEND = ("rows: decode rows, prefill chunks, MLP tokens, or the rows a head, buffer, step or KV copy handles;\n"
          "context: cached tokens per decode row, or a prefill chunk's prior context; chunk: a prefill chunk's tokens;\n"
          "layers: the layers a KV copy fills; -: not a coordinate of that operation")


def show(path: str | Path) -> str:
    path = Path(path)
    prof = pf.read_profile(path)
    model = load_fitted(path)
    meta = prof.meta
    lines = [f"{model.name}: {meta['device']['name']}, {meta['dtype']}, model {meta['model']['name']} "
             f"(times in microseconds)", LEGEND, ""]
    lines.append(f"{'operation':<14} {'split':<5} {'rows':>5} {'context':>7} {'chunk':>5} {'layers':>6} "
                 f"{'measured':>10} {'p10':>10} {'p90':>10} {'predicted':>10} {'error':>7}")
    for op in pf.ALL_OPS:
        rows = sorted((r for r in prof.rows if r["op"] == op),
                      key=lambda r: (r["num_tokens"], r["decode_context"], r["prefill_attn"], r["num_layers"]))
        for r in _pick(rows, PER_OP):
            pred = float(model.predict_op(op, r["num_rows"], r["context"], r["chunk"], r["num_layers"]))
            lines.append(f"{op:<14} {r['split']:<5} {r['num_rows']:>5} {_coord(r, 'context', 7)} "
                         f"{_coord(r, 'chunk', 5)} {_coord(r, 'num_layers', 6)} "
                         f"{_us(r['median_s'])} {_us(r['p10_s'])} {_us(r['p90_s'])} "
                         f"{_us(pred)} {100 * (pred / r['median_s'] - 1):>+6.1f}%")
    num_layers = int(meta["model"]["num_layers"])
    lines += ["", f"predicted decode step of the whole model ({num_layers} layers + head + step overhead):",
              f"{'batch':>6} {'context':>8} {'layer':>10} {'step':>10} {'tok/s':>10}"]
    max_ctx = int(meta["model"].get("max_position", 4096))
    contexts = sorted({min(c, max_ctx) for c in (1024, 4096)})
    for b in (1, 16, 64, 256):
        for c in contexts:
            layer = model.layer_s(b, b * c)
            step = num_layers * layer + model.head_s(b) + model.step_overhead_s(b)
            lines.append(f"{b:>6} {c:>8} {_us(layer)} {_us(step)} {b / step:>10.0f}")
    return "\n".join(lines)
