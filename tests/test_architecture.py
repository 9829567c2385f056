"""The house as ARCHITECTURE.md states it: every file in a layer, imports only downwards, no import cycle,
the two bodies apart, and no file over 400 lines nor function over 80."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("drex", "benchmarks", "analysis")
BODIES = ("drex/sim/", "drex/real/")


def layer_table() -> list[tuple[int, list[str]]]:
    """(layer, path globs) rows of the table in ARCHITECTURE.md."""
    rows = []
    for line in (ROOT / "ARCHITECTURE.md").read_text().splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|[^|]*\|([^|]*)\|", line)
        if m:
            rows.append((int(m.group(1)), re.findall(r"`([^`]+)`", m.group(2))))
    return rows


def layer_of(rel: str, table) -> int | None:
    for layer, globs in table:
        for g in globs:
            if fnmatch.fnmatch(rel, g) or (g.endswith("/**") and rel.startswith(g[:-2])):
                return layer
    return None


def python_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for d in SCANNED for p in (ROOT / d).rglob("*.py"))


def module_index(files: list[str]) -> dict[str, str]:
    index = {}
    for rel in files:
        if rel.startswith("drex/"):
            mod = rel[:-3].replace("/", ".")
            index[mod[: -len(".__init__")] if mod.endswith(".__init__") else mod] = rel
    return index


def imports_of(rel: str, index: dict[str, str]) -> set[str]:
    """Files of the package a file imports, at top level or inside functions."""

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        while parts:
            hit = index.get(".".join(parts))
            if hit:
                return hit
            parts.pop()
        return None

    found = set()
    for node in ast.walk(ast.parse((ROOT / rel).read_text())):
        if isinstance(node, ast.Import):
            found |= {resolve(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {resolve(f"{node.module}.{a.name}") or resolve(node.module) for a in node.names}
    found.discard(None)
    found.discard(rel)
    return found


def import_graph() -> dict[str, set[str]]:
    files = python_files()
    index = module_index(files)
    return {rel: imports_of(rel, index) for rel in files}


def test_the_table_parses():
    table = layer_table()
    assert [layer for layer, _ in table] == sorted(layer for layer, _ in table) and len(table) >= 8
    assert layer_of("drex/core/scheduler.py", table) == 3
    assert layer_of("benchmarks/gpu/oneshot.py", table) == 8


def test_every_file_has_a_layer():
    table = layer_table()
    missing = [rel for rel in python_files() if layer_of(rel, table) is None]
    assert not missing, f"files in no layer of ARCHITECTURE.md: {missing}"


def test_imports_go_down_and_bodies_stay_apart():
    table = layer_table()
    bad = []
    for rel, deps in import_graph().items():
        for dep in deps:
            if layer_of(dep, table) > layer_of(rel, table):
                bad.append(f"{rel} (layer {layer_of(rel, table)}) imports {dep} (layer {layer_of(dep, table)})")
            for a, b in (BODIES, BODIES[::-1]):
                if rel.startswith(a) and dep.startswith(b):
                    bad.append(f"{rel} imports the other body: {dep}")
    assert not bad, "\n".join(bad)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (c := visit(w)):
                return c
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (c := visit(v)):
            return c
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle_through_three_files():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("rel", python_files() + [str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")])
def test_files_and_functions_are_small(rel):
    src = (ROOT / rel).read_text()
    assert src.count("\n") <= 400, f"{rel}: {src.count(chr(10))} lines (at most 400)"
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(src))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80]
    assert not long, f"{rel}: functions over 80 lines: {long}"
