"""Issue 9 items 5-6: what takes a while says so on stderr (a progress bar on a terminal)."""

from __future__ import annotations

import sys

import pytest

from drex.cli import main

SYNTH = "synthetic:poisson:rate=50,n=6,prompt=uniform:20:32,output=uniform:2:8"


@pytest.mark.slow
def test_run_and_compare_show_progress(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # as on a terminal
    assert main(["run", "--model", "tiny", "--trace", SYNTH, "--confidence", "beta:1,1", "--cost-model", "roofline",
                 "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "drex run: serving 6 requests in real time" in err and "drex run:" in err and "6/6" in err
    assert main(["compare", "--model", "tiny", "--trace", SYNTH, "--policies", "off,drex", "--cost-model",
                 "roofline"]) == 0
    err = capsys.readouterr().err
    assert "simulate off" in err and "simulate drex" in err


def test_no_progress_is_quiet(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(["compare", "--model", "tiny", "--trace", SYNTH, "--policies", "off", "--cost-model", "roofline",
                 "--no-progress"]) == 0
    assert "simulate off" not in capsys.readouterr().err
