"""drex capacity: SLO defaults per request, the search's bracket and knee, capacity.json, sweeps of it."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from drex.cli import main
from drex.explore import capacity
from drex.explore.grid import to_namespace
from drex.slo import goodput_fraction, with_default_slos
from drex.traces import TraceRequest

SYNTH = "synthetic:poisson:rate=20,n=150,prompt=uniform:16:256,output=uniform:8:64"
BASE = ["--trace", SYNTH, "--model", "llama2-7b", "--device", "a100", "--cost-model", "roofline",
        "--policy", "off"]
SLOS = ["--slo-ttft-ms", "200", "--slo-tpot-ms", "40"]


def test_slo_flags_fill_in_only_requests_without_one():
    w = [TraceRequest(0, 0.0, 8, 4, 50.0, None), TraceRequest(1, 1.0, 8, 4, None, None)]
    got = with_default_slos(w, 100.0, 20.0)
    assert [(r.slo_ttft_ms, r.slo_tpot_ms) for r in got] == [(50.0, 20.0), (100.0, 20.0)]
    assert with_default_slos(w, None, None) is w
    with pytest.raises(ValueError, match="--slo-tpot-ms must be > 0"):
        with_default_slos(w, None, -1.0)


@pytest.mark.slow
def test_search_brackets_the_knee_within_tolerance():
    ns = to_namespace({"trace": SYNTH, "model": "llama2-7b", "device": "a100", "cost_model": "roofline",
                       "policy": "off", "slo_ttft_ms": "200", "slo_tpot_ms": "40"})
    out = capacity.search(ns, min_fraction=0.9, tolerance=0.05, max_runs=30)
    cap = out["capacity"]
    assert cap["bracketed"] and cap["first_failing_rate"] / cap["max_request_rate"] <= 1.05
    by_rate = {r["request_rate"]: r for r in cap["runs"]}
    assert by_rate[cap["max_request_rate"]]["goodput_fraction"] >= 0.9
    assert by_rate[cap["first_failing_rate"]]["goodput_fraction"] < 0.9
    # every passing load tried is below every failing one tried above the knee
    assert max(r["request_rate"] for r in cap["runs"] if r["meets_slo"]) == pytest.approx(cap["max_request_rate"])
    assert cap["max_request_rate"] == pytest.approx(cap["max_rate_scale"] * cap["base_request_rate"])
    assert cap["base_request_rate"] == pytest.approx(20, rel=0.25)  # the Poisson spec's rate
    assert goodput_fraction(out["knee"].requests) == cap["goodput_fraction_at_knee"]
    assert out["knee"].summary["request_throughput"] > 0


@pytest.mark.slow
def test_capacity_cli_writes_capacity_json_and_the_knee(tmp_path, capsys):
    assert main(["capacity", *BASE, *SLOS, "--no-progress", "--out", str(tmp_path)]) == 0
    cap = json.loads((tmp_path / "capacity.json").read_text())
    assert cap["max_request_rate"] > 0 and cap["num_runs"] == len(cap["runs"])
    assert "max request rate" in capsys.readouterr().out
    knee = json.loads((tmp_path / "knee" / "summary.json").read_text())
    assert knee["request_goodput"] > 0 and cap["knee"]["completed"] == knee["completed"]


@pytest.mark.slow
def test_a_trace_s_own_slos_need_no_flags(tmp_path):
    trace = tmp_path / "t.csv"
    rows = [f"{i * 0.05:.3f},64,16,300,50" for i in range(60)]
    trace.write_text("arrival_s,prompt_tokens,output_tokens,slo_ttft_ms,slo_tpot_ms\n" + "\n".join(rows) + "\n")
    assert main(["capacity", "--trace", str(trace), "--model", "llama2-7b", "--device", "a100", "--policy", "off",
                 "--cost-model", "roofline", "--no-progress", "--out", str(tmp_path / "c")]) == 0
    cap = json.loads((tmp_path / "c" / "capacity.json").read_text())
    assert cap["slo_ttft_ms"] is None and cap["max_request_rate"] > 0


@pytest.mark.parametrize("extra, message", [([], "needs an SLO"),
                                            (SLOS + ["--min-goodput-fraction", "1.5"], "min-goodput-fraction"),
                                            (SLOS + ["--max-runs", "1"], "max-runs")])
def test_capacity_input_errors_are_one_line(tmp_path, capsys, extra, message):
    assert main(["capacity", *BASE, *extra, "--no-progress", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("drex capacity: error:") and message in err and "Traceback" not in err


@pytest.mark.slow
def test_sweep_capacity_gives_one_search_per_configuration(tmp_path):
    assert main(["sweep", *BASE[:-2], *SLOS, "--policy", "off,lazy", "--max-batch-size", "4,64", "--capacity",
                 "--ray", "off", "--no-progress", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "sweep.csv")
    assert len(df) == 4 and (df.status == "ok").all()
    assert {"max_request_rate", "goodput_fraction_at_knee", "mean_tpot_ms"} <= set(df.columns)
    assert "runs" not in df.columns
    # a 4-row batch sustains less load than a 64-row one
    for policy in ("off", "lazy"):
        rate = df[df.policy == policy].set_index("max_batch_size").max_request_rate
        assert rate[4] < rate[64]
    assert (tmp_path / "runs" / df.config_id[0] / "knee" / "summary.json").is_file()
