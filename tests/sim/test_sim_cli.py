"""``drex simulate`` / ``drex compare`` end to end: records account for every request, the same seed
gives byte-identical files, and malformed traces fail with exit code 2 and a located message."""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from drex.cli import main

SYNTH = "synthetic:gamma:rate=300,n=120,burstiness=0.5,prompt=uniform:4:64,output=uniform:2:40"
COMMON = ["--model", "tiny", "--device", "cpu", "--cost-model", "roofline", "--no-progress"]


def simulate(tmp: Path, name: str, *args: str) -> Path:
    out = tmp / name
    assert main(["simulate", *COMMON, *args, "--out", str(out)]) == 0
    return out


def read_run(out: Path):
    return (pd.read_csv(out / "requests.csv", keep_default_na=False, na_values=[""]),
            pd.read_csv(out / "steps.csv"), json.loads((out / "summary.json").read_text()))


# --- every request accounted for -------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["off", "drex"])
def test_requests_csv_accounts_for_every_request(tmp_path, policy):
    n, max_len = 200, 3000
    out = simulate(tmp_path, policy, "--trace", "azure-code", "--num-requests", str(n), "--policy", policy,
                   "--exits", "1,3", "--max-model-len", str(max_len), "--max-batch-size", "32", "--replicas", "2")
    req, steps, summary = read_run(out)
    assert req.request_id.tolist() == list(range(n))
    assert set(req.status) == {"finished", "rejected"}
    assert summary["completed"] + summary["failed"] == n
    assert summary["completed"] == (req.status == "finished").sum()
    rejected = req[req.status == "rejected"]
    finished = req[req.status == "finished"]
    assert len(rejected) > 0, "the max-model-len should reject some azure-code requests"
    # Rejected: exactly those that cannot fit, each with its reason; nothing generated for them.
    too_long = req.prompt_tokens + req.output_tokens > max_len
    assert (too_long == (req.status == "rejected")).all()
    assert rejected.reason.map(lambda s: isinstance(s, str) and f"max_model_len={max_len}" in s).all()
    assert (rejected.generated_tokens == 0).all() and rejected.ttft_ms.isna().all()
    # Finished: every token, sane latencies, no reason.
    assert (finished.generated_tokens == finished.output_tokens).all()
    assert finished.reason.isna().all()
    assert (finished.ttft_ms > 0).all() and (finished.e2el_ms >= finished.ttft_ms).all()  # not a budget: simulated time
    assert summary["total_output_tokens"] == finished.output_tokens.sum()
    assert summary["num_steps"] == len(steps)
    for key in ("request_throughput", "output_throughput", "total_token_throughput", "mean_ttft_ms",
                "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_itl_ms", "mean_e2el_ms",
                "early_exit_fraction", "involuntary_exits", "involuntary_stays", "mean_exit_layer",
                "num_rebatches", "num_flushes", "num_preemptions", "kv_peak_blocks", "cost_model", "sim_wall_s"):
        assert key in summary, key
    assert summary["cost_model"] == "roofline"


def test_kv_capacity_rejections_carry_a_reason(tmp_path):
    out = simulate(tmp_path, "kv", "--trace", SYNTH, "--num-kv-blocks", "3", "--block-size", "16")
    req, _, summary = read_run(out)
    cannot = req.prompt_tokens + req.output_tokens > 3 * 16
    assert cannot.any() and (~cannot).any()
    assert ((req.status == "rejected") == cannot).all()
    assert req[cannot].reason.str.contains("KV blocks").all()
    assert summary["completed"] + summary["failed"] == len(req)


# --- determinism ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_same_seed_gives_byte_identical_files(tmp_path):
    args = ["--trace", SYNTH, "--policy", "drex", "--exits", "1,2,3", "--threshold", "0.6", "--seed", "5",
            "--profitability", "knobs", "--max-tpot-inflation", "inf"]  # parks, flushes at deeper exits
    # One run in a fresh interpreter (another hash seed), one in this process.
    env = dict(os.environ, PYTHONHASHSEED="12345")
    proc = subprocess.run([sys.executable, "-m", "drex.cli", "simulate", *COMMON, *args, "--out",
                           str(tmp_path / "a")], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    simulate(tmp_path, "b", *args)
    a, b = tmp_path / "a", tmp_path / "b"
    for name in ("requests.csv", "steps.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # summary.json: sim_wall_s is the wall-clock time the simulation took, the one field that may
    # differ between identical runs; every other byte must match once it is removed.
    sa, sb = json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text())
    assert sa.pop("sim_wall_s") >= 0 and sb.pop("sim_wall_s") >= 0
    assert json.dumps(sa, sort_keys=True) == json.dumps(sb, sort_keys=True)
    assert sa["num_rebatches"] > 0  # the rebatching path ran, so determinism covers it
    # And the seed matters: another seed draws another workload and other confidences.
    c = simulate(tmp_path, "c", *args[:-1], "6")
    assert (c / "requests.csv").read_bytes() != (a / "requests.csv").read_bytes()


@pytest.mark.slow
def test_compare_runs_every_policy_on_one_workload(tmp_path, capsys):
    assert main(["compare", *COMMON, "--trace", SYNTH, "--exits", "2", "--out", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    policies = ["off", "eager", "lazy", "average", "latency-only", "bound", "drex"]
    header = next(line for line in text.splitlines() if line.startswith("metric"))
    assert header.split()[1:] == policies
    arrivals = None
    for p in policies:
        req, _, summary = read_run(tmp_path / "cmp" / p)
        assert summary["policy"] == p and summary["completed"] == 120
        if arrivals is None:
            arrivals = req[["request_id", "arrival_s", "prompt_tokens", "output_tokens"]]
        assert req[["request_id", "arrival_s", "prompt_tokens", "output_tokens"]].equals(arrivals)


# --- malformed traces ----------------------------------------------------------------------------

ARRIVAL_DEFECTS = [
    ("arrival_s,prompt_tokens,output_tokens\n0,10,5\n0.5,abc,5\n", 3, "prompt_tokens"),
    ("arrival_s,prompt_tokens,output_tokens\n0,10,5\n0.5,10,0\n", 3, "output_tokens"),
    ("arrival_s,prompt_tokens,output_tokens\n1,10,5\n0.5,10,5\n", 3, "arrival_s"),
    ("arrival_s,prompt_tokens\n0,10\n", 1, "output_tokens"),
]


@pytest.mark.parametrize("text,line,field", ARRIVAL_DEFECTS)
def test_malformed_arrival_trace_exits_2_with_location(tmp_path, capsys, text, line, field):
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    code = main(["simulate", *COMMON, "--trace", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}:{line}: field '{field}'" in err
    assert not (tmp_path / "o").exists(), "no records from a failed run"


CONF_HEADER = "request_id,token_index,exit_layer,confidence\n"
CONFIDENCE_DEFECTS = {
    "missing-column": ("request_id,token_index,exit_layer\n0,0,2\n", 1, "confidence"),
    "non-numeric-confidence": (CONF_HEADER + "0,0,2,0.5\n0,1,2,high\n", 3, "confidence"),
    "non-numeric-request": (CONF_HEADER + "0,0,2,0.5\n0,1,2,0.4\nx,2,2,0.3\n", 4, "request_id"),
    "negative-token-index": (CONF_HEADER + "0,0,2,0.5\n0,-3,2,0.4\n", 3, "token_index"),
}


@pytest.mark.parametrize("defect", list(CONFIDENCE_DEFECTS))
def test_malformed_confidence_trace_exits_2_with_location(tmp_path, capsys, defect):
    text, line, field = CONFIDENCE_DEFECTS[defect]
    bad = tmp_path / "conf.csv"
    bad.write_text(text)
    code = main(["simulate", *COMMON, "--trace", SYNTH, "--exits", "2", "--confidence", f"trace:{bad}",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2, err
    # The file, the line ("FILE:LINE:" or "FILE: line LINE") and the field.
    assert re.search(rf"{re.escape(str(bad))}(:{line}:|: line {line}\b)", err), err
    assert field in err


# runpy warns that the tests imported drex.cli already: expected in-process, and no user ever sees it.
@pytest.mark.filterwarnings("ignore:'drex.cli' found in sys.modules:RuntimeWarning")
def test_module_entry_point_exit_status(tmp_path, monkeypatch, capsys):
    """``python -m drex.cli`` passes main's status to the shell (run in-process: no interpreter start)."""
    bad = tmp_path / "bad.csv"
    bad.write_text(ARRIVAL_DEFECTS[0][0])
    monkeypatch.setattr(sys, "argv", ["drex", "simulate", *COMMON, "--trace", str(bad), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("drex.cli", run_name="__main__")
    assert exc.value.code == 2
    assert f"{bad}:3: field 'prompt_tokens'" in capsys.readouterr().err


def test_simulate_off_imports_neither_pandas_nor_scipy_nor_torch(tmp_path):
    """Start-up is part of what a user waits for (issue 13): ``drex simulate --policy off`` summarises and
    writes its records without pandas, draws no confidence (no scipy) and never needs torch."""
    code = ("import sys; from drex.cli import main; "
            f"rc = main(['simulate', '--trace', 'azure-conv', '--num-requests', '50', '--policy', 'off', '--out', "
            f"{str(tmp_path / 'run')!r}, '--no-progress']); "
            "print(rc, sorted(m for m in ('pandas', 'scipy', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "0 []"
    assert (tmp_path / "run" / "requests.csv").read_text().count("\n") == 51
