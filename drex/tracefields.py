"""The checks of a trace file's fields, each defect a TraceError naming the file, the 1-based line and
the field (``drex.traces`` reads the formats; ``drex.confidence`` its confidence traces). A number no
64-bit integer or double holds, or a time past drex's clock, is such a defect (``drex.limits``).
"""

from __future__ import annotations

import math
from pathlib import Path

from drex.limits import INT64_MAX, horizon_problem, int64_problem, past_horizon, shown


class TraceError(ValueError):
    """A defect in a trace file: ``"<file>:<line>: field '<field>': <what is wrong>"``."""

    def __init__(self, path: str | Path, line: int, field: str, problem: str):
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        super().__init__(f"{path}:{line}: field '{field}': {problem}")


def tokens_field(text: str, path: Path, line: int, field: str) -> int:
    try:
        value = int(text)
    except ValueError:
        number_field(text, path, line, field)  # raises if text is not a finite number at all
        raise TraceError(path, line, field, f"token count must be an integer, got {shown(text)!r}") from None
    return count_field(value, path, line, field)


def count_field(value: int, path: Path, line: int, field: str) -> int:
    """A token count: a whole number >= 1 that a 64-bit integer holds (beyond what the model serves, the
    scheduler rejects the request with its reason)."""
    if value < 1:
        raise TraceError(path, line, field, f"token count must be >= 1, got {shown(str(value))}")
    if value > INT64_MAX:
        raise TraceError(path, line, field, int64_problem(value))
    return value


def number_field(text: str, path: Path, line: int, field: str) -> float:
    """A finite number, or a TraceError naming the file, line and field."""
    try:
        value = float(text)
    except ValueError:
        what = "empty" if not text.strip() else f"not numeric: {shown(text)!r}"
        raise TraceError(path, line, field, what) from None
    if not math.isfinite(value):
        if text.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise TraceError(path, line, field, f"must be finite, got {text.strip()!r} (NaN/inf)")
        raise TraceError(path, line, field, f"{shown(text.strip())} is beyond what a double holds (about 1.8e308)")
    return value


def slo_field(text: str | None, path: Path, line: int, field: str) -> float | None:
    if text is None or not text.strip():
        return None
    value = number_field(text, path, line, field)
    if value <= 0:
        raise TraceError(path, line, field, f"SLO must be > 0 ms, got {value:g}")
    return value


def check_time(t: float, previous: float | None, path: Path, line: int, field: str, text: str,
               previous_text: str) -> None:
    """``text``: the time as the file wrote it, for the message."""
    # Order matters for Azure: a date before the first one yields t < 0, which is a
    # step backwards, not a negative timestamp.
    if previous is not None and t < previous:
        raise TraceError(
            path, line, field, f"time goes backwards: {text} is earlier than the previous request's {previous_text}"
        )
    if t < 0:
        raise TraceError(path, line, field, f"negative time {text}")
    if past_horizon(t):
        raise TraceError(path, line, field, horizon_problem(f"time {text}"))


def no_requests(path: Path, line: int, field: str) -> TraceError:
    return TraceError(path, line, field, "empty trace: the file holds no requests")


def json_tokens(value, path: Path, line: int, field: str) -> int:
    if isinstance(value, float) and not math.isfinite(value):
        raise TraceError(path, line, field, f"must be finite, got {value!r} (NaN/inf)")
    if type(value) is not int:
        what = "a non-integer number" if isinstance(value, float) else json_type(value)
        raise TraceError(path, line, field, f"token count must be an integer, got {what} {value!r}")
    return count_field(value, path, line, field)


def json_type(value) -> str:
    names = {bool: "boolean", str: "string", list: "list", dict: "object", type(None): "null"}
    return names.get(type(value), type(value).__name__)
