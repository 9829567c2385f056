"""Confidence sources for the simulator: what an exit head would have said.

Every source answers ``confidence(request_ids, token_index, exit_index)``
deterministically per (request, token, exit point), however steps are batched:
the same request sees the same confidences under every policy (common random
numbers), and a run of k planned steps draws exactly what k single steps would.

- ``beta[:A,B[/A,B...]]``: Beta-distributed confidence per exit point (one
  pair for all exits, or one per exit). Default: deeper exits more confident.
- ``trace:PATH``: replay a recorded confidence trace (``request_id,token_index,
  exit_layer,confidence``; see traces/README.md). Workload requests map to trace
  requests by id when present, else by id modulo the trace's request count;
  token indices wrap around a request's recorded length. An exit point a token
  never reached in the recording has no confidence: it never clears the threshold.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from drex import REPO_ROOT
from drex.limits import int64_problem, shown
from drex.tracefields import TraceError, number_field

_GOLDEN, _MIX1, _MIX2 = (np.uint64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))
_ID, _TOKEN = np.uint64(0x100000001B3), np.uint64(0x9E3779B1)
_S11, _S27, _S30, _S31 = (np.uint64(s) for s in (11, 27, 30, 31))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, in place on a uint64 array (its arithmetic wraps modulo 2**64)."""
    x += _GOLDEN
    x ^= x >> _S30
    x *= _MIX1
    x ^= x >> _S27
    x *= _MIX2
    x ^= x >> _S31
    return x


def uniform_hash(seed: int, request_ids: np.ndarray, token_index: np.ndarray, exit_index: int) -> np.ndarray:
    """A uniform [0, 1) number per (seed, request, token, exit): counter-based, so batching cannot change it."""
    with np.errstate(over="ignore"):
        key = np.asarray(request_ids, dtype=np.uint64) * _ID ^ np.asarray(token_index, dtype=np.uint64) * _TOKEN
        key ^= np.uint64((seed * 1_000_003 + exit_index * 7919) & 0xFFFFFFFFFFFF)
        h = _splitmix64(key)
        h >>= _S11
    return h.astype(np.float64) * (1.0 / (1 << 53))


class BetaConfidence:
    _GRID = np.linspace(0.0, 1.0, 4097)

    def __init__(self, params: list[tuple[float, float]], num_exits: int, seed: int) -> None:
        if len(params) == 1:
            params = params * num_exits
        if len(params) != num_exits:
            raise ValueError(f"beta confidence: {len(params)} (a,b) pairs given for {num_exits} exit points")
        for a, b in params:
            if a <= 0 or b <= 0:
                raise ValueError(f"beta confidence: parameters must be positive, got ({a}, {b})")
        self.params = params
        self.seed = seed
        self._tables = None  # inverse CDF tables, made at the first draw (a run without exits never draws)
        self.name = "beta:" + "/".join(f"{a:g},{b:g}" for a, b in params)
        # Per exit point: request id -> its tokens' confidences from token 0 on, drawn AHEAD tokens at a time, so
        # that a step (one token a row) looks them up instead of hashing; ``forget`` drops a request's.
        self._drawn: list[dict[int, list[float]]] = [{} for _ in params]

    def _make_tables(self) -> list[np.ndarray]:
        """Inverse CDF tables, one per exit point: a draw is one hash and one interpolation. Made on first use:
        scipy's import (~0.1 s) is paid only by a run that draws."""
        from scipy.special import betaincinv

        self._tables = [betaincinv(a, b, self._GRID) for a, b in self.params]
        return self._tables

    AHEAD = 256

    def confidence(self, request_ids, token_index, exit_index: int) -> np.ndarray:
        if (type(token_index) is np.ndarray and token_index.shape[0] == 1 and token_index.ndim == 2
                and type(request_ids) is np.ndarray and request_ids.shape == token_index.shape[1:]):
            drawn, values = self._drawn[exit_index], []  # one step: each row's token looked up
            for rid, t in zip(request_ids.tolist(), token_index[0].tolist()):
                row = drawn.get(rid)
                if row is None or not 0 <= t < len(row):
                    if t < 0:  # (not a token the lookup holds: drawn alone)
                        values.append(float(self._draw(np.array([rid]), np.array([t]), exit_index)[0]))
                        continue
                    row = self._draw_ahead(drawn, rid, t, exit_index)
                values.append(row[t])
            return np.array([values])
        return self._draw(request_ids, token_index, exit_index)

    def _draw(self, request_ids, token_index, exit_index: int) -> np.ndarray:
        u = uniform_hash(self.seed, request_ids, token_index, exit_index)
        return np.interp(u, self._GRID, (self._tables or self._make_tables())[exit_index])

    def _draw_ahead(self, drawn: dict, rid: int, t: int, exit_index: int) -> list[float]:
        """Request rid's confidences at this exit point through token t >= 0 and AHEAD more (elementwise, so the
        values any other draw gives)."""
        row = drawn.setdefault(rid, [])
        tokens = np.arange(len(row), t + self.AHEAD, dtype=np.int64)
        row.extend(self._draw(np.full(len(tokens), rid, dtype=np.int64), tokens, exit_index).tolist())
        return row

    def forget(self, request_ids) -> None:
        """These requests are done (finished, or preempted: drawn again if they come back)."""
        for drawn in self._drawn:
            for rid in request_ids:
                drawn.pop(rid, None)


class TraceConfidence:
    def __init__(self, path: str | Path, exits: tuple[int, ...]) -> None:
        path = Path(path)
        if not path.exists() and (REPO_ROOT / "traces" / path).exists():
            path = REPO_ROOT / "traces" / path
        rid, tok, layer, conf = _read_confidence_csv(path)
        present = sorted(set(layer.tolist()))
        unknown = sorted(set(exits) - set(present))
        if unknown:
            raise TraceError(path, 1, "exit_layer", f"no confidences recorded at exit layer(s) {unknown}; "
                                                    f"the trace has {present}")
        keep = np.isin(layer, exits)
        rid, tok, layer, conf = rid[keep], tok[keep], layer[keep], conf[keep]
        ids, inverse = np.unique(rid, return_inverse=True)
        lengths = np.zeros(len(ids), dtype=np.int64)
        np.maximum.at(lengths, inverse, tok + 1)
        self._ids = ids
        self._offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self._lengths = lengths
        table = np.full((int(lengths.sum()), len(exits)), np.nan)
        table[self._offsets[inverse] + tok, np.searchsorted(np.asarray(exits), layer)] = conf
        self._table = table
        self.name = f"trace:{path}"

    def _slot(self, request_ids: np.ndarray) -> np.ndarray:
        rid = np.asarray(request_ids)
        pos = np.searchsorted(self._ids, rid)
        pos = np.minimum(pos, len(self._ids) - 1)
        hit = self._ids[pos] == rid
        return np.where(hit, pos, rid % len(self._ids))

    def confidence(self, request_ids, token_index, exit_index: int) -> np.ndarray:
        slot = self._slot(request_ids)
        t = np.asarray(token_index) % self._lengths[slot]
        return self._table[self._offsets[slot] + t, exit_index]


CONFIDENCE_COLUMNS = ("request_id", "token_index", "exit_layer", "confidence")


def _read_confidence_csv(path: Path):
    """Read and validate a confidence trace; every defect names the file, line and field."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"confidence trace not found: {path}") from None
    except UnicodeDecodeError:
        raise TraceError(path, 1, "request_id", "not a UTF-8 text file") from None
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None:
        raise TraceError(path, 1, "request_id", "empty file: expected a header " + ",".join(CONFIDENCE_COLUMNS))
    header = [h.strip() for h in header]
    missing = [c for c in CONFIDENCE_COLUMNS if c not in header]
    if missing:
        raise TraceError(path, 1, missing[0], f"missing column; the header must hold {','.join(CONFIDENCE_COLUMNS)}")
    pos = [header.index(c) for c in CONFIDENCE_COLUMNS]
    out = ([], [], [], [])
    for line, row in enumerate(rows, start=2):
        if not row or all(not f.strip() for f in row):
            continue
        if len(row) != len(header):
            raise TraceError(path, line, CONFIDENCE_COLUMNS[0], f"{len(row)} fields, the header has {len(header)}")
        for i, (name, p) in enumerate(zip(CONFIDENCE_COLUMNS, pos)):
            text_value = row[p].strip()
            out[i].append(_whole(text_value, path, line, name) if i < 3 else number_field(text_value, path, line, name))
    if not out[0]:
        raise TraceError(path, 2, "request_id", "no rows after the header")
    return (np.array(out[0], dtype=np.int64), np.array(out[1], dtype=np.int64), np.array(out[2], dtype=np.int64),
            np.array(out[3], dtype=float))


MAX_TOKEN_INDEX = 2**24 - 1  # past any model's context; the table holds every token up to a request's last


def _whole(text: str, path: Path, line: int, name: str) -> int:
    """A whole number >= 0 that a 64-bit integer holds (a token index: one no model reaches is refused too)."""
    try:
        value = int(text)  # exact: 9007199254740993 is no double
    except ValueError:
        number = number_field(text, path, line, name)
        if number != int(number):
            raise TraceError(path, line, name, f"must be a whole number >= 0, got {shown(text)!r}") from None
        value = int(number)  # "3.0", "1e3"
    if value < 0:
        raise TraceError(path, line, name, f"must be a whole number >= 0, got {shown(text)!r}")
    if int64_problem(value):
        raise TraceError(path, line, name, int64_problem(value, name.replace("_", " ")))
    if name == "token_index" and value > MAX_TOKEN_INDEX:
        raise TraceError(path, line, name, f"token index {value} is past any model's context (at most "
                                           f"{MAX_TOKEN_INDEX:,})")
    return value


def default_beta(exits: tuple[int, ...], num_layers: int) -> list[tuple[float, float]]:
    """Deeper exits are more confident: mean confidence rises with the fraction of layers computed."""
    return [(1.0 + 3.0 * e / num_layers, 2.0) for e in exits]


def make_confidence_source(spec: str, exits: tuple[int, ...], num_layers: int, seed: int):
    kind, _, arg = spec.partition(":")
    if kind == "beta":
        if not arg:
            return BetaConfidence(default_beta(exits, num_layers) or [(1.0, 1.0)], max(len(exits), 1), seed)
        try:
            params = [tuple(float(x) for x in p.split(",")) for p in arg.split("/")]
        except ValueError:
            raise ValueError(f"confidence {spec!r}: expected beta:A,B or beta:A1,B1/A2,B2/...") from None
        if any(len(p) != 2 for p in params):
            raise ValueError(f"confidence {spec!r}: each exit needs exactly two parameters A,B")
        if not all(math.isfinite(x) for p in params for x in p):
            raise ValueError(f"confidence {spec!r}: the parameters must be finite numbers")
        return BetaConfidence(params, max(len(exits), 1), seed)
    if kind == "trace":
        if not arg:
            raise ValueError("confidence trace: give a path, e.g. trace:traces/tiny-ee-text.csv")
        return TraceConfidence(arg, exits)
    raise ValueError(f"unknown confidence source {spec!r}; use beta[:A,B] or trace:PATH")
