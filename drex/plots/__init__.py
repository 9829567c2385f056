"""Figures of serving results (``drex plot``, ``drex compare --plot``): one entry point that looks at
what a directory holds and draws the matching figures as PNG files.

* a run (``summary.json``: drex simulate, drex run, a sweep's run): latency CDFs, batch/buffer/KV
  over time, exit layers (``drex.plots.run``);
* a sweep (``sweep.csv``) or a compare (sub-directories with ``summary.json``): metrics against the
  swept axis, one line per policy (``drex.plots.table``);
* a capacity search (``capacity.json``): requests meeting their SLOs against load, knee marked
  (``drex.plots.capacity``).
"""

from __future__ import annotations

from pathlib import Path


def kind_of(path: Path) -> str:
    if (path / "capacity.json").is_file():
        return "capacity"
    if (path / "sweep.csv").is_file():
        return "sweep"
    if (path / "summary.json").is_file():
        return "run"
    if path.is_dir() and any((d / "summary.json").is_file() for d in path.iterdir() if d.is_dir()):
        return "compare"
    raise ValueError(f"{path}: holds no summary.json, sweep.csv, capacity.json, nor run directories "
                     "(drex plot reads what drex simulate, compare --out, sweep and capacity write)")


def plot_path(path: str | Path, out: str | Path | None = None) -> list[Path]:
    """Draw the figures for what ``path`` holds into ``out`` (default: ``path``); the files written."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such directory")
    kind = kind_of(path)
    out = Path(out) if out is not None else path
    out.mkdir(parents=True, exist_ok=True)
    if kind == "capacity":
        from drex.plots.capacity import plot_capacity

        return plot_capacity(path, out)
    if kind == "run":
        from drex.plots.run import plot_run

        return plot_run(path, out)
    from drex.plots.table import load_compare, load_sweep, plot_table

    df = load_sweep(path) if kind == "sweep" else load_compare(path)
    return plot_table(df, out, kind)
