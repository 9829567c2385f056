"""Fit the roofline's GPU efficiency curves to Vidur's measured TP-1 profiles, and tabulate its error.

    python benchmarks/roofline_vs_vidur.py --vidur ../shared/vidur-profiles/compute

(run from the repository root; ``../shared`` is the shared data folder beside it)

For each GPU with shared profiles (a100, h100) one ``EfficiencyCurve`` (devices.py) is fitted on the linear
work (a decoder layer less attention) of all its models but the held-out one (h100 internlm-20b), by least
squares on relative error; then every profile, the held-out one included, is compared with the roofline as
committed in devices.py (the constant-efficiency roofline beside it). Seconds. Writes
benchmarks/results/roofline_vs_vidur.md and prints the fitted curves (paste them into devices.py when they
differ from the committed ones).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drex.costmodel.roofline import RooflineCostModel  # noqa: E402
from drex.costmodel.vidur import LINEAR_OPS, VIDUR_MODELS, _sums, read_mlp_csv  # noqa: E402
from drex.devices import EfficiencyCurve, get_device  # noqa: E402
from drex.models import get_model  # noqa: E402
from drex.outputs import recorded_path  # noqa: E402

HOLDOUT = ("h100", "internlm-20b")
RESULTS = Path(__file__).resolve().parent / "results" / "roofline_vs_vidur.md"


def load(root: Path, tp: int = 1) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(device, model, num_tokens, linear seconds) of every shared profile at TP ``tp``."""
    out = []
    for mlp in sorted(root.glob("*/*/*/mlp.csv")):
        org_model = f"{mlp.parent.parent.name}/{mlp.parent.name}"
        if org_model not in VIDUR_MODELS:
            continue
        df = read_mlp_csv(mlp)
        df = df[df["num_tensor_parallel_workers"] == tp].sort_values("num_tokens").drop_duplicates("num_tokens")
        if df.empty:
            continue
        out.append((mlp.parent.parent.parent.name, VIDUR_MODELS[org_model], df["num_tokens"].to_numpy(dtype=float),
                    _sums(df, LINEAR_OPS)["median"]))
    return out


def predict(device: str, model: str, n: np.ndarray, curve: EfficiencyCurve | None, tp: int = 1) -> np.ndarray:
    dev = replace(get_device(device), curve=curve)
    return RooflineCostModel(get_model(model), dev, tp=tp).linear_s(n)


def fit_curve(device: str, data) -> EfficiencyCurve:
    sets = [(m, n, y) for d, m, n, y in data if d == device and (d, m) != HOLDOUT]

    def curve(th):
        return EfficiencyCurve(th[0], th[1], th[2], th[3], th[4] * 1e-6, th[5], f"vidur {device} ({len(sets)} models)")

    def resid(th):
        return np.concatenate([predict(device, m, n, curve(th)) / y - 1.0 for m, n, y in sets])

    sol = least_squares(resid, [0.7, 50.0, 0.8, 10.0, 30.0, 4.0], loss="soft_l1", f_scale=0.05,
                        bounds=([0.05, 0, 0.05, 0, 0, 1], [1, 5000, 1, 500, 1000, 64]))
    th = [float(f"{v:.4g}") for v in sol.x]
    return replace(curve(th), layer_launch_s=float(f"{th[4]:.4g}e-6"))  # 4 digits, no float noise


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vidur", required=True, help="Vidur's compute/ folder")
    a = ap.parse_args()
    data = load(Path(a.vidur))
    fitted = {dev: fit_curve(dev, data) for dev in sorted({d for d, *_ in data})}
    for dev, c in fitted.items():
        same = get_device(dev).curve == c
        print(f"{dev}: {c}{'' if same else '   <- differs from devices.py'}")
    lines = ["# The roofline against Vidur's measured profiles (TP 1, linear work of one decoder layer)", "",
             f"`python benchmarks/roofline_vs_vidur.py --vidur {recorded_path(a.vidur)}`", "",
             "Linear work = one decoder layer less attention: the sum of the medians of Vidur's nine per-layer ops, "
             "at every measured num_tokens (1..4096; 1..32768 for llama3-70b). MAPE = mean |roofline/measured - 1|; "
             "bias 200-1000 = mean signed error between 200 and 1,000 tokens per step. constant = the roofline with "
             "constant efficiencies (before); curve = the fitted efficiency curves of devices.py. "
             "* = held out of the fit (and of every design choice).", "",
             "| device | model | points | constant MAPE | constant bias 200-1000 | curve MAPE | curve bias 200-1000 "
             "| curve worst |", "|---|---|---|---|---|---|---|---|"]
    worst_mape = 0.0
    for d, m, n, y in data:
        mid = (n >= 200) & (n <= 1000)
        e0 = predict(d, m, n, None) / y - 1
        e1 = predict(d, m, n, get_device(d).curve) / y - 1
        worst_mape = max(worst_mape, float(np.mean(np.abs(e1))))
        w = int(np.argmax(np.abs(e1)))
        lines.append(f"| {d} | {m}{' *' if (d, m) == HOLDOUT else ''} | {len(n)} | {100 * np.mean(np.abs(e0)):.1f}% | "
                     f"{100 * np.mean(e0[mid]):+.1f}% | {100 * np.mean(np.abs(e1)):.1f}% | "
                     f"{100 * np.mean(e1[mid]):+.1f}% "
                     f"| {100 * e1[w]:+.1f}% at {n[w]:.0f} |")
    lines += ["", "At tensor-parallel degree N (not fitted: the TP-1 curves with weights split N ways, elementwise work "
              "not split; all-reduce not included, as in Vidur's mlp.csv):", "",
              "| device | model | TP 2 MAPE | TP 4 MAPE | TP 8 MAPE |", "|---|---|---|---|---|"]
    by_tp = {tp: {(d, m): (n, y) for d, m, n, y in load(Path(a.vidur), tp)} for tp in (2, 4, 8)}
    for d, m, *_ in data:
        cells = []
        for tp in (2, 4, 8):
            if (d, m) not in by_tp[tp]:
                cells.append("-")
                continue
            n, y = by_tp[tp][(d, m)]
            cells.append(f"{100 * np.mean(np.abs(predict(d, m, n, get_device(d).curve, tp) / y - 1)):.1f}%")
        lines.append(f"| {d} | {m} | {' | '.join(cells)} |")
    lines += ["", "Curves (devices.py): " + "; ".join(f"{d}: {get_device(d).curve}" for d in fitted),
              "", f"Largest curve MAPE over all profiles: {100 * worst_mape:.1f}%."]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
