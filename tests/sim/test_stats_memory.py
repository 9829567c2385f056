"""Summary statistics computed without extra copies give the same numbers, and never reorder a caller's
array unless told it is scratch (issue 13: peak memory of a 100k-request run)."""

from __future__ import annotations

import numpy as np

from drex.metrics import _stats


def test_scratch_and_copy_give_the_same_numbers_and_the_caller_keeps_its_order():
    rng = np.random.default_rng(0)
    for values in (rng.lognormal(3, 1, 10_001), np.where(rng.random(5_000) > 0.9, np.nan, rng.random(5_000)),
                   np.array([np.nan, np.nan]), np.array([2.5])):
        before = values.copy()
        kept = _stats("x", values)
        assert np.array_equal(values, before, equal_nan=True)  # not reordered
        assert repr(_stats("x", values.copy(), own=True)) == repr(kept)  # (repr: NaN equals NaN)
        if not np.isnan(values).any() and len(values) > 1:
            v = values.copy()
            ref = {"mean_x_ms": float(v.mean()), "median_x_ms": float(np.median(v)),
                   "p99_x_ms": float(np.percentile(v, 99))}
            assert kept == ref
