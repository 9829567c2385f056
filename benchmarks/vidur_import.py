"""Import every shared Vidur profile at TP 1: import time, held-out and all-point error of the linear work.

    python benchmarks/vidur_import.py --vidur ../shared/vidur-profiles/compute --out-root "$(mktemp -d)"
    python benchmarks/vidur_import.py --vidur ../shared/vidur-profiles/compute --out-root profiles --all-tp

(run from the repository root; ``../shared`` is the shared data folder beside it. The second ships them,
with every TP degree > 1 a profile measured into <model>/tp<N>/).

Writes benchmarks/results/vidur_import.md. ``HOLDOUT`` (h100 internlm-20b) was held out of every design
choice of the importer and of the refitted roofline; its row is the unseen-profile check.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import json

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drex.costmodel import profile as pf  # noqa: E402
from drex.costmodel.load import load_fitted  # noqa: E402
from drex.costmodel.vidur import VIDUR_MODELS, import_vidur  # noqa: E402
from drex.outputs import recorded_path  # noqa: E402

HOLDOUT = ("h100", "internlm/internlm-20b")
RESULTS = Path(__file__).resolve().parent / "results" / "vidur_import.md"


def shared_profiles(root: Path) -> list[tuple[str, str, Path]]:
    out = []
    for mlp in sorted(root.glob("*/*/*/mlp.csv")):
        device, org_model = mlp.parent.parent.parent.name, f"{mlp.parent.parent.name}/{mlp.parent.name}"
        if org_model in VIDUR_MODELS:
            out.append((device, org_model, mlp.parent))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vidur", required=True, help="Vidur's compute/ folder (compute/<device>/<org>/<model>/)")
    ap.add_argument("--out-root", required=True, help="profiles go to OUT_ROOT/<device>/<model>/")
    ap.add_argument("--all-tp", action="store_true", help="also import TP 2/4/8 into <model>/tp<N>/")
    a = ap.parse_args()
    rows, tp_rows = [], []
    todo = shared_profiles(Path(a.vidur))
    for i, (device, org_model, src) in enumerate(todo, 1):
        model = VIDUR_MODELS[org_model]
        t0 = time.perf_counter()
        out, _ = import_vidur(src, device, model, 1, Path(a.out_root) / device / model)
        dt = time.perf_counter() - t0
        fit = json.loads((out / pf.FIT).read_text())
        lin = [r for r in pf.read_profile(out).rows if r["op"] == "linear"]
        cm = load_fitted(out)
        y = np.array([r["median_s"] for r in lin])
        pred = cm.linear_s(np.array([r["num_tokens"] for r in lin], dtype=float))
        all_mape = float(np.mean(np.abs(pred / y - 1)))
        e = fit["errors"]
        rows.append((device, model, dt, 100 * e["linear"]["held"]["mape"], 100 * e["linear"]["held"]["worst"],
                     100 * fit["linear_smooth_law_held_mape"], 100 * all_mape, 100 * e["mlp"]["held"]["mape"],
                     (device, org_model) == HOLDOUT))
        print(f"[{i}/{len(todo)}] {device} {model}: {dt:.2f} s, linear held-out MAPE {rows[-1][3]:.2f}%", flush=True)
        for tp in (2, 4, 8) if a.all_tp else ():
            try:
                t0 = time.perf_counter()
                out, _ = import_vidur(src, device, model, tp, Path(a.out_root) / device / model / f"tp{tp}")
            except ValueError as e:  # a degree the profile did not measure
                print(f"    tp{tp}: skipped ({e})")
                continue
            fit = json.loads((out / pf.FIT).read_text())
            tp_rows.append((device, model, tp, time.perf_counter() - t0, 100 * fit["errors"]["linear"]["held"]["mape"]))
    lines = ["# Vidur profiles imported at TP 1", "",
             f"`python benchmarks/vidur_import.py --vidur {recorded_path(a.vidur)} "
             f"--out-root {recorded_path(a.out_root)}"
             f"{' --all-tp' if a.all_tp else ''}`", "",
             "linear = one decoder layer less attention (sum of Vidur's nine per-layer medians); held = every 4th "
             "num_tokens point, never fitted; smooth = the fitted law without its residual table; all = every "
             "num_tokens point of the profile (fit + held). * = held out of all design choices.", "",
             "| device | model | import s | linear held MAPE | worst held | smooth-law held MAPE | linear all-points "
             "MAPE | mlp held MAPE |", "|---|---|---|---|---|---|---|---|"]
    for d, m, dt, h, w, sm, al, mh, hold in rows:
        lines.append(f"| {d} | {m}{' *' if hold else ''} | {dt:.2f} | {h:.2f}% | {w:+.1f}% | {sm:.2f}% | {al:.2f}% "
                     f"| {mh:.2f}% |")
    if tp_rows:
        lines += ["", "Tensor-parallel degrees (one GPU's share of a layer; all-reduce not included):", "",
                  "| device | model | TP | import s | linear held MAPE |", "|---|---|---|---|---|"]
        lines += [f"| {d} | {m} | {tp} | {dt:.2f} | {h:.2f}% |" for d, m, tp, dt, h in tp_rows]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
