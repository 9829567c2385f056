"""What deciding at one exit point costs, against a full-depth decode step, on smollm2-ee (CPU, one thread).

    python benchmarks/exit_cost.py            # ~1 minute; needs `drex model fetch smollm2`

At batch 16 and a 192-token context it times (medians of interleaved repeats):
- ``step``: one full-depth decode step (metadata, 30 layers, final norm + LM head, argmax);
- ``learned``: the learned decision at one exit (adapter, exit norm, estimator) for all 16 rows;
- ``learned+head``: the same plus the LM head for the rows that leave (a quarter, half, all of them);
- ``logits``: the old decision, the exit's full LM head + softmax margin over all 16 rows.
Writes benchmarks/results/exit_cost_cpu_smollm2-ee.json (the issue's target: learned <= 3% of a step).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drex.lab.quality import load_model  # noqa: E402
from drex.real.kvcache import PagedKVCache  # noqa: E402
from drex.real.model import confidence  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@torch.inference_mode()
def main(batch: int = 16, context: int = 192, repeats: int = 15) -> dict:
    torch.set_num_threads(1)
    model, _, _ = load_model("smollm2-ee")
    e = model.exit_layers[-1]
    L, bs = model.num_layers, 16
    cache = PagedKVCache(model.shape, batch * (-(-(context + repeats + 4) // bs)), bs, batch)
    for r in range(batch):
        cache.reserve(r, context + repeats + 4)
    ids = torch.zeros(batch, dtype=torch.long)
    h_exit = torch.randn(batch, model.shape.hidden_size)

    def step(s):
        meta = cache.meta(range(batch), [context + s] * batch, [1] * batch)
        h = model.run_layers(model.embed(ids), meta, cache, 0, L)
        return model.exit_logits(h, L).argmax(-1)

    def learned(leave):
        x = model.exit_hidden(h_exit, e)
        conf = model.estimate(x, e).numpy()
        if leave:
            model.head_logits(x[:leave], e).argmax(-1).tolist()
        return conf

    def logits():
        lg = model.exit_logits(h_exit, e)
        return confidence(lg, "margin").numpy(), lg.argmax(-1).tolist()

    cases = {"learned": lambda s: learned(0), "learned+head_quarter": lambda s: learned(batch // 4),
             "learned+head_half": lambda s: learned(batch // 2), "learned+head_all": lambda s: learned(batch),
             "logits": lambda s: logits(), "step": step}
    times = {k: [] for k in cases}
    for s in range(repeats + 2):
        for name, fn in cases.items():
            t = time.perf_counter()
            fn(s)
            if s >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    res = {"model": "smollm2-ee", "exit_layer": e, "batch": batch, "context": context, "repeats": repeats,
           "median_ms": {k: round(v * 1e3, 4) for k, v in med.items()},
           "fraction_of_step": {k: round(v / med["step"], 5) for k, v in med.items() if k != "step"},
           "target": "learned (all rows) <= 0.03 of a full-depth decode step",
           "machine": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": 1}
    res["target_met"] = res["fraction_of_step"]["learned"] <= 0.03
    return res


if __name__ == "__main__":
    out = main()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "exit_cost_cpu_smollm2-ee.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
