"""Shared look of drex figures: seaborn theme, headless backend, titles naming the configuration."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in tests
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402


def theme() -> None:
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)


def save(fig, out: Path, name: str) -> Path:
    path = Path(out) / name
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def describe(summary: dict, with_policy: bool = True) -> str:
    """'drex | llama2-7b on a100 | exits [16], threshold 0.8 | 477/500 requests completed'."""
    parts = []
    if with_policy and "policy" in summary:
        parts.append(f"policy {summary['policy']}")
    if "model" in summary:
        parts.append(f"{summary['model']} on {summary.get('device', '?')}")
    if "exits" in summary:
        parts.append(f"exits {summary['exits']}, threshold {summary.get('threshold')}")
    if "completed" in summary:
        parts.append(f"{summary['completed']}/{summary['completed'] + summary.get('failed', 0)} requests completed")
    return " | ".join(parts)
