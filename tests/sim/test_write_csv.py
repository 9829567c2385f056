"""metrics.write_csv writes what DataFrame.to_csv(index=False, float_format="%.6f") writes, byte for byte
(issue 13: records written faster, files unchanged)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from drex.core.request import Request, RequestStatus
from drex.metrics import Columns, rejection_lines, request_columns, summarize, write_csv


def frames():
    rng = np.random.default_rng(0)
    n = 500
    yield "mixed", pd.DataFrame({
        "i": rng.integers(-10**12, 10**12, n), "f": rng.normal(0, 1e4, n), "b": rng.random(n) > 0.5,
        "s": pd.array(rng.choice(["decode", "mixed", "prefill", "flush"], n), dtype="string"),
        "nan": np.where(rng.random(n) > 0.7, np.nan, rng.random(n)), "u": rng.integers(0, 5, n).astype(np.uint8)})
    yield "special floats", pd.DataFrame({"a": [0.0, -0.0, math.inf, -math.inf, 1e-9, 123456789.1234567],
                                          "b": [1, 2, 3, 4, 5, 6]})
    yield "object with None", pd.DataFrame({"x": ["a", None, "c"], "y": [1.5, None, 2.5], "z": [None, 2.0, 3.0]})
    yield "needs quoting", pd.DataFrame({"x": ["a,b", 'say "hi"', "c"], "y": [1, 2, 3]})
    yield "empty", pd.DataFrame({"x": pd.Series([], dtype=float), "y": pd.Series([], dtype=int)})
    yield "one column", pd.DataFrame({"x": [1.0, 2.0]})
    yield "mixed objects", pd.DataFrame({"x": [1, "a", 2.5], "y": [1, 2, 3]})
    yield "long, odd late", pd.DataFrame({"x": ["a"] * 70_000 + ["b,c"], "y": np.arange(70_001) / 3})


@pytest.mark.parametrize("name,df", list(frames()), ids=[n for n, _ in frames()])
def test_same_bytes_as_pandas(tmp_path, name, df):
    df.to_csv(tmp_path / "pandas.csv", index=False, float_format="%.6f")
    write_csv(df, tmp_path / "ours.csv")
    assert (tmp_path / "ours.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()


@pytest.mark.parametrize("name,df", list(frames()), ids=[n for n, _ in frames()])
def test_columns_write_as_their_frame(tmp_path, name, df):
    """The simulator's records (Columns of numpy arrays) are written as pandas writes the frame of them."""
    cols = Columns((c, df[c].to_numpy(dtype=object) if df[c].dtype.kind not in "biuf" else df[c].to_numpy())
                   for c in df.columns)
    cols.frame().to_csv(tmp_path / "pandas.csv", index=False, float_format="%.6f")
    write_csv(cols, tmp_path / "ours.csv")
    assert (tmp_path / "ours.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()


def _requests():
    rs = []
    for i in range(40):
        r = Request(i, 0.1 * i, 100 + i, 10, slo_ttft_ms=None if i % 3 else 500.0, slo_tpot_ms=None)
        if i % 7 == 0:
            r.reject(f"prompt+output={4000 + i} tokens exceeds max_model_len=4096")
        elif i % 11 == 0:
            r.reject(f"needs {i} KV blocks; the device holds 3")
        else:
            r.status, r.num_generated, r.first_token_s = RequestStatus.FINISHED, 10, 0.1 * i + 0.05 * (i % 5)
            r.last_token_s = r.finish_s = r.first_token_s + 0.02 * i
            r.sum_exit_layer, r.num_early_exits, r.num_preemptions = 300 + i, i % 4, i % 2
        rs.append(r)
    return rs


def test_summary_and_rejections_same_from_columns_and_frame():
    """summarize and rejection_lines give the same from Columns as from the DataFrame of them (the real
    backend passes frames; the simulator columns)."""
    cols = request_columns(_requests())
    frame = cols.frame()
    assert frame.equals(pd.DataFrame([tuple(cols[c][i] for c in cols) for i in range(cols.num_rows)],
                                     columns=list(cols)).astype(frame.dtypes.to_dict()))
    steps = Columns(step=np.arange(5), kind=np.array(["decode"] * 5, dtype=object))
    a = summarize(cols, steps, np.array([0.01, 0.02]), {})
    b = summarize(frame, steps.frame(), np.array([0.01, 0.02]), {})
    assert a == b and a["num_steps"] == 5 and "request_goodput" in a and a["failed"] == 9
    lines = rejection_lines(cols)
    assert lines == rejection_lines(frame) == _pandas_rejection_lines(frame)
    assert lines == ["9 of 40 requests not served:",
                     "  6 rejected, e.g. prompt+output=4000 tokens exceeds max_model_len=4096",
                     "  3 rejected, e.g. needs 11 KV blocks; the device holds 3"]


def _pandas_rejection_lines(req):
    """rejection_lines as it was written with pandas (before issue 13): the reference."""
    bad = req[req.status != "finished"]
    reasons = bad.reason.fillna("").astype(str)
    kinds = reasons.str.replace(r"\d+", "N", regex=True)
    lines = [f"{len(bad)} of {len(req)} requests not served:"]
    for (status, kind), n in bad.groupby([bad.status, kinds]).size().sort_values(ascending=False).items():
        example = reasons[(bad.status == status) & (kinds == kind)].iloc[0]
        lines.append(f"  {n} {status}" + (f", e.g. {example}" if example else ""))
    return lines
