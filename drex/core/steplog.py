"""Per-step records, appended a run of steps at a time and written as one flat table."""

from __future__ import annotations

import numpy as np

COLUMNS = ("step", "replica", "time_s", "kind", "num_rows", "num_decode", "num_prefill_tokens", "num_flush",
           "num_exited", "num_buffered", "layer_end", "duration_ms", "buffer_size")


class StepLog:
    def __init__(self) -> None:
        self._chunks: list[tuple] = []

    def append(self, step: int, replica: int, start_s: float, durations_s: np.ndarray, kind: str, num_rows,
               num_decode: int, num_prefill_tokens: int, num_flush: int, num_exited, num_buffered, layer_end,
               buffer_size: int) -> None:
        self._chunks.append((step, replica, start_s, durations_s, kind, num_rows, num_decode, num_prefill_tokens,
                             num_flush, num_exited, num_buffered, layer_end, buffer_size))

    def __len__(self) -> int:
        return sum(len(c[3]) for c in self._chunks)

    def columns(self) -> dict[str, np.ndarray]:
        """Expand every run of k steps into k rows."""
        cols: dict[str, list] = {c: [] for c in COLUMNS}
        for (step, replica, start, dur, kind, rows, dec, pre, flush, exited, buffered, layer_end,
             buf) in self._chunks:
            k = len(dur)
            ends = start + np.cumsum(dur)
            cols["step"].append(np.arange(step, step + k))
            cols["replica"].append(np.full(k, replica))
            cols["time_s"].append(ends - dur)
            cols["kind"].append(np.full(k, kind, dtype=object))
            cols["num_rows"].append(np.broadcast_to(rows, k))
            cols["num_decode"].append(np.full(k, dec))
            cols["num_prefill_tokens"].append(np.full(k, pre))
            cols["num_flush"].append(np.full(k, flush))
            cols["num_exited"].append(np.broadcast_to(exited, k))
            cols["num_buffered"].append(np.broadcast_to(buffered, k))
            cols["layer_end"].append(np.broadcast_to(layer_end, k))
            cols["duration_ms"].append(dur * 1e3)
            cols["buffer_size"].append(np.full(k, buf))
        return {c: (np.concatenate(v) if v else np.array([])) for c, v in cols.items()}
