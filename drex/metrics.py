"""Flat per-request and per-step records, and the run summary (vLLM ``bench serve`` names where they exist).

Simulator and real backend write the same files: requests.csv, steps.csv,
summary.json. Figures of them: drex.plots (drex plot).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from drex.core.request import Request, RequestStatus

if TYPE_CHECKING:
    import pandas as pd

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


class Columns(dict):
    """Named columns of equal length (numpy arrays), typed as a DataFrame of them would be: the simulator's
    records before anyone asks for a DataFrame (``frame``). ``drex simulate`` summarises and writes them without
    pandas, whose import alone is ~0.15 s of the command."""

    @property
    def num_rows(self) -> int:
        return len(next(iter(self.values()))) if self else 0

    def frame(self) -> "pd.DataFrame":
        import pandas as pd

        return pd.DataFrame(self)


def request_records(requests: list[Request]) -> "pd.DataFrame":
    return request_columns(requests).frame()


def request_columns(requests: list[Request]) -> Columns:
    """requests.csv's columns, one row per request in id order (dtypes as pandas infers them from the rows)."""
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
                     r.slo_ttft_ms, r.slo_tpot_ms, bool(slo_met)))
    if not rows:  # as pandas makes a frame of no rows: every column object
        return Columns((name, np.array([], dtype=object)) for name in REQUEST_COLUMNS)
    return Columns((name, _typed(name, values)) for name, values in zip(REQUEST_COLUMNS, zip(*rows)))


_FLOAT_COLUMNS = {"arrival_s", "ttft_ms", "e2el_ms", "tpot_ms", "mean_exit_layer"}


def _typed(name: str, values: tuple) -> np.ndarray:
    """A column as pandas types it from Python values: ints int64, floats float64, strings str, booleans bool;
    an optional number (the SLOs) float64 with NaN for None, int64 if all are ints, object if all are None."""
    if name in _FLOAT_COLUMNS:
        return np.array(values, dtype=float)
    if name in ("status", "reason"):
        return np.array(values, dtype=object)
    if name == "slo_met":
        return np.array(values, dtype=bool)
    if name.startswith("slo_"):
        given = [v for v in values if v is not None]
        if not given or not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                                for v in given):
            return np.array(values, dtype=object)
        if len(given) == len(values) and all(isinstance(v, (int, np.integer)) for v in given):
            return np.array(values, dtype=np.int64)
        return np.array([math.nan if v is None else v for v in values], dtype=float)
    return np.array(values, dtype=np.int64)


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


def _col(table, name: str) -> np.ndarray:
    """A column of a DataFrame or of Columns, as a numpy array."""
    c = table[name]
    return c if isinstance(c, np.ndarray) else c.to_numpy()


def _given(values: np.ndarray) -> np.ndarray:
    """notna: not None and not NaN."""
    if values.dtype.kind == "f":
        return ~np.isnan(values)
    return np.array([v is not None and v == v for v in values.tolist()], dtype=bool)


def summarize(req, steps, itl_s: np.ndarray, extra: dict) -> dict:
    """The run's metrics from its request and step records (DataFrames, or Columns)."""
    finished = _col(req, "status") == RequestStatus.FINISHED.value
    done = {c: _col(req, c)[finished] for c in ("arrival_s", "e2el_ms", "prompt_tokens", "generated_tokens",
                                                "ttft_ms", "tpot_ms", "early_exits", "mean_exit_layer")}
    n_req, n_done = len(finished), int(finished.sum())
    start = float(_col(req, "arrival_s").min()) if n_req else 0.0
    end = float((done["arrival_s"] + done["e2el_ms"] / 1e3).max()) if n_done else start
    duration = max(end - start, 1e-12)
    out_tokens = int(done["generated_tokens"].sum())
    s = {"completed": n_done, "failed": n_req - n_done, "duration": duration,
         "total_input_tokens": int(done["prompt_tokens"].sum()), "total_output_tokens": out_tokens,
         "request_throughput": n_done / duration, "output_throughput": out_tokens / duration,
         "total_token_throughput": (out_tokens + int(done["prompt_tokens"].sum())) / duration}
    s |= _stats("ttft", done["ttft_ms"])
    s |= _stats("tpot", done["tpot_ms"])
    s |= _stats("itl", np.asarray(itl_s) * 1e3, own=True)
    s |= _stats("e2el", done["e2el_ms"])
    if _given(_col(req, "slo_ttft_ms")).any() or _given(_col(req, "slo_tpot_ms")).any():
        s["request_goodput"] = int(_col(req, "slo_met").sum()) / duration
    total = max(out_tokens, 1)
    preemptions = _col(req, "preemptions")
    s |= {"early_exit_fraction": int(done["early_exits"].sum()) / total,
          "involuntary_exits": int(_col(req, "involuntary_exits").sum()),
          "involuntary_stays": int(_col(req, "involuntary_stays").sum()),
          "mean_exit_layer": float((done["mean_exit_layer"] * done["generated_tokens"]).sum() / total),
          "num_steps": steps.num_rows if isinstance(steps, Columns) else int(len(steps)),
          # Recompute preemptions a request suffered (churn shows as a high max against a low mean).
          "mean_preemptions_per_request": float(preemptions.mean()) if n_req else 0.0,
          "max_preemptions_per_request": int(preemptions.max()) if n_req else 0}
    s |= extra
    return s


def write_run(out_dir: str | Path, req, steps, summary: dict) -> None:
    """Deterministic files: fixed float formatting, sorted keys (records: DataFrames, or Columns)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(req, out / "requests.csv")
    write_csv(steps, out / "steps.csv")
    (out / "summary.json").write_text(json.dumps(json_safe(summary), indent=2, sort_keys=True, allow_nan=False,
                                                 default=_json_default) + "\n")


def write_csv(df, path: Path, float_format: str = "%.6f") -> None:
    """``df.to_csv(path, index=False, float_format=...)``, byte for byte, a few times faster: one format per
    row over columns of numbers, booleans and plain strings; a frame with anything else (a string that needs
    quoting, an unusual dtype) goes to pandas. ``df``: a DataFrame, or Columns (as their ``frame()``)."""
    names = list(df) if isinstance(df, Columns) else list(df.columns)
    if any(_needs_quotes(str(c)) for c in names) or len(names) < 2 or not _write_rows(df, names, path,
                                                                                       float_format):
        (df.frame() if isinstance(df, Columns) else df).to_csv(path, index=False, float_format=float_format)


def _write_rows(df, names: list, path: Path, float_format: str, chunk: int = 1 << 16) -> bool:
    """Write df a chunk of rows at a time (memory stays that of a chunk); False if a column cannot be written."""
    columns = isinstance(df, Columns)
    with open(path, "w", newline="") as f:
        f.write(",".join(map(str, names)) + "\n")
        for start in range(0, df.num_rows if columns else len(df), chunk):
            part = {c: df[c][start:start + chunk] for c in names} if columns else df.iloc[start:start + chunk]
            cols = [_csv_column(part[c], float_format) for c in names]
            if any(c is None for c in cols):
                return False
            row = ",".join(fmt for fmt, _ in cols) + "\n"
            f.write("".join(map(row.__mod__, zip(*(values for _, values in cols)))))
    return True


def _needs_quotes(text: str) -> bool:
    return any(ch in text for ch in ',"\n\r')


def _csv_column(col, float_format: str) -> tuple[str, list] | None:
    """(format, values) that write a column's cells (a Series, or a numpy array) as to_csv does (missing:
    empty), or None where this cannot promise that."""
    kind = col.dtype.kind
    array = isinstance(col, np.ndarray)
    values = col if array else col.to_numpy()
    if kind in "iu":
        return "%d", values.tolist()
    if kind == "b":
        return "%s", values.tolist()
    if kind == "f":
        if np.isnan(values).any():
            return "%s", ["" if x != x else float_format % x for x in values.tolist()]
        return float_format, values.tolist()
    if kind in "OT" or str(col.dtype) == "string":
        cells = ["" if x is None or (isinstance(x, float) and x != x) else x
                 for x in (col.tolist() if array else col.astype(object).tolist())]
        # Checked once per distinct value: a long column holds a handful (the steps' kinds).
        if set(map(type, cells)) <= {str} and not any(_needs_quotes(x) for x in set(cells)):
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


def rejection_lines(req) -> list[str]:
    """What a user must be told about requests that were not served: how many, and why (one line per reason,
    reasons with numbers folded: 'exceeds max_model_len' once, not once per length). ``req``: DataFrame or
    Columns."""
    status = _col(req, "status").tolist()
    reason = _col(req, "reason").tolist()
    bad = [i for i, st in enumerate(status) if st != RequestStatus.FINISHED.value]
    if not bad:
        return []
    groups: dict[tuple, list] = {}  # (status, kind of reason) -> [count, first reason]
    for i in bad:
        text = "" if reason[i] is None or reason[i] != reason[i] else str(reason[i])
        key = (status[i], re.sub(r"\d+", "N", text))  # one line per kind of reason, not per number
        groups.setdefault(key, [0, text])[0] += 1
    lines = [f"{len(bad)} of {len(status)} requests not served:"]
    # The most frequent first; ties in (status, kind) order.
    for (st, _), (n, example) in sorted(sorted(groups.items()), key=lambda g: -g[1][0]):
        lines.append(f"  {n} {st}" + (f", e.g. {example}" if example else ""))
    if len(bad) == len(status):
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


def counted(n: int, noun: str) -> str:
    """``n`` and its noun, singular for one: "1 request", "20 requests"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


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
