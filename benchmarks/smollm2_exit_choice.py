"""Which three of several trained exit points to ship (issue 12): a token leaves at the first exit whose
estimator clears the threshold; on the estimators' tokens, how many leave and how many of those are right.

    drex train-exits --out DIR --exits 16,19,22,24,26,28 ... --dump-val DIR/val.pt
    python benchmarks/smollm2_exit_choice.py DIR/val.pt [--choose 3] [--min-precision 0.985]

Reads the ``--dump-val`` file (per exit: every estimator token's confidence and whether the exit's token is
the full model's; which tokens the model generated). Scores only the generated tokens (decoding's states) of
the estimators' windows; those tokens trained the estimators except a fifth per exit, so precisions are
somewhat optimistic, alike for every exit set. Prints, per exit set, the threshold with the most early
exits at a precision >= --min-precision, and the share of layer work those exits save.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np


def score(conf: dict, right: dict, exits: tuple[int, ...], thr: float, num_layers: int):
    """(early-exit fraction, precision of exited tokens, fraction of layer work saved) at threshold thr."""
    n = len(next(iter(conf.values())))
    gone = np.zeros(n, dtype=bool)
    ok = np.zeros(n, dtype=bool)
    saved = np.zeros(n)
    for e in exits:
        leave = ~gone & (conf[e] >= thr)
        ok |= leave & right[e]
        saved[leave] = (num_layers - e) / num_layers
        gone |= leave
    frac = gone.mean()
    return frac, (ok.sum() / gone.sum()) if gone.any() else 1.0, saved.mean()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dump", help="the --dump-val file of drex train-exits")
    ap.add_argument("--choose", type=int, default=3, help="exit points per set")
    ap.add_argument("--min-precision", type=float, default=0.985)
    ap.add_argument("--num-layers", type=int, default=30)
    args = ap.parse_args(argv)
    try:
        import torch

        dump = torch.load(args.dump)
    except (OSError, RuntimeError) as e:
        print(f"error: cannot read {args.dump}: {e}", file=sys.stderr)
        return 2
    gen = dump["generated"].numpy()
    exits = sorted(k for k in dump if isinstance(k, int))
    conf = {e: dump[e]["conf"].numpy()[gen] for e in exits}
    right = {e: dump[e]["right"].numpy()[gen].astype(bool) for e in exits}
    print(f"{gen.sum()} generated tokens; per exit: agreement with the full model "
          + ", ".join(f"{e}: {right[e].mean():.3f}" for e in exits))
    thresholds = np.round(np.arange(0.80, 0.9951, 0.005), 3)
    rows = []
    for subset in itertools.combinations(exits, args.choose):
        best = None
        for t in thresholds:
            frac, prec, saved = score(conf, right, subset, t, args.num_layers)
            if prec >= args.min_precision and (best is None or frac > best[1]):
                best = (t, frac, prec, saved)
        if best:
            rows.append((subset, *best))
    rows.sort(key=lambda r: -r[2])
    print(f"{'exits':<14} {'threshold':>9} {'early exits':>11} {'precision':>9} {'work saved':>10}")
    for subset, t, frac, prec, saved in rows[:20]:
        print(f"{','.join(map(str, subset)):<14} {t:>9.3f} {frac:>11.3f} {prec:>9.3f} {saved:>10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
