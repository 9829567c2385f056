"""The shared core is pure: no torch, no simpy, no clock (the scheduler is handed ``now``)."""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import drex

CORE = sorted((Path(drex.__file__).parent / "core").glob("*.py"))
CORE_MODULES = [f"drex.core.{p.stem}" for p in CORE if p.stem != "__init__"]
FORBIDDEN_MODULES = ("torch", "simpy", "time", "datetime")
CLOCK_NAMES = ("perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns", "process_time", "time_ns")


@functools.cache
def imported_drex_modules() -> dict:
    """Import every core module in a fresh interpreter; report heavy imports and the drex files loaded."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {CORE_MODULES!r}: importlib.import_module(m)\n"
        "print(json.dumps({'heavy': sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'simpy')),"
        " 'drex': {m: getattr(sys.modules[m], '__file__', None) for m in sys.modules"
        " if m == 'drex' or m.startswith('drex.')}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def clock_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in FORBIDDEN_MODULES:
                bad.append(f"from {node.module}")
            bad += [a.name for a in node.names if a.name in CLOCK_NAMES]
        elif isinstance(node, ast.Attribute) and node.attr in CLOCK_NAMES:
            bad.append(node.attr)
        elif isinstance(node, ast.Name) and node.id in CLOCK_NAMES:
            bad.append(node.id)
    return [f"{path.name}:{b}" for b in bad]


def test_core_modules_exist():
    assert {"drex.core.scheduler", "drex.core.policies", "drex.core.blocks", "drex.core.request"} <= set(CORE_MODULES)


def test_core_imports_neither_torch_nor_simpy():
    loaded = imported_drex_modules()
    assert loaded["heavy"] == []
    # And nothing of the torch backend or the simulator rides along.
    assert not [m for m in loaded["drex"] if m.startswith(("drex.real", "drex.sim"))]


def test_core_reads_no_clock():
    """Scan the core's source, and every drex module the core pulls in, for clock imports and calls."""
    files = {Path(f) for f in imported_drex_modules()["drex"].values() if f} | set(CORE)
    bad = [b for f in sorted(files) for b in clock_uses(f)]
    assert bad == []
    for path in CORE:  # a plain text scan too, for uses the AST walk cannot see (strings, exec)
        text = path.read_text()
        for needle in ("import time", "datetime", "perf_counter", "monotonic"):
            assert needle not in text, f"{path.name} mentions {needle!r}"


def test_clock_scan_can_fail(tmp_path):
    p = tmp_path / "x.py"
    p.write_text("import time\nfrom time import perf_counter\nimport datetime as dt\nt = time.monotonic()\n")
    assert clock_uses(p) == ["x.py:time", "x.py:from time", "x.py:perf_counter", "x.py:datetime", "x.py:monotonic"]
