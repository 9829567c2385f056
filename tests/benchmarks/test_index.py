"""benchmarks/README.md indexes the benchmarks: every script and every committed result is named there, and
every repository path it names exists."""

import re

from drex import REPO_ROOT

BENCH = REPO_ROOT / "benchmarks"
INDEX = BENCH / "README.md"
# A repository path in the index: it starts at one of these top-level folders (a path of the machine, such as
# ../shared/..., or a placeholder, such as RUN_DIR/..., does not).
PATH = re.compile(r"(?<![\w./$-])((?:benchmarks|analysis|profiles|models|traces|drex|tests)/[\w./-]*)")


def _named() -> set[str]:
    return {m.rstrip(".") for m in PATH.findall(INDEX.read_text())}


def _rel(p) -> str:
    return p.relative_to(REPO_ROOT).as_posix() + ("/" if p.is_dir() else "")


def test_every_script_is_named_in_the_index():
    scripts = [p for d in (BENCH, BENCH / "gpu") for p in sorted(d.iterdir()) if p.suffix in (".py", ".sh")]
    assert len(scripts) >= 25
    missing = [_rel(p) for p in scripts if _rel(p) not in _named()]
    assert not missing, f"not in benchmarks/README.md: {missing}"


def test_every_committed_result_is_named_in_the_index():
    results = sorted((BENCH / "results").iterdir())
    results += [p for p in sorted(BENCH.iterdir()) if p.is_file() and p.suffix not in (".py", ".sh", "")
                and p.name != "README.md"]  # results kept beside their scripts (quality_*)
    named = _named()  # a folder of results: itself or something in it
    missing = [_rel(p) for p in results if not any(n == _rel(p) or n.startswith(_rel(p)) for n in named)]
    assert not missing, f"not in benchmarks/README.md: {missing}"


def test_every_path_the_index_names_exists():
    named = _named()
    assert "benchmarks/sim_speed.py" in named and "benchmarks/results/policy_grid.md" in named
    assert not [p for p in named if not (REPO_ROOT / p).exists()]
