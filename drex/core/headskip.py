"""drex's cheapest action: not evaluating an exit point where no split can pay.

An exit head costs device time on every row that reaches it (the LM head, or
the estimator and adapter of learned exits). Its only use to drex is the
split it may enable: where every outcome of the head would end in HOLD, the
head is pure cost, and drex plans the step without it (``StepPlan.skip_exits``).

The value of evaluating exit e for a decode step of n rows is the expected
saving of the best action once k of them want to exit, k ~ Binomial(n, p):
for each k, the larger of split-and-continue and park (priced by
``profitability``, parking optimistically: into a full flush, missing one
step) or, at k = n, the whole batch leaving; negative savings count as 0
(the decision would hold). p is the fraction of rows that cleared the
threshold at e so far, counted by the decider; the plan's prefill tokens
run the deep layers anyway and enter the savings as they do in every split
decision. drex skips e when that value does not exceed the head's own
price; before ``MIN_SEEN`` rows have been seen at e, and once every
``PROBE_EVERY`` skipped plans (so that p keeps up with the workload), it
evaluates. Only the ``costmodel`` decision skips, and never at an exit
carrying an inline drain. The answer is cached per (rows, context per row
in ``CONTEXT_BUCKET``-token buckets, p to 0.01, prefill tokens in
``CONTEXT_BUCKET``-token buckets, prefill attention work in tenths of its
natural log), each priced at its bucket's middle.
"""

from __future__ import annotations

import numpy as np

from drex.config import EEConfig, SchedulerConfig
from drex.core import profitability as prof
from drex.core.step import StepPlan
from drex.costmodel.base import CostModel
from drex.costmodel.price import prefill_work

MIN_SEEN = 64
PROBE_EVERY = 32
CONTEXT_BUCKET = 32


def binomial_pmf(n: int, p: float) -> np.ndarray:
    """P(k) for k = 0..n, computed in logs (n up to thousands, p near 0 or 1)."""
    k = np.arange(n + 1, dtype=float)
    if p <= 0.0 or p >= 1.0:
        return (k == (n if p >= 1.0 else 0)).astype(float)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log((n - k[:-1]) / (k[:-1] + 1)))])
    return np.exp(log_choose + k * np.log(p) + (n - k) * np.log1p(-p))


def evaluation_value_s(cost: CostModel, exit_layer: int, num_layers: int, rows: int, context_per_row: float,
                       p: float, flush_rows: int, base_tokens: int = 0, base_attn: float = 0.0) -> float:
    """Expected device seconds an exit head saves a decode step of ``rows`` rows (module docstring)."""
    k = np.arange(1, rows + 1, dtype=float)
    n = np.full_like(k, float(rows))
    staying = n - k
    context, stay_context = n * context_per_row, staying * context_per_row
    go = prof.continue_saving_s(cost, exit_layer, num_layers, n, k, context, stay_context, base_tokens, base_attn)
    park = prof.split_saving_s(cost, exit_layer, num_layers, n, k, context, stay_context,
                               np.maximum(float(flush_rows), staying), base_tokens, base_attn)
    best = np.maximum(np.maximum(go, park), 0.0)
    return float((binomial_pmf(rows, p)[1:] * best).sum())


class HeadSkip:
    """Counts, per exit point, the rows that cleared the threshold, and names the exits a plan skips."""

    def __init__(self, ee: EEConfig, cfg: SchedulerConfig, cost: CostModel, num_layers: int,
                 exits: tuple[int, ...], enabled: bool) -> None:
        self.cost, self.num_layers, self.exits, self.enabled = cost, num_layers, exits, enabled
        # Learned exits defer their tokens to the top LM-head pass: the exit point itself is priced free.
        self.deferred = ee.metric == "learned"
        self.flush_rows = min(cfg.flush_rows, cfg.max_batch_size)
        self.seen = np.zeros(len(exits))
        self.wanted = np.zeros(len(exits))
        self.skipped_in_row = np.zeros(len(exits), dtype=np.int64)
        self._worth: dict[tuple, bool] = {}

    def observe(self, exit_index: int, wants: np.ndarray, active: np.ndarray) -> None:
        self.seen[exit_index] += active.sum()
        self.wanted[exit_index] += (wants & active).sum()

    def skips(self, plan: StepPlan) -> tuple[int, ...]:
        """Exit indices the decode rows of this plan do not evaluate."""
        n = len(plan.decode_ids)
        if not (self.enabled and n):
            return ()
        ctx_row = sum(plan.decode_context) / n
        base, base_attn, _ = prefill_work(plan.prefill)
        work = (int(base // CONTEXT_BUCKET), int(round(10 * np.log1p(base_attn))))
        out = []
        for i, e in enumerate(self.exits):
            if self.seen[i] < MIN_SEEN or (plan.drain_ids and plan.drain_layer == e):
                continue
            if self.skipped_in_row[i] >= PROBE_EVERY or self._worth_it(i, n, ctx_row, work):
                self.skipped_in_row[i] = 0
                continue
            self.skipped_in_row[i] += 1
            out.append(i)
        return tuple(out)

    def _worth_it(self, i: int, n: int, ctx_row: float, work: tuple[int, int]) -> bool:
        p = round(float(self.wanted[i] / self.seen[i]), 2)
        bucket = int(ctx_row // CONTEXT_BUCKET)
        key = (i, n, bucket, p, *work)
        if key not in self._worth:
            base = (work[0] + 0.5) * CONTEXT_BUCKET if work[0] or work[1] else 0
            value = evaluation_value_s(self.cost, self.exits[i], self.num_layers, n, (bucket + 0.5) * CONTEXT_BUCKET,
                                       p, self.flush_rows, base, float(np.expm1(work[1] / 10)))
            price = 0.0 if self.deferred else float(self.cost.head_s(float(n)))
            self._worth[key] = value > price
        return self._worth[key]
