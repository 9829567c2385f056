"""Figure of early-exit quality against threshold, from ``drex quality``'s quality.csv.

    python analysis/quality_plot.py benchmarks/quality_tiny_ee.csv benchmarks/quality_tiny_ee_copy.csv \
        --labels "KV fill: recompute" "KV fill: state copy" -o benchmarks/quality_tiny_ee.png

One row of panels per CSV, one panel per confidence metric: ROUGE-L and token
agreement against the full model, and the fraction of tokens that exited early, over the threshold
(entropy's axis is reversed: lower entropy thresholds are stricter, like higher
margin ones, so stricter is to the right in every panel).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

SERIES = {"rouge_l": "ROUGE-L vs full model", "token_agreement": "token agreement",
          "early_exit_fraction": "early-exit fraction"}


def plot(tables: list[tuple[str, pd.DataFrame]], out: Path, title: str | None = None) -> None:
    metrics = [m for m in ("margin", "maxprob", "entropy") if any(m in set(df["metric"]) for _, df in tables)]
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(len(tables), len(metrics), figsize=(4.2 * len(metrics), 3.2 * len(tables)),
                             sharey=True, squeeze=False)
    for row, (label, df) in enumerate(tables):
        long = df.melt(id_vars=["metric", "threshold"], value_vars=list(SERIES), var_name="series",
                       value_name="value")
        long["series"] = long["series"].map(SERIES)
        for ax, metric in zip(axes[row], metrics):
            sns.lineplot(data=long[long["metric"] == metric], x="threshold", y="value", hue="series",
                         style="series", markers=True, dashes=False, ax=ax, legend=(row, metric) == (0, metrics[0]))
            ax.axhline(0.9, color="grey", lw=0.8, ls=":")
            ax.axhline(0.25, color="grey", lw=0.8, ls=":")
            if metric == "entropy":
                ax.invert_xaxis()
                ax.set_xlabel("entropy threshold (nats, exit when below)")
            else:
                ax.set_xlabel(f"{metric} threshold (exit when above)")
            ax.set_title(f"{label}: {metric}" if label else metric)
            ax.set_ylim(0, 1.02)
            ax.set_ylabel("")
    if axes[0][0].get_legend() is not None:
        sns.move_legend(axes[0][0], "lower left", title=None, fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv", nargs="+", help="quality.csv file(s) written by `drex quality`")
    p.add_argument("--labels", nargs="*", default=None, help="one title per CSV (default: file names)")
    p.add_argument("-o", "--out", default=None, help="figure path (default: beside the first CSV, .png)")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    paths = [Path(c) for c in args.csv]
    labels = args.labels or [path.stem for path in paths]
    if len(labels) != len(paths):
        raise SystemExit(f"{len(labels)} labels for {len(paths)} CSV files")
    tables = []
    for label, path in zip(labels, paths):
        df = pd.read_csv(path)
        missing = {"metric", "threshold", *SERIES} - set(df.columns)
        if missing:
            raise SystemExit(f"{path}: missing column(s) {sorted(missing)}")
        tables.append((label, df))
    plot(tables, Path(args.out) if args.out else paths[0].with_suffix(".png"), args.title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
