"""Figures of one run from its requests.csv, steps.csv and summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from drex.plots.style import describe, plt, save, sns, theme

LATENCIES = (("ttft_ms", "time to first token (ms)"), ("tpot_ms", "time per output token (ms)"),
             ("e2el_ms", "end-to-end latency (ms)"))


def _read(run_dir: Path, name: str) -> pd.DataFrame:
    path = run_dir / name
    if not path.is_file():
        raise ValueError(f"{path}: missing (a run directory holds requests.csv, steps.csv and summary.json)")
    return pd.read_csv(path)


def plot_run(run_dir: Path, out: Path) -> list[Path]:
    summary = json.loads((run_dir / "summary.json").read_text())
    req, steps = _read(run_dir, "requests.csv"), _read(run_dir, "steps.csv")
    theme()
    title = describe(summary)
    return [latency_cdfs(req, out, title), timeline(steps, summary, out, title), exit_layers(req, summary, out, title)]


def latency_cdfs(req: pd.DataFrame, out: Path, title: str) -> Path:
    done = req[req.status == "finished"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (col, label) in zip(axes, LATENCIES):
        vals = done[col].dropna()
        vals = vals[vals > 0]
        if len(vals):
            sns.ecdfplot(x=vals, ax=ax)
            ax.set_xscale("log")  # queueing makes tails span decades
            ax.axvline(vals.median(), color="grey", ls=":", lw=1, label=f"median {vals.median():.1f} ms")
            ax.axvline(np.percentile(vals, 99), color="grey", ls="--", lw=1,
                       label=f"p99 {np.percentile(vals, 99):.1f} ms")
            ax.legend(loc="upper left", fontsize=8)  # a CDF is low on the left: room there
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of finished requests")
    fig.suptitle(f"Latency CDFs: {title}", fontsize=10)
    return save(fig, out, "latency_cdf.png")


def _binned(steps: pd.DataFrame, col: str, bins: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Time-weighted mean of a per-step column in equal time bins (runs have up to 10^5 steps)."""
    t, d, v = steps.time_s.to_numpy(), steps.duration_ms.to_numpy() / 1e3, steps[col].to_numpy(dtype=float)
    edges = np.linspace(t.min(), t.max() + 1e-9, bins + 1)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
    w = np.bincount(idx, weights=d, minlength=bins)
    s = np.bincount(idx, weights=d * v, minlength=bins)
    mid = (edges[:-1] + edges[1:]) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return mid, np.where(w > 0, s / w, np.nan)


def timeline(steps: pd.DataFrame, summary: dict, out: Path, title: str) -> Path:
    panels = [("num_rows", "batch size (rows per step)"), ("buffer_size", "rebatching buffer (parked rows)")]
    if "kv_blocks" in steps.columns:
        panels.append(("kv_blocks", "KV blocks in use"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.4 * len(panels)), sharex=True, squeeze=False)
    replicas = sorted(steps.replica.unique()) if len(steps) else []
    for ax, (col, label) in zip(axes[:, 0], panels):
        for rep in replicas:
            part = steps[steps.replica == rep]
            if len(part):
                x, y = _binned(part, col)
                ax.plot(x, y, lw=1, label=f"replica {rep}" if len(replicas) > 1 else None)
        if col == "kv_blocks" and summary.get("kv_total_blocks"):
            ax.axhline(summary["kv_total_blocks"], color="firebrick", ls="--", lw=1,
                       label=f"capacity {summary['kv_total_blocks']} blocks")
            ax.legend(loc="center left", fontsize=8)
        ax.set_ylabel(label, fontsize=9)
    axes[-1, 0].set_xlabel("simulated time (s); each point a time-weighted mean over 1/400 of the run")
    fig.suptitle(f"Over time: {title}", fontsize=10)
    return save(fig, out, "timeline.png")


def exit_layers(req: pd.DataFrame, summary: dict, out: Path, title: str) -> Path:
    """Where tokens left the model: what each token did, and each request's mean exit layer.

    Per-token exit layers are not recorded; requests.csv holds per-request counts and means."""
    done = req[(req.status == "finished") & (req.generated_tokens > 0)]
    total = int(done.generated_tokens.sum())
    early, forced = int(done.early_exits.sum()), int(done.involuntary_exits.sum())
    stays = int(done.involuntary_stays.sum())
    outcome = pd.DataFrame({"outcome": ["exited early\nby choice", "forced out\n(involuntary exit)",
                                        "kept deeper\n(involuntary stay)", "full depth\nby choice"],
                            "tokens": [max(early - forced, 0), forced, stays, max(total - early - stays, 0)]})
    outcome["share"] = outcome.tokens / max(total, 1)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1, 1.4]})
    sns.barplot(data=outcome, x="outcome", y="share", ax=ax0, color="steelblue")
    for patch, n in zip(ax0.patches, outcome.tokens):
        ax0.annotate(f"{n:,}", (patch.get_x() + patch.get_width() / 2, patch.get_height()), ha="center",
                     va="bottom", fontsize=8)
    ax0.set_xlabel("")
    ax0.set_ylabel(f"share of the {total:,} output tokens")
    ax0.tick_params(axis="x", labelsize=8)
    if len(done):
        sns.histplot(x=done.mean_exit_layer, weights=done.generated_tokens, bins=40, ax=ax1, stat="proportion")
    for i, e in enumerate(summary.get("exits", [])):
        ax1.axvline(e, color="darkorange", ls="--", lw=1, label="exit points" if i == 0 else None)
    ax1.set_xlabel("mean layers computed per token of a request")
    ax1.set_ylabel("share of output tokens")
    if summary.get("exits"):
        ax1.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Exit layers: {title}", fontsize=10)
    fig.tight_layout()
    return save(fig, out, "exit_layers.png")
