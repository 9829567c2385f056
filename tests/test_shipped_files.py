"""What the repository ships must work where it is cloned: every confidence trace replays on the model it is
named after, and no tracked file names a folder of the machine it was made on."""

import csv
import json
import re
import subprocess

import pytest

from drex import REPO_ROOT
from drex.cli import main

pytestmark = pytest.mark.slow  # replays every shipped trace and reads every tracked file: the `not slow` subset stays under 20 s

TRACES = sorted((REPO_ROOT / "traces").glob("*-ee-*.csv"))
# A folder of some machine: a user's home, the temporary folder, a work area. Not preceded by a word character,
# a dot, "~" or ">" (a URL's path, ../x, ~/x, <tmp>/x are not absolute paths of a machine).
MACHINE_PATH = re.compile(r"(?<![\w.~>$-])/(?:work|root|home|tmp|Users|mnt|scratch)(?:/|\b)")


def _trace_exits(path) -> set[int]:
    with path.open(newline="") as f:
        return {int(row["exit_layer"]) for row in csv.DictReader(f)}


def test_every_shipped_model_has_a_confidence_trace():
    assert {p.name.rsplit("-", 1)[0] for p in TRACES} == {"tiny-ee", "smollm2-ee"}


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.name)
def test_shipped_confidence_trace_holds_its_models_exits_and_replays(path, tmp_path, capsys):
    model = path.name.rsplit("-", 1)[0]  # tiny-ee-text.csv: tiny-ee
    config = json.loads((REPO_ROOT / "models" / model / "config.json").read_text())
    assert _trace_exits(path) == set(config["drex_exit_layers"])
    code = main(["simulate", "--model", model, "--confidence", f"trace:{path}", "--num-requests", "5",
                 "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "summary.json").exists()


def _tracked_text_files():
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True,
                               timeout=60).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    for name in filter(None, names):
        data = (REPO_ROOT / name).read_bytes() if (REPO_ROOT / name).is_file() else b""
        if b"\0" not in data[:8192]:
            yield name, data.decode("utf-8", errors="replace")


def test_no_tracked_file_names_an_absolute_path_of_the_machine_it_was_made_on():
    root = str(REPO_ROOT)
    found = []
    for name, text in _tracked_text_files():
        for i, line in enumerate(text.splitlines(), 1):
            if root in line or MACHINE_PATH.search(line):
                found.append(f"{name}:{i}: {line.strip()[:120]}")
    assert not found, f"{len(found)} lines name absolute paths:\n" + "\n".join(found[:20])


def test_the_rule_that_finds_machine_paths_spares_urls_and_recorded_paths():
    # (split so that this file does not hold what it looks for)
    assert MACHINE_PATH.search('"path": "/' 'work/shared/vidur-profiles/compute/h100"')
    assert MACHINE_PATH.search("drex cost-model fit of /" "tmp/newtiny")
    assert MACHINE_PATH.search("run directories under /" "tmp")
    assert MACHINE_PATH.search("weights: /" "root/.cache/drex/smollm2")
    for fine in ("https://github.com/user/home/x", "../shared/vidur-profiles", "~/.cache/drex/smollm2",
                 "<tmp>/base03d", "/dev/null", "/usr/bin/python3", "/etc/xdg/pip", "/proc/cpuinfo"):
        assert not MACHINE_PATH.search(fine), fine
