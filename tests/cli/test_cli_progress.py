"""Progress the same everywhere (issue 9 items 5-6, issue 26 item 1): a bar on a terminal, a few plain lines
anywhere else, nothing with --no-progress, and an error never printed onto a bar's line."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios

import pytest

from drex import progress
from drex.cli import build_parser, main

SYNTH = "synthetic:poisson:rate=50,n=6,prompt=uniform:20:32,output=uniform:2:8"
SIM = ["--model", "tiny", "--device", "cpu", "--trace", SYNTH, "--cost-model", "roofline"]
SLOS = ["--slo-ttft-ms", "200", "--slo-tpot-ms", "40"]


def _argv(command: str, tmp_path) -> list[str]:
    out = ["--out", str(tmp_path / "out")]
    return {"simulate": ["simulate", *SIM, *out],
            "compare": ["compare", *SIM, "--policies", "off,drex"],
            "sweep": ["sweep", *SIM, "--policy", "off,drex", "--ray", "off", *out],
            "capacity": ["capacity", *SIM, *SLOS, "--max-runs", "3", *out]}[command]


def _drex(argv: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "drex", *argv], env=env, timeout=120, **kw)


@pytest.mark.slow  # a subprocess per command: seconds
@pytest.mark.parametrize("command, desc", [("simulate", "simulate drex"), ("compare", "simulate drex"),
                                           ("sweep", "sweep"), ("capacity", "capacity search")])
def test_a_log_gets_a_few_plain_lines_and_no_progress_none(command, desc, tmp_path):
    done = _drex(_argv(command, tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if f"drex {command}: {desc}" in line]
    assert "\r" not in done.stderr and 2 <= len(lines) <= 12, done.stderr  # its start and its end at least
    assert " 0% (0/" in lines[0] and " 100% (" in lines[-1]
    quiet = _drex([*_argv(command, tmp_path / "quiet"), "--no-progress"], capture_output=True, text=True)
    assert quiet.returncode == 0 and f": {desc}" not in quiet.stderr and "%" not in quiet.stderr, quiet.stderr


@pytest.mark.slow  # a subprocess on a pty
def test_a_terminal_gets_a_bar(tmp_path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # rows, columns, as a terminal has
    proc = subprocess.Popen([sys.executable, "-m", "drex", *_argv("simulate", tmp_path)], stdout=subprocess.DEVNULL,
                            stderr=slave, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    os.close(slave)
    drawn = b""
    try:
        while select.select([master], [], [], 120)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(master)
        assert proc.wait(timeout=120) == 0, drawn
    text = drawn.decode()
    assert "\r" in text and "simulate drex" in text and "6/6" in text and "|" in text, text
    assert "drex simulate: simulate drex" not in text  # the plain lines are for logs


@pytest.mark.parametrize("terminal", [True, False])
def test_an_error_after_progress_began_starts_its_own_line(terminal, tmp_path, capsys, monkeypatch):
    import drex.sim.simulator as simulator

    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal, raising=False)
    real, calls = simulator.simulate, []

    def second_fails(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args, **kw)

    monkeypatch.setattr(simulator, "simulate", second_fails)
    assert main(_argv("capacity", tmp_path)) == 70
    err = capsys.readouterr().err
    assert "0%" in err  # progress was shown...
    failure = next(line for line in err.split("\n") if "boom" in line)
    assert failure.startswith("drex capacity: internal error"), err  # ...and closed before the error
    assert " 100% (" not in err  # a failed search is not reported as done


def test_bad_input_is_refused_before_any_bar(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main([*_argv("capacity", tmp_path), "--max-runs", "1"]) == 2
    assert capsys.readouterr().err == "drex capacity: error: --max-runs must be >= 2, got 1\n"


@pytest.mark.parametrize("argv", [["simulate", "--out", "o"], ["compare"], ["run", "--out", "o"],
                                  ["sweep", "--out", "o"], ["capacity", "--out", "o"], ["model", "fetch", "smollm2"],
                                  ["profile", "--gpu", "cpu", "--model", "tiny"], ["validate", "d"],
                                  ["train", "--out", "o"], ["train-exits", "--out", "o"], ["quality", "--out", "o"]])
def test_every_long_command_takes_no_progress(argv):
    assert build_parser(argv).parse_args([*argv, "--no-progress"]).no_progress


class _Stop(Exception):
    pass


def test_a_resumed_profile_counts_from_what_it_kept(tmp_path, capsys, monkeypatch):
    from drex.costmodel import profile as pf
    from drex.models import MODELS
    from drex.real.profiler import run_grid

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    points = pf.build_grid(MODELS["tiny"], quick=True)
    meta = {"schema_version": pf.SCHEMA_VERSION, "device": {"requested": "cpu", "name": "mock"}, "dtype": "fp32",
            "model": pf.shape_dict(MODELS["tiny"]), "grid": pf.grid_summary(points)}
    calls = []

    def stops_after_5(p):
        if len(calls) == 5:
            raise _Stop
        calls.append(p)
        return [1e-5] * 3, [1e-5] * 3

    with pytest.raises(_Stop):
        run_grid(tmp_path, meta, points, stops_after_5)
    assert capsys.readouterr().err == f"drex: measuring 0% (0/{len(points)} pt), 0 s\n"  # no last line: it stopped
    run_grid(tmp_path, meta, points, lambda p: ([1e-5] * 3, [1e-5] * 3))
    lines = capsys.readouterr().err.splitlines()
    assert f"% (5/{len(points)} pt)" in lines[0] and f" 100% ({len(points)}/{len(points)} pt" in lines[-1], lines


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_come_a_tenth_apart_and_not_too_often(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    clock = _Clock()
    with progress.Progress("work", 100, "item", clock=clock) as p:
        for _ in range(9):  # a tenth a second: a line every MIN_GAP_S (3 s) at most
            clock.t += 1
            p.update(10)
        clock.t += progress.HEARTBEAT_S  # a slow stretch without a new tenth still says it moves
        p.note("still going")
        p.update(5)
        p.update(5)
    assert capsys.readouterr().err.splitlines() == [
        "drex: work 0% (0/100 item), 0 s", "drex: work 30% (30/100 item), 3 s", "drex: work 60% (60/100 item), 6 s",
        "drex: work 90% (90/100 item), 9 s", "drex: work 95% (95/100 item; still going), 69 s",
        "drex: work 100% (100/100 item; still going), 69 s"]


def test_ending_early_is_done_and_a_failure_says_nothing_more(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    with progress.Progress("search", 20, "run", clock=_Clock()) as p:
        p.update(3)
    assert capsys.readouterr().err.splitlines()[-1] == "drex: search 100% (3/3 run), 0 s"
    with pytest.raises(KeyError), progress.Progress("search", 20, "run", clock=_Clock()) as p:
        p.update(3)
        raise KeyError("x")
    assert capsys.readouterr().err == "drex: search 0% (0/20 run), 0 s\n"
    with progress.Progress("quiet", 20, "run", enabled=False) as p:
        p.update(3)
    assert capsys.readouterr().err == "" and not progress._open


def test_run_command_names_the_lines_and_closes_what_is_open(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)

    def fails(args):
        progress.Progress("work", 10, "item").update(4)
        raise ValueError("bad")

    with pytest.raises(ValueError):
        progress.run_command("simulate", fails, None)
    assert not progress._open and capsys.readouterr().err.endswith("\n")  # the bar's line ended
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    progress.run_command("compare", lambda args: list(progress.each(range(2), "policies", "policy")), None)
    assert capsys.readouterr().err.splitlines()[-1].startswith("drex compare: policies 100% (2/2 policy), ")


@pytest.mark.slow
def test_run_and_compare_show_progress(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # as on a terminal
    assert main(["run", "--model", "tiny", "--trace", SYNTH, "--confidence", "beta:1,1", "--cost-model", "roofline",
                 "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "drex run: serving 6 requests in real time" in err and "serving" in err and "6/6" in err
    assert main(["compare", "--model", "tiny", "--trace", SYNTH, "--policies", "off,drex", "--cost-model",
                 "roofline"]) == 0
    err = capsys.readouterr().err
    assert "simulate off" in err and "simulate drex" in err


@pytest.mark.slow
def test_a_real_run_logs_plain_lines(tmp_path):
    done = _drex(["run", "--model", "tiny", "--trace", SYNTH, "--confidence", "beta:1,1", "--cost-model", "roofline",
                  "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "drex run: serving 100% (6/6 req" in done.stderr, done.stderr


def test_no_progress_is_quiet(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(["compare", "--model", "tiny", "--trace", SYNTH, "--policies", "off", "--cost-model", "roofline",
                 "--no-progress"]) == 0
    assert "simulate off" not in capsys.readouterr().err
