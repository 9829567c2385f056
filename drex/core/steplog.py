"""Per-step records, appended a run of steps at a time and written as one flat table."""

from __future__ import annotations

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
    def __init__(self) -> None:
        self._runs: list[StepRun] = []

    def append(self, run: StepRun) -> None:
        self._runs.append(run)

    def __len__(self) -> int:
        return sum(len(r.durations_s) for r in self._runs)

    def columns(self) -> dict[str, np.ndarray]:
        """Expand every run of k steps into k rows (scalars repeated, per-step arrays concatenated)."""
        runs = self._runs
        if not runs:
            return {c: np.array([]) for c in COLUMNS}
        dur = [np.asarray(r.durations_s, dtype=float) for r in runs]
        lengths = np.array([len(d) for d in dur])
        durations = np.concatenate(dur)
        starts = np.array([r.start_s for r in runs], dtype=float)
        # Step start times: each run starts at its own start; within a run, after the previous steps.
        run_offset = np.repeat(starts, lengths)
        within = np.cumsum(durations) - np.repeat(np.cumsum([d.sum() for d in dur]) - [d.sum() for d in dur],
                                                  lengths) - durations
        cols = {"step": np.concatenate([np.arange(r.step, r.step + k) for r, k in zip(runs, lengths)]),
                "replica": np.repeat([r.replica for r in runs], lengths), "time_s": run_offset + within,
                "kind": np.repeat(np.array([r.kind for r in runs], dtype=object), lengths)}
        for name in ("num_rows", "num_decode", "num_prefill_tokens", "num_flush", "num_exited", "num_buffered",
                     "layer_end", "buffer_size", "layer_start", "kv_blocks"):
            vals = [getattr(r, name) for r in runs]
            if not any(isinstance(v, np.ndarray) for v in vals):
                cols[name] = np.repeat(np.array(vals), lengths)
            else:
                cols[name] = np.concatenate([np.broadcast_to(v, k) for v, k in zip(vals, lengths)])
        cols["duration_ms"] = durations * 1e3
        return {c: cols[c] for c in COLUMNS}
