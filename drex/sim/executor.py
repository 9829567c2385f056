"""The simulated executor: carries out a StepPlan with durations from the cost model.

Exit decisions come from the scheduler (``decide_at_exit``) on confidences
drawn from a confidence source, exactly where the real executor would compute
them with an exit head. A plan of k identical decode steps is priced in one
vectorised pass and cut short at the first step that ends at or after
``until`` (the next arrival), so the result equals k single steps.
"""

from __future__ import annotations

import numpy as np

from drex.core.step import StepOutcome, StepPlan, StepResult
from drex.costmodel.base import CostModel
from drex.costmodel.price import plain_run_s, prefill_work, step_s, step_s_float, step_s_one


# The first steps of a rebatching policy's planned run decided alone, before the whole run (see execute).
SPECULATE = (1, 8)


class SimExecutor:
    """``decider`` answers ``decide_at_exit`` (the scheduler; or, in drex validate, a replay of a real run's
    decisions) and names the exit points and the policy."""

    def __init__(self, decider, cost: CostModel, source) -> None:
        self.decider = decider
        self.cost = cost
        self.source = source
        self._forget = getattr(source, "forget", None)  # a source that keeps draws per request lets them go
        self._decisions_mark = getattr(decider, "decisions_mark", None)  # (a replay of a real run's has none)
        # Per speculation size: how often deciding it alone ended the run (a running average), and how often it
        # was skipped since
        self._ends_run = {size: 1.0 for size in SPECULATE}
        self._skipped = {size: 0 for size in SPECULATE}
        self.num_layers = decider.num_layers
        self.exits = decider.exits
        self.keeps_batch = decider.policy.keeps_batch
        self.ideal = decider.policy.ideal
        # Learned exits (the real executor's): a small estimator decides at each exit (``exit_eval``) and the
        # exited rows' tokens join the top's one LM-head pass (latency-only: an LM-head pass over the rows that
        # exit, at their exit), so the exit points charge no head pass over every row.
        ee = getattr(decider, "ee", None)
        self.learned = ee is not None and ee.metric == "learned"
        self.deferred_heads = self.learned and not self.keeps_batch
        # KV fill by recompute (the real executor's RecomputeFill): a token that exited at layer e has its layers
        # [e, L) run at its request's next step, before that step's layers, grouped by e; set by drex validate
        # from the run it replays. Off: state copy, priced as one scatter a step.
        self.recompute_fill = False
        self._pending: dict[int, int] = {}  # request id -> exit layer of its last token, not yet recomputed
        self._segment_cache: dict[int, tuple] = {}
        # A one-step plan with exit points priced in floats (step_s_float), where that gives step_s's value
        # (numpy sums fewer than 8 segments or heads one after another, as step_s_float does)
        self.float_steps = cost.fast_one and not (self.learned or cost.prices_regroup) and len(self.exits) <= 5

    def execute(self, plan: StepPlan, now: float, until: float = np.inf) -> StepResult:
        if plan.released_ids and self._forget is not None:
            self._forget(plan.released_ids)
        if plan.kind == "flush":
            return self._flush(plan, now)
        cost, L = self.cost, self.num_layers
        k, n = plan.num_steps, len(plan.decode_ids)
        pre_tokens, pre_attn, pre_last = prefill_work(plan.prefill)
        if not (n and self.exits):
            return self._plain(plan, now, until, pre_tokens, pre_attn, pre_last)
        ids = np.asarray(plan.decode_ids, dtype=np.int64)
        out, head_rows = self._speculate(plan, ids, k, now) if k > 1 else (None, None)
        if out is None:
            out, head_rows = self._exit_points(plan, ids, k, now)
        k = out.num_steps
        if self.ideal:
            return self._ideal(plan, out, now, until, pre_tokens, pre_attn, pre_last)
        if k == 1 and self.float_steps and not self.recompute_fill:
            dur = np.array([self._step_float(plan, out, pre_tokens, pre_attn, pre_last, head_rows)])
            result = StepResult(dur, out)
            if self.keeps_batch:
                result.token_offset_s = dur[:, None] * np.where(out.exited, out.reach / L, 1.0)
            return result
        ctx = np.asarray(plan.decode_context, dtype=float)[None, :] + np.arange(k)[:, None]
        depth = np.where(out.computing, L, out.reach)
        drain_rows = len(plan.drain_ids) if out.drain_layer >= 0 else 0
        lo, hi, seg = self._segments(out.drain_layer if drain_rows else -1)
        # Rows still going through each segment [lo, hi) of layers, per step: one cost-model call for all.
        going = depth[None, :, :] >= hi[:, None, None]
        rows = going.sum(axis=2) + float(pre_tokens)
        if cost.decode_attends_batch:  # the rows going on are attended in place among all the step's rows
            c = np.where(going.any(axis=2), ctx.sum(axis=1)[None, :], 0.0)
        else:
            c = (going * ctx[None]).sum(axis=2)
        if drain_rows:
            joined = lo >= out.drain_layer
            rows[joined, -1] += drain_rows
            c[joined, -1] += float(sum(plan.drain_context))
        top_rows = (depth >= L).sum(axis=1) + pre_last
        eval_rows = [h[:k] for h in head_rows] if self.learned else None
        if self.deferred_heads:
            head_rows = [top_rows + out.exited.sum(axis=1)]
        elif self.learned:  # latency-only: the exiting rows' head at their exit, the top over the others
            head_rows = [(out.exited & (out.reach == e)).sum(axis=1) for e in self.exits[:len(head_rows)]]
            head_rows += [(~out.exited).sum(axis=1) + pre_last]
        else:
            head_rows = [h[:k] for h in head_rows] + [top_rows]
        kv_rows, kv_layers = (None, None) if self.recompute_fill else self._kv_fill(out)
        regroups = self._regroups(out, depth, len(plan.prefill), drain_rows) if cost.prices_regroup else None
        dur = step_s(cost, seg, rows, c, pre_attn, head_rows, n + len(plan.prefill),
                     out.buffered.sum(axis=1), kv_rows, kv_layers, eval_rows, regroups)
        if self.recompute_fill:
            dur = dur + self._recompute_s(plan.decode_ids, out, ctx)
        if drain_rows:  # the drained rows joined the last step only
            dur[-1] += (cost.step_overhead_s(n + len(plan.prefill) + drain_rows)
                        - cost.step_overhead_s(n + len(plan.prefill)) + cost.buffer_s(drain_rows))
        cut = _steps_before(dur, now, until)
        if cut < k:
            out.truncate(cut)
            dur = dur[:cut]
        if self.recompute_fill:
            self._left_pending(plan.decode_ids, out)
        result = StepResult(np.asarray(dur, dtype=float), out if n else None)
        if self.keeps_batch and n:
            frac = np.where(out.exited, out.reach / L, 1.0)
            result.token_offset_s = dur[:, None] * frac
        return result

    def _speculate(self, plan: StepPlan, ids: np.ndarray, k: int, now: float):
        """A rebatching policy's run often ends within its first steps (a park or a drain cuts it there): decide
        them alone first; a run that goes on is decided again, longer (a step's decisions do not depend on the
        steps after it; the ones made for the shorter run are retracted). A size that seldom ends the run here
        is tried only now and then. (outcome, head rows) of the run, or (None, None): decide it whole."""
        mark = self._decisions_mark() if self._decisions_mark is not None else None
        for first in SPECULATE if mark is not None else ():
            if first >= k:
                break
            if self._ends_run[first] < 1 / 3:  # (deciding these steps twice costs more than it saves)
                self._skipped[first] += 1
                if self._skipped[first] % 16:
                    continue
            out, head_rows = self._exit_points(plan, ids, first, now)
            ends = bool(out.buffered[-1].any() or out.drain_layer >= 0)  # cut at its last step: the run's outcome
            self._ends_run[first] = 0.9 * self._ends_run[first] + 0.1 * ends
            if ends:
                return out, head_rows
            self.decider.retract_decisions(mark)
        return None, None

    def _exit_points(self, plan: StepPlan, ids: np.ndarray, k: int, now: float) -> tuple[StepOutcome, list]:
        """The plan's first k steps through its exit points, each decided by the scheduler: the outcome, and the
        rows each exit head evaluated per step."""
        out = StepOutcome(k, len(ids), self.num_layers)
        tok = np.asarray(plan.decode_token_index, dtype=np.int64)[None, :]
        if k > 1:
            tok = tok + np.arange(k)[:, None]
        head_rows = []
        for i, e in enumerate(self.exits):
            active = out.active
            if not active.any():
                break
            if i in plan.skip_exits:  # not evaluated: every row goes on, the head costs nothing
                head_rows.append(np.zeros(out.num_steps))
                continue
            head_rows.append(active.sum(axis=1))
            conf = self.source.confidence(ids, tok[: out.num_steps], i)
            d = self.decider.decide_at_exit(plan, i, conf, active, now)
            out.record(e, d.actions, d.forced, d.stayed, d.drain, self.keeps_batch)
        return out, head_rows

    def _step_float(self, plan: StepPlan, out: StepOutcome, pre_tokens: int, pre_attn: float, pre_last: int,
                    head_rows: list) -> float:
        """A one-step plan's seconds, in floats: what ``execute``'s array pricing gives for it, bit for bit (the
        contexts are whole numbers, so their sums are exact in any order)."""
        L, cost, n = self.num_layers, self.cost, len(plan.decode_ids)
        computing, reach = out.computing[0].tolist(), out.reach[0].tolist()
        depth = [L if c else r for c, r in zip(computing, reach)]
        ctx = plan.decode_context
        drain_rows = len(plan.drain_ids) if out.drain_layer >= 0 else 0
        lo, hi, _ = self._segments(out.drain_layer if drain_rows else -1)
        layers, rows, context = [], [], []
        total = float(sum(ctx))
        for a, b in zip(lo.tolist(), hi.tolist()):
            going = [d >= b for d in depth]
            r = sum(going) + float(pre_tokens)
            if cost.decode_attends_batch:
                c = total if any(going) else 0.0
            else:
                c = float(sum([x for x, g in zip(ctx, going) if g]))
            if drain_rows and a >= out.drain_layer:
                r += drain_rows
                c += float(sum(plan.drain_context))
            layers.append(b - a)
            rows.append(r)
            context.append(c)
        heads = [h[0] for h in head_rows] + [sum([d >= L for d in depth]) + pre_last]
        kv_rows = kv_layers = None
        if not self.keeps_batch:  # (_kv_fill)
            skipped = [L - r for r, e, c in zip(reach, out.exited[0].tolist(), computing) if e and not c]
            kv_rows = len(skipped)
            kv_layers = sum(skipped) / max(kv_rows, 1)
        chunks = len(plan.prefill)
        t = step_s_float(cost, layers, rows, context, pre_attn, heads, n + chunks, int(out.buffered[0].sum()),
                         kv_rows, kv_layers)
        if drain_rows:
            t += (cost.step_overhead_s_one(n + chunks + drain_rows) - cost.step_overhead_s_one(n + chunks)
                  + cost.buffer_s_one(drain_rows))
        return t

    def _segments(self, drain_layer: int):
        """Layer segments [lo, hi) between the exit points (and the drain layer, when >= 0), and their lengths as
        a column: made once per drain layer (read only)."""
        segments = self._segment_cache.get(drain_layer)
        if segments is None:
            L = self.num_layers
            bounds = np.array(sorted({0, L, *self.exits, *([drain_layer] if drain_layer >= 0 else [])}))
            lo, hi = bounds[:-1], bounds[1:]
            segments = self._segment_cache[drain_layer] = (lo, hi, (hi - lo)[:, None])
        return segments

    def _plain(self, plan: StepPlan, now: float, until: float, pre_tokens: int, pre_attn: float,
               pre_last: int) -> StepResult:
        """No exit points evaluated: every row runs all layers."""
        cost, L = self.cost, self.num_layers
        k, n = plan.num_steps, len(plan.decode_ids)
        ctx0 = float(sum(plan.decode_context))
        if plan.later_prefill:
            return self._mixed_run(plan, now, until, ctx0)
        if k == 1:
            dur = np.array([step_s_one(cost, L, n + pre_tokens, ctx0, pre_attn, n + pre_last, n + len(plan.prefill))])
            return StepResult(dur, StepOutcome.plain(1, n, L) if n else None)
        if cost.fast_one:  # priced step by step, only as far as the next arrival (numpy's cumsum, in order)
            dur, total = [], 0.0
            for d in plain_run_s(cost, L, n + pre_tokens, ctx0, n, pre_attn, n + pre_last, n + len(plan.prefill)):
                dur.append(d)
                total += d
                if len(dur) == k or now + total >= until:
                    break
            dur = np.array(dur)
        else:
            ctx = ctx0 + n * np.arange(k)
            dur = step_s(cost, np.array([[L]]), np.array([[n + pre_tokens]]), np.atleast_1d(ctx)[None, :], pre_attn,
                         [n + pre_last], n + len(plan.prefill))
            dur = dur[:_steps_before(dur, now, until)]
        return StepResult(dur, StepOutcome.plain(len(dur), n, L) if n else None)

    def _mixed_run(self, plan: StepPlan, now: float, until: float, ctx0: float) -> StepResult:
        """A run of mixed steps (StepPlan.later_prefill), each priced as the single step it stands for, cut at
        the step in which the next arrival lands (times added step by step, as single steps add them)."""
        cost, L, n = self.cost, self.num_layers, len(plan.decode_ids)
        dur, end = [], now
        for j, chunk in enumerate([*plan.prefill, *plan.later_prefill]):
            tokens, attn, last = prefill_work([chunk])
            dur.append(step_s_one(cost, L, n + tokens, ctx0 + n * j, attn, n + last, n + 1))
            end += dur[-1]
            if end >= until:
                break
        return StepResult(np.array(dur), StepOutcome.plain(len(dur), n, L))

    def _ideal(self, plan: StepPlan, out: StepOutcome, now: float, until: float, pre_tokens: int,
               pre_attn: float, pre_last: int) -> StepResult:
        """The bound's price: per-token early exit with free, perfect rebatching.

        The step is priced at full depth (every row, prefill tokens included, as ``off`` would run it); a
        decode token that exited at layer e is then refunded, for each of the L - e layers it skipped, the
        decode rows' per-row share of that layer (what they add beside the step's prefill tokens, divided
        by their number; with no prefill, weights included): as if the deep layers ran in batches as full
        as the shallow ones, refilled for free. Exit heads, parking and KV fill cost nothing; nobody waits.
        """
        cost, L = self.cost, self.num_layers
        k, n = out.num_steps, len(plan.decode_ids)
        ctx = float(sum(plan.decode_context)) + n * np.arange(k)
        per_layer = cost.layer_s(np.full(k, float(n + pre_tokens)), ctx, pre_attn)
        decode_share = (per_layer - cost.layer_s(float(pre_tokens), 0.0, pre_attn)) / n
        full = L * per_layer + cost.head_s(np.full(k, float(n + pre_last))) + cost.step_overhead_s(
            n + len(plan.prefill))
        skipped = np.where(out.computing, 0, L - out.reach).sum(axis=1)
        dur = np.asarray(full - decode_share * skipped, dtype=float)
        cut = _steps_before(dur, now, until)
        if cut < k:
            out.truncate(cut)
            dur = dur[:cut]
        return StepResult(dur, out)

    def _regroups(self, out: StepOutcome, depth: np.ndarray, chunks: int, drain_rows: int):
        """Rows regrouped past each exit point per step [exits, k]: where rows stopped there (exited, unless they
        keep computing, or parked) or drained rows joined, the rows that go on (0: no regroup)."""
        if self.keeps_batch and not out.buffered.any() and out.drain_layer < 0:
            return None
        regroups = []
        for e in self.exits:
            going = (depth > e).sum(axis=1) + chunks
            stopped = (depth == e).any(axis=1)
            if drain_rows and e == out.drain_layer:
                stopped, going = np.ones_like(stopped), going + drain_rows
            regroups.append(np.where(stopped, going, 0))
        return regroups

    def _recompute_s(self, ids, out: StepOutcome, ctx: np.ndarray) -> np.ndarray:
        """Seconds of each step's KV recompute [k]: the skipped layers of the tokens its rows exited with one
        step before (at step 0: in the request's previous step), one pass per exit layer over those rows."""
        L, cost = self.num_layers, self.cost
        prev = np.array([self._pending.get(int(r), -1) for r in ids], dtype=np.int64)
        gone = out.exited & ~out.computing
        t = np.zeros(out.num_steps)
        for j in range(out.num_steps):
            for e in np.unique(prev[prev >= 0]):
                sel = prev == e
                read = ctx[j] - 1 if cost.decode_attends_batch else (ctx[j] - 1)[sel]  # K/V the pass attends
                t[j] += (L - e) * float(cost.layer_s(float(sel.sum()), float(read.sum())))
            prev = np.where(gone[j], out.reach[j], -1)
        return t

    def _left_pending(self, ids, out: StepOutcome) -> None:
        """After the plan's last step: which rows' tokens wait for their recompute (the others' do not)."""
        last = out.num_steps - 1
        gone = out.exited[last] & ~out.computing[last]
        for r, g, e in zip(ids, gone, out.reach[last]):
            if g:
                self._pending[int(r)] = int(e)
            else:
                self._pending.pop(int(r), None)

    def _kv_fill(self, out: StepOutcome):
        """State copy for tokens that exited: their K/V into every skipped layer, one scatter per step.

        (rows, mean skipped layers) per step, or (None, None) when no KV is filled (rows keep computing).
        """
        if self.keeps_batch:
            return None, None
        exited = out.exited & ~out.computing
        skipped = np.where(exited, self.num_layers - out.reach, 0)
        rows = exited.sum(axis=1)
        return rows, skipped.sum(axis=1) / np.maximum(rows, 1)

    def _flush(self, plan: StepPlan, now: float) -> StepResult:
        """Parked rows run on from their layer; at each deeper exit point they may exit (decided like a step's)."""
        cost, L, e0 = self.cost, self.num_layers, plan.flush_layer
        n = len(plan.flush_ids)
        ctx = np.asarray(plan.flush_context, dtype=float)
        deeper = [(i, e) for i, e in enumerate(self.exits) if e > e0]
        if not deeper:
            dur = step_s(cost, np.array([L - e0]), np.array([n]), np.array([float(ctx.sum())]), 0.0, [n], n, n)
            return StepResult(np.array([float(dur)]))
        out = StepOutcome(1, n, L)
        ids = np.asarray(plan.flush_ids, dtype=np.int64)
        tok = np.asarray(plan.flush_token_index, dtype=np.int64)[None, :]
        head_rows = []
        for i, e in deeper:
            if not out.active.any():
                break
            head_rows.append(out.active.sum(axis=1))
            conf = self.source.confidence(ids, tok, i)
            d = self.decider.decide_at_exit(plan, i, conf, out.active, now)
            out.record(e, d.actions, d.forced, d.stayed, d.drain, False)
        depth = np.where(out.computing, L, out.reach)[0]
        bounds = np.array(sorted({e0, L, *(e for _, e in deeper)}))
        lo, hi = bounds[:-1], bounds[1:]
        going = depth[None, :] >= hi[:, None]
        kv_rows, kv_layers = (None, None) if self.recompute_fill else self._kv_fill(out)
        if self.recompute_fill:
            self._left_pending(plan.flush_ids, out)
        dur = step_s(cost, (hi - lo)[:, None], going.sum(axis=1)[:, None].astype(float),
                     (going * ctx[None, :]).sum(axis=1)[:, None], 0.0,
                     [h for h in head_rows] + [np.array([(depth >= L).sum()])], n, np.array([n]), kv_rows, kv_layers)
        return StepResult(np.asarray(dur, dtype=float).reshape(1), out)

def _steps_before(dur: np.ndarray, now: float, until: float) -> int:
    """Steps of a run to keep: up to the one in which the next arrival lands (the scheduler sees it right after)."""
    if len(dur) <= 1 or not np.isfinite(until):
        return len(dur)
    return min(len(dur), int(np.searchsorted(now + np.cumsum(dur), until)) + 1)
