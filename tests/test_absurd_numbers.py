"""A trace whose numbers are absurd (issue 26): a token count or a time beyond what a 64-bit integer, a double or
drex's clock holds, in any field of any format, is a one-line error naming the file, the line and the field
(exit 2); a number drex holds but the model cannot serve is a request rejected with its reason. Never an
overflow from the records' writer (exit 70), never a run that serves a request at 1e308 s in no time."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from drex.cli import main

pytestmark = pytest.mark.slow  # 81 command runs: the `not slow` subset stays under 20 s

BIG = "99999999999999999999"  # 1e20: no int64
HUGE = "1" + "0" * 400  # no double either
LONG = "1" * 5000  # past Python's 4300-digit int() limit
FAR = "1e308"  # a double, but past the clock's horizon (2**32 s)
INT64_MAX = str(2**63 - 1)  # holds, but no model serves it: rejected

DREX = "arrival_s,prompt_tokens,output_tokens,slo_ttft_ms,slo_tpot_ms"
DREX_OK = {"arrival_s": "1", "prompt_tokens": "10", "output_tokens": "10", "slo_ttft_ms": "100", "slo_tpot_ms": "50"}
AZURE = "TIMESTAMP,ContextTokens,GeneratedTokens"
AZURE_OK = {"TIMESTAMP": "2023-11-16 18:17:04.0", "ContextTokens": "10", "GeneratedTokens": "10"}
MOON_OK = {"timestamp": 1000, "input_length": 10, "output_length": 10, "hash_ids": [1]}


def _drex(tmp_path, field, value):
    row = {**DREX_OK, field: value}
    text = f"{DREX}\n0,10,10,,\n" + ",".join(row[c] for c in DREX.split(",")) + "\n"
    return _file(tmp_path, "t.csv", text), 3


def _azure(tmp_path, field, value):
    row = {**AZURE_OK, field: value}
    first = "0001-01-01 00:00:00.0" if field == "TIMESTAMP" else "2023-11-16 18:17:03.9799600"
    text = f"{AZURE}\n{first},10,10\n" + ",".join(row[c] for c in AZURE.split(",")) + "\n"
    return _file(tmp_path, "t.csv", text), 3


def _mooncake(tmp_path, field, value):
    row = json.dumps({**MOON_OK, field: "@"}).replace('"@"', value)  # the value as the file writes it
    return _file(tmp_path, "t.jsonl", json.dumps({**MOON_OK, "timestamp": 0}) + "\n" + row + "\n"), 2


def _file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def _simulate(tmp_path, capsys, *args):
    rc = main(["simulate", *args, "--out", str(tmp_path / "out")])
    return rc, capsys.readouterr().err


def _one_line_error(rc, err):
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "internal error" not in err, err
    return err.strip()


TRACE_ERRORS = [
    *[(_drex, "arrival_s", v) for v in (FAR, "1e20", "1e400", HUGE, "inf", "nan", "-1e308")],
    *[(_drex, f, v) for f in ("prompt_tokens", "output_tokens") for v in (BIG, str(2**63), HUGE, LONG, "1e30", "-5")],
    *[(_drex, f, v) for f in ("slo_ttft_ms", "slo_tpot_ms") for v in ("1e400", HUGE, "inf", "nan", "-1e308")],
    (_azure, "TIMESTAMP", "9999-12-31 23:59:59.9999999"),
    *[(_azure, f, v) for f in ("ContextTokens", "GeneratedTokens") for v in (BIG, str(2**63), LONG, "1e30")],
    *[(_mooncake, "timestamp", v) for v in (HUGE, "-" + HUGE, FAR, "1e400", "1e13")],
    *[(_mooncake, f, v) for f in ("input_length", "output_length") for v in (BIG, str(2**63), HUGE, "1e400")],
    (_mooncake, "hash_ids", f"[{BIG}]"),
    (_mooncake, "hash_ids", f"[-{HUGE}]"),
]


@pytest.mark.parametrize("make,field,value", TRACE_ERRORS,
                         ids=[f"{m.__name__[1:]}-{f}-{v[:12]}" for m, f, v in TRACE_ERRORS])
def test_an_absurd_number_is_an_error_naming_file_line_and_field(tmp_path, capsys, make, field, value):
    path, line = make(tmp_path, field, value)
    err = _one_line_error(*_simulate(tmp_path, capsys, "--trace", str(path)))
    assert err.startswith(f"drex simulate: error: {path}:{line}: field '{field}': "), err
    assert len(err) < 400, err  # a 5000-digit number is not echoed whole


REJECTED = [(_drex, "prompt_tokens", INT64_MAX), (_drex, "output_tokens", INT64_MAX),
            (_azure, "GeneratedTokens", INT64_MAX), (_mooncake, "input_length", INT64_MAX)]


@pytest.mark.parametrize("make,field,value", REJECTED, ids=[f"{m.__name__[1:]}-{f}" for m, f, _ in REJECTED])
def test_a_count_drex_holds_but_no_model_serves_is_rejected_with_its_reason(tmp_path, capsys, make, field, value):
    path, _ = make(tmp_path, field, value)
    rc, err = _simulate(tmp_path, capsys, "--trace", str(path))
    assert rc == 0, err
    req = pd.read_csv(tmp_path / "out" / "requests.csv")
    assert req.status.tolist() == ["finished", "rejected"]
    assert "exceeds max_model_len" in req.reason.iloc[1] and req.prompt_tokens.iloc[1] + 0 >= 10


@pytest.mark.parametrize("value,met", [("1e308", True), ("5e-324", False)])
def test_an_slo_a_double_holds_is_served_against(tmp_path, capsys, value, met):
    path, _ = _drex(tmp_path, "slo_ttft_ms", value)
    rc, err = _simulate(tmp_path, capsys, "--trace", str(path))
    assert rc == 0, err
    req = pd.read_csv(tmp_path / "out" / "requests.csv")
    assert (req.status == "finished").all() and req.slo_met.iloc[1] == met


def test_a_rate_scale_that_stretches_a_trace_past_the_clock_is_an_error(tmp_path, capsys):
    path, _ = _drex(tmp_path, "arrival_s", "100")
    err = _one_line_error(*_simulate(tmp_path, capsys, "--trace", str(path), "--rate-scale", "1e-300"))
    assert "--rate-scale 1e-300" in err and str(path) in err and "past drex's clock" in err


SYN = "synthetic:poisson:rate=10,n=3,prompt=fixed:10,output=fixed:10"


def test_a_rate_scale_that_stretches_generated_arrivals_past_the_clock_is_an_error(tmp_path, capsys):
    """A generated workload stretched by --rate-scale is held to the clock's horizon as a trace file is (it
    used to be served at 1e300 s with a TTFT of 0)."""
    err = _one_line_error(*_simulate(tmp_path, capsys, "--trace", SYN, "--rate-scale", "1e-300", "--no-progress"))
    assert "--rate-scale 1e-300" in err and "past drex's clock" in err
SPEC_ERRORS = [("rate=10", "rate=1e-300", "rate"), ("rate=10", "rate=5e-324", "rate"), ("n=3", f"n={BIG}", "n"),
               ("n=3", "n=10000000000", "n=10000000000"), ("prompt=fixed:10", f"prompt=fixed:{BIG}", "prompt"),
               ("prompt=fixed:10", f"prompt=uniform:1:{BIG}", "prompt"),
               ("prompt=fixed:10", "prompt=lognormal:mean=1e300:sigma=0", "prompt"),
               ("output=fixed:10", "output=fixed:10,slo_ttft_ms=1e400", "slo_ttft_ms"),
               ("poisson:rate=10", "gamma:rate=1e-200,burstiness=1e-200", "rate")]


@pytest.mark.parametrize("old,new,key", SPEC_ERRORS, ids=[new[:30] for _, new, _ in SPEC_ERRORS])
def test_an_absurd_number_in_a_synthetic_spec_is_a_one_line_error(tmp_path, capsys, old, new, key):
    err = _one_line_error(*_simulate(tmp_path, capsys, "--trace", SYN.replace(old, new)))
    assert key in err and len(err) < 600, err


def test_a_synthetic_count_drex_holds_but_no_model_serves_is_rejected(tmp_path, capsys):
    rc, err = _simulate(tmp_path, capsys, "--trace", SYN.replace("fixed:10", f"fixed:{INT64_MAX}", 1))
    assert rc == 0, err
    req = pd.read_csv(tmp_path / "out" / "requests.csv")
    assert (req.status == "rejected").all() and req.reason.str.contains("exceeds max_model_len").all()


CONF = "request_id,token_index,exit_layer,confidence"
CONF_ERRORS = [("request_id", BIG), ("request_id", "1e30"), ("token_index", str(2**62)), ("token_index", HUGE),
               ("exit_layer", BIG), ("confidence", "1e400"), ("confidence", "nan")]


@pytest.mark.parametrize("field,value", CONF_ERRORS, ids=[f"{f}-{v[:12]}" for f, v in CONF_ERRORS])
def test_an_absurd_number_in_a_confidence_trace_names_file_line_and_field(tmp_path, capsys, field, value):
    row = {"request_id": "1", "token_index": "0", "exit_layer": "2", "confidence": "0.5", field: value}
    path = _file(tmp_path, "conf.csv", f"{CONF}\n0,0,2,0.9\n" + ",".join(row[c] for c in CONF.split(",")) + "\n")
    err = _one_line_error(*_simulate(tmp_path, capsys, "--trace", SYN, "--exits", "2", "--confidence",
                                     f"trace:{path}"))
    assert err.startswith(f"drex simulate: error: {path}:3: field '{field}': ") and len(err) < 400, err


@pytest.mark.parametrize("spec", ["beta:inf,1", "beta:1,nan", "beta:1e400,1"])
def test_a_beta_confidence_needs_finite_parameters(tmp_path, capsys, spec):
    err = _one_line_error(*_simulate(tmp_path, capsys, "--trace", SYN, "--exits", "2", "--confidence", spec))
    assert spec in err and "finite" in err
