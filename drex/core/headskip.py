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
threshold at e in the steps run so far, read at the start of each epoch
(steps 64, 128, 256, then every ``EPOCH``; to 0.01). The value is priced
as if the step had no prefill tokens (they run the deep layers anyway, so
they only shrink what a split saves): optimistic, so no head is skipped
whose split could have paid. drex skips e when that value does not exceed
the head's own price. It evaluates every exit before
``MIN_SEEN`` rows have been seen there, in the first step of every epoch (a
probe, so that p keeps up with the workload) and in a step carrying an
inline drain; an epoch whose p makes evaluating pay at every probed batch
size and context (``DORMANT_BUCKETS``) is dormant: no plan of it does the
per-plan work. Only the ``costmodel`` decision skips. Decisions are cached
per (rows, context per row in ``CONTEXT_BUCKET``-token buckets, p), each
priced at its bucket's middle; outcomes k with a probability under 1e-12
are left out of the sum.
"""

from __future__ import annotations

import numpy as np

from drex.config import EEConfig, SchedulerConfig
from drex.core import profitability as prof
from drex.core.step import StepPlan
from drex.costmodel.base import CostModel

MIN_SEEN = 64
EPOCH = 512
FIRST_EPOCHS = (64, 128, 256)  # epochs start at these steps, then at every multiple of EPOCH
CONTEXT_BUCKET = 32
DORMANT_BUCKETS = (0, 8, 32, 64)  # contexts of 16, 272, 1,040 and 2,064 tokens a row


def epoch_of(step_id: int) -> int:
    if step_id >= EPOCH:
        return len(FIRST_EPOCHS) + step_id // EPOCH
    return sum(step_id >= b for b in FIRST_EPOCHS)


def steps_to_next_epoch(step_id: int) -> int:
    return next((b for b in FIRST_EPOCHS if b > step_id), (step_id // EPOCH + 1) * EPOCH) - step_id


def starts_epoch(step_id: int) -> bool:
    return step_id in FIRST_EPOCHS or step_id % EPOCH == 0


def binomial_pmf(n: int, p: float) -> np.ndarray:
    """P(k) for k = 0..n, computed in logs (n up to thousands, p near 0 or 1)."""
    k = np.arange(n + 1, dtype=float)
    if p <= 0.0 or p >= 1.0:
        return (k == (n if p >= 1.0 else 0)).astype(float)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log((n - k[:-1]) / (k[:-1] + 1)))])
    return np.exp(log_choose + k * np.log(p) + (n - k) * np.log1p(-p))


def evaluation_value_s(cost: CostModel, exit_layer: int, num_layers: int, rows: int, context_per_row: float,
                       p: float, flush_rows: int) -> float:
    """Expected device seconds an exit head saves a decode step of ``rows`` rows (module docstring)."""
    pmf = binomial_pmf(rows, p)[1:]
    likely = np.flatnonzero(pmf >= 1e-12)
    if not len(likely):
        return 0.0
    k = np.arange(likely[0] + 1, likely[-1] + 2, dtype=float)
    pmf = pmf[likely[0]:likely[-1] + 1]
    n = np.full_like(k, float(rows))
    staying = n - k
    context, stay_context = n * context_per_row, staying * context_per_row
    go = prof.continue_saving_s(cost, exit_layer, num_layers, n, k, context, stay_context)
    park = prof.split_saving_s(cost, exit_layer, num_layers, n, k, context, stay_context,
                               np.maximum(float(flush_rows), staying))
    best = np.maximum(np.maximum(go, park), 0.0)
    return float((pmf * best).sum())


class HeadSkip:
    """Counts, per exit point, the rows that cleared the threshold in the steps that ran, and names the exits
    a plan skips.

    Macro-steps stay exact: every input of the decision is fixed for a planned run of steps. p is read
    from the counts once per epoch (at its first plan; runs never cross an epoch's start), the
    step that starts an epoch evaluates every exit (a probe: p keeps up with the workload) and runs alone,
    and a run is cut where its rows' growing context would change the decision.
    """

    def __init__(self, ee: EEConfig, cfg: SchedulerConfig, cost: CostModel, num_layers: int,
                 exits: tuple[int, ...], enabled: bool) -> None:
        self.cost, self.num_layers, self.exits, self.enabled = cost, num_layers, exits, enabled
        # Learned exits defer their tokens to the top LM-head pass: the exit point costs its evaluation
        # (adapter, norm, estimator, decision: ``exit_eval_s``, zero where the profile did not measure it).
        self.deferred = ee.metric == "learned"
        self.flush_rows = min(cfg.flush_rows, cfg.max_batch_size)
        self.seen = np.zeros(len(exits))
        self.wanted = np.zeros(len(exits))
        self.pending: list[tuple[int, np.ndarray, np.ndarray]] = []  # this run's counts, per step
        self.epoch = -1
        self.p: list[float | None] = [None] * len(exits)  # the rate of this epoch, None: not known yet
        self.dormant = False
        self.probe_rows = sorted({min(2 ** j, cfg.max_batch_size) for j in range(12)})
        self._skips: dict[tuple, tuple[int, ...]] = {}
        self._worth: dict[tuple, bool] = {}

    def observe(self, exit_index: int, wants: np.ndarray, active: np.ndarray) -> None:
        """Rows that cleared the threshold at an exit, per planned step ([k, n]); counted once they ran."""
        if self.enabled and len(active) == 1:  # one step: its counts as numbers
            self.pending.append((exit_index, [int(np.count_nonzero(wants & active))], [int(np.count_nonzero(active))]))
        elif self.enabled:
            self.pending.append((exit_index, (wants & active).sum(axis=1), active.sum(axis=1)))

    def commit(self, num_steps: int) -> None:
        """The first num_steps of the planned run ran: their counts are in."""
        for i, wanted, seen in self.pending:
            if type(wanted) is list:
                self.wanted[i] += wanted[0]
                self.seen[i] += seen[0]
            else:
                self.wanted[i] += wanted[:num_steps].sum()
                self.seen[i] += seen[:num_steps].sum()
        self.pending = []

    def start(self, step_id: int) -> None:
        """A plan is made at step_id: a new epoch reads p from the counts so far."""
        epoch = epoch_of(step_id)
        if self.enabled and epoch != self.epoch:
            self.epoch = epoch
            self.p = [round(float(w / s), 2) if s >= MIN_SEEN else None for w, s in zip(self.wanted, self.seen)]
            # Dormant: at this epoch's p, evaluating pays for every probed batch size and context, so no plan
            # of the epoch does the per-plan work (a speed rule; decided from p alone, so macro-steps stay exact).
            self.dormant = all(p is None or all(self._worth_it(i, n, b, p) for n in self.probe_rows
                                                for b in DORMANT_BUCKETS) for i, p in enumerate(self.p))

    def run_cap(self, step_id: int, context: list[int], k: int) -> int:
        """How many of k decode steps from step_id (rows of these contexts) can share one skip decision."""
        if not self.enabled or k <= 1:
            return k
        if starts_epoch(step_id):
            return 1
        k = min(k, steps_to_next_epoch(step_id))
        if self.dormant:
            return k
        n, total = len(context), sum(context)
        bucket = int(total / n // CONTEXT_BUCKET)
        first = self._decide(n, bucket)
        j = 0
        while True:  # the steps where the context bucket changes: the per-row context grows by 1 a step
            j = max(j + 1, int(np.ceil(((bucket + 1) * CONTEXT_BUCKET * n - total) / n)))
            if j >= k:
                return k
            bucket = int((total + n * j) / n // CONTEXT_BUCKET)
            if self._decide(n, bucket) != first:
                return j

    def skips(self, plan: StepPlan) -> list[int]:
        """Exit indices the decode rows of this plan do not evaluate."""
        n = len(plan.decode_ids)
        if not (self.enabled and n) or self.dormant or plan.drain_ids or starts_epoch(plan.step_id):
            return []
        return list(self._decide(n, int(sum(plan.decode_context) / n // CONTEXT_BUCKET)))

    def _decide(self, n: int, bucket: int) -> tuple[int, ...]:
        """The exits skipped for n rows in this context bucket at this epoch's rates."""
        key = (n, bucket, *self.p)
        if key not in self._skips:
            self._skips[key] = tuple(i for i, p in enumerate(self.p) if p is not None
                                     and not self._worth_it(i, n, bucket, p))
        return self._skips[key]

    def _worth_it(self, i: int, n: int, bucket: int, p: float) -> bool:
        """Is exit i worth evaluating for n rows in this context bucket at rate p (cached)?"""
        key = (i, n, bucket, p)
        if key not in self._worth:
            self._worth[key] = self._value_exceeds_price(i, n, bucket, p)
        return self._worth[key]

    def _value_exceeds_price(self, i: int, n: int, bucket: int, p: float) -> bool:
        value = evaluation_value_s(self.cost, self.exits[i], self.num_layers, n, (bucket + 0.5) * CONTEXT_BUCKET,
                                   p, self.flush_rows)
        price = float(self.cost.exit_eval_s(float(n)) if self.deferred else self.cost.head_s(float(n)))
        return value > price
