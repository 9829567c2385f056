"""What ``drex profile`` times through the real executor itself (``bench.py``'s ``step`` and ``exit_eval``):
real decode steps of n rows under the shared scheduler, on the model as the executor sees it minus its layers
(identity) and its LM-head matmul (precomputed logits), with or without learned exit heads."""

from __future__ import annotations

import numpy as np
import torch

from drex.models import ModelShape

BLOCK_SIZE = 16
# ``exit_eval``: learned exit heads of smollm2-ee's sizes, evaluated at this many exit points a step.
EXIT_POINTS = 3
EXIT_ADAPTER_RANK = 256
EXIT_ESTIMATOR_WIDTH = 128
BENCH_POLICY = "drex"  # the decision priced: drex's (others decide faster)


def executor_steps(bench, n: int, exits: bool):
    """A callable running one real decode step of n rows (identity layers) and returning its duration by the
    executor's clock; ``exits``: ``EXIT_POINTS`` learned exits evaluated (policy ``BENCH_POLICY``, nobody exits)."""
    import time

    from drex.config import EEConfig, SchedulerConfig
    from drex.core.request import Request
    from drex.core.scheduler import Scheduler
    from drex.costmodel.roofline import RooflineCostModel
    from drex.models import with_layers
    from drex.real.batch import synthetic_prompt
    from drex.real.executor import RealExecutor

    prompt, max_len = 8, 160
    shape = with_layers(bench.shape, EXIT_POINTS + 1)  # layers are identity here: few keep the KV cache small
    ee = EEConfig(exits=tuple(range(1, EXIT_POINTS + 1)), threshold=0.99, metric="learned") if exits else EEConfig()
    cfg = SchedulerConfig(policy=BENCH_POLICY if exits else "off", max_batch_size=n, chunk_size=max(512, n * prompt),
                          block_size=BLOCK_SIZE, max_model_len=max_len, max_lookahead_steps=1)
    num_blocks = n * -(-max_len // BLOCK_SIZE) + 1
    sched = Scheduler(shape, ee, cfg, RooflineCostModel(shape, "cpu", 4), num_blocks)
    logits = torch.randn(n, bench.shape.vocab_size, generator=bench.gen).to(bench.device)
    clock = time.perf_counter  # wall time, as a real run's executor times a step (it syncs CUDA at step end)
    prompts = {i: synthetic_prompt(0, i, prompt, bench.shape.vocab_size) for i in range(n)}
    model = NoLayers(bench.model, shape, logits, ee.exits, bench.gen)
    ex = RealExecutor(sched, model, num_blocks, BLOCK_SIZE, n, max_len, prompts,
                      {i: max_len - prompt - 1 for i in range(n)}, clock=clock)
    for i in range(n):
        sched.add_request(Request(i, 0.0, prompt, max_len - prompt - 1), 0.0)
    now = [0.0]

    def step() -> float:
        now[0] += 1e-3
        plan = sched.schedule(now[0])
        res = ex.execute(plan, now[0])
        sched.complete(plan, res, now[0])
        return float(np.mean(res.durations_s))

    # Admit and prefill everyone (the scheduler learns of each step by ``complete``; without it every plan
    # was the same prefill): from here on every step decodes n rows, for the max_len - prompt - 1 steps a
    # measurement never outlasts (a unit takes at most ``Budget.max_reps`` + warm-up samples).
    for _ in range(64):
        plan = sched.schedule(now[0])
        if plan.kind == "decode" and len(plan.decode_ids) == n:
            break
        sched.complete(plan, ex.execute(plan, now[0]), now[0])
    return step


class RegroupHost:
    """What ``RealExecutor._regroup`` reads of its executor when no row is drained."""

    def __init__(self, cache, meter):
        self.cache, self.meter = cache, meter


class NoLayers:
    """The model as the executor sees it, minus its layers and its LM-head matmul; with ``exits``, learned exit
    heads (adapter, exit norm, estimator of smollm2-ee's sizes) whose estimators say no row may exit."""

    def __init__(self, model, shape: ModelShape, logits: torch.Tensor, exits=(), gen=None):
        from drex.real.model import ExitHead

        self._model, self.shape, self._logits = model, shape, logits
        self.num_layers, self.dtype, self.device = shape.num_layers, model.dtype, model.device
        self._heads = {}
        for e in exits:
            head = ExitHead(shape, norm=True, lm_head=False, adapter_rank=EXIT_ADAPTER_RANK,
                            estimator_width=EXIT_ESTIMATOR_WIDTH).to(device=model.device, dtype=model.dtype)
            with torch.no_grad():
                for w in head.parameters():
                    w.copy_(torch.randn(w.shape, generator=gen) * 0.02)
                head.estimator.fc2.bias.fill_(-30.0)  # confidence ~0: every row goes on
            self._heads[e] = head

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self._model.embed(ids)

    def run_layers(self, h, meta, cache, start: int, end: int) -> torch.Tensor:
        meta.rope(self._model.layers[0].self_attn.inv_freq, h.dtype)  # once per AttnMeta, shared by all layers
        return h

    def exit_logits(self, h: torch.Tensor, exit_layer: int) -> torch.Tensor:
        return self._logits[: h.shape[0]]

    def exit_hidden(self, h: torch.Tensor, exit_layer: int) -> torch.Tensor:
        head = self._heads.get(exit_layer)
        return h if head is None else head.norm(head.adapter(h))

    def estimate(self, x: torch.Tensor, exit_layer: int) -> torch.Tensor:
        return self._heads[exit_layer].estimator(x)

    def has_estimator(self, exit_layer: int) -> bool:
        return exit_layer in self._heads

    def shares_top_head(self, exit_layer: int) -> bool:
        return True

    def head_logits(self, x: torch.Tensor, exit_layer: int) -> torch.Tensor:
        return self._logits[: x.shape[0]]
