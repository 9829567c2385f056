"""Arrival traces read from files, as lists of TraceRequest.

Three file formats, detected by extension and header:

* Azure LLM inference trace 2023 CSV: ``TIMESTAMP,ContextTokens,GeneratedTokens``
  with absolute wall-clock timestamps (re-based to seconds from the first arrival);
* Mooncake JSONL: one object a line with ``timestamp`` (ms), ``input_length``,
  ``output_length`` and ``hash_ids`` (512-token prefix-block ids);
* drex CSV: ``arrival_s,prompt_tokens,output_tokens`` and optionally
  ``slo_ttft_ms,slo_tpot_ms`` (an empty SLO cell means "no SLO").

Every defect in a file raises TraceError naming the file, the 1-based line and the
field, so a bad trace fails loudly at load time rather than skewing a simulation
(``drex.tracefields`` holds the checks): a number no 64-bit integer or double holds, or
a time past drex's clock, among them (``drex.limits``).
Synthetic arrivals (``synthetic:<spec>``) live in ``drex.synthetic``; ``drex.workload``
chooses between the two.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import drex
from drex.limits import INT64_MAX, horizon_problem, int64_problem, past_horizon, shown
from drex.tracefields import (TraceError, check_time, json_tokens, json_type, no_requests, number_field,
                              slo_field, tokens_field)


@dataclass(frozen=True, slots=True)
class TraceRequest:
    request_id: int  # 0..N-1 in arrival order
    arrival_s: float  # seconds from the first arrival (first is 0.0), non-decreasing
    prompt_tokens: int
    output_tokens: int
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    prefix_hash_ids: tuple[int, ...] = ()  # mooncake only


TRACE_NAMES = {
    "azure-code": "AzureLLMInferenceTrace_code.csv",
    "azure-conv": "AzureLLMInferenceTrace_conv.csv",
    "mooncake": "mooncake_conversation_trace.jsonl",
}

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
DREX_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")
DREX_OPTIONAL_COLUMNS = ("slo_ttft_ms", "slo_tpot_ms")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")

# Azure timestamps look like "2023-11-16 18:17:03.9799600": 7 fractional digits, which
# datetime cannot hold. The regex checks the shape (hours 00-23, minutes 00-59); the
# seconds parse as a float, keeping all digits; each minute's start is computed once.
_TIMESTAMP_RE = re.compile(
    r"\s*(\d{4}-\d{2}-\d{2}[ T](?:[01]\d|2[0-3]):[0-5]\d):((?:[0-5]\d|60)(?:\.\d+)?)\s*"
)


def trace_path(name: str) -> Path:
    """The shipped file for a trace name (see TRACE_NAMES)."""
    return drex.REPO_ROOT / "traces" / TRACE_NAMES[name]


def load_trace(
    name_or_path: str | Path, num_requests: int | None = None, rate_scale: float = 1.0
) -> list[TraceRequest]:
    """Load a shipped trace by name, or a trace file by path.

    ``num_requests`` keeps the first N requests (all of them if the file has fewer;
    lines after the N-th are not read). ``rate_scale`` X divides arrival times by X,
    so X=2 replays the trace at twice its rate.
    """
    check_scaling(num_requests, rate_scale)
    path = _resolve(name_or_path)
    if _is_jsonl(path):
        rows = _read_mooncake(path, num_requests)
    else:
        rows = _read_csv(path, num_requests)
    check_stretch((rows[-1][0] - rows[0][0]) / rate_scale, rate_scale, path)
    return _to_requests(rows, rate_scale)


# --- resolution and post-processing ------------------------------------------------


def check_scaling(num_requests: int | None, rate_scale: float) -> None:
    if num_requests is not None and (
        isinstance(num_requests, bool) or not isinstance(num_requests, numbers.Integral) or num_requests < 1
    ):
        raise ValueError(f"the number of requests (--num-requests) must be an integer >= 1, got {num_requests!r}")
    real = isinstance(rate_scale, numbers.Real) and not isinstance(rate_scale, bool)
    if not (real and math.isfinite(rate_scale) and rate_scale > 0):
        raise ValueError(f"the rate scale (--rate-scale) must be a finite number > 0, got {rate_scale!r}")


def check_stretch(last_s: float, rate_scale: float, source) -> None:
    """A workload's last arrival, ``last_s`` seconds after its first once scaled, must be within drex's clock:
    every time was checked as read, so only a rate scale below 1 stretches one past it."""
    if past_horizon(last_s):
        raise ValueError(f"--rate-scale {rate_scale:g} stretches {source}: " +
                         horizon_problem(f"its last arrival, at {last_s:.4g} s,"))


def _resolve(name_or_path: str | Path) -> Path:
    if isinstance(name_or_path, str) and name_or_path in TRACE_NAMES:
        return trace_path(name_or_path)
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.is_dir():
        raise ValueError(f"trace {str(name_or_path)!r} is a directory; give a trace file (CSV or JSONL) in it")
    known = ", ".join(sorted(TRACE_NAMES))
    raise ValueError(
        f"unknown trace {str(name_or_path)!r}: no such file, and not a known trace name "
        f"({known}); generated workloads are 'synthetic:<spec>'"
    )


def _is_jsonl(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".csv"):
        return suffix != ".csv"
    with open(path, "rb") as f:  # another extension: sniff the first non-blank byte
        return f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{")


def _to_requests(rows: list[tuple], rate_scale: float) -> list[TraceRequest]:
    """rows: (time_s, prompt, output, slo_ttft_ms, slo_tpot_ms, hash_ids), already checked."""
    t0 = rows[0][0]
    return [
        TraceRequest(i, (t - t0) / rate_scale, p, o, ttft, tpot, hashes)
        for i, (t, p, o, ttft, tpot, hashes) in enumerate(rows)
    ]


# --- CSV (Azure and drex) ------------------------------------------------------------


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TraceError(path, line, "text", f"not UTF-8 text ({e.reason})") from None


def _read_csv(path: Path, num_requests: int | None) -> list[tuple]:
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
        if header is None:
            raise no_requests(path, 1, DREX_COLUMNS[0])
        header_line = reader.line_num
        header = [cell.strip() for cell in header]
        if any(c in header for c in AZURE_COLUMNS):
            columns = _columns(header, AZURE_COLUMNS, (), path, header_line)
            rows = _azure_rows(reader, header, columns, path, num_requests)
        else:
            columns = _columns(header, DREX_COLUMNS, DREX_OPTIONAL_COLUMNS, path, header_line)
            rows = _drex_rows(reader, header, columns, path, num_requests)
    except csv.Error as e:  # e.g. an unterminated quote swallowing the rest of the file
        raise TraceError(path, reader.line_num, "csv", f"malformed CSV: {e}") from None
    if not rows:
        raise no_requests(path, header_line + 1, header[columns[0]])
    return rows


def _row_width(row: list[str], header: list[str], path: Path, line: int) -> bool:
    """False for a blank line (skipped); raises if the row does not match the header."""
    if not any(cell.strip() for cell in row):
        return False  # blank lines (typically trailing) carry no request
    if len(row) < len(header):
        raise TraceError(path, line, header[len(row)], "missing value (row is short)")
    if len(row) > len(header):
        raise TraceError(
            path, line, f"column {len(header) + 1}",
            f"extra value {row[len(header)]!r} (header has {len(header)} columns)",
        )  # fmt: skip
    return True


def _columns(
    header: list[str], required: tuple, optional: tuple, path: Path, line: int
) -> list[int | None]:
    """Indices of the required then the optional columns (None: optional column absent)."""
    for name in required:
        if name not in header:
            if header and re.match(r"\s*[-+]?\.?\d", header[0]):  # a number: data, not a header
                problem = (
                    f"missing header: line {line} is data; expected '{','.join(DREX_COLUMNS)}"
                    f"[,{','.join(DREX_OPTIONAL_COLUMNS)}]' (drex) or '{','.join(AZURE_COLUMNS)}' (Azure)"
                )
            else:
                problem = f"missing column (header is {','.join(header)!r}, needs {','.join(required)})"
            raise TraceError(path, line, name, problem)
    if required == DREX_COLUMNS:  # the drex format is ours: refuse typos like 'slo_ttf_ms'
        for name in header:
            if name not in required and name not in optional:
                known = ",".join(required + optional)
                raise TraceError(path, line, name, f"unknown column (known: {known})")
    if len(set(header)) != len(header):
        dup = next(name for name in header if header.count(name) > 1)
        raise TraceError(path, line, dup, "duplicate column")
    index = [header.index(name) for name in required]
    index += [header.index(name) if name in header else None for name in optional]
    return index


def _azure_rows(reader, header, columns, path: Path, num_requests: int | None) -> list[tuple]:
    # The hot loop of the largest traces: checks are cheap tests on the common path,
    # and the precise TraceError is built only in the branch that found a defect.
    ts_col, prompt_col, output_col = columns
    match = _TIMESTAMP_RE.fullmatch
    minutes: dict[str, float] = {}  # "YYYY-MM-DD HH:MM" -> seconds after the first midnight
    first_day: list[int] = []
    rows: list[tuple] = []
    previous, previous_text = None, ""
    width = len(header)
    for row in reader:
        if len(row) != width or not row[ts_col]:
            if not _row_width(row, header, path, reader.line_num):
                continue
        text = row[ts_col]
        m = match(text)
        if m is None:
            raise TraceError(path, reader.line_num, header[ts_col], f"unparsable timestamp {text!r}")
        minute, seconds = m.groups()
        base = minutes.get(minute)
        if base is None:
            base = minutes[minute] = _minute_start(minute, first_day, text, path, reader.line_num)
        t = base + float(seconds)
        try:
            prompt, output = int(row[prompt_col]), int(row[output_col])
        except ValueError:
            prompt, output = -1, -1  # let tokens_field say which field and why
        if prompt < 1 or output < 1 or prompt > INT64_MAX or output > INT64_MAX:  # both calls raise: one is bad
            tokens_field(row[prompt_col], path, reader.line_num, header[prompt_col])
            tokens_field(row[output_col], path, reader.line_num, header[output_col])
        if (previous is not None and t < previous) or past_horizon(t):
            check_time(t, previous, path, reader.line_num, header[ts_col], text, previous_text)
        previous, previous_text = t, text
        rows.append((t, prompt, output, None, None, ()))
        if len(rows) == num_requests:
            break
    return rows


def _minute_start(minute: str, first_day: list[int], text: str, path: Path, line: int) -> float:
    """Seconds from the file's first midnight to the start of ``minute``. Counting from
    the first date, not from year 1, keeps values small: absolute seconds (~6e10)
    would leave a double ~10 us of resolution instead of the trace's 100 ns."""
    try:
        ordinal = date.fromisoformat(minute[:10]).toordinal()
    except ValueError:
        raise TraceError(path, line, AZURE_COLUMNS[0], f"unparsable timestamp {text!r}") from None
    if not first_day:
        first_day.append(ordinal)
    return (ordinal - first_day[0]) * 86400.0 + int(minute[11:13]) * 3600 + int(minute[14:16]) * 60


def _drex_rows(reader, header, columns, path: Path, num_requests: int | None) -> list[tuple]:
    t_col, prompt_col, output_col, ttft_col, tpot_col = columns
    rows: list[tuple] = []
    previous, previous_text = None, ""
    for row in reader:
        line = reader.line_num
        if not _row_width(row, header, path, line):
            continue
        text = row[t_col].strip()
        t = number_field(text, path, line, "arrival_s")
        check_time(t, previous, path, line, "arrival_s", shown(text), previous_text)
        previous, previous_text = t, shown(text)
        prompt = tokens_field(row[prompt_col], path, line, "prompt_tokens")
        output = tokens_field(row[output_col], path, line, "output_tokens")
        ttft = slo_field(None if ttft_col is None else row[ttft_col], path, line, "slo_ttft_ms")
        tpot = slo_field(None if tpot_col is None else row[tpot_col], path, line, "slo_tpot_ms")
        rows.append((t, prompt, output, ttft, tpot, ()))
        if len(rows) == num_requests:
            break
    return rows


# --- Mooncake JSONL ------------------------------------------------------------------


def _read_mooncake(path: Path, num_requests: int | None) -> list[tuple]:
    rows: list[tuple] = []
    previous, previous_ts = None, None
    for line, text in enumerate(io.StringIO(_read_text(path)), start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise TraceError(path, line, "json", f"malformed JSON: {e.msg} at column {e.colno}") from None
        if not isinstance(obj, dict):
            raise TraceError(path, line, "json", f"expected a JSON object, got {json_type(obj)}")
        for key in MOONCAKE_KEYS:
            if key not in obj:
                raise TraceError(path, line, key, "missing key")
        ts = obj["timestamp"]
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise TraceError(path, line, "timestamp", f"expected a number, got {json_type(ts)}")
        if isinstance(ts, float) and not math.isfinite(ts):
            raise TraceError(path, line, "timestamp", f"must be finite, got {ts!r} (NaN/inf)")
        # 10**400 ms is no double: a time past the horizon is infinite here, for check_time to refuse
        t = ts / 1000.0 if not past_horizon(abs(ts), "ms") else (math.inf if ts > 0 else -math.inf)
        check_time(t, previous, path, line, "timestamp", f"{shown(repr(ts))} ms", f"{previous_ts!r} ms")
        previous, previous_ts = t, ts
        prompt = json_tokens(obj["input_length"], path, line, "input_length")
        output = json_tokens(obj["output_length"], path, line, "output_length")
        hashes = obj.get("hash_ids", [])
        if not isinstance(hashes, list):
            raise TraceError(path, line, "hash_ids", f"expected a list, got {json_type(hashes)}")
        if not all(type(h) is int and not int64_problem(h) for h in hashes):
            bad = next(h for h in hashes if type(h) is not int or int64_problem(h))
            what = int64_problem(bad, "id") if type(bad) is int else f"expected integer ids, got {bad!r}"
            raise TraceError(path, line, "hash_ids", what)
        rows.append((t, prompt, output, None, None, tuple(hashes)))
        if len(rows) == num_requests:
            break
    if not rows:
        raise no_requests(path, 1, "timestamp")
    return rows
