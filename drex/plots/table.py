"""Figures of many runs side by side: a sweep's sweep.csv or a compare's per-policy directories.

Metrics go against the swept axis (threshold when it varies, else the first varying numeric
column), one line per policy; when no numeric axis varies (a compare) each metric is a bar per
policy. Further varying columns become line styles.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from drex.plots.style import plt, save, sns, theme

RUN_METRICS = (("output_throughput", "output throughput (tokens/s)"), ("mean_tpot_ms", "mean TPOT (ms)"),
               ("request_goodput", "goodput (requests/s meeting SLOs)"),
               ("early_exit_fraction", "early-exit fraction of tokens"),
               ("involuntary_exits", "involuntary exits (tokens)"))
CAPACITY_METRICS = (("max_request_rate", "max request rate meeting SLOs (req/s)"),
                    ("goodput_fraction_at_knee", "share of requests meeting SLOs at the knee"),
                    ("mean_tpot_ms", "mean TPOT at the knee (ms)"), ("p99_ttft_ms", "p99 TTFT at the knee (ms)"))
# Configuration columns that are never the x axis.
NOT_X = ("policy", "config_id", "status", "error", "trace", "model", "device", "exits", "confidence")


def load_sweep(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path / "sweep.csv")
    df.attrs["config_columns"] = list(df.columns[:list(df.columns).index("config_id")])
    return df


def load_compare(path: Path) -> pd.DataFrame:
    from drex.core.policies import POLICIES

    rows = [json.loads((d / "summary.json").read_text()) for d in path.iterdir() if (d / "summary.json").is_file()]
    rank = {p: i for i, p in enumerate(POLICIES)}  # drex compare's order, not the directory listing's
    df = pd.DataFrame(sorted(rows, key=lambda r: (rank.get(r.get("policy"), len(rank)), str(r.get("policy")))))
    df["exits"] = df["exits"].astype(str)
    df.attrs["config_columns"] = ["policy"]
    return df


def _axes(df: pd.DataFrame) -> tuple[str | None, list[str]]:
    """(x column or None, other varying configuration columns)."""
    cfg = [c for c in df.attrs.get("config_columns", []) if c in df.columns and df[c].nunique(dropna=False) > 1]
    numeric = [c for c in cfg if c not in NOT_X and pd.api.types.is_numeric_dtype(df[c])]
    x = "threshold" if "threshold" in numeric else (numeric[0] if numeric else None)
    return x, [c for c in cfg if c not in (x, "policy")]


def _constants(df: pd.DataFrame) -> str:
    cols = [c for c in df.attrs.get("config_columns", []) if c in df.columns and df[c].nunique(dropna=False) == 1]
    for c in ("model", "device", "trace", "num_requests", "exits", "threshold"):  # a compare's runs share these
        if c not in cols and c in df.columns and df[c].nunique(dropna=False) == 1:
            cols.append(c)
    return ", ".join(f"{c} {df[c].iloc[0]}" for c in cols if c != "policy")


def plot_table(df: pd.DataFrame, out: Path, kind: str) -> list[Path]:
    if "status" in df.columns:
        df = df[df.status == "ok"].copy()
    if not len(df):
        raise ValueError("no successful configuration to plot")
    capacity = "max_request_rate" in df.columns
    metrics = [(m, label) for m, label in (CAPACITY_METRICS if capacity else RUN_METRICS) if m in df.columns
               and df[m].notna().any()]
    x, others = _axes(df)
    if "policy" not in df.columns:
        df["policy"] = "-"
    style = None
    if others:
        style = " / ".join(others)
        df[style] = df[others].astype(str).agg(" / ".join, axis=1)
    theme()
    cols = min(len(metrics), 3)
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for i, (ax, (m, label)) in enumerate(zip(axes.flat, metrics)):
        if x is None:
            sns.barplot(data=df, x="policy", y=m, hue=style, ax=ax, legend=i == len(metrics) - 1 and style)
            ax.set_xlabel("policy")
        else:
            marks = {"markers": True} if style else {"marker": "o"}  # markers=True needs a style column
            sns.lineplot(data=df, x=x, y=m, hue="policy", style=style, dashes=style is not None,
                         ax=ax, legend=i == len(metrics) - 1, errorbar=None, **marks)
            ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
    last = axes.flat[len(metrics) - 1]
    if last.get_legend() is not None:
        sns.move_legend(last, "upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    what = "Capacity sweep" if capacity else ("Sweep" if kind == "sweep" else "Policies compared")
    against = f" against {x.replace('_', ' ')}" if x else ""
    fig.suptitle(f"{what}{against}: {_constants(df)}", fontsize=10)
    fig.tight_layout()
    return [save(fig, out, f"{kind}.png")]
