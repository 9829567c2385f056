"""Tests for drex.traces, drex.workload and drex.synthetic: malformed traces are located to file,
line and field; shipped traces load whole; synthetic arrivals match queueing theory."""

import csv
import json
import math
from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drex.synthetic import generate as synthetic_trace
from drex.traces import TRACE_NAMES, TraceError, TraceRequest, load_trace, trace_path
from drex.workload import make_workload

DREX_HEADER = "arrival_s,prompt_tokens,output_tokens\n"
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
TS = "2023-11-16 18:17:0{}.9799600"  # an Azure timestamp; {} is the second's last digit


def mooncake_line(ts=0, inp=10, out=5, hashes=(1, 2), **override):
    obj = {"timestamp": ts, "input_length": inp, "output_length": out, "hash_ids": list(hashes)}
    obj.update(override)
    return json.dumps({k: v for k, v in obj.items() if v is not ...}) + "\n"


# (file name, content, line of the defect, field named)
MALFORMED = [
    ("empty.csv", "", 1, "arrival_s"),
    ("header_only.csv", DREX_HEADER, 2, "arrival_s"),
    ("no_header.csv", "0,10,5\n1,10,5\n", 1, "arrival_s"),
    ("missing_col.csv", "arrival_s,prompt_tokens\n0,10\n", 1, "output_tokens"),
    ("unknown_col.csv", "arrival_s,prompt_tokens,output_tokens,slo_ttf_ms\n0,1,1,5\n", 1, "slo_ttf_ms"),
    ("short_row.csv", DREX_HEADER + "0,10,5\n1,10\n", 3, "output_tokens"),
    ("extra_value.csv", DREX_HEADER + "0,10,5,7\n", 2, "column 4"),
    ("non_numeric.csv", DREX_HEADER + "0,10,5\nsoon,10,5\n", 3, "arrival_s"),
    ("negative_time.csv", DREX_HEADER + "-1.5,10,5\n", 2, "arrival_s"),
    ("backwards.csv", DREX_HEADER + "0,10,5\n2,10,5\n1.5,10,5\n", 4, "arrival_s"),
    ("zero_prompt.csv", DREX_HEADER + "0,0,5\n", 2, "prompt_tokens"),
    ("zero_output.csv", DREX_HEADER + "0,10,5\n1,10,0\n", 3, "output_tokens"),
    ("fraction_tokens.csv", DREX_HEADER + "0,10.5,5\n", 2, "prompt_tokens"),
    ("text_tokens.csv", DREX_HEADER + "0,10,lots\n", 2, "output_tokens"),
    ("nan_time.csv", DREX_HEADER + "0,1,1\nnan,1,1\n", 3, "arrival_s"),
    ("inf_slo.csv", DREX_HEADER[:-1] + ",slo_tpot_ms\n0,1,1,inf\n", 2, "slo_tpot_ms"),
    ("negative_slo.csv", DREX_HEADER[:-1] + ",slo_ttft_ms\n0,1,1,200\n1,1,1,-5\n", 3, "slo_ttft_ms"),
    ("blank_middle_then_bad.csv", DREX_HEADER + "0,1,1\n\n1,1,x\n", 4, "output_tokens"),
    ("not_utf8.csv", DREX_HEADER + "0,1,1\n\xff,1,1\n", 3, "text"),
    ("azure_missing_col.csv", "TIMESTAMP,ContextTokens\n" + TS.format(3) + ",10\n", 1, "GeneratedTokens"),
    ("azure_bad_ts.csv", AZURE_HEADER + TS.format(3) + ",10,5\n2023-11-16 25:00:00.0,1,1\n", 3, "TIMESTAMP"),
    ("azure_bad_date.csv", AZURE_HEADER + "2023-02-30 18:17:03.1,1,1\n", 2, "TIMESTAMP"),
    ("azure_garbage_ts.csv", AZURE_HEADER + "yesterday,1,1\n", 2, "TIMESTAMP"),
    ("azure_backwards.csv", AZURE_HEADER + TS.format(3) + ",10,5\n" + TS.format(2) + ",10,5\n", 3, "TIMESTAMP"),
    ("azure_zero_output.csv", AZURE_HEADER + TS.format(3) + ",10,5\n" + TS.format(4) + ",10,0\n", 3, "GeneratedTokens"),
    ("azure_negative_prompt.csv", AZURE_HEADER + TS.format(3) + ",-4,5\n", 2, "ContextTokens"),
    ("azure_float_tokens.csv", AZURE_HEADER + TS.format(3) + ",10,5.5\n", 2, "GeneratedTokens"),
    ("empty.jsonl", "\n\n", 1, "timestamp"),
    ("bad_json.jsonl", mooncake_line() + '{"timestamp": 1, "input_length": \n', 2, "json"),
    ("json_array.jsonl", mooncake_line() + "[1, 2, 3]\n", 2, "json"),
    ("missing_key.jsonl", mooncake_line() + mooncake_line(ts=5, out=...), 2, "output_length"),
    ("hash_not_list.jsonl", mooncake_line(hash_ids=7), 1, "hash_ids"),
    ("hash_not_int.jsonl", mooncake_line(hash_ids=[1, "a"]), 1, "hash_ids"),
    ("input_string.jsonl", mooncake_line(inp="10"), 1, "input_length"),
    ("timestamp_string.jsonl", mooncake_line(ts="0"), 1, "timestamp"),
    ("json_negative_ts.jsonl", mooncake_line(ts=-3), 1, "timestamp"),
    ("json_backwards.jsonl", mooncake_line(ts=10) + mooncake_line(ts=20) + mooncake_line(ts=15), 3, "timestamp"),
    ("json_zero_output.jsonl", mooncake_line(out=0), 1, "output_length"),
    ("json_float_tokens.jsonl", mooncake_line(inp=10.5), 1, "input_length"),
    ("json_nan_ts.jsonl", mooncake_line() + '{"timestamp": NaN, "input_length": 1, "output_length": 1}\n', 2, "timestamp"),
]


@pytest.mark.parametrize("name,content,line,field", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_trace_is_located(tmp_path, name, content, line, field):
    path = tmp_path / name
    path.write_bytes(content.encode("latin-1") if name == "not_utf8.csv" else content.encode())
    with pytest.raises(TraceError) as info:
        load_trace(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: field '{field}': "), message
    assert (info.value.line, info.value.field) == (line, field)


def test_blank_trailing_lines_and_empty_slo_cells_are_fine(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text(DREX_HEADER[:-1] + ",slo_ttft_ms\n2,10,5,\n3.5,20,6,250\n\n,,,\n \n")  # ',,,': spreadsheets
    requests = load_trace(str(path))
    assert requests == [TraceRequest(0, 0.0, 10, 5), TraceRequest(1, 1.5, 20, 6, slo_ttft_ms=250.0)]


def test_azure_timestamps_keep_sub_microsecond_digits_and_cross_midnight(tmp_path):
    path = tmp_path / "azure.csv"
    stamps = ["2023-11-16 23:59:59.5000000", "2023-11-16 23:59:59.5000001", "2023-11-17 00:00:01.2500000"]
    path.write_text(AZURE_HEADER + "".join(f"{s},10,5\n" for s in stamps))
    arrivals = [r.arrival_s for r in load_trace(str(path))]
    assert arrivals[0] == 0.0
    assert arrivals[1] == pytest.approx(1e-7, abs=1e-9)
    assert arrivals[2] == pytest.approx(1.75, abs=1e-9)


def test_unknown_extension_is_sniffed(tmp_path):
    (tmp_path / "t.txt").write_text(mooncake_line(ts=0) + mooncake_line(ts=500))
    (tmp_path / "u.txt").write_text(DREX_HEADER + "0,1,1\n0.5,1,1\n")
    for name in ("t.txt", "u.txt"):
        assert [r.arrival_s for r in load_trace(str(tmp_path / name))] == [0.0, 0.5]


def test_unknown_trace_name_lists_known_names():
    with pytest.raises(ValueError) as info:
        load_trace("azure-chat")
    assert not isinstance(info.value, TraceError)
    assert all(name in str(info.value) for name in TRACE_NAMES)


@pytest.mark.parametrize("bad", [{"num_requests": 0}, {"num_requests": -3}, {"num_requests": 2.5},
                                 {"rate_scale": 0}, {"rate_scale": -1.0}, {"rate_scale": math.nan},
                                 {"rate_scale": math.inf}])  # fmt: skip
def test_bad_num_requests_or_rate_scale(bad):
    flag = "--" + next(iter(bad)).replace("_", "-")  # the message names the flag a user typed
    with pytest.raises(ValueError, match=flag):
        load_trace("azure-code", **bad)
    with pytest.raises(ValueError, match=flag):
        make_workload("synthetic:poisson:rate=1,n=5,prompt=fixed:1,output=fixed:1", rng=np.random.default_rng(0), **bad)


# --- shipped traces ----------------------------------------------------------------


def count_requests(path):
    """Rows of a shipped file, counted independently of the loader."""
    with open(path, newline="") as f:
        if path.suffix == ".jsonl":
            return sum(1 for line in f if line.strip())
        return sum(1 for row in csv.reader(f) if row) - 1  # minus the header


@pytest.fixture(scope="module")
def shipped():
    return {name: load_trace(name) for name in TRACE_NAMES}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRACE_NAMES))
def test_shipped_trace_loads_whole(shipped, name):
    requests = shipped[name]
    assert len(requests) == count_requests(trace_path(name))
    assert [r.request_id for r in requests] == list(range(len(requests)))
    arrivals = np.array([r.arrival_s for r in requests])
    assert arrivals[0] == 0.0 and np.all(np.diff(arrivals) >= 0)
    assert min(r.prompt_tokens for r in requests) >= 1 and min(r.output_tokens for r in requests) >= 1


def test_shipped_counts_match_the_brief(shipped):
    assert {name: len(r) for name, r in shipped.items()} == {"azure-code": 8819, "azure-conv": 19366, "mooncake": 12031}


@pytest.mark.parametrize("name", ["azure-code", "azure-conv"])
def test_azure_arrivals_match_wall_clock(shipped, name):
    with open(trace_path(name), newline="") as f:
        rows = list(csv.DictReader(f))
    # datetime holds microseconds: trim the 7th digit, so agreement is to ~1 us.
    stamps = [datetime.fromisoformat(rows[i]["TIMESTAMP"][:26]) for i in (0, len(rows) // 2, -1)]
    for i, stamp in zip((0, len(rows) // 2, len(rows) - 1), stamps):
        assert shipped[name][i].arrival_s == pytest.approx((stamp - stamps[0]).total_seconds(), abs=2e-6)
        assert shipped[name][i].prompt_tokens == int(rows[i]["ContextTokens"])
        assert shipped[name][i].output_tokens == int(rows[i]["GeneratedTokens"])


def test_mooncake_fields(shipped):
    with open(trace_path("mooncake")) as f:
        objs = [json.loads(line) for line in f if line.strip()]
    for i in (0, 1, len(objs) // 2, len(objs) - 1):
        r = shipped["mooncake"][i]
        assert r.arrival_s == pytest.approx((objs[i]["timestamp"] - objs[0]["timestamp"]) / 1000)
        assert (r.prompt_tokens, r.output_tokens) == (objs[i]["input_length"], objs[i]["output_length"])
        assert r.prefix_hash_ids == tuple(objs[i]["hash_ids"])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRACE_NAMES))
def test_num_requests_and_rate_scale(shipped, name):
    head = load_trace(name, num_requests=100)
    assert head == shipped[name][:100]
    fast = load_trace(name, num_requests=500, rate_scale=2.0)
    slow = load_trace(name, num_requests=500, rate_scale=0.5)
    for f, s, r in zip(fast, slow, shipped[name]):
        assert f.arrival_s == pytest.approx(r.arrival_s / 2) and s.arrival_s == pytest.approx(r.arrival_s * 2)
        assert (f.prompt_tokens, f.output_tokens) == (r.prompt_tokens, r.output_tokens)
    assert load_trace(name, num_requests=10**9) == shipped[name]
    assert make_workload(name, num_requests=100) == head


# --- synthetic -------------------------------------------------------------------


def gaps(requests):
    return np.diff([r.arrival_s for r in requests])


def test_poisson_mean_interarrival():
    requests = synthetic_trace("poisson:rate=4,n=20000,prompt=fixed:100,output=fixed:10", np.random.default_rng(1))
    assert len(requests) == 20000 and requests[0].arrival_s == 0.0
    g = gaps(requests)
    assert g.mean() == pytest.approx(1 / 4, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(1.0, rel=0.05)  # exponential: CV 1


@pytest.mark.slow
@pytest.mark.parametrize("burstiness", [0.25, 0.5, 1.0, 2.0, 4.0])
def test_gamma_burstiness_sets_cv(burstiness):
    spec = f"gamma:rate=8,burstiness={burstiness},n=20000,prompt=fixed:1,output=fixed:1"
    g = gaps(synthetic_trace(spec, np.random.default_rng(2)))
    cv = 1 / math.sqrt(burstiness)  # of a Gamma(shape=b) variable
    # burstiness leaves the rate alone; 4 standard errors of the sample mean
    assert g.mean() == pytest.approx(1 / 8, rel=4 * cv / math.sqrt(len(g)))
    assert g.std() / g.mean() == pytest.approx(cv, rel=0.04)


def test_same_seed_same_trace():
    spec = "gamma:rate=4,burstiness=0.5,n=500,prompt=uniform:64:512,output=trace:azure-conv,slo_ttft_ms=300"
    a = synthetic_trace(spec, np.random.default_rng(7))
    assert a == synthetic_trace(spec, np.random.default_rng(7))
    assert a != synthetic_trace(spec, np.random.default_rng(8))
    assert all(r.slo_ttft_ms == 300.0 and r.slo_tpot_ms is None for r in a)


@pytest.mark.slow
def test_length_distributions(shipped):
    rng = np.random.default_rng(3)

    def lengths(prompt, output="fixed:1", n=20000):
        requests = synthetic_trace(f"poisson:rate=1,n={n},prompt={prompt},output={output}", rng)
        return np.array([r.prompt_tokens for r in requests]), np.array([r.output_tokens for r in requests])

    assert set(lengths("fixed:128")[0]) == {128}
    uniform = lengths("uniform:64:70")[0]
    assert set(uniform) == set(range(64, 71))  # both ends inclusive
    assert lengths("lognormal:mean=1000:sigma=1")[0].mean() == pytest.approx(1000, rel=0.02)
    assert lengths("lognormal:mean=2:sigma=2")[0].min() >= 1  # clipped
    conv = {(r.prompt_tokens, r.output_tokens) for r in shipped["azure-conv"]}
    prompt, output = lengths("trace:azure-conv", "trace:azure-conv", n=2000)
    assert set(zip(prompt.tolist(), output.tolist())) <= conv  # one row gives both
    _, output = lengths("fixed:1", "trace:mooncake", n=2000)
    assert set(output.tolist()) <= {r.output_tokens for r in shipped["mooncake"]}


BAD_SPECS = [
    ("weibull:rate=1,n=5,prompt=fixed:1,output=fixed:1", "weibull"),
    ("poisson:rate=0,n=5,prompt=fixed:1,output=fixed:1", "rate"),
    ("poisson:rate=fast,n=5,prompt=fixed:1,output=fixed:1", "rate"),
    ("poisson:rate=1,n=0,prompt=fixed:1,output=fixed:1", "n"),
    ("poisson:rate=1,n=2.5,prompt=fixed:1,output=fixed:1", "n"),
    ("poisson:rate=1,n=5,prompt=fixed:1", "output"),
    ("poisson:rate=1,n=5,prompt=fixed:1,output=fixed:1,colour=red", "colour"),
    ("poisson:rate=1,n=5,rate=2,prompt=fixed:1,output=fixed:1", "rate"),
    ("poisson:rate=1,burstiness=0.5,n=5,prompt=fixed:1,output=fixed:1", "burstiness"),
    ("gamma:rate=1,burstiness=-1,n=5,prompt=fixed:1,output=fixed:1", "burstiness"),
    ("poisson:rate=1,n=5,prompt=fixed:0,output=fixed:1", "prompt=fixed:0"),
    ("poisson:rate=1,n=5,prompt=uniform:9:3,output=fixed:1", "prompt=uniform:9:3"),
    ("poisson:rate=1,n=5,prompt=uniform:9,output=fixed:1", "prompt=uniform:9"),
    ("poisson:rate=1,n=5,prompt=lognormal:mean=100,output=fixed:1", "prompt=lognormal"),
    ("poisson:rate=1,n=5,prompt=fixed:1,output=zipf:2", "zipf"),
    ("poisson:rate=1,n=5,prompt=fixed:1,output=trace:nope", "nope"),
    ("poisson:rate=1,n=5,prompt=fixed:1,output=fixed:1,slo_ttft_ms=-1", "slo_ttft_ms"),
    ("poisson", "poisson"),
]


@pytest.mark.parametrize("spec,named", BAD_SPECS)
def test_bad_spec_names_the_problem(spec, named):
    with pytest.raises(ValueError) as info:
        synthetic_trace(spec, np.random.default_rng(0))
    assert named in str(info.value)


def test_make_workload_synthetic():
    spec = "synthetic:poisson:rate=2,n=100,prompt=fixed:8,output=fixed:4"
    full = make_workload(spec, rng=np.random.default_rng(5))
    scaled = make_workload(spec, num_requests=40, rate_scale=4.0, rng=np.random.default_rng(5))
    assert len(scaled) == 40
    assert [r.arrival_s for r in scaled] == pytest.approx([r.arrival_s / 4 for r in full[:40]])
    with pytest.raises(ValueError, match="rng"):
        make_workload(spec)


# --- properties --------------------------------------------------------------------

finite = st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False)
slo = st.none() | st.floats(min_value=1e-3, max_value=1e6, allow_nan=False)
row = st.tuples(finite, st.integers(1, 10**6), st.integers(1, 10**5), slo, slo)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(rows=st.lists(row, min_size=1, max_size=40), with_slo=st.booleans(),
       rate_scale=st.floats(min_value=0.01, max_value=100))  # fmt: skip
def test_drex_csv_round_trips(tmp_path_factory, rows, with_slo, rate_scale):
    arrivals = sorted(r[0] for r in rows)
    path = tmp_path_factory.mktemp("rt") / "trace.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arrival_s", "prompt_tokens", "output_tokens"] + (["slo_ttft_ms", "slo_tpot_ms"] * with_slo))
        for t, (_, p, o, ttft, tpot) in zip(arrivals, rows):
            slos = ["" if x is None else repr(x) for x in (ttft, tpot)]
            writer.writerow([repr(t), p, o] + slos * with_slo)
    expected = [
        TraceRequest(i, (t - arrivals[0]) / rate_scale, p, o, *((ttft, tpot) if with_slo else (None, None)))
        for i, (t, (_, p, o, ttft, tpot)) in enumerate(zip(arrivals, rows))
    ]
    assert load_trace(str(path), rate_scale=rate_scale) == expected


@settings(max_examples=40, deadline=None)
@given(offsets_us=st.lists(st.integers(0, 3 * 86400 * 10**6), min_size=1, max_size=30))
def test_azure_round_trips_wall_clock(tmp_path_factory, offsets_us):
    start = datetime(2023, 11, 16, 18, 17, 3, 979960)
    stamps = [start + timedelta(microseconds=us) for us in sorted(offsets_us)]
    path = tmp_path_factory.mktemp("az") / "azure.csv"
    path.write_text(AZURE_HEADER + "".join(f"{s:%Y-%m-%d %H:%M:%S.%f}0,{i + 1},7\n" for i, s in enumerate(stamps)))
    requests = load_trace(str(path))
    for i, (r, s) in enumerate(zip(requests, stamps)):
        assert r.arrival_s == pytest.approx((s - stamps[0]).total_seconds(), abs=1e-6)
        assert (r.prompt_tokens, r.output_tokens) == (i + 1, 7)


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("0123456789.,-+eE naifT:\n{}[]\"")), max_size=120),
       suffix=st.sampled_from([".csv", ".jsonl"]))  # fmt: skip
@pytest.mark.slow
def test_garbage_gives_trace_error_or_valid_trace(tmp_path_factory, text, suffix):
    header = {".csv": DREX_HEADER, ".jsonl": ""}[suffix]
    path = tmp_path_factory.mktemp("fz") / f"fuzz{suffix}"
    path.write_text(header + text)
    try:
        requests = load_trace(str(path))
    except TraceError as e:
        assert str(e).startswith(f"{path}:") and e.line >= 1
        return
    assert requests[0].arrival_s == 0.0
    assert all(b.arrival_s >= a.arrival_s for a, b in zip(requests, requests[1:]))
    assert all(r.prompt_tokens >= 1 and r.output_tokens >= 1 for r in requests)
