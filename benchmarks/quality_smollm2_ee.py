"""Quality of smollm2-ee's exits against the full model, and its figure (issue 12).

    python benchmarks/quality_smollm2_ee.py        # ~10 minutes on a free core; needs `drex model fetch smollm2`

Runs ``drex quality --model smollm2-ee`` on 12 held-out HumanEval prompts (tasks the exits never trained on)
and 4 held-out text windows, 64 greedy tokens each, KV fill by recompute (state copy, drex run's default,
derails a real model: see the model card), for the learned estimator (thresholds 0.9 / 0.95 / 0.97 / 0.98 /
0.99; ``--metrics learned,margin`` adds the softmax margin at the same thresholds); writes benchmarks/quality_smollm2_ee.csv (all prompts),
benchmarks/quality_smollm2_ee_by_set.csv (HumanEval and text apart), _meta.json, and the figure
benchmarks/quality_smollm2_ee.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def plot(by_set_csv: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    import seaborn as sns

    df = pd.read_csv(by_set_csv)
    df = df.melt(id_vars=["prompt_set", "metric", "threshold", "early_exit_fraction"],
                 value_vars=["rouge_l", "bertscore", "token_agreement"], var_name="score", value_name="value")
    g = sns.relplot(data=df, x="early_exit_fraction", y="value", hue="metric", style="score", col="prompt_set",
                    kind="line", marker="o", height=3.6, aspect=1.1, sort=False)
    for ax in g.axes.flat:
        ax.axhline(0.9, color="grey", lw=0.8, ls="--")
        ax.axvline(0.3, color="grey", lw=0.8, ls=":")
    g.set_axis_labels("early-exit fraction of output tokens", "agreement with the full model")
    exits = "/".join(map(str, json.loads((HERE / "quality_smollm2_ee_meta.json").read_text())["exit_layers"]))
    g.figure.suptitle(f"smollm2-ee: quality against early exit (exits {exits} of 30; threshold sweep)", y=1.03)
    g.savefig(out_png, dpi=120, bbox_inches="tight")


def main() -> None:
    ap = argparse.ArgumentParser(description="smollm2-ee's quality against the full model (issue 12)")
    ap.add_argument("--metrics", default="learned")
    ap.add_argument("--thresholds", default="0.9,0.95,0.97,0.98,0.99")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "drex.cli", "quality", "--model", "smollm2-ee", "--out", tmp,
               "--metrics", args.metrics, "--thresholds", args.thresholds, "--max-new-tokens", "64",
               "--num-code", "12", "--num-text", "4", "--batch-size", "8", "--kv-fill", "recompute"]
        subprocess.run(cmd, check=True, cwd=ROOT)
        for name, dest in (("quality.csv", "quality_smollm2_ee.csv"),
                           ("quality_by_set.csv", "quality_smollm2_ee_by_set.csv"),
                           ("quality_exits.csv", "quality_smollm2_ee_exits.csv"),
                           ("quality_meta.json", "quality_smollm2_ee_meta.json")):
            shutil.copy(Path(tmp) / name, HERE / dest)
    plot(HERE / "quality_smollm2_ee_by_set.csv", HERE / "quality_smollm2_ee.png")


if __name__ == "__main__":
    main()
