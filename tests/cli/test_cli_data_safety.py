"""Issue 9 items 1-2: nothing overwrites shipped files by default, and a bad --out fails before any work."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from drex import REPO_ROOT
from drex.cli import main
from drex.outputs import check_out_dir, is_shipped

SYNTH = "synthetic:poisson:rate=50,n=20,prompt=uniform:4:32,output=uniform:2:8"
SIM = ["--model", "tiny", "--cost-model", "roofline", "--no-progress", "--trace", SYNTH]


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("command,module,shipped", [("train", "train", "tiny-ee"),
                                                    ("train-exits", "train_exits", "smollm2-ee")])
def test_training_needs_out_and_refuses_a_shipped_model(capsys, monkeypatch, command, module, shipped):
    import importlib

    def no_training(*a, **k):  # should the check ever break, the test must not train over the shipped files
        raise AssertionError(f"training started: models/{shipped} was not refused")

    monkeypatch.setattr(importlib.import_module(f"drex.lab.{module}"), "run", no_training)
    with pytest.raises(SystemExit) as e:
        main([command])
    assert e.value.code == 2 and "--out" in capsys.readouterr().err
    folder = REPO_ROOT / "models" / shipped
    before = digest(folder)
    assert main([command, "--out", str(folder), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"drex {command}: error:") and "--overwrite" in err and len(err.splitlines()) == 1
    assert digest(folder) == before


def test_profile_without_out_refuses_the_shipped_profile(capsys, monkeypatch):
    from drex.real import profiler

    def no_profile(*a, **k):
        raise AssertionError("profiling started: the shipped profile was not refused")

    monkeypatch.setattr(profiler, "profile", no_profile)
    before = digest(REPO_ROOT / "profiles" / "cpu" / "tiny")
    assert main(["profile", "--gpu", "cpu", "--model", "tiny", "--quick", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already holds a profile" in err and "--out" in err and len(err.splitlines()) == 1
    assert digest(REPO_ROOT / "profiles" / "cpu" / "tiny") == before


def test_costmodel_fit_refuses_a_shipped_fit(capsys, monkeypatch):
    from drex.costmodel import fit

    def no_fit(*a, **k):
        raise AssertionError("fitting started: the shipped fit was not refused")

    monkeypatch.setattr(fit, "fit_profile", no_fit)
    before = digest(REPO_ROOT / "profiles" / "cpu" / "tiny")
    assert main(["costmodel", "fit", str(REPO_ROOT / "profiles" / "cpu" / "tiny")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert digest(REPO_ROOT / "profiles" / "cpu" / "tiny") == before


def test_shipped_means_the_repository_folders_only(tmp_path):
    assert is_shipped(REPO_ROOT / "profiles" / "cpu" / "tiny") and is_shipped(REPO_ROOT / "models" / "tiny-ee")
    assert not is_shipped(tmp_path) and not is_shipped(REPO_ROOT / "profiles" / "cpu" / "no-such-model")


@pytest.mark.parametrize("command", [["simulate", *SIM], ["compare", *SIM, "--policies", "off"],
                                     ["run", *SIM, "--confidence", "beta:1,1"]])
def test_out_that_is_a_file_fails_before_the_work(tmp_path, capsys, monkeypatch, command):
    import drex.settings
    import drex.sim.cli

    def no_work(*a, **k):
        raise AssertionError("the workload was loaded: --out must be checked first")

    monkeypatch.setattr(drex.settings, "load_workload", no_work)
    monkeypatch.setattr(drex.sim.cli, "load_workload", no_work)
    (tmp_path / "f").write_text("x")
    for out, what in ((tmp_path / "f", "is a file"), (tmp_path / "f" / "sub", "is a file")):
        assert main([*command, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"drex {command[0]}: error: --out") and what in err and len(err.splitlines()) == 1


def test_check_out_dir_accepts_new_and_existing_directories(tmp_path):
    assert check_out_dir(tmp_path) == tmp_path
    assert check_out_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
