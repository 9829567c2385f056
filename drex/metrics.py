"""Flat per-request and per-step records, and the run summary (vLLM ``bench serve`` names where they exist).

Simulator and real backend write the same files: requests.csv, steps.csv,
summary.json. Figures of them: drex.plots (drex plot).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from drex.core.request import Request, RequestStatus

REQUEST_COLUMNS = ("request_id", "replica", "arrival_s", "prompt_tokens", "output_tokens", "status", "reason",
                   "ttft_ms", "e2el_ms", "tpot_ms", "generated_tokens", "early_exits", "involuntary_exits",
                   "involuntary_stays", "mean_exit_layer", "preemptions", "slo_ttft_ms", "slo_tpot_ms", "slo_met")


def check_accounted(requests: list[Request], what: str) -> None:
    """Every request must end finished or rejected with a reason; a scheduler bug must not pass silently."""
    lost = [r.request_id for r in requests if not r.status.done]
    if lost:
        raise RuntimeError(f"{what} ended with {len(lost)} unfinished requests, e.g. {lost[:5]}")


def run_fields(schedulers, num_blocks: int, cost_name: str, source_name: str, cfg, model_name: str) -> dict:
    """summary.json's fields beside the metrics, the same for both bodies: the schedulers' counters and the
    settings (``cfg``: a ``drex.settings.RunSettings``)."""
    return {"num_rebatches": sum(s.num_rebatches for s in schedulers),
            "num_flushes": sum(s.num_flushes for s in schedulers),
            "num_drains": sum(s.num_drains for s in schedulers),
            "num_preemptions": sum(s.num_preemptions for s in schedulers),
            "kv_peak_blocks": max(s.blocks.peak_used for s in schedulers),
            "kv_total_blocks": num_blocks, "cost_model": cost_name, "confidence_source": source_name,
            "policy": cfg.scheduler.policy, "model": model_name, "device": cfg.device, "exits": list(cfg.ee.exits),
            "threshold": cfg.ee.threshold, "replicas": cfg.replicas, "seed": cfg.seed}


def request_records(requests: list[Request]) -> pd.DataFrame:
    rows = []
    for r in sorted(requests, key=lambda r: r.request_id):
        done = r.status == RequestStatus.FINISHED
        ttft = (r.first_token_s - r.arrival_s) * 1e3 if done else math.nan
        tpot = ((r.finish_s - r.first_token_s) / (r.num_generated - 1) * 1e3
                if done and r.num_generated > 1 else math.nan)
        slo_met = done and (r.slo_ttft_ms is None or ttft <= r.slo_ttft_ms) and \
            (r.slo_tpot_ms is None or not tpot > r.slo_tpot_ms)
        rows.append((r.request_id, r.replica, r.arrival_s, r.prompt_tokens, r.output_tokens, r.status.value,
                     r.reject_reason, ttft, (r.finish_s - r.arrival_s) * 1e3 if done else math.nan, tpot,
                     r.num_generated, r.num_early_exits, r.num_involuntary_exits, r.num_involuntary_stays,
                     r.sum_exit_layer / r.num_generated if r.num_generated else math.nan, r.num_preemptions,
                     r.slo_ttft_ms, r.slo_tpot_ms, slo_met))
    return pd.DataFrame(rows, columns=list(REQUEST_COLUMNS))


def _stats(prefix: str, values: np.ndarray, own: bool = False) -> dict[str, float]:
    """Mean, median and p99 of the values that are not NaN. ``own``: values is a scratch array that may be
    reordered (the mean first): a long run's millions of inter-token latencies are not copied twice more."""
    v = np.asarray(values, dtype=float)
    nan = np.isnan(v)
    if nan.any():
        v, own = v[~nan], True
    if not len(v):
        return {f"mean_{prefix}_ms": math.nan, f"median_{prefix}_ms": math.nan, f"p99_{prefix}_ms": math.nan}
    return {f"mean_{prefix}_ms": float(v.mean()), f"median_{prefix}_ms": float(np.median(v, overwrite_input=own)),
            f"p99_{prefix}_ms": float(np.percentile(v, 99, overwrite_input=own))}


def summarize(req: pd.DataFrame, steps: pd.DataFrame, itl_s: np.ndarray, extra: dict) -> dict:
    done = req[req.status == RequestStatus.FINISHED.value]
    start = float(req.arrival_s.min()) if len(req) else 0.0
    end = float((done.arrival_s + done.e2el_ms / 1e3).max()) if len(done) else start
    duration = max(end - start, 1e-12)
    out_tokens = int(done.generated_tokens.sum())
    s = {"completed": int(len(done)), "failed": int(len(req) - len(done)), "duration": duration,
         "total_input_tokens": int(done.prompt_tokens.sum()), "total_output_tokens": out_tokens,
         "request_throughput": len(done) / duration, "output_throughput": out_tokens / duration,
         "total_token_throughput": (out_tokens + int(done.prompt_tokens.sum())) / duration}
    s |= _stats("ttft", done.ttft_ms.to_numpy())
    s |= _stats("tpot", done.tpot_ms.to_numpy())
    s |= _stats("itl", np.asarray(itl_s) * 1e3, own=True)
    s |= _stats("e2el", done.e2el_ms.to_numpy())
    if req.slo_ttft_ms.notna().any() or req.slo_tpot_ms.notna().any():
        s["request_goodput"] = int(req.slo_met.sum()) / duration
    total = max(out_tokens, 1)
    s |= {"early_exit_fraction": int(done.early_exits.sum()) / total,
          "involuntary_exits": int(req.involuntary_exits.sum()),
          "involuntary_stays": int(req.involuntary_stays.sum()),
          "mean_exit_layer": float((done.mean_exit_layer * done.generated_tokens).sum() / total),
          "num_steps": int(len(steps)),
          # Recompute preemptions a request suffered (churn shows as a high max against a low mean).
          "mean_preemptions_per_request": float(req.preemptions.mean()) if len(req) else 0.0,
          "max_preemptions_per_request": int(req.preemptions.max()) if len(req) else 0}
    s |= extra
    return s


def write_run(out_dir: str | Path, req: pd.DataFrame, steps: pd.DataFrame, summary: dict) -> None:
    """Deterministic files: fixed float formatting, sorted keys."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(req, out / "requests.csv")
    write_csv(steps, out / "steps.csv")
    (out / "summary.json").write_text(json.dumps(json_safe(summary), indent=2, sort_keys=True, allow_nan=False,
                                                 default=_json_default) + "\n")


def write_csv(df: pd.DataFrame, path: Path, float_format: str = "%.6f") -> None:
    """``df.to_csv(path, index=False, float_format=...)``, byte for byte, a few times faster: one format per
    row over columns of numbers, booleans and plain strings; a frame with anything else (a string that needs
    quoting, an unusual dtype) goes to pandas."""
    if any(_needs_quotes(str(c)) for c in df.columns) or len(df.columns) < 2 or not _write_rows(df, path,
                                                                                                  float_format):
        df.to_csv(path, index=False, float_format=float_format)


def _write_rows(df: pd.DataFrame, path: Path, float_format: str, chunk: int = 1 << 16) -> bool:
    """Write df a chunk of rows at a time (memory stays that of a chunk); False if a column cannot be written."""
    with open(path, "w", newline="") as f:
        f.write(",".join(map(str, df.columns)) + "\n")
        for start in range(0, len(df), chunk):
            part = df.iloc[start:start + chunk]
            cols = [_csv_column(part[c], float_format) for c in df.columns]
            if any(c is None for c in cols):
                return False
            row = ",".join(fmt for fmt, _ in cols) + "\n"
            f.write("".join(map(row.__mod__, zip(*(values for _, values in cols)))))
    return True


def _needs_quotes(text: str) -> bool:
    return any(ch in text for ch in ',"\n\r')


def _csv_column(col: pd.Series, float_format: str) -> tuple[str, list] | None:
    """(format, values) that write a column's cells as to_csv does (missing: empty), or None where this cannot
    promise that."""
    kind = col.dtype.kind
    values = col.to_numpy()
    if kind in "iu":
        return "%d", values.tolist()
    if kind == "b":
        return "%s", values.tolist()
    if kind == "f":
        if np.isnan(values).any():
            return "%s", ["" if x != x else float_format % x for x in values.tolist()]
        return float_format, values.tolist()
    if kind in "OT" or str(col.dtype) == "string":
        cells = ["" if x is None or (isinstance(x, float) and x != x) else x for x in col.astype(object).tolist()]
        if all(type(x) is str and not _needs_quotes(x) for x in cells):
            return "%s", cells
    return None


def json_safe(x):
    """NaN and infinities as null: they are not JSON, and strict parsers reject them (a metric of no requests)."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)) and not math.isfinite(x):
        return None
    return x


def rejection_lines(req: pd.DataFrame) -> list[str]:
    """What a user must be told about requests that were not served: how many, and why (one line per reason,
    reasons with numbers folded: 'exceeds max_model_len' once, not once per length)."""
    bad = req[req.status != RequestStatus.FINISHED.value]
    if not len(bad):
        return []
    reasons = bad.reason.fillna("").astype(str)
    kinds = reasons.str.replace(r"\d+", "N", regex=True)  # one line per kind of reason, not per number
    lines = [f"{len(bad)} of {len(req)} requests not served:"]
    for (status, kind), n in bad.groupby([bad.status, kinds]).size().sort_values(ascending=False).items():
        example = reasons[(bad.status == status) & (kinds == kind)].iloc[0]
        lines.append(f"  {n} {status}" + (f", e.g. {example}" if example else ""))
    if len(bad) == len(req):
        lines.append("warning: no request was served; every latency metric is empty (null in summary.json)")
    return lines


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


SUMMARY_TABLE = (("completed", "{:d}"), ("failed", "{:d}"), ("output_throughput", "{:.1f}"),
                 ("mean_ttft_ms", "{:.1f}"), ("p99_ttft_ms", "{:.1f}"), ("mean_tpot_ms", "{:.2f}"),
                 ("p99_itl_ms", "{:.2f}"), ("early_exit_fraction", "{:.3f}"), ("involuntary_exits", "{:d}"),
                 ("involuntary_stays", "{:d}"), ("mean_exit_layer", "{:.2f}"), ("num_rebatches", "{:d}"),
                 ("num_flushes", "{:d}"))


def format_table(summaries: dict[str, dict]) -> str:
    """Side-by-side table: one column per run (policy), one row per metric."""
    names = list(summaries)
    width = max(12, *(len(n) + 2 for n in names))
    lines = ["metric".ljust(22) + "".join(n.rjust(width) for n in names)]
    for key, fmt in SUMMARY_TABLE:
        cells = []
        for n in names:
            v = summaries[n].get(key)
            cells.append(("-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)).rjust(width))
        lines.append(key.ljust(22) + "".join(cells))
    return "\n".join(lines)
