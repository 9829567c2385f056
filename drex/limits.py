"""The largest numbers drex holds, and the one wording of a number beyond them.

Token counts and ids are 64-bit integers in the records (numpy int64): a count beyond ``INT64_MAX`` is
not a number drex can hold, and is refused where it is read. A count that fits but is beyond what the
model or the device serves (``--max-model-len``, the KV cache) is a request the scheduler rejects, with
its reason, as any other.

Times are doubles in seconds on the simulated clock, which adds step durations of microseconds to it: past
``CLOCK_HORIZON_S`` (2**32 s, about 136 years) a double's steps are coarser than a microsecond, so an arrival
that late would be served in no time at all. Arrival times are refused beyond it, as read and once a trace
is stretched by ``--rate-scale``.
"""

from __future__ import annotations

INT64_MAX = 2**63 - 1
CLOCK_HORIZON_S = float(2**32)
_HORIZON_WORDS = "2**32 s, about 136 years: beyond it a double cannot keep the microseconds of a step apart"


def shown(text: str, width: int = 40) -> str:
    """A value's text as a message shows it: a long one (a 400-digit number) cut in the middle."""
    return text if len(text) <= width else f"{text[: width // 2]}...{text[-8:]} ({len(text)} characters)"


def int64_problem(value: int, what: str = "token count") -> str | None:
    """Why ``value`` (a whole number) is not one a 64-bit integer holds; None when it is."""
    if -INT64_MAX - 1 <= value <= INT64_MAX:
        return None
    return f"{what} {shown(str(value))} does not fit a 64-bit integer (at most 2**63-1 = {INT64_MAX})"


def past_horizon(t: float, unit: str = "s") -> bool:
    """Whether ``t`` (seconds, or milliseconds) is past the simulated clock's horizon (a huge int too)."""
    return t > CLOCK_HORIZON_S * {"s": 1, "ms": 1000}[unit]


def horizon_problem(what: str) -> str:
    """The message for a time past the horizon; ``what`` names it ("time 1e308")."""
    return f"{what} is past drex's clock ({_HORIZON_WORDS})"
