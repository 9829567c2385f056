"""``drex run`` writes the simulator's records plus the model's confidences; ``drex validate`` replays them."""

import json

import pandas as pd
import pytest

from drex.cli import main
from drex.validate import KEYS

TRACE = """arrival_s,prompt_tokens,output_tokens
0.0,40,12
0.01,300,20
0.02,17,30
0.05,700,8
0.06,5,25
0.08,64,16
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    (d / "trace.csv").write_text(TRACE)
    rc = main(["run", "--model", "tiny", "--device", "cpu", "--trace", str(d / "trace.csv"), "--policy", "drex",
               "--exits", "1,2", "--threshold", "0.3", "--cost-model", "roofline", "--out", str(d / "out")])
    assert rc == 0
    return d / "out"


def test_run_writes_every_record(run_dir):
    req = pd.read_csv(run_dir / "requests.csv")
    assert len(req) == 6 and (req.status == "finished").all()
    steps = pd.read_csv(run_dir / "steps.csv")
    assert (steps.duration_ms > 0).all() and "copied_bytes" in steps
    conf = pd.read_csv(run_dir / "confidence.csv")
    assert list(conf.columns) == ["request_id", "token_index", "exit_layer", "confidence"]
    assert set(conf.exit_layer) == {1, 2} and conf.confidence.between(0, 1).all()
    tokens = [json.loads(line) for line in (run_dir / "tokens.jsonl").read_text().splitlines()]
    assert [len(t["tokens"]) for t in tokens] == req.output_tokens.tolist()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] == 6 and summary["backend"] == "real" and summary["kv_fill"] == "copy"


def test_validate_writes_the_error_table(run_dir, capsys):
    assert main(["validate", str(run_dir)]) == 0
    v = json.loads((run_dir / "validate.json").read_text())
    assert set(KEYS) <= set(v)
    assert v["step_duration_mape"] >= 0 and 0 <= v["exit_decision_agreement"] <= 1
    assert v["num_steps"] == len(pd.read_csv(run_dir / "steps.csv"))
    assert "step duration MAPE" in capsys.readouterr().out


def test_run_rejects_simulator_only_flags(tmp_path, capsys):
    assert main(["run", "--trace", "azure-code", "--replicas", "2", "--out", str(tmp_path)]) == 2
    assert "one real replica" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "nothing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["validate", str(tmp_path / "empty")]) == 2
    assert "run.json" in capsys.readouterr().err


@pytest.mark.slow  # a real run
def test_an_internal_error_mid_run_is_drex_s_and_keeps_what_finished(tmp_path, capsys, monkeypatch):
    """Issue 26 item 1: a bug inside a run (here a ValueError from the executor at its 10th step) is reported
    as drex's internal error (exit 70), never as the user's bad input (exit 2), and the records are kept."""
    from drex.real.executor import RealExecutor

    _fail_at_call(monkeypatch, RealExecutor, "execute", 10,
                  "unknown confidence metric 'learned': margin, maxprob or entropy")
    (tmp_path / "trace.csv").write_text(TRACE)
    rc = main(["run", "--model", "tiny", "--device", "cpu", "--trace", str(tmp_path / "trace.csv"), "--policy", "off",
               "--cost-model", "roofline", "--no-progress", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 70 and "internal error" in err and "not in your input" in err and "Traceback" not in err, err
    req = pd.read_csv(tmp_path / "out" / "requests.csv")
    assert len(req) == 6 and set(req.status) <= {"finished", "interrupted"} and (req.status == "interrupted").any()
    assert req[req.status == "interrupted"].reason.str.contains("internal error").all()


def test_a_failure_inside_the_simulation_is_an_internal_error(tmp_path, capsys, monkeypatch):
    from drex.core.scheduler import Scheduler

    _fail_at_call(monkeypatch, Scheduler, "complete", 5, "a bug deep inside")
    assert main(["simulate", "--num-requests", "20", "--no-progress", "--out", str(tmp_path / "o")]) == 70
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "internal error" in err and "a bug deep inside" in err, err


def _fail_at_call(monkeypatch, cls, name: str, n: int, message: str) -> None:
    """``cls.name`` raises ValueError(message) at its n-th call (a bug inside the work), else runs as it does."""
    real, calls = getattr(cls, name), []

    def failing(self, *a, **kw):
        calls.append(1)
        if len(calls) == n:
            raise ValueError(message)
        return real(self, *a, **kw)

    monkeypatch.setattr(cls, name, failing)
