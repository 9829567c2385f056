"""Figure of a capacity search: the share of requests meeting their SLOs against offered load, the
knee (highest passing load) marked, and tail latencies against load beside it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from matplotlib.ticker import FuncFormatter

from drex.plots.style import describe, plt, save, sns, theme


def plot_capacity(path: Path, out: Path) -> list[Path]:
    cap = json.loads((path / "capacity.json").read_text())
    if not cap["runs"]:
        raise ValueError(f"{path / 'capacity.json'}: no runs to plot")
    return [save(capacity_figure(cap), out, "capacity.png")]


def _minor_labels(ax):
    """Labels for a log y axis's minor ticks (2..9 times a power of ten) that leave each label room: all of them
    while the view spans under 0.7 of a decade, 2 and 5 up to 3 decades, none beyond (the powers of ten alone)."""
    def label(v: float, _) -> str:
        lo, hi = ax.get_ylim()
        decades = math.log10(hi / lo)
        digit = round(v / 10 ** math.floor(math.log10(v) + 1e-9))
        return f"{v:g}" if decades < 0.7 or (decades <= 3 and digit in (2, 5)) else ""
    return label


def capacity_figure(cap: dict):
    """The figure of a capacity search (``capacity.json``'s contents, at least one run)."""
    runs = pd.DataFrame([{"request_rate": r["request_rate"], "goodput_fraction": r["goodput_fraction"],
                          "meets": "meets SLOs" if r["meets_slo"] else "misses SLOs",
                          "p99_ttft_ms": r["summary"].get("p99_ttft_ms"),
                          "p99_tpot_ms": r["summary"].get("p99_tpot_ms")} for r in cap["runs"]])
    runs = runs.sort_values("request_rate")
    theme()
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.9))
    ax = axes[0]
    ax.plot(runs.request_rate, runs.goodput_fraction, color="grey", lw=1, zorder=1)
    sns.scatterplot(data=runs, x="request_rate", y="goodput_fraction", hue="meets", ax=ax, zorder=2,
                    palette={"meets SLOs": "seagreen", "misses SLOs": "firebrick"}, s=50)
    ax.axhline(cap["min_goodput_fraction"], color="grey", ls=":", lw=1,
               label=f"target {cap['min_goodput_fraction']:.0%}")
    if cap["max_request_rate"] is not None:
        ax.axvline(cap["max_request_rate"], color="seagreen", ls="--", lw=1,
                   label=f"knee {cap['max_request_rate']:.2f} req/s")
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("share of requests meeting all SLOs")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="lower left")
    for ax, col, slo, label in ((axes[1], "p99_ttft_ms", cap.get("slo_ttft_ms"), "p99 TTFT (ms)"),
                                (axes[2], "p99_tpot_ms", cap.get("slo_tpot_ms"), "p99 TPOT (ms)")):
        ax.plot(runs.request_rate, runs[col], marker="o", lw=1)
        if slo is not None:
            ax.axhline(slo, color="firebrick", ls=":", lw=1, label=f"SLO {slo:g} ms")
        if cap["max_request_rate"] is not None:
            ax.axvline(cap["max_request_rate"], color="seagreen", ls="--", lw=1, label="knee")
        ax.set_yscale("log")  # latency explodes past the knee
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(FuncFormatter(_minor_labels(ax)))
        ax.set_xlabel("offered load (requests/s)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    knee = cap.get("knee") or (cap["runs"][0]["summary"] if cap["runs"] else {})
    slos = ", ".join(f"{n} SLO {cap[k]:g} ms" for n, k in (("TTFT", "slo_ttft_ms"), ("TPOT", "slo_tpot_ms"))
                     if cap.get(k) is not None)
    fig.suptitle(f"Capacity ({slos}; {cap['num_runs']} runs): {describe(knee)}", fontsize=10)
    fig.tight_layout()
    return fig
