"""Per-step records, appended a run of steps at a time and written as one flat table."""

from __future__ import annotations

from array import array
from itertools import chain
from dataclasses import dataclass

import numpy as np

COLUMNS = ("step", "replica", "time_s", "kind", "num_rows", "num_decode", "num_prefill_tokens", "num_flush",
           "num_exited", "num_buffered", "layer_start", "layer_end", "duration_ms", "buffer_size", "kv_blocks")


@dataclass(frozen=True)
class StepRun:
    """One run of len(durations_s) steps; per-step fields may be scalars (same for every step) or arrays."""

    step: int
    replica: int
    start_s: float
    durations_s: np.ndarray
    kind: str
    num_rows: int
    num_decode: int
    num_prefill_tokens: int
    num_flush: int
    num_exited: int | np.ndarray
    num_buffered: int | np.ndarray
    layer_end: int | np.ndarray
    buffer_size: int | np.ndarray
    layer_start: int = 0
    # KV blocks held while the run ran (a planned run of decode steps allocates its blocks up front,
    # so every step of the run shows the run's total).
    kv_blocks: int = 0


class StepLog:
    """Runs kept column by column in typed arrays (a run object per step would hold ~1 kB each: gigabytes
    for a long drex run); ``columns`` gives exactly what expanding the StepRuns one by one gave."""

    _RUN_FIELDS = ("step", "replica", "num_rows", "num_decode", "num_prefill_tokens", "num_flush", "layer_start",
                   "kv_blocks")
    _STEP_FIELDS = ("num_exited", "num_buffered", "layer_end", "buffer_size")  # scalar or one per step

    def __init__(self) -> None:
        self._runs = 0
        self._k = array("q")
        self._start = array("d")
        self._sum = array("d")  # each run's durations summed as numpy sums them (the step times depend on it)
        self._dur = array("d")
        self._kinds: list[str] = []
        self._runints = array("q")  # a run's _RUN_FIELDS, one after another
        self._stepints = array("q")  # each step's _STEP_FIELDS, one after another

    def append(self, run: StepRun) -> None:
        self.add(run.step, run.replica, run.start_s, run.durations_s, run.kind, run.num_rows, run.num_decode,
                 run.num_prefill_tokens, run.num_flush, run.num_exited, run.num_buffered, run.layer_end,
                 run.buffer_size, run.layer_start, run.kv_blocks)

    def add(self, step: int, replica: int, start_s: float, durations_s, kind: str, num_rows: int, num_decode: int,
            num_prefill_tokens: int, num_flush: int, num_exited, num_buffered, layer_end, buffer_size,
            layer_start: int = 0, kv_blocks: int = 0) -> None:
        """``append`` of a StepRun of these fields, without making one (the simulator adds a run per plan)."""
        dur = durations_s if type(durations_s) is np.ndarray and durations_s.dtype == float else \
            np.asarray(durations_s, dtype=float)
        k = len(dur)
        self._runs += 1
        self._k.append(k)
        self._start.append(start_s)
        if k == 1:
            first = float(dur[0])
            self._sum.append(first)  # the sum of one: itself
            self._dur.append(first)
        else:
            self._sum.append(dur.sum())
            self._dur.extend(dur.tolist())
        self._kinds.append(kind)
        self._runints.extend((step, replica, num_rows, num_decode, num_prefill_tokens, num_flush, layer_start,
                              kv_blocks))
        values = (num_exited, num_buffered, layer_end, buffer_size)
        if k == 1:
            self._stepints.extend([v.item() if type(v) is np.ndarray else v for v in values])
        elif not any([type(v) is np.ndarray for v in values]):
            self._stepints.extend(values * k)
        else:  # one row per step, the scalars repeated
            per_step = [(v.tolist() if v.shape == (k,) else [v.item()] * k) if type(v) is np.ndarray else [v] * k
                        for v in values]
            self._stepints.extend(chain.from_iterable(zip(*per_step)))

    def add_single_steps(self, step: int, replica: int, starts: list[float], durations_s: list[float], kind: str,
                         num_rows: int, num_decode: int, num_prefill_tokens: list[int], layer_end: int,
                         kv_blocks: list[int]) -> None:
        """``add`` of len(starts) runs of one step each (no flush, exits or parked rows): a run of mixed steps
        logged as the single steps it stands for."""
        k = len(starts)
        self._runs += k
        self._k.extend([1] * k)
        self._start.extend(starts)
        self._sum.extend(durations_s)
        self._dur.extend(durations_s)
        self._kinds.extend([kind] * k)
        for j in range(k):
            self._runints.extend((step + j, replica, num_rows, num_decode, num_prefill_tokens[j], 0, 0, kv_blocks[j]))
        self._stepints.extend((0, 0, layer_end, 0) * k)

    def __len__(self) -> int:
        return len(self._dur)

    def columns(self) -> dict[str, np.ndarray]:
        """Every run of k steps as k rows (scalars repeated, per-step values in order)."""
        if not self._runs:
            return {c: np.array([]) for c in COLUMNS}
        lengths = np.frombuffer(self._k, dtype=np.int64)
        durations = np.frombuffer(self._dur, dtype=float).copy()
        sums = np.frombuffer(self._sum, dtype=float)
        # Step start times: each run starts at its own start; within a run, after the previous steps.
        run_offset = np.repeat(np.frombuffer(self._start, dtype=float), lengths)
        within = np.cumsum(durations) - np.repeat(np.cumsum(sums) - sums, lengths) - durations
        runints = np.frombuffer(self._runints, dtype=np.int64).reshape(-1, len(self._RUN_FIELDS))
        first = np.repeat(runints[:, 0], lengths)
        run_begin = np.repeat(np.cumsum(lengths) - lengths, lengths)
        cols = {"step": first + (np.arange(len(durations)) - run_begin), "time_s": run_offset + within,
                "kind": np.repeat(np.array(self._kinds, dtype=object), lengths)}
        for i, name in enumerate(self._RUN_FIELDS[1:], start=1):
            cols[name] = np.repeat(runints[:, i], lengths)
        stepints = np.frombuffer(self._stepints, dtype=np.int64).reshape(-1, len(self._STEP_FIELDS))
        for i, name in enumerate(self._STEP_FIELDS):
            cols[name] = stepints[:, i].copy()
        cols["duration_ms"] = durations * 1e3
        return {c: cols[c] for c in COLUMNS}


class ChunkedArrays(list):
    """Values appended array by array (or as a list of floats), kept in order in one growing ``array('d')`` (8
    bytes a value: a long run's millions of small arrays would hold ~100 bytes each): the list holds that one
    array, so np.concatenate of it gives every value appended, in order."""

    def append(self, a) -> None:
        if not self:
            super().append(array("d"))
        self[0].frombytes(np.ascontiguousarray(a, dtype=float).tobytes())

    def extend_values(self, values: list[float]) -> None:
        """``append(np.array(values))``, without making the array."""
        if not self:
            super().append(array("d"))
        self[0].extend(values)
