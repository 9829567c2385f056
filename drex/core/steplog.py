"""Per-step records, appended a run of steps at a time and written as one flat table."""

from __future__ import annotations

import numpy as np

COLUMNS = ("step", "replica", "time_s", "kind", "num_rows", "num_decode", "num_prefill_tokens", "num_flush",
           "num_exited", "num_buffered", "layer_start", "layer_end", "duration_ms", "buffer_size", "kv_blocks")


class StepLog:
    def __init__(self) -> None:
        self._chunks: list[tuple] = []

    def append(self, step: int, replica: int, start_s: float, durations_s: np.ndarray, kind: str, num_rows,
               num_decode: int, num_prefill_tokens: int, num_flush: int, num_exited, num_buffered, layer_end,
               buffer_size, layer_start: int = 0, kv_blocks: int = 0) -> None:
        """One run of len(durations_s) steps; per-step columns may be scalars (same for every step) or arrays.

        kv_blocks: KV blocks held while the run ran (a planned run of decode steps allocates its
        blocks up front, so every step of the run shows the run's total)."""
        self._chunks.append((step, replica, start_s, durations_s, kind, num_rows, num_decode, num_prefill_tokens,
                             num_flush, num_exited, num_buffered, layer_end, buffer_size, layer_start, kv_blocks))

    def __len__(self) -> int:
        return sum(len(c[3]) for c in self._chunks)

    def columns(self) -> dict[str, np.ndarray]:
        """Expand every run of k steps into k rows (scalars repeated, per-step arrays concatenated)."""
        if not self._chunks:
            return {c: np.array([]) for c in COLUMNS}
        fields = list(zip(*self._chunks))
        dur = [np.asarray(d, dtype=float) for d in fields[3]]
        lengths = np.array([len(d) for d in dur])
        durations = np.concatenate(dur)
        starts = np.array(fields[2], dtype=float)
        # Step start times: each run starts at its own start; within a run, after the previous steps.
        run_offset = np.repeat(starts, lengths)
        within = np.cumsum(durations) - np.repeat(np.cumsum([d.sum() for d in dur]) - [d.sum() for d in dur],
                                                  lengths) - durations
        cols = {"step": np.concatenate([np.arange(s, s + k) for s, k in zip(fields[0], lengths)]),
                "replica": np.repeat(fields[1], lengths), "time_s": run_offset + within,
                "kind": np.repeat(np.array(fields[4], dtype=object), lengths)}
        for name, i in (("num_rows", 5), ("num_decode", 6), ("num_prefill_tokens", 7), ("num_flush", 8),
                        ("num_exited", 9), ("num_buffered", 10), ("layer_end", 11), ("buffer_size", 12),
                        ("layer_start", 13), ("kv_blocks", 14)):
            vals = fields[i]
            if not any(isinstance(v, np.ndarray) for v in vals):
                cols[name] = np.repeat(np.array(vals), lengths)
            else:
                cols[name] = np.concatenate([np.broadcast_to(v, k) for v, k in zip(vals, lengths)])
        cols["duration_ms"] = durations * 1e3
        return {c: cols[c] for c in COLUMNS}
