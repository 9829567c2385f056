"""Fit a profile imported from Vidur (``vidur.py``): the laws of ``fitted.py``, the report of ``fit.py``.

What is measured is fitted as ``drex costmodel fit`` fits it: the layer's linear
work and its MLP by the smooth-max law on the ``fit`` points, then a table of
the fitted points' residual factors (the wave-quantization steps of the GEMMs,
interpolated between points). Attention is fitted where the profile measured it,
else priced by ``attention_law``. The layer law is the sum of the two (one
law: the attention terms are additive). What the profile does not measure is
priced from the device and stated in meta.json and the report:

- the exit head (final norm + LM head): the fitted linear law, table left out,
  scaled by head/layer weights (the same GEMMs, vocab wide instead of layer wide);
- step overhead (embedding, sampling, launches, scheduling), the rebatching
  buffer and the KV copy: the analytic roofline's device terms.

That is the ``measured`` fit rule (the default): a model of the GPU that Vidur
measured. The ``vidur`` rule (meta.json ``source.fit_rule``; ``import-vidur
--fit-rule vidur``) prices a step as Vidur's own predictor does (its
``LinearRegressionExecutionTimePredictor`` and ``ExecutionTime.total_time`` at
commit 7d47513, default settings), for side-by-side runs with Vidur:

- the linear work and the MLP: a least-squares straight line through all the
  measured points (fit and held: Vidur trains on all), at the token count
  rounded up to a multiple of 8 (``tokens_up8``). Vidur's grid search picks
  degree 1 for every GEMM of these profiles, and the sum of the ops' lines is the
  line of the sum. No table: a line misses the GEMMs' flat weight-read floor, so
  small batches cost less than measured (Llama-2-70B TP-2 A100, 8 tokens: 0.44
  ms a layer against 0.57 measured; 32: 0.53 against 0.60) and 128 more (0.90
  against 0.86);
- no exit head and no step overhead: Vidur's ``model_time`` counts the decoder
  layers only (no embedding, LM head or sampler) and its default
  ``skip_cpu_overhead_modeling`` drops the CPU costs;
- attention as the ``measured`` rule, the measured kernels. Vidur's attention
  predictors depart from its own measurements: decode times 1.1 (its
  ``attention_decode_batching_overhead_fraction``), and a prefill chunk after
  cached context about 3x low (480 tokens after 1,024: 0.046 ms predicted, 0.14
  measured; its polynomial in context and chunk squared cannot follow chunk x
  context). The law could carry the first, not the second: Vidur prices prefill
  from each chunk's length and context, and a step's price reaches the cost model
  as its rows, decode context and prefill work alone. Sarathi's mixed steps of
  512 tokens after long context are therefore up to 5% dearer than Vidur's.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from drex import __version__
from drex.costmodel import profile as pf
from drex.costmodel.attention_law import attention_law, per_gpu_heads
from drex.costmodel.fit import FIT_VERSION, error_table, features, fit_law, format_table, law_text
from drex.costmodel.fitted import FittedCostModel, Law, smooth_max, token_features
from drex.devices import Device, get_device
from drex.models import ModelShape
from drex.outputs import recorded_path

ATTN_Z = ("decode_context", "prefill_attn", "decode_rows")
FIT_RULES = ("measured", "vidur")  # see the module docstring
ZERO = Law(("rows",), (), 0.0, 0.0, 1.0, (0.0,), ())


def check_fit_rule(rule: str) -> str:
    if rule not in FIT_RULES:
        raise ValueError(f"unknown fit rule {rule!r} (choose from {', '.join(FIT_RULES)})")
    return rule


def unmeasured_statements(shape: ModelShape, dev: Device, tp: int, rule: str = "measured") -> dict[str, str]:
    if check_fit_rule(rule) == "vidur":
        head = "not priced (fit rule vidur: Vidur's model_time counts the decoder layers only, no LM head)"
        step = "not priced (fit rule vidur: no embedding or sampler, and Vidur's default skips CPU overheads)"
    else:
        head = ("final norm + LM head: the fitted linear law (without its table) scaled by head/layer weights "
                f"({shape.head_params / shape.layer_params:.3f}); Vidur does not profile the LM head")
        step = (f"per step: {dev.step_overhead_s * 1e6:.0f} us (device table: embedding, sampling, launches, "
                "scheduling) + 0.1 us per row; not in Vidur's per-layer profile")
    return {
        "head": head,
        "step": step,
        "buffer": "park/fetch of hidden states: one launch + read and write of each row at the device table's "
                  "bandwidth and efficiency",
        "kv_copy": "K/V copy into skipped layers: one launch + read and write of each row's K/V per layer "
                   f"(KV heads per GPU at TP {tp}) at the device table's bandwidth and efficiency",
        "all_reduce": "not included: the layer is one GPU's share at this TP degree (the simulator adds it)",
    }


def _unmeasured_laws(shape: ModelShape, dev: Device, tp: int, linear: Law) -> dict[str, Law]:
    """Head, step, buffer and KV-copy laws from the device (see module docstring)."""
    bw = dev.mem_bw_bytes_per_s * dev.bw_efficiency
    launch = dev.step_overhead_s / 50  # one kernel launch, as the roofline counts it
    r = shape.head_params / shape.layer_params
    head = Law(("rows",), (), linear.c0, linear.m * r, linear.p, (linear.k[0] * r,), ())
    _, kv_gpu = per_gpu_heads(shape, tp)
    kv_row_layer = 2.0 * (2 * kv_gpu * shape.head_dim * 2) / bw
    return {
        "head": head,
        "step": Law(("rows",), (), dev.step_overhead_s, 0.0, 1.0, (1e-7,), ()),
        "buffer": Law(("rows",), (), launch, 0.0, 1.0, (2.0 * 2 * shape.hidden_size * 2 / bw,), ()),
        "kv_copy": Law(("rows_x_layers",), ("layers", "rows"), launch, 0.0, 1.0, (kv_row_layer,), (0.0, 0.0)),
    }


def fit_vidur_line(rows: list[dict]) -> Law:
    """Vidur's rule for one op's rows: the least-squares line through all its points (fit and held) against the
    token count, priced at the count rounded up to 8; through the origin where a free intercept would be negative."""
    n = np.array([r["num_tokens"] for r in rows], dtype=float)
    y = np.array([r["median_s"] for r in rows])
    k, c0 = np.polyfit(n, y, 1) if len(rows) > 1 else (0.0, -1.0)
    if c0 < 0:
        k, c0 = float(n @ y / (n @ n)), 0.0
    if not k >= 0:
        raise ValueError(f"op {rows[0]['op']}: the times fall with the token count; no line of Vidur's rule fits")
    return Law(("tokens_up8",), (), float(c0), 0.0, 1.0, (float(k),), ())


def fit_tabled(rows: list[dict]) -> tuple[Law, Law]:
    """(smooth law, the same law with the fitted points' residual table) for one op's fit rows."""
    rows = sorted((r for r in rows if r["split"] == "fit"), key=lambda r: r["num_tokens"])
    n = np.array([r["num_tokens"] for r in rows], dtype=float)
    y = np.array([r["median_s"] for r in rows])
    law = fit_law(("tokens",), (), {"tokens": n}, y)
    s = smooth_max(law.m, law.k[0] * n, law.p)
    factors = np.maximum((y - law.c0) / s, 0.0)
    return law, replace(law, table=(tuple(float(v) for v in n), tuple(float(v) for v in factors)))


def _shape_of(meta: dict) -> ModelShape:
    m = dict(meta["model"])
    m["trained_exits"] = tuple(m.get("trained_exits") or ())
    return ModelShape(**m)


def fit_imported(path: str | Path) -> tuple[dict, str]:
    """Fit an imported profile directory; writes fit.json and fit_report.txt. Returns (fit dict, report)."""
    path = Path(path)
    t0 = time.perf_counter()
    prof = pf.read_profile(path)
    meta = prof.meta
    src = meta.get("source") or {}
    try:
        shape, dev, tp = _shape_of(meta), get_device(meta["device"]["requested"]), int(src["tp"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path / pf.META}: unusable model/device/source fields ({e})") from None
    by_op = {op: [r for r in prof.rows if r["op"] == op] for op in pf.ALL_OPS}
    if not by_op["linear"] or not by_op["mlp"]:
        raise ValueError(f"{path / pf.MEASUREMENTS}: an imported profile needs 'linear' and 'mlp' rows")
    try:
        rule = check_fit_rule(src.get("fit_rule", "measured"))
    except ValueError as e:
        raise ValueError(f"{path / pf.META}: field source.fit_rule: {e}") from None
    if rule == "vidur":
        smooth = linear = fit_vidur_line(by_op["linear"])
        mlp = fit_vidur_line(by_op["mlp"])
    else:
        smooth, linear = fit_tabled(by_op["linear"])
        _, mlp = fit_tabled(by_op["mlp"])
    attn_rows = [r for r in by_op["attn_decode"] + by_op["attn_prefill"] if r["split"] == "fit"]
    if attn_rows:
        attn = fit_law((), ATTN_Z, features(attn_rows), np.array([r["median_s"] for r in attn_rows]))
    else:
        attn = attention_law(shape, dev, tp)
    layer = Law(linear.x, attn.z, linear.c0 + attn.c0, linear.m, linear.p, linear.k, attn.a, (), linear.table)
    laws = {"layer": layer, "attn": attn, "mlp": mlp, "linear": linear,
            **_unmeasured_laws(shape, dev, tp, smooth)}
    if rule == "vidur":
        laws |= {"head": ZERO, "step": ZERO}
    model = FittedCostModel(laws, name=f"profile:{path}")
    table = error_table(model, prof.rows)
    smooth_err = _smooth_held_mape(smooth, by_op["linear"])
    fit_s = time.perf_counter() - t0
    fit = {
        "schema_version": pf.SCHEMA_VERSION, "fit_version": FIT_VERSION, "drex_version": __version__,
        "measurements_sha256": pf.file_sha256(path / pf.MEASUREMENTS),
        "device": meta["device"], "dtype": meta["dtype"], "model": meta["model"], "fit_seconds": round(fit_s, 3),
        "laws": {fam: law.to_json() for fam, law in laws.items()},
        "errors": table, "linear_smooth_law_held_mape": smooth_err,
        "source": src, "attention": meta.get("attention"), "unmeasured": meta.get("unmeasured"),
    }
    pf.write_json(path / pf.FIT, fit)
    report = _report(path, prof, table, laws, smooth_err, tp)
    (path / pf.FIT_REPORT).write_text(report)
    return fit, report


def _smooth_held_mape(smooth: Law, rows: list[dict]) -> float:
    held = [r for r in rows if r["split"] == "held"]
    if not held:
        return float("nan")
    y = np.array([r["median_s"] for r in held])
    pred = smooth(token_features([r["num_tokens"] for r in held]))
    return float(np.mean(np.abs(pred / y - 1.0)))


def _report(path: Path, prof: pf.Profile, table: dict, laws: dict[str, Law], smooth_err: float, tp: int) -> str:
    meta, src = prof.meta, prof.meta["source"]
    header = (f"drex cost-model fit of {recorded_path(path)} (imported from Vidur)\n"
              f"device {meta['device']['requested']}, dtype {meta['dtype']}, model {meta['model']['name']}, "
              f"TP {tp} (one GPU's share of a layer), "
              f"{'fit rule vidur (Vidur predictor), ' if src.get('fit_rule') == 'vidur' else ''}{len(prof.rows)} points "
              f"({sum(r['split'] == 'held' for r in prof.rows)} held out)\n"
              f"source: {src.get('path')} ({', '.join(src.get('files', {}))}), {src.get('repository')} "
              f"commit {src.get('commit') or 'unknown'}, licence {src.get('licence')}\n")
    laws_txt = "\n".join(f"  {fam:<8} {law_text(law)}"
                         + (f" x table({len(law.table[0])} knots)" if law.table else "") for fam, law in laws.items())
    notes = "\n".join(f"  {k}: {v}" for k, v in {"attention": meta.get("attention"), **meta["unmeasured"]}.items())
    return (f"{header}\n{format_table(table)}\n"
            f"linear: the {'smooth law alone (no table)' if laws['linear'].m else 'line of the vidur rule'} has "
            f"held-out MAPE {100 * smooth_err:.2f}%\n\n"
            f"fitted laws (seconds):\n{laws_txt}\n\nnot measured by the profile:\n{notes}\n")
