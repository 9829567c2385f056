"""Shared by the cost-model tests: a known cost model ("truth") and a profile measured from it."""

from __future__ import annotations

import numpy as np

from drex.costmodel import profile as pf
from drex.costmodel.fitted import FittedCostModel, Law
from drex.models import MODELS
from drex.real.profiler import run_grid

TRUE = {
    "layer": Law(("tokens",), ("decode_context", "prefill_attn"), 20e-6, 150e-6, 6.0, (0.75e-6,), (2e-10, 4e-12)),
    # Past ~60k cached tokens every further one costs three times as much (a CPU's last-level cache).
    "attn": Law(("tokens",), ("decode_context", "prefill_attn"), 10e-6, 30e-6, 3.0, (0.1e-6,), (2e-10, 4e-12),
                (("decode_context", 4e-10, 6e4, 4.0),)),
    "mlp": Law(("tokens",), (), 8e-6, 100e-6, 8.0, (0.6e-6,), ()),
    "head": Law(("rows",), (), 12e-6, 60e-6, 4.0, (0.4e-6,), ()),
    "buffer": Law(("rows",), (), 5e-6, 0.0, 1.0, (0.02e-6,), ()),
    "step": Law(("rows",), (), 300e-6, 0.0, 1.0, (0.5e-6,), ()),
    "kv_copy": Law(("rows_x_layers",), ("layers",), 6e-6, 0.0, 1.0, (0.01e-6,), (0.3e-6,)),
    "exit_eval": Law(("rows",), (), 400e-6, 0.0, 1.0, (2e-6,), ()),
    "regroup": Law(("rows",), (), 150e-6, 0.0, 1.0, (1e-6,), ()),
}


def synthetic_profile(path, noise: float = 0.0, seed: int = 0, quick: bool = True):
    truth = FittedCostModel(TRUE, "truth")
    rng = np.random.default_rng(seed)
    shape = MODELS["tiny"]
    points = pf.build_grid(shape, quick=quick)

    def measure(p: pf.Point):
        t = float(truth.predict_op(p.op, p.num_rows, p.context, p.chunk, p.num_layers))
        t *= float(np.exp(noise * rng.standard_normal()))
        return [0.97 * t, t, 1.03 * t], [t, t, t]

    meta = {"schema_version": pf.SCHEMA_VERSION, "device": {"requested": "cpu", "name": "synthetic"},
            "dtype": "fp32", "model": pf.shape_dict(shape), "grid": pf.grid_summary(points)}
    run_grid(path, meta, points, measure, progress=False)
    return truth
