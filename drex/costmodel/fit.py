"""Fit the cost laws of ``fitted.py`` to a profile, and measure the fit on held-out points.

Each family is a handful of non-negative parameters fitted by least squares on
*relative* residuals (so a 20 us head and a 50 ms prefill weigh the same),
with a soft-L1 loss so one noisy measurement on a shared machine cannot pull
the curve. Starts: a non-negative linear fit (closed form) and a few sharpness
values of the smooth max. Seconds in all, no search over model classes.
Points marked ``held`` in the profile never enter the fit; their errors are
the report.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares, nnls

from drex import __version__
from drex.costmodel import profile as pf
from drex.costmodel.fitted import (FAMILIES, OP_FAMILY, OPTIONAL_FAMILIES, FittedCostModel, Law, layer_features,
                                   smooth_max, spill)
from drex.outputs import recorded_path

FIT_VERSION = 1
P_MIN, P_MAX = 1.0, 64.0


def features(rows: list[dict]) -> dict[str, np.ndarray]:
    col = {c: np.array([r[c] for r in rows], dtype=float) for c in ("num_tokens", "decode_context", "prefill_attn",
                                                                     "num_rows", "num_layers")}
    # Layer features exactly as FittedCostModel derives them at prediction time.
    return {**layer_features(col["num_tokens"], col["decode_context"], col["prefill_attn"]),
            "rows": col["num_rows"], "rows_x_layers": col["num_rows"] * col["num_layers"], "layers": col["num_layers"]}


def fit_law(x_names, z_names, feats: dict[str, np.ndarray], y: np.ndarray, spill_names=()) -> Law:
    """Least squares on relative error; parameters scaled to O(1).

    theta = [c0, m, p, k (x), a (z), b, knee, q (spills)], all >= 0, p in [1, 64], knees within the data,
    q in [1, 16].
    """
    y = np.asarray(y, dtype=float)
    if len(y) == 0:
        raise ValueError("no measurements to fit")
    prob = _LawProblem(x_names, z_names, feats, y, spill_names)

    def solve(s, max_nfev):
        return least_squares(prob.resid, s, jac=prob.jac, bounds=(prob.lo, prob.hi), loss="soft_l1", f_scale=0.05,
                             x_scale=1.0, ftol=1e-7, xtol=1e-7, max_nfev=max_nfev)

    # A short run from every start, then the two best carried to convergence.
    short = sorted((solve(s, 25) for s in prob.starts()), key=lambda sol: sol.cost)[:2]
    best = min((solve(sol.x, 400) for sol in short), key=lambda sol: sol.cost)
    return prob.law(best.x)


class _LawProblem:
    """One law's least-squares problem in scaled units: features scaled to [0, 1], times to the median."""

    def __init__(self, x_names, z_names, feats: dict[str, np.ndarray], y: np.ndarray, spill_names) -> None:
        self.x_names, self.z_names, self.spill_names = tuple(x_names), tuple(z_names), tuple(spill_names)
        self.ys = float(np.median(y))

        def stack(names):
            if not names:
                return np.zeros((len(y), 0)), np.ones(0)
            M = np.stack([np.asarray(feats[n], dtype=float) for n in names], axis=1)
            scale = np.maximum(M.max(axis=0), 1e-12)
            return M / scale, scale

        self.Xn, self.xs = stack(x_names)
        self.Zn, self.zs = stack(z_names)
        self.Hn, self.hs = stack(spill_names)
        self.yn = y / self.ys
        nx, nz, nh = self.Xn.shape[1], self.Zn.shape[1], self.Hn.shape[1]
        self.nx, self.nz, self.nh = nx, nz, nh
        self.ik, self.ia, self.ib = 3, 3 + nx, 3 + nx + nz
        self.ikn, self.iq = 3 + nx + nz + nh, 3 + nx + nz + 2 * nh
        self.n_par = self.iq + nh
        self.lo, self.hi = np.zeros(self.n_par), np.full(self.n_par, np.inf)
        self.lo[2], self.hi[2] = P_MIN, P_MAX
        self.lo[self.ikn:self.iq], self.hi[self.ikn:self.iq] = 1e-4, 1.0
        self.lo[self.iq:], self.hi[self.iq:] = 1.0, 16.0

    def model_and_jac(self, theta):
        """t [n] and dt/dtheta [n, n_par], analytically (a numeric Jacobian makes the fit 10x slower)."""
        Xn, Zn, Hn, yn = self.Xn, self.Zn, self.Hn, self.yn
        ik, ia, ib, ikn, iq = self.ik, self.ia, self.ib, self.ikn, self.iq
        c0, m, p = theta[0], theta[1], theta[2]
        t = np.full_like(yn, c0)
        J = np.zeros((len(yn), self.n_par))
        J[:, 0] = 1.0
        if self.nx:
            u = Xn @ theta[ik:ia]
            S = smooth_max(m, u, p)
            Ssafe = np.where(S > 0, S, 1.0)
            rm, ru = np.where(S > 0, m / Ssafe, 0.0), np.where(S > 0, u / Ssafe, 0.0)
            wm, wu = rm**p, ru**p
            with np.errstate(divide="ignore", invalid="ignore"):
                lm = np.where(rm > 0, np.log(np.where(rm > 0, rm, 1.0)), 0.0)
                lu = np.where(ru > 0, np.log(np.where(ru > 0, ru, 1.0)), 0.0)
            t = t + S
            J[:, 1] = rm ** (p - 1)
            J[:, 2] = S / p * (wm * lm + wu * lu)
            J[:, ik:ia] = (ru ** (p - 1))[:, None] * Xn
        if self.nz:
            t = t + Zn @ theta[ia:ib]
            J[:, ia:ib] = Zn
        for i in range(self.nh):
            h, b, knee, q = Hn[:, i], theta[ib + i], theta[ikn + i], theta[iq + i]
            pos = h > 0
            hs_ = np.where(pos, h, 1.0)
            g = np.where(pos, (knee / hs_) ** q, 0.0)
            sp = np.where(pos, h / (1.0 + g), 0.0)
            t = t + b * sp
            J[:, ib + i] = sp
            d = np.where(pos, h * g / (1.0 + g) ** 2, 0.0)
            J[:, ikn + i] = -b * d * q / knee
            J[:, iq + i] = -b * d * np.where(pos, np.log(knee / hs_), 0.0)
        return t, J

    def resid(self, theta):
        return self.model_and_jac(theta)[0] / self.yn - 1.0

    def jac(self, theta):
        return self.model_and_jac(theta)[1] / self.yn[:, None]

    def starts(self) -> list[np.ndarray]:
        """Closed-form starts: with the spill knees and sharpness held at candidate values, and the smooth
        max as a plain sum, the law is linear in the rest: a non-negative least squares on relative error
        each. The best few candidates seed the full fit (a spill's step is a local minimum the solver
        cannot leave)."""
        Hn, yn, ib, ikn, iq, lo, hi = self.Hn, self.yn, self.ib, self.ikn, self.iq, self.lo, self.hi
        base = np.concatenate([np.ones((len(yn), 1)), self.Xn, self.Zn], axis=1)
        per_spill = []
        for i in range(self.nh):
            z = Hn[:, i][Hn[:, i] > 0]
            knees = np.geomspace(max(z.min(), 1e-4), 1.0, 8) if len(z) else np.array([0.5])
            per_spill.append([(kn, q) for kn in knees for q in (2.0, 6.0, 16.0)])
        candidates = []
        for combo in itertools.product(*per_spill):
            cols = [spill(Hn[:, i], kn, q) for i, (kn, q) in enumerate(combo)]
            A = np.concatenate([base] + [c[:, None] for c in cols], axis=1) / yn[:, None]
            coef, rnorm = nnls(A, np.ones(len(yn)))
            candidates.append((rnorm, coef, combo))
        candidates.sort(key=lambda c: c[0])
        starts = []
        for _, coef, combo in candidates[:3]:
            for m0_frac in (0.0, 0.5):
                for p0 in (1.5, 8.0):
                    s = np.zeros(self.n_par)
                    s[0] = coef[0] * (1 - m0_frac)
                    s[1] = coef[0] * m0_frac if self.nx else 0.0
                    s[2] = p0
                    s[self.ik:ib] = coef[1:ib - 2]
                    s[ib:ikn] = coef[ib - 2:]
                    s[ikn:iq] = [kn for kn, _ in combo]
                    s[iq:] = [q for _, q in combo]
                    starts.append(np.clip(s, lo + 1e-9, np.where(np.isfinite(hi), hi - 1e-9, np.inf)))
        return starts

    def law(self, th: np.ndarray) -> Law:
        """The fitted parameters back in seconds and feature units."""
        ys, ik, ia, ib, ikn, iq = self.ys, self.ik, self.ia, self.ib, self.ikn, self.iq
        if not self.nx:  # no throughput term: the floor and sharpness mean nothing
            th[1], th[2] = 0.0, 1.0
        spills = tuple((n, float(b * ys / s), float(kn * s), float(q))
                       for n, b, kn, q, s in zip(self.spill_names, th[ib:ikn], th[ikn:iq], th[iq:], self.hs))
        return Law(self.x_names, self.z_names, float(th[0] * ys), float(th[1] * ys), float(th[2]),
                   tuple(float(v) for v in th[ik:ia] * ys / self.xs), tuple(float(v) for v in th[ia:ib] * ys / self.zs),
                   tuple(sp for sp in spills if sp[1] > 0))


def fit_rows(rows: list[dict]) -> dict[str, Law]:
    """One law per family, from the rows of split 'fit'."""
    laws = {}
    for fam, (x_names, z_names, spill_names) in FAMILIES.items():
        sel = [r for r in rows if r["split"] == "fit" and OP_FAMILY[r["op"]] == fam]
        if not sel and fam in OPTIONAL_FAMILIES:
            continue
        if not sel:
            raise ValueError(f"profile has no 'fit' measurements for {fam} (ops "
                             f"{[op for op, f in OP_FAMILY.items() if f == fam]})")
        laws[fam] = fit_law(x_names, z_names, features(sel), np.array([r["median_s"] for r in sel]), spill_names)
    return laws


def error_table(model: FittedCostModel, rows: list[dict]) -> dict[str, dict]:
    """Per measured op: held-out MAPE and worst error (signed, relative), and the fit-set MAPE beside it."""
    table = {}
    for op in pf.ALL_OPS:
        out = {}
        for split in ("held", "fit"):
            sel = [r for r in rows if r["op"] == op and r["split"] == split]
            if not sel:
                continue
            y = np.array([r["median_s"] for r in sel])
            pred = np.asarray(model.predict_op(op, *(np.array([r[c] for r in sel])
                                                     for c in ("num_rows", "context", "chunk", "num_layers"))))
            err = pred / y - 1.0
            worst = int(np.argmax(np.abs(err)))
            out[split] = {"n": len(sel), "mape": float(np.mean(np.abs(err))), "worst": float(err[worst]),
                          "worst_point": {c: sel[worst][c] for c in ("num_rows", "context", "chunk", "num_layers")},
                          "spread": float(np.median([(r["p90_s"] - r["p10_s"]) / r["median_s"] for r in sel]))}
        if out:
            table[op] = out
    return table


def format_table(table: dict[str, dict]) -> str:
    lines = [f"{'operation':<14} {'held n':>6} {'held MAPE':>9} {'worst':>8}   {'fit n':>5} {'fit MAPE':>8}"
             f" {'spread':>7}  worst held point",
             "-" * 92]
    for op, d in table.items():
        h, f = d.get("held"), d.get("fit")
        held = f"{h['n']:>6} {100 * h['mape']:>8.2f}% {100 * h['worst']:>+7.1f}%" if h else f"{'-':>6} {'-':>9} {'-':>8}"
        fit = f"{f['n']:>5} {100 * f['mape']:>7.2f}%" if f else f"{'-':>5} {'-':>8}"
        spread = f"{100 * (h or f)['spread']:>6.1f}%"
        wp = ""
        if h:
            wp = " ".join(f"{k}={v}" for k, v in h["worst_point"].items() if v)
        lines.append(f"{op:<14} {held}   {fit} {spread}  {wp}")
    lines.append("MAPE: mean |predicted/measured - 1|; worst: the largest such error, signed; spread: median (p90-p10)/median"
                 " of the measurements themselves (the noise floor).")
    return "\n".join(lines)


TIMINGS = ("cpu", "wall")


def wall_rows(rows: list[dict]) -> list[dict]:
    """The rows with their median wall time as the time to fit (p10/p90 scaled alike).

    On a CPU the profiler times thread CPU time (steady under contention) and keeps the wall median
    beside it; ``drex run`` times its steps by the wall clock, so on a shared machine a CPU-time fit
    under-predicts every real step by the share other processes took (the validate step MAPE).
    """
    out = []
    for r in rows:
        ratio = r["wall_median_s"] / r["median_s"] if r.get("wall_median_s") else 1.0
        out.append(r | {"median_s": r["median_s"] * ratio, "p10_s": r["p10_s"] * ratio, "p90_s": r["p90_s"] * ratio})
    return out


def fit_profile(path: str | Path, timing: str = "cpu") -> tuple[dict, str]:
    """Fit a measured profile directory (``drex profile``); writes fit.json and fit_report.txt beside it.
    ``timing``: fit the samples' own clock (``cpu``: meta.json's ``clock``: wall time in profiles made since
    the profiler times CPUs in wall time, thread time in older ones, events on CUDA) or the median wall time
    kept beside them (``wall``: what ``drex run`` measures on a shared CPU).
    Returns (fit dict, report text). Imported profiles are fitted by ``vidur_fit.fit_imported``."""
    if timing not in TIMINGS:
        raise ValueError(f"timing must be one of {TIMINGS}, got {timing!r}")
    path = Path(path)
    t0 = time.perf_counter()
    prof = pf.read_profile(path)
    if timing == "wall":
        prof.rows = wall_rows(prof.rows)
    laws = fit_rows(prof.rows)
    model = FittedCostModel(laws, name=f"profile:{path}")
    table = error_table(model, prof.rows)
    fit_s = time.perf_counter() - t0
    meta = prof.meta
    fit = {
        "schema_version": pf.SCHEMA_VERSION,
        "fit_version": FIT_VERSION,
        "drex_version": __version__,
        "measurements_sha256": pf.file_sha256(path / pf.MEASUREMENTS),
        "device": meta["device"],
        "dtype": meta["dtype"],
        "model": meta["model"],
        "fit_seconds": round(fit_s, 3),
        "timing": timing,
        "laws": {fam: law.to_json() for fam, law in laws.items()},
        "errors": table,
    }
    pf.write_json(path / pf.FIT, fit)
    dev = meta["device"]
    header = (f"drex cost-model fit of {recorded_path(path)}\n"
              f"device {dev.get('name')} ({dev.get('requested')}), dtype {meta['dtype']}, model {meta['model']['name']}, "
              f"{len(prof.rows)} points ({sum(r['split'] == 'held' for r in prof.rows)} held out), "
              f"profiled {meta.get('date_started', '?')}; fitted to "
              f"{'the median wall times' if timing == 'wall' else 'its own clock, ' + meta.get('clock', 'thread_cpu_time')}\n")
    laws_txt = "\n".join(f"  {fam:<8} {law_text(law)}" for fam, law in laws.items())
    report = f"{header}\n{format_table(table)}\n\nfitted laws (seconds):\n{laws_txt}\n"
    (path / pf.FIT_REPORT).write_text(report)
    return fit, report


def law_text(law: Law) -> str:
    parts = [f"{law.c0:.3e}"]
    if law.x:
        u = " + ".join(f"{k:.3e}*{n}" for k, n in zip(law.k, law.x))
        parts.append(f"smax_p{law.p:.1f}({law.m:.3e}, {u})")
    parts += [f"{a:.3e}*{n}" for a, n in zip(law.a, law.z)]
    parts += [f"{b:.3e}*spill({n}; knee {knee:.4g}, q {q:.1f})" for n, b, knee, q in law.spill]
    return " + ".join(parts)
