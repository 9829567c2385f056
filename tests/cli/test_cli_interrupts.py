"""Issue 9 items 3-4: Ctrl-C and closed pipes end without a traceback, an interrupted drex run keeps its
finished requests, and a run where nothing was served says so and writes strict JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from drex import REPO_ROOT
from drex.cli import main

SYNTH = "synthetic:poisson:rate=50,n=20,prompt=uniform:20:32,output=uniform:2:8"
SIM = ["--model", "tiny", "--cost-model", "roofline", "--no-progress", "--trace", SYNTH]


def strict_json(path: Path) -> dict:
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import drex.sim.cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(drex.sim.cli, "simulate", interrupted)
    assert main(["simulate", *SIM, "--out", str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "drex simulate: interrupted" and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("command", [["show", "profiles/cpu/tiny"],  # a few kB: written while drex runs
                                     ["predict", "profiles/a100/llama2-7b", "--num-tokens", "8"]])  # flushed at exit
def test_closed_pipe_ends_quietly(command):
    """``drex costmodel show DIR | head``: the reader goes away before drex writes; no BrokenPipeError."""
    proc = subprocess.Popen([sys.executable, "-m", "drex", "costmodel", *command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    proc.stdout.close()  # as head does once it has its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == ""


def test_nothing_served_warns_and_writes_null_not_nan(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["simulate", *SIM, "--num-kv-blocks", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "20 of 20 requests not served" in err and "warning: no request was served" in err
    assert "KV blocks" in err  # the reason
    summary = strict_json(out / "summary.json")
    assert summary["completed"] == 0 and summary["mean_ttft_ms"] is None and summary["p99_itl_ms"] is None


def test_rejections_are_summarised_with_their_reason(tmp_path, capsys):
    assert main(["simulate", *SIM, "--max-model-len", "20", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "rejected" in line]
    assert len(lines) == 1 and "exceeds max_model_len=20" in lines[0]  # one line per kind of reason


@pytest.mark.slow
def test_interrupted_run_keeps_what_finished(tmp_path, capsys, monkeypatch):
    from drex.real.executor import RealExecutor

    real_execute = RealExecutor.execute

    def execute(self, *a, **k):  # Ctrl-C once the two short requests have their tokens
        if all(len(self.outputs.get(r, ())) >= 4 for r in (0, 1)):
            raise KeyboardInterrupt
        return real_execute(self, *a, **k)

    monkeypatch.setattr(RealExecutor, "execute", execute)
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,8,4\n0,8,4\n0.01,8,200\n0.02,8,200\n")
    out = tmp_path / "run"
    rc = main(["run", "--model", "tiny", "--trace", str(trace), "--confidence", "beta:1,1", "--cost-model",
               "roofline", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err and "interrupted" in err
    req = pd.read_csv(out / "requests.csv")
    assert (req.status[:2] == "finished").all() and (req.status[2:] == "interrupted").all()
    assert strict_json(out / "summary.json")["interrupted"] is True
    assert (out / "tokens.jsonl").exists() and (out / "run.json").exists()
    assert main(["validate", str(out)]) == 2
    assert "interrupted" in capsys.readouterr().err
