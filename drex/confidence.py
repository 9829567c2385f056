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

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import betaincinv

from drex import REPO_ROOT

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
    return x ^ (x >> np.uint64(31))


def uniform_hash(seed: int, request_ids: np.ndarray, token_index: np.ndarray, exit_index: int) -> np.ndarray:
    """A uniform [0, 1) number per (seed, request, token, exit): counter-based, so batching cannot change it."""
    with np.errstate(over="ignore"):
        key = (np.asarray(request_ids, dtype=np.uint64) * np.uint64(0x100000001B3)
               ^ np.asarray(token_index, dtype=np.uint64) * np.uint64(0x9E3779B1)
               ^ np.uint64((seed * 1_000_003 + exit_index * 7919) & 0xFFFFFFFFFFFF))
        h = _splitmix64(key)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


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
        # Inverse CDF tables: a draw is one hash and one interpolation.
        self._ppf = [betaincinv(a, b, self._GRID) for a, b in params]
        self.name = "beta:" + "/".join(f"{a:g},{b:g}" for a, b in params)

    def confidence(self, request_ids, token_index, exit_index: int) -> np.ndarray:
        u = uniform_hash(self.seed, request_ids, token_index, exit_index)
        return np.interp(u, self._GRID, self._ppf[exit_index])


class TraceConfidence:
    def __init__(self, path: str | Path, exits: tuple[int, ...]) -> None:
        path = Path(path)
        if not path.exists() and (REPO_ROOT / "traces" / path).exists():
            path = REPO_ROOT / "traces" / path
        try:
            df = pd.read_csv(path)
        except FileNotFoundError:
            raise ValueError(f"confidence trace not found: {path}") from None
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as e:
            raise ValueError(f"{path}: not a confidence trace CSV: {e}") from None
        need = ["request_id", "token_index", "exit_layer", "confidence"]
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: line 1: missing column(s) {', '.join(missing)}")
        if df.empty:
            raise ValueError(f"{path}: no rows")
        for c in need:
            if not pd.api.types.is_numeric_dtype(df[c]):
                bad = pd.to_numeric(df[c], errors="coerce").isna().to_numpy().argmax()
                raise ValueError(f"{path}: line {bad + 2}: field '{c}': not a number: {df[c].iloc[bad]!r}")
        unknown = set(exits) - set(df["exit_layer"].unique().tolist())
        if unknown:
            raise ValueError(f"{path}: no confidences recorded at exit layer(s) {sorted(unknown)}; "
                             f"the trace has {sorted(df['exit_layer'].unique().tolist())}")
        df = df[df["exit_layer"].isin(exits)]
        ids = np.sort(df["request_id"].unique())
        lengths = df.groupby("request_id")["token_index"].max().reindex(ids).to_numpy() + 1
        self._ids = ids
        self._offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self._lengths = lengths
        table = np.full((int(lengths.sum()), len(exits)), np.nan)
        rid_pos = np.searchsorted(ids, df["request_id"].to_numpy())
        row = self._offsets[rid_pos] + df["token_index"].to_numpy()
        col = np.searchsorted(np.asarray(exits), df["exit_layer"].to_numpy())
        table[row, col] = df["confidence"].to_numpy()
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
        return BetaConfidence(params, max(len(exits), 1), seed)
    if kind == "trace":
        if not arg:
            raise ValueError("confidence trace: give a path, e.g. trace:traces/tiny-ee-text.csv")
        return TraceConfidence(arg, exits)
    raise ValueError(f"unknown confidence source {spec!r}; use beta[:A,B] or trace:PATH")
