"""The step log's compact storage expands to exactly what expanding each run did (issue 13: a 100k-request
drex run must fit in 2 GB), and ChunkedArrays concatenates to the same array."""

from __future__ import annotations

import numpy as np

from drex.core.steplog import COLUMNS, ChunkedArrays, StepLog, StepRun


def reference_columns(runs):
    """The expansion StepLog.columns did before runs were stored column by column."""
    dur = [np.asarray(r.durations_s, dtype=float) for r in runs]
    lengths = np.array([len(d) for d in dur])
    durations = np.concatenate(dur)
    starts = np.array([r.start_s for r in runs], dtype=float)
    within = np.cumsum(durations) - np.repeat(np.cumsum([d.sum() for d in dur]) - [d.sum() for d in dur],
                                              lengths) - durations
    cols = {"step": np.concatenate([np.arange(r.step, r.step + k) for r, k in zip(runs, lengths)]),
            "replica": np.repeat([r.replica for r in runs], lengths), "time_s": np.repeat(starts, lengths) + within,
            "kind": np.repeat(np.array([r.kind for r in runs], dtype=object), lengths)}
    for name in ("num_rows", "num_decode", "num_prefill_tokens", "num_flush", "num_exited", "num_buffered",
                 "layer_end", "buffer_size", "layer_start", "kv_blocks"):
        vals = [getattr(r, name) for r in runs]
        cols[name] = np.concatenate([np.broadcast_to(v, k) for v, k in zip(vals, lengths)])
    cols["duration_ms"] = durations * 1e3
    return cols


def test_columns_match_the_run_by_run_expansion():
    rng = np.random.default_rng(0)
    log, runs, step, t = StepLog(), [], 0, 0.0
    for i in range(3000):
        k = int(rng.integers(1, 40)) if i % 3 == 0 else 1
        dur = rng.random(k) * 0.03
        per_step = (lambda: rng.integers(0, 9, k)) if i % 2 else (lambda: int(rng.integers(0, 9)))
        run = StepRun(step, i % 2, t, dur, ["decode", "mixed", "flush"][i % 3], 5, 4, 100 * (i % 2), 1 - i % 2,
                      per_step(), per_step(), np.int32(40) if i % 5 else np.full(k, 20, np.int32), per_step(),
                      layer_start=20 * (i % 3 == 2), kv_blocks=int(rng.integers(0, 3000)))
        log.append(run)
        runs.append(run)
        step, t = step + k, t + float(dur.sum()) + float(rng.random())
    got, want = log.columns(), reference_columns(runs)
    assert list(got) == list(COLUMNS) and len(log) == len(want["step"])
    for c in COLUMNS:
        assert np.array_equal(got[c], want[c]), c
        if want[c].dtype.kind == "f":
            assert got[c].tobytes() == want[c].tobytes(), c
    assert {c: len(v) for c, v in StepLog().columns().items()} == {c: 0 for c in COLUMNS}


def test_chunked_arrays_concatenate_to_the_same_array():
    rng = np.random.default_rng(1)
    parts = [rng.random(int(rng.integers(0, 5))) for _ in range(1000)]
    chunked = ChunkedArrays()
    for i, p in enumerate(parts):
        if i % 3:
            chunked.append(p)
        else:
            chunked.extend_values(p.tolist())
    assert len(chunked) == 1
    assert np.concatenate(chunked).tobytes() == np.concatenate(parts).tobytes()
    chunked.clear()
    for p in parts[:100]:
        chunked.append(p)
    assert np.concatenate(chunked).tobytes() == np.concatenate(parts[:100]).tobytes()
