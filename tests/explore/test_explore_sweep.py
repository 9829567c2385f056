"""drex sweep in-process (--ray off): sweep.csv's rows, resuming, failures, invalid combinations."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

import drex
from drex.cli import main
from drex.explore import tasks

SYNTH = "synthetic:gamma:rate=300,n=80,burstiness=0.5,prompt=uniform:4:64,output=uniform:2:40"
BASE = ["--trace", SYNTH, "--model", "tiny", "--device", "cpu", "--cost-model", "roofline", "--no-progress"]
BASE_CONFIG = {"trace": SYNTH, "model": "tiny", "device": "cpu", "cost_model": "roofline"}


def sweep(out, *argv: str, ray: str = "off") -> int:
    return main(["sweep", *BASE, *argv, "--out", str(out), "--ray", ray])


@pytest.mark.slow
def test_one_row_per_configuration_with_config_columns_then_summary_keys(tmp_path, capsys):
    assert sweep(tmp_path, "--policy", "off,drex", "--threshold", "0.3,0.8", "--exits", "2", "--exits", "9") == 0
    err = capsys.readouterr().err
    assert err.count("skipped invalid configuration") == 4 and "below the model's 4 layers" in err
    df = pd.read_csv(tmp_path / "sweep.csv")
    assert len(df) == 4 and (df.status == "ok").all()
    cols = list(df.columns)
    assert cols[:7] == ["trace", "model", "device", "policy", "exits", "threshold", "cost_model"]
    assert cols[7:10] == ["config_id", "status", "error"]
    summary = json.loads((tmp_path / "runs" / df.config_id[0] / "summary.json").read_text())
    assert set(summary) <= set(cols)
    assert list(zip(df.policy, df.threshold)) == [("off", 0.3), ("off", 0.8), ("drex", 0.3), ("drex", 0.8)]
    # every summary value sits in its row (policy/threshold/exits: the configured value); off never reads its
    # threshold: its two rows share one run, which ran at the default threshold
    for _, row in df.iterrows():
        s = json.loads((tmp_path / "runs" / row.config_id / "summary.json").read_text())
        assert row.completed == s["completed"] and row.output_throughput == pytest.approx(s["output_throughput"])
        assert s["policy"] == row.policy and s["exits"] == [2]
        assert s["threshold"] == (0.8 if row.policy == "off" else row.threshold)
    assert len(pd.read_csv(tmp_path / "invalid.csv")) == 4


@pytest.mark.slow  # a sweep of 12 configurations
def test_configurations_that_cannot_differ_run_once_and_fill_each_row(tmp_path, monkeypatch, capsys):
    ran = []
    real = tasks.run_task
    monkeypatch.setattr(tasks, "run_task", lambda t: ran.append(t["config"]) or real(t))
    assert sweep(tmp_path, "--policy", "off,eager,drex", "--threshold", "0.3,0.8", "--max-tpot-inflation", "1.5,2",
                 "--num-requests", "20") == 0
    assert "12 configurations in 7 runs (0 already done, 7 run, 0 failed" in capsys.readouterr().out
    # off reads neither threshold nor parking knobs (1 run), eager no parking knob (2), drex both (4)
    assert sorted(c["policy"] for c in ran) == ["drex"] * 4 + ["eager"] * 2 + ["off"]
    assert {k: v for c in ran if c["policy"] == "off" for k, v in c.items()} == {**BASE_CONFIG, "policy": "off",
                                                                                 "num_requests": "20"}
    df = pd.read_csv(tmp_path / "sweep.csv")
    assert len(df) == 12 and (df.status == "ok").all()
    for policy, runs in (("off", 1), ("eager", 2), ("drex", 4)):
        rows = df[df.policy == policy]
        assert rows.config_id.nunique() == runs and len(rows) == 4
    off = df[df.policy == "off"]
    assert list(zip(off.threshold, off.max_tpot_inflation)) == [(0.3, 1.5), (0.3, 2.0), (0.8, 1.5), (0.8, 2.0)]
    assert off.output_throughput.nunique() == 1 and off.completed.nunique() == 1
    ran.clear()
    assert sweep(tmp_path, "--policy", "off", "--threshold", "0.5", "--num-requests", "20") == 0
    assert ran == []  # off at another threshold: already done


@pytest.mark.slow
def test_a_row_equals_drex_simulate_with_the_same_flags(tmp_path):
    assert sweep(tmp_path / "s", "--policy", "drex", "--threshold", "0.5", "--slo-ttft-ms", "20") == 0
    assert main(["simulate", *BASE, "--policy", "drex", "--threshold", "0.5", "--slo-ttft-ms", "20",
                 "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    key = pd.read_csv(tmp_path / "s" / "sweep.csv").config_id[0]
    got = json.loads((tmp_path / "s" / "runs" / key / "summary.json").read_text())
    assert one.pop("sim_wall_s") >= 0 and got.pop("sim_wall_s") >= 0
    assert got == one and "request_goodput" in got
    for name in ("requests.csv", "steps.csv"):
        assert (tmp_path / "s" / "runs" / key / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


@pytest.mark.slow
def test_resumed_sweep_runs_only_what_is_missing_and_writes_the_same_table(tmp_path, monkeypatch):
    assert sweep(tmp_path, "--policy", "off,lazy") == 0
    first = (tmp_path / "sweep.csv").read_bytes()
    ran = []
    real = tasks.run_task
    monkeypatch.setattr(tasks, "run_task", lambda t: ran.append(t["config"]) or real(t))
    assert sweep(tmp_path, "--policy", "off,lazy") == 0
    assert ran == [] and (tmp_path / "sweep.csv").read_bytes() == first
    assert sweep(tmp_path, "--policy", "lazy,eager") == 0  # one new configuration
    assert [c["policy"] for c in ran] == ["eager"]
    assert len(pd.read_csv(tmp_path / "sweep.csv")) == 2


@pytest.mark.slow
def test_a_failed_configuration_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    bad = tmp_path / "no-such-trace.csv"
    argv = ["sweep", "--model", "tiny", "--device", "cpu", "--cost-model", "roofline", "--no-progress",
            "--trace", SYNTH, "--trace", str(bad), "--out", str(tmp_path / "s"), "--ray", "off"]
    assert main(argv) == 0
    assert "1 failed" in capsys.readouterr().out
    df = pd.read_csv(tmp_path / "s" / "sweep.csv", keep_default_na=False)
    assert list(df.status) == ["ok", "failed"]
    assert "unknown trace" in df.error[1] and df.error[0] == ""
    assert (tmp_path / "s" / "runs" / df.config_id[1] / "error.txt").is_file()
    bad.write_text("arrival_s,prompt_tokens,output_tokens\n0,8,4\n0.1,8,4\n")  # now it exists: retried
    assert main(argv) == 0
    df = pd.read_csv(tmp_path / "s" / "sweep.csv", keep_default_na=False)
    assert list(df.status) == ["ok", "ok"] and df.completed[1] == 2
    assert not (tmp_path / "s" / "runs" / df.config_id[1] / "error.txt").exists()


def test_bad_sweep_input_is_a_one_line_error(tmp_path, capsys):
    assert sweep(tmp_path, "--exits", "9") == 2
    assert "no valid configuration" in capsys.readouterr().err
    assert main(["sweep", "--out", str(tmp_path), "--grid", str(tmp_path / "nope.yaml"), "--ray", "off"]) == 2
    assert "no such grid file" in capsys.readouterr().err


@pytest.mark.slow
def test_a_finished_sweep_neither_starts_nor_imports_ray(tmp_path):
    assert sweep(tmp_path, "--policy", "off") == 0
    code = ("import sys; from drex.cli import main; "
            f"assert main(['sweep', *{BASE!r}, '--policy', 'off', '--out', {str(tmp_path)!r}]) == 0; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "1 already done, 0 run" in proc.stdout


def test_a_task_on_a_node_with_another_drex_fails_and_says_why():
    got = tasks.run_task({"key": "k", "config": {"policy": "off"}, "mode": "simulate", "search": {},
                          "drex_version": "0.0.1"})
    assert got == {"key": "k", "ok": False, "error": f"this Ray node runs drex {drex.__version__}, the sweep drex "
                                                     "0.0.1: install the same drex on every node of the cluster"}
