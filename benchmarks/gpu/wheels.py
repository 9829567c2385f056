"""Bring the Python packages drex imports to a machine that reaches no package index.

The GPU machine has torch, triton, transformers, numpy, scipy, pandas, seaborn and tqdm but
not simpy. ``fetch_wheels.sh`` fills ``benchmarks/gpu/wheels/`` (gitignored) here; the tree
carries it there, and ``prepare`` installs those wheels into a scratch folder with
``pip --no-index`` (or, where pip fails, puts the pure-Python wheels themselves on the path:
zipimport reads them). Only the stdlib is used: this runs before anything is known to import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WHEELS = Path(__file__).resolve().parent / "wheels"
# Module -> package: what ``python -m drex.cli`` and benchmarks/real_decode.py import.
REQUIRED = {"numpy": "numpy", "scipy": "scipy", "pandas": "pandas", "simpy": "simpy", "torch": "torch",
            "transformers": "transformers", "safetensors": "safetensors", "tqdm": "tqdm", "pytest": "pytest"}


def missing(modules: dict[str, str] = REQUIRED, python: str = sys.executable, extra_path: list[str] = ()) -> list[str]:
    """The modules that ``python`` (with ``extra_path`` in front) cannot find; asked in a subprocess, so
    what this process has imported or put on sys.path does not answer for the children."""
    path = os.pathsep.join([*extra_path, os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)
    env = dict(os.environ, PYTHONPATH=path)
    code = ("import importlib.util, sys\n"
            "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))")
    out = subprocess.run([python, "-c", code, *modules], capture_output=True, text=True, env=env, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"{python} could not look up modules: {out.stderr.strip()[-300:]}")
    return out.stdout.split()


def prepare(site: Path, wheels: Path = WHEELS, modules: dict[str, str] = REQUIRED, python: str = sys.executable) -> tuple[list[str], str]:
    """(paths to put in front of PYTHONPATH, a one-line note). Installs nothing when nothing is missing.

    Raises RuntimeError with the fix when a module stays missing.
    """
    lacking = missing(modules, python)
    if not lacking:
        return [], "all imports present"
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        raise RuntimeError(f"missing Python packages {', '.join(modules[m] for m in lacking)} and no wheels in "
                           f"{wheels} (run benchmarks/gpu/fetch_wheels.sh on a machine with an index, and carry "
                           "that folder)")
    site.mkdir(parents=True, exist_ok=True)
    pip = subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                          "--disable-pip-version-check", "--target", str(site), *map(str, found)],
                         capture_output=True, text=True, timeout=300)
    if pip.returncode == 0:
        paths, how = [str(site)], f"pip installed {len(found)} wheel(s) into {site}"
    else:  # no pip, or it refused: pure-Python wheels import straight from the zip
        paths = [str(w) for w in found]
        how = f"pip failed ({pip.stderr.strip().splitlines()[-1:] or ['?']}); {len(found)} wheel(s) on PYTHONPATH"
    still = missing(modules, python, paths)
    if still:
        raise RuntimeError(f"still missing after the wheels in {wheels}: {', '.join(still)} ({how})")
    return paths, f"{', '.join(lacking)} from wheels: {how}"
