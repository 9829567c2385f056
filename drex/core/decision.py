"""The decision at an exit point: the policy, told by the cost model whether a split or a drain pays.

Both executors call it mid-step through ``Scheduler.decide_at_exit``: the real
one after computing the exit head, the simulated one after drawing
confidences. It reads the buffer (to predict the flush a split feeds) and the
live requests' token times (for TPOT deadlines), and changes nothing.
"""

from __future__ import annotations

import numpy as np

from drex.config import EEConfig, SchedulerConfig
from drex.core import profitability as prof
from drex.core.headskip import HeadSkip
from drex.core.policies import GO, HOLD, PARK, ExitContext, Policy, PolicyDecision
from drex.core.rebatch import RebatchBuffer
from drex.core.request import Request
from drex.core.step import BUFFER, CONTINUE, EXIT, StepPlan
from drex.costmodel.base import CostModel
from drex.costmodel.price import prefill_work


def _drains_at(plan: StepPlan, e: int) -> bool:
    """The plan offers the rows parked at exit layer e an inline drain."""
    return bool(plan.drain_ids) and plan.drain_layer == e


class ExitDecider:
    def __init__(self, ee: EEConfig, cfg: SchedulerConfig, cost: CostModel, policy: Policy, num_layers: int,
                 exits: tuple[int, ...], buffer: RebatchBuffer, live: dict[int, Request],
                 art: prof.ArtAverages) -> None:
        self.ee, self.cfg, self.cost, self.policy = ee, cfg, cost, policy
        self.num_layers, self.exits, self.buffer, self.live, self.art = num_layers, exits, buffer, live, art
        self.no_park_until = 0  # step from which parking is allowed again (the scheduler sets it at preemptions)
        self.parked = False  # the last run parked at its first step: the scheduler then plans single steps
        # exit layer -> planned step whose park was priced on a flush at the next step (the scheduler's apply
        # reads it when that step parked, and sets the buffer's due step)
        self.flush_next: dict[int, int] = {}
        self.skip = HeadSkip(ee, cfg, cost, num_layers, exits, enabled=cfg.skip_exit_heads and policy.rebatches
                             and cfg.profitability == "costmodel")

    def decide(self, plan: StepPlan, exit_index: int, confidence: np.ndarray, active: np.ndarray, now: float,
               step_id: int) -> PolicyDecision:
        """confidence and active are [k, n] (k planned steps from ``step_id``, n decode rows)."""
        e = self.exits[exit_index]
        k = confidence.shape[0]
        ctx = np.asarray(plan.decode_context, dtype=np.int64)[None, :]
        if k > 1:
            ctx = ctx + np.arange(k)[:, None]
        higher = not self.ee.lower_is_better
        wants = self.ee.clears(confidence)
        self.skip.observe(exit_index, wants, active)
        L, cost = self.num_layers, self.cost
        base, base_attn, _ = prefill_work(plan.prefill)

        def split_pays(steps: np.ndarray, stay: np.ndarray) -> np.ndarray:  # the authors' rule (art)
            rows = active[steps].sum(axis=1)
            return rows - stay.sum(axis=1) > self.art.art(rows)

        def split_action(steps: np.ndarray, stay: np.ndarray) -> np.ndarray:
            """HOLD, PARK or GO per step: the action the cost model says saves the most device time."""
            if len(steps) == 1 and cost.fast_one and self.cfg.profitability != "knobs":  # the commonest call
                j = int(steps[0])
                a, s, c = active[j], stay[0], ctx[j]
                return np.array([self._split_action_one(plan, e, j, stay, int(np.count_nonzero(a)),
                                                        int(np.count_nonzero(s)), int(c[a].sum()), int(c[s].sum()),
                                                        base, base_attn, now, step_id)], dtype=np.int8)
            act = active[steps]
            rows = act.sum(axis=1)
            staying = stay.sum(axis=1)
            exiting = rows - staying
            if self.cfg.profitability == "knobs":
                go = exiting >= self.cfg.split_fraction * rows
                if self.cfg.split_continue:
                    return np.where(go, GO, HOLD).astype(np.int8)
                return np.where(go & self._can_park_rows(plan, stay, steps, now, e, step_id), PARK, HOLD).astype(np.int8)
            c = ctx[steps]
            context, stay_context = (c * act).sum(axis=1), (c * stay).sum(axis=1)
            if cost.fast_one and len(steps) <= prof.FEW_STEPS:  # the commonest calls, priced in floats
                return self._split_actions_few(plan, e, steps, stay, (rows, staying, context, stay_context), base,
                                               base_attn, now, step_id)
            go_s = prof.continue_saving_s(cost, e, L, rows, exiting, context, stay_context, base, base_attn)
            flush_rows = self.buffer.predicted_flush_rows(e, staying, steps, step_id)
            # (the buffer ages a step per planned step: each step's wait from its own step id)
            drained, wait = self._park_wait(plan, e, step_id + steps)
            # (and the option of a flush at the very next step, before the next decode step: the rows miss none)
            park_s, soon_s = prof.split_saving_s(cost, e, L, rows, exiting, context, stay_context, flush_rows, base,
                                                 base_attn, parked_steps=wait, drained=drained,
                                                 soon_rows=self._soon_rows(plan, e) + staying)
            soon = soon_s > park_s
            park_s = np.maximum(park_s, soon_s)
            wants_park = park_s > np.maximum(go_s, 0.0)
            if wants_park.any():  # only where parking would win: its budget and SLO test walk the rows
                can = self._can_park_rows(plan, stay[wants_park], steps[wants_park], now, e, step_id)
                park_s[np.flatnonzero(wants_park)[~can]] = -np.inf
            best = np.where(park_s > go_s, PARK, GO)
            actions = np.where(np.maximum(park_s, go_s) > 0, best, HOLD).astype(np.int8)
            first = np.flatnonzero(actions == PARK)[:1]
            if len(first) and soon[first[0]]:
                self.flush_next[e] = int(steps[first[0]])
            return actions

        def drain_pays(steps: np.ndarray, stop: np.ndarray) -> np.ndarray:
            if not _drains_at(plan, e):
                return np.zeros(len(steps), dtype=bool)
            if len(steps) == 1 and cost.fast_one:  # the commonest call, in Python numbers
                j = int(steps[0])
                a, c = active[j], ctx[j]
                rows, context = (0, 0) if stop[0] else (int(np.count_nonzero(a)), int(c[a].sum()))
                return np.array([prof.drain_saving_one(cost, e, L, rows, context, len(plan.drain_ids),
                                                       sum(plan.drain_context), base, base_attn) > 0])
            act = active[steps] & ~stop[:, None]  # the decode rows that go on with them
            saving = prof.drain_saving_s(cost, e, L, act.sum(axis=1), (ctx[steps] * act).sum(axis=1),
                                         len(plan.drain_ids), sum(plan.drain_context), base, base_attn)
            return saving > 0

        action = None if self.cfg.profitability == "art" else split_action
        d = self.policy.decide(ExitContext(e, L, wants, confidence, active, self.ee.threshold, higher,
                                           split_pays, drain_pays, action, base_continues=bool(plan.prefill)))
        self.parked = bool((d.actions[0] == BUFFER).any())
        return d

    def decide_flush(self, plan: StepPlan, exit_index: int, confidence: np.ndarray,
                     active: np.ndarray) -> PolicyDecision:
        """A flush meets an exit point deeper than its layer: its confident rows exit there (a split whose
        other rows go on at once) when the cost model says that beats holding them all to the top."""
        e, L = self.exits[exit_index], self.num_layers
        wants = self.ee.clears(confidence) & active
        ctx = np.asarray(plan.flush_context, dtype=float)[None, :]
        rows, exiting = active.sum(axis=1), wants.sum(axis=1)
        stay = active & ~wants
        saving = prof.continue_saving_s(self.cost, e, L, rows, exiting, (ctx * active).sum(axis=1),
                                        (ctx * stay).sum(axis=1))
        split = (exiting > 0) & ((exiting == rows) | (saving > 0))
        actions = np.where(split[:, None] & wants, EXIT, CONTINUE).astype(np.int8)
        none = np.zeros_like(wants)
        return PolicyDecision(actions, none, ~split[:, None] & wants, np.zeros(len(split), dtype=bool))

    def _park_wait(self, plan: StepPlan, e: int, step):
        """Whether rows parked at e at step (an id, or an array of them) would drain inline, and the decode
        steps they would miss."""
        # Rows already parked here: parking more blocks their drain (unless they leave with this step's prefill
        # chunks), so the new ones wait for a flush (as rows parked above the deepest exit point always do).
        parked = self.buffer.get(e)
        drained = self.cfg.inline_drain and e == self.exits[-1] and (not parked or self._swap(plan, e))
        if drained:
            return True, 1
        # A flush runs before the step it is due at: the rows miss the decode steps before it, one fewer than
        # the steps they wait (a drained row misses the step it drains in).
        if not parked:
            return False, max(self.cfg.flush_max_wait_steps, 1) - 1
        if np.ndim(step):
            return False, np.array([max(self.buffer.flush_in(parked, int(s)), 1) - 1 for s in step])
        return False, max(self.buffer.flush_in(parked, step), 1) - 1

    def _soon_rows(self, plan: StepPlan, e: int) -> int:
        """Rows already parked at e that a flush at the next step would share with the new ones. None where they
        could drain at this step: they leave now (with the prefill), or parking here cancels their drain, and
        the flush's whole pass is then the new rows' to pay."""
        return 0 if _drains_at(plan, e) else len(self.buffer.get(e, ()))

    @staticmethod
    def _swap(plan: StepPlan, e: int) -> bool:
        """The rows parked at e can leave on this step's prefill chunks as new ones park: the next step drains
        the new ones as this one drains the old."""
        return bool(plan.prefill) and _drains_at(plan, e)

    def _split_actions_few(self, plan: StepPlan, e: int, steps: np.ndarray, stay: np.ndarray, counts: tuple,
                           base: int, base_attn: float, now: float, step_id: int) -> np.ndarray:
        """``split_action`` for a few planned steps, step by step in floats: the same prices (profitability's
        one-step functions are its array functions bit for bit), so the same actions, up to the first step
        that parks. That step ends the run (``StepOutcome.record`` cuts there): the later ones, never read,
        are left HOLD unpriced."""
        actions = np.zeros(len(steps), dtype=np.int8)  # HOLD
        for j, (step, rows, staying, context, stay_context) in enumerate(zip(steps.tolist(),
                                                                             *(c.tolist() for c in counts))):
            actions[j] = self._split_action_one(plan, e, step, stay[j:j + 1], rows, staying, context, stay_context,
                                                base, base_attn, now, step_id)
            if actions[j] == PARK:
                break
        return actions

    def _split_action_one(self, plan: StepPlan, e: int, step: int, stay: np.ndarray, rows: int, staying: int,
                          context: int, stay_context: int, base: int, base_attn: float, now: float,
                          step_id: int) -> int:
        L, cost = self.num_layers, self.cost
        exiting = rows - staying
        go_s = prof.continue_saving_one(cost, e, L, rows, exiting, context, stay_context, base, base_attn)
        flush_rows = self.buffer.predicted_flush_rows_one(e, staying, step, step_id)
        drained, wait = self._park_wait(plan, e, step_id + step)
        park_s, soon_s = prof.split_saving_one(cost, e, L, rows, exiting, context, stay_context, flush_rows, base,
                                               base_attn, wait, drained, self._soon_rows(plan, e) + staying)
        soon = soon_s > park_s
        park_s = max(park_s, soon_s)
        if park_s > max(go_s, 0.0) and not self._can_park_one(plan, stay, step, now, e, step_id):
            park_s = -np.inf
        action = (PARK if park_s > go_s else GO) if max(park_s, go_s) > 0 else HOLD
        if action == PARK and soon:
            self.flush_next[e] = step
        return action

    def _can_park_rows(self, plan: StepPlan, stay: np.ndarray, steps: np.ndarray, now: float,
                       layer: int, step_id: int) -> np.ndarray:
        """Per step: every staying row may park (no recent preemption, its TPOT-inflation budget allows one
        more parked step, and its TPOT SLO, if any, survives the wait)."""
        ok = np.ones(len(steps), dtype=bool)
        if self.cfg.profitability == "costmodel":  # the knobs family parks whatever the memory pressure
            ok &= step_id + np.asarray(steps) >= self.no_park_until
        if not ok.any():
            return ok
        rows = [self.live[i] for i in plan.decode_ids]
        x = self.cfg.max_tpot_inflation
        if np.isfinite(x):
            parked = np.array([r.num_parked_steps for r in rows], dtype=float)
            generated = np.array([r.num_generated for r in rows], dtype=float)[None, :] + np.asarray(steps)[:, None]
            within = parked[None, :] + 1 <= (x - 1) * generated
            ok &= ~(stay & ~within).any(axis=1)
        if self._slo_rows(plan):  # a parked row must still make its next-token deadline
            ok &= self._can_park(plan, stay, now, layer)
        return ok

    def _can_park_one(self, plan: StepPlan, stay: np.ndarray, step: int, now: float, layer: int,
                      step_id: int) -> bool:
        """``_can_park_rows`` for one planned step (stay: [1, n]), in Python numbers: the same answer."""
        if self.cfg.profitability == "costmodel" and step_id + step < self.no_park_until:
            return False
        x = self.cfg.max_tpot_inflation
        if np.isfinite(x):
            live = self.live
            for i, s in zip(plan.decode_ids, stay[0].tolist()):
                r = live[i]
                if s and not float(r.num_parked_steps) + 1 <= (x - 1) * (float(r.num_generated) + step):
                    return False
        return not self._slo_rows(plan) or bool(self._can_park(plan, stay, now, layer)[0])

    def _slo_rows(self, plan: StepPlan) -> bool:
        return any(self.live[i].slo_tpot_ms is not None for i in plan.decode_ids)

    def _can_park(self, plan: StepPlan, stay: np.ndarray, now: float, layer: int) -> np.ndarray:
        rows = [self.live[i] for i in plan.decode_ids]
        deadline = np.array([r.last_token_s + r.slo_tpot_ms / 1e3 if r.slo_tpot_ms is not None else np.inf
                             for r in rows])
        ctx = np.array(plan.decode_context)
        flush = prof.deep_s(self.cost, layer, self.num_layers, stay.sum(axis=1), (stay * ctx).sum(axis=1))
        return ~(((now + 2 * flush)[:, None] >= deadline[None, :]) & stay).any(axis=1)
