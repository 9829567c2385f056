"""Issue 26 (a new user's second hour), item 1: an --out that cannot be written fails at once, in one line
naming the path (exit 2), before any work; an OS error while writing the outputs names them too."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from drex import REPO_ROOT
from drex.cli import main
from drex.outputs import check_out_dir

SIM = ["--model", "tiny", "--cost-model", "roofline", "--no-progress"]
SYNTH = "synthetic:poisson:rate=50,n=5,prompt=uniform:20:32,output=uniform:2:8"
# Paths no one can write, root included: /proc has no room for a new entry, /sys refuses one.
UNWRITABLE = ["/proc/x", "/sys/drexout", "/proc/x/y"]
# A missing trace: a command that looked at its workload before its --out would say so instead.
NO_TRACE = ["--trace", "/no/such/trace.csv"]
COMMANDS = {
    "simulate": ["simulate", *SIM, *NO_TRACE], "compare": ["compare", *SIM, *NO_TRACE, "--policies", "off"],
    "sweep": ["sweep", *NO_TRACE, "--policy", "off", "--ray", "off", "--no-progress"],
    "capacity": ["capacity", *SIM, *NO_TRACE], "run": ["run", *SIM, *NO_TRACE], "plot": ["plot", str(REPO_ROOT)],
}


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("out", UNWRITABLE)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unwritable_out_is_refused_in_one_line(capsys, command, out):
    assert main([*COMMANDS[command], "--out", out]) == 2
    err = one_line(capsys)
    assert err.startswith(f"drex {command}: error: --out {out}: cannot write in /")


def test_a_read_only_directory_is_refused(tmp_path, monkeypatch):
    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "tmpx"))

    monkeypatch.setattr("drex.outputs.tempfile.mkdtemp", read_only)
    with pytest.raises(ValueError, match=f"--out {tmp_path}/o: cannot write in {tmp_path} .Read-only file system"):
        check_out_dir(tmp_path / "o")


def test_the_probe_leaves_nothing(tmp_path):
    check_out_dir(tmp_path / "a" / "b")
    check_out_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_plot_into_its_own_unwritable_path_is_refused_before_drawing(tmp_path, capsys, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "tmpx"))

    def no_plot(*a, **k):
        raise AssertionError("figures were drawn: PATH must be checked first")

    monkeypatch.setattr("drex.outputs.tempfile.mkdtemp", denied)
    monkeypatch.setattr("drex.plots.plot_path", no_plot)
    assert main(["plot", str(tmp_path)]) == 2
    assert f"PATH {tmp_path}: cannot write in {tmp_path} (Permission denied)" in one_line(capsys)


@pytest.mark.parametrize("raised, says", [
    (OSError(errno.ENOSPC, "No space left on device"), "error: writing --out {out}: No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied", "/somewhere/requests.csv"),
     "error: /somewhere/requests.csv: Permission denied")])
def test_an_os_error_while_writing_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch, raised, says):
    import drex.sim.cli

    def write_run(*a, **k):
        raise raised

    monkeypatch.setattr(drex.sim.cli, "write_run", write_run)
    out = tmp_path / "o"
    assert main(["simulate", *SIM, "--trace", SYNTH, "--out", str(out)]) == 2
    assert says.format(out=out) in one_line(capsys)


def test_an_os_error_naming_no_file_outside_a_write_is_drexs(tmp_path, capsys, monkeypatch):
    import drex.sim.cli

    def write_run(*a, **k):
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")

    monkeypatch.setattr(drex.sim.cli, "write_run", write_run)
    assert main(["simulate", *SIM, "--trace", SYNTH, "--out", str(tmp_path / "o")]) == 70
    assert "internal error" in one_line(capsys)


@pytest.mark.slow  # the whole default trace in a subprocess, cut by its timeout on the old code
def test_an_unwritable_out_fails_before_the_work():
    """The whole default trace would take minutes to simulate: the refusal must come long before."""
    cmd = [sys.executable, "-m", "drex", "simulate", *SIM, "--out", "/sys/drexout"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 2 and done.stderr.startswith("drex simulate: error: --out /sys/drexout: cannot write")
