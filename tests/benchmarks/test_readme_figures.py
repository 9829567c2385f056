"""Issue 26: every figure the README quotes is tied to the command that reproduces it, and the check that
re-runs them (benchmarks/readme_figures.py) fails when a quoted figure drifts beyond its tolerance."""

import re
import sys

import pytest

from drex import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import readme_figures as rf  # noqa: E402

README = (REPO_ROOT / "README.md").read_text()


@pytest.mark.parametrize("fig", rf.FIGURES, ids=lambda f: ",".join(f.measure))
def test_every_checked_figure_is_quoted_beside_its_command(fig):
    assert fig.command in rf.readme_commands(README), fig.command
    assert re.search(fig.quote, rf.readme_text(README)), fig.quote


def test_figures_of_long_benchmarks_are_what_their_committed_results_hold():
    results = {f.source: rf.committed(f.source) for f in rf.COMMITTED}
    assert rf.check(README, results, rf.COMMITTED) == []


def _fig(kind=None):
    return rf.Figure("drex compare --policies off,drex",
                     r"drex gives (?P<drex>[\d.]+) tok/s \((?P<pct>\d+)% early exits\)",
                     {"drex": rf.tput("drex"), "pct": rf.exits("drex")}, {"pct": "percent"} | (kind or {}))


TEXT = "```bash\ndrex compare \\\n    --policies off,drex   # two\n```\nSo drex gives 694.4 tok/s (13% early exits)."


def _results(tput, frac):
    return {"drex compare --policies off,drex": {"drex": {"output_throughput": tput, "early_exit_fraction": frac}}}


def test_a_figure_within_its_rounding_holds():
    assert rf.check(TEXT, _results(694.43, 0.1349), [_fig()]) == []
    assert rf.check(TEXT, _results(694.4 * 1.0015, 0.125), [_fig()]) == []  # 0.2% slack for numerics


def test_a_drifted_figure_fails():
    assert len(rf.check(TEXT, _results(694.4 * 1.01, 0.133), [_fig()])) == 1  # 1% off
    assert len(rf.check(TEXT, _results(694.4, 0.14), [_fig()])) == 1  # 14% where 13% is quoted


def test_a_moved_figure_or_command_fails():
    assert "quote not in the README" in rf.check(TEXT.replace("694.4 tok/s", "694.4 tokens/s"),
                                                  _results(694.4, 0.13), [_fig()])[0]
    assert "command not in the README" in rf.check(TEXT.replace("off,drex", "off,eager,drex"),
                                                    _results(694.4, 0.13), [_fig()])[0]


def test_wall_times_and_ranges():
    assert rf.tolerance("15", "wall", 15) == (7.5, 30)
    low, high = rf.tolerance("1", "at least", 1)
    assert low == pytest.approx(0.005) and high == float("inf")
    assert rf.tolerance("5", "at most", 5)[1] == pytest.approx(0.055)
