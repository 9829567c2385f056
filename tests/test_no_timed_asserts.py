"""No test compares a measured time to a constant (issue 26): on a shared machine a test that asserts a wall-time
budget fails whenever another job runs. Timing budgets belong to benchmarks (benchmarks/gpu/oneshot.py cuts a
stage over its budget); a test checks promptness with a subprocess ``timeout=``; a comparison of simulated time
carries the comment ``# not a budget``.

The check reads every test file's syntax tree: a value is *measured* when it is a clock call (time.perf_counter(),
time.time(), time.monotonic(), ...) or contains one, or is a name bound in the same function from a measured
value (``elapsed = time.monotonic() - t0``); comparing a measured value with < <= > >= to a number written in
the code is a timed assert.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
CLOCKS = {"perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns", "time", "time_ns", "process_time",
          "process_time_ns", "thread_time", "thread_time_ns"}
ORDER = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _clock_names(tree: ast.AST) -> set[str]:
    """Clock functions imported by bare name (``from time import perf_counter``)."""
    return {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "time"
            for a in node.names if a.name in CLOCKS}


def _is_clock_call(node: ast.AST, bare: set[str]) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    if isinstance(f, ast.Attribute):
        return f.attr in CLOCKS and isinstance(f.value, ast.Name) and f.value.id == "time"
    return isinstance(f, ast.Name) and f.id in bare


def _measured(node: ast.AST, names: set[str], bare: set[str]) -> bool:
    return any(_is_clock_call(n, bare) or (isinstance(n, ast.Name) and n.id in names) for n in ast.walk(node))


def _literal(node: ast.AST) -> bool:
    """A number written in the code (or arithmetic of such numbers): 180, 1.5, -3, 3 * 60."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
    if isinstance(node, ast.UnaryOp):
        return _literal(node.operand)
    if isinstance(node, ast.BinOp):
        return _literal(node.left) and _literal(node.right)
    return False


def _targets(stmt: ast.AST) -> list[str]:
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def _scope_findings(scope: ast.AST, bare: set[str]) -> list[int]:
    """Line numbers of timed asserts in one scope (a module's top level or one outermost function)."""
    nodes = list(ast.walk(scope)) if not isinstance(scope, ast.Module) else [
        n for stmt in scope.body if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        for n in ast.walk(stmt)]
    names: set[str] = set()
    binds = [n for n in nodes if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.NamedExpr))
             and getattr(n, "value", None) is not None]
    changed = True
    while changed:  # names bound from measured values, and names bound from those
        changed = False
        for n in binds:
            new = set(_targets(n)) - names if _measured(n.value, names, bare) else set()
            names |= new
            changed |= bool(new)
    return [n.lineno for n in nodes if isinstance(n, ast.Compare) and any(isinstance(op, ORDER) for op in n.ops)
            and any(_measured(x, names, bare) for x in [n.left, *n.comparators])
            and any(_literal(x) for x in [n.left, *n.comparators])]


def timed_asserts(source: str) -> list[int]:
    """Line numbers where a measured time is compared to a number written in the code."""
    tree = ast.parse(source)
    bare = _clock_names(tree)
    scopes: list[ast.AST] = [tree]
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scopes.append(stmt)
        elif isinstance(stmt, ast.ClassDef):
            scopes += [s for s in stmt.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return sorted(line for scope in scopes for line in _scope_findings(scope, bare))


@pytest.mark.parametrize("source,lines", [
    ("t0 = time.monotonic()\nrun()\nelapsed = time.monotonic() - t0\nassert elapsed < 180\n", [4]),
    ("t0 = time.perf_counter()\nfit()\nassert time.perf_counter() - t0 < 10\n", [3]),
    ("from time import perf_counter as pc\ndef f():\n    t = pc()\n    d = (pc() - t) * 1e3\n    ms = d\n"
     "    assert 0.5 <= ms\n", [6]),
    ("def f():\n    t0 = time.time()\n    go()\n    assert 3 * 60 > time.time() - t0\n", [4]),
    # not timed asserts: simulated time, a measured time against another value, a deadline set from the clock
    ("assert res.summary['duration'] < 10  # not a budget\n", []),
    ("t0 = time.monotonic()\nassert time.monotonic() - t0 >= other\n", []),
    ("d.deadline = time.monotonic()\nassert d.stages[-1]['seconds'] == 0.0\n", []),
    ("def f():\n    elapsed = time.monotonic()\ndef g(elapsed):\n    assert elapsed < 3\n", []),
])
def test_the_check_finds_timed_asserts(source, lines):
    assert timed_asserts(source) == lines


@pytest.mark.slow  # reads every test file's syntax tree
def test_no_test_compares_a_measured_time_to_a_constant():
    found = [f"{p.relative_to(TESTS.parent)}:{line}" for p in sorted(TESTS.rglob("*.py"))
             for line in timed_asserts(p.read_text())]
    assert found == [], "timed asserts (a measured time against a constant; use a subprocess timeout=): " + \
        ", ".join(found)
