"""Issue 9 items 8 and 12: every flag says what it does and its default; drex --version, python -m drex;
the README links only what a clone has."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pytest

from drex import REPO_ROOT, __version__
from drex.cli import build_parser, main


def subparsers(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, p in action.choices.items():
                yield (*prefix, name), p
                yield from subparsers(p, (*prefix, name))


COMMANDS = dict(subparsers(build_parser()))


@pytest.mark.parametrize("name", sorted(" ".join(k) for k in COMMANDS))
def test_every_flag_and_positional_is_described(name):
    p = COMMANDS[tuple(name.split())]
    if any(isinstance(a, argparse._SubParsersAction) for a in p._actions):
        return  # a group (drex costmodel): its sub-commands are checked
    bare = [a.dest for a in p._actions if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not bare, f"drex {name}: no help for {bare}"


@pytest.mark.parametrize("name", ["simulate", "compare", "run", "train", "quality", "profile"])
def test_help_shows_defaults_and_no_python_tuples(name):
    text = COMMANDS[(name,)].format_help()
    for a in COMMANDS[(name,)]._actions:
        if a.option_strings and a.default not in (None, False, argparse.SUPPRESS) and a.dest != "help":
            flag = a.option_strings[-1]
            options = text[text.index("options:"):]
            shown = re.search(re.escape(flag) + r"\b.*?(?=\n  -|\Z)", options, re.S).group(0)
            assert "default" in shown, f"drex {name} {flag}: default not shown"
    assert not re.search(r"\(\d+(\.\d+)?, ", text), "a Python tuple in the help"


def test_sweep_says_what_a_missing_axis_means():
    from drex.explore.grid import axis_actions

    p = COMMANDS[("sweep",)]
    for a in p._actions:
        if a.dest in {b.dest for b in axis_actions()}:
            assert "(default" in p._get_formatter()._expand_help(a), f"drex sweep {a.option_strings[0]}"
    text = " ".join(p.format_help().split())
    for shown in ("--rate-scale V X > 1 compresses time (X times the rate) (default: 1.0; repeat or comma-list",
                  "(default: 256; repeat or comma-list to sweep)", "(default: drex;", "(default: none; repeat",
                  "(default: off; given: on in every configuration)"):
        assert shown in text, shown


def test_compare_shows_its_own_defaults():
    text = " ".join(COMMANDS[("compare",)].format_help().split())
    assert "(default: azure-conv)" in text and "(default: 1000)" in text


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"drex {__version__}"


@pytest.mark.slow
def test_python_dash_m_drex():
    out = subprocess.run([sys.executable, "-m", "drex", "--version"], capture_output=True, text=True, cwd=REPO_ROOT,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"drex {__version__}"


def test_readme_links_exist_in_a_clone():
    text = (REPO_ROOT / "README.md").read_text()
    assert "../shared" not in text
    for target in re.findall(r"`((?:[\w.-]+/)*[\w.-]+\.md)`", text):
        assert (REPO_ROOT / target).exists() or target.startswith("DIR"), target


def test_a_command_line_registers_only_its_face_and_the_face_table_is_complete():
    from drex.cli import FACES

    assert set(COMMANDS) >= {(c,) for cs in FACES.values() for c in cs}
    assert {k for k in COMMANDS if len(k) == 1} == {(c,) for cs in FACES.values() for c in cs}
    for face, commands in FACES.items():
        only = dict(subparsers(build_parser([commands[0], "--help"])))
        assert {k for k in only if len(k) == 1} == {(c,) for c in commands}, face
    # drex simulate must not pay for torch (the simulator's start-up): a fresh interpreter shows it
    code = "import sys; from drex.cli import build_parser; build_parser(['simulate']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
