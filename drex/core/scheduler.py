"""The scheduler: plans the next step from ``now`` and decides at exit points.

One object drives both the simulator and the real backend; it never reads a
clock. Per step it (1) flushes the rebatching buffer when a rule says so,
(2) admits waiting requests up to the max batch size, (3) packs decode rows
and Sarathi-style prefill chunks into a token budget, preempting (recompute)
the newest requests when KV blocks run out, and (4) when nothing it controls
can change for a while, plans a run of identical decode steps at once.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from drex.config import EEConfig, SchedulerConfig
from drex.core import profitability as prof
from drex.core.accounting import StepAccounting
from drex.core.blocks import BlockManager
from drex.core.policies import ExitContext, get_policy
from drex.core.request import Request
from drex.core.step import PrefillChunk, StepPlan
from drex.core.steplog import StepLog
from drex.costmodel.base import CostModel
from drex.models import ModelShape


class Scheduler(StepAccounting):
    def __init__(self, shape: ModelShape, ee: EEConfig, cfg: SchedulerConfig, cost: CostModel,
                 num_blocks: int, replica: int = 0) -> None:
        ee.check_model(shape.num_layers)
        self.shape, self.ee, self.cfg, self.cost = shape, ee, cfg, cost
        self.num_layers = shape.num_layers
        self.policy = get_policy(cfg.policy)
        self.exits = ee.exits if self.policy.uses_exits else ()
        self.blocks = BlockManager(num_blocks, cfg.block_size)
        self.replica = replica
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.buffer: dict[int, list[Request]] = {}  # exit layer -> parked rows, oldest first
        self.finished: list[Request] = []
        self.live: dict[int, Request] = {}  # admitted or queued, not finished
        self.itl_s: list[np.ndarray] = []  # inter-token latencies, a chunk per run of steps
        self.step_id = 0
        self.art = prof.ArtAverages()
        self.log = StepLog()
        self.num_rebatches = self.num_flushes = self.num_drains = self.num_preemptions = 0

    # -- requests -----------------------------------------------------------------------------

    def add_request(self, req: Request, now: float) -> bool:
        """Queue a request, or reject it with a reason if it can never be served."""
        req.replica = self.replica
        total = req.prompt_tokens + req.output_tokens
        if total > self.cfg.max_model_len:
            req.reject(f"prompt+output={total} tokens exceeds max_model_len={self.cfg.max_model_len}")
        elif self.blocks.blocks_for(total) > self.blocks.num_blocks:
            req.reject(f"needs {self.blocks.blocks_for(total)} KV blocks; the device holds {self.blocks.num_blocks}")
        if req.reject_reason:
            self.finished.append(req)
            return False
        self.waiting.append(req)
        self.live[req.request_id] = req
        return True

    @property
    def num_buffered(self) -> int:
        return sum(len(rows) for rows in self.buffer.values())

    @property
    def num_outstanding(self) -> int:
        return len(self.waiting) + len(self.running) + self.num_buffered

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.buffer)

    # -- planning -----------------------------------------------------------------------------

    def schedule(self, now: float) -> StepPlan | None:
        flush = self._flush_plan(now)
        if flush is not None:
            return flush
        self._admit()
        plan = self._pack()
        while plan is None and self.running:  # a preemption freed blocks: pack again, admitting nobody
            plan = self._pack()
        if plan is None and self.waiting and not self.running:
            self._admit()
            plan = self._pack()
        if plan is None and self.buffer:  # everyone left is parked: nothing else can free them
            return self._flush_plan(now, force=True)
        return plan

    def _admit(self) -> None:
        room = self.cfg.max_batch_size - len(self.running) - self.num_buffered
        while self.waiting and room > 0:
            req = self.waiting[0]
            first_chunk = min(self.cfg.chunk_size, req.prompt_tokens + req.num_generated)
            if self.blocks.needed(req.request_id, first_chunk) > self.blocks.num_free:
                break
            self.waiting.popleft()
            req.admit()
            self.running.append(req)
            room -= 1

    def _pack(self) -> StepPlan | None:
        """Decode rows first, then prefill chunks in the leftover token budget; None after a preemption."""
        decode, prefilling = [], []
        for r in self.running:
            (prefilling if r.in_prefill else decode).append(r)
        for r in decode:
            # The next decode writes slot context_len = prompt + generated - 1: it needs prompt + generated slots.
            if r.prompt_tokens + r.num_generated > r.kv_tokens and not self._grow(r, r.prompt_tokens + r.num_generated):
                self._preempt(protect=r)
                return None
        budget = self.cfg.chunk_size - len(decode)
        chunks = []
        for r in prefilling:
            if budget <= 0:
                break
            n = min(budget, r.prefill_target - r.num_prefilled)
            if r.num_prefilled + n > r.kv_tokens and not self._grow(r, r.num_prefilled + n):
                if chunks or decode:
                    break  # run what fits; this one waits for blocks
                self._preempt(protect=r)
                return None
            chunks.append(PrefillChunk(r.request_id, r.num_prefilled, n, r.num_prefilled + n == r.prefill_target))
            budget -= n
        if not decode and not chunks:
            return None
        kind = "mixed" if decode and chunks else ("decode" if decode else "prefill")
        plan = StepPlan(self.step_id, kind, decode_ids=[r.request_id for r in decode], prefill=chunks,
                        decode_context=[r.context_len for r in decode],
                        decode_token_index=[r.num_generated for r in decode])
        if kind == "decode":
            plan.num_steps = self._lookahead(decode)
        self._attach_drain(plan)
        return plan

    def _grow(self, r: Request, num_tokens: int) -> bool:
        if not self.blocks.allocate(r.request_id, num_tokens):
            return False
        r.kv_tokens = self.blocks.capacity_tokens(r.request_id)
        return True

    def _preempt(self, protect: Request) -> None:
        """Free the newest running request's blocks (recompute later); the protected one goes last."""
        victims = [r for r in self.running if r is not protect] or [protect]
        victim = victims[-1]
        self.running.remove(victim)
        self.blocks.free(victim.request_id)
        victim.kv_tokens = 0
        victim.preempt()
        self.waiting.appendleft(victim)
        self.num_preemptions += 1

    def _lookahead(self, decode: list[Request]) -> int:
        """Identical decode steps that can be planned at once: nothing the scheduler controls changes."""
        if self.waiting and len(self.running) + self.num_buffered < self.cfg.max_batch_size:
            return 1  # an admission may happen at the next step
        if self.cfg.profitability == "art" and self.policy.rebatches:
            return 1  # the running averages move every step
        k = min(self.cfg.max_lookahead_steps, min(r.remaining_tokens for r in decode))
        if self.buffer:
            k = min(k, self._steps_until_flush())
        if k <= 1:
            return 1
        short = [r for r in decode if r.prompt_tokens + r.num_generated + k - 1 > r.kv_tokens]
        need = sum(self.blocks.needed(r.request_id, r.prompt_tokens + r.num_generated + k - 1) for r in short)
        if need > self.blocks.num_free - len(decode):
            # Do not take blocks ahead under memory pressure: run only as far as the blocks held go.
            return max(1, min(k, *(r.kv_tokens - r.prompt_tokens - r.num_generated + 1 for r in decode)))
        for r in short:
            self._grow(r, r.prompt_tokens + r.num_generated + k - 1)
        return k

    # -- the rebatching buffer ----------------------------------------------------------------

    def _flush_in(self, rows: list[Request]) -> int:
        """Steps until the buffer's size and age rules flush these rows (<= 0: now).

        The age-weighted rule |rows| * (1 + age * alpha) >= max_batch_size, solved for age,
        so that planning runs of steps and flushing use the very same rule.
        """
        cfg = self.cfg
        if len(rows) >= min(cfg.flush_rows, cfg.max_batch_size):
            return 0
        age = self.step_id - rows[0].buffered_step
        steps = cfg.flush_max_wait_steps - age
        if cfg.flush_age_alpha > 0:
            steps = min(steps, int(np.ceil((cfg.max_batch_size / len(rows) - 1) / cfg.flush_age_alpha)) - age)
        return steps

    def _steps_until_flush(self) -> int:
        steps = self.cfg.max_lookahead_steps
        for rows in self.buffer.values():
            if any(r.slo_tpot_ms is not None for r in rows):
                return 1
            steps = min(steps, self._flush_in(rows))
        return max(steps, 1)

    def _flush_due(self, rows: list[Request], now: float) -> bool:
        if self._flush_in(rows) <= 0:
            return True
        # A parked row whose next-token deadline would pass before a flush finishes cannot wait longer.
        deep = prof.deep_s(self.cost, rows[0].buffer_layer, self.num_layers, len(rows),
                           sum(r.context_len for r in rows))
        return any(r.slo_tpot_ms is not None and now + deep >= r.last_token_s + r.slo_tpot_ms / 1e3 for r in rows)

    def _flush_plan(self, now: float, force: bool = False) -> StepPlan | None:
        if not self.buffer:
            return None
        for layer, rows in sorted(self.buffer.items()):
            if force or self._flush_due(rows, now):
                return StepPlan(self.step_id, "flush", flush_ids=[r.request_id for r in rows], flush_layer=layer,
                                flush_context=[r.context_len for r in rows])
        return None

    def _attach_drain(self, plan: StepPlan) -> None:
        if not (self.cfg.inline_drain and self.buffer and plan.decode_ids):
            return
        layer = min(self.buffer)
        rows = self.buffer[layer]
        plan.drain_ids = [r.request_id for r in rows]
        plan.drain_layer = layer
        plan.drain_context = [r.context_len for r in rows]

    # -- decisions inside a step ----------------------------------------------------------------

    def decide_at_exit(self, plan: StepPlan, exit_index: int, confidence: np.ndarray, active: np.ndarray,
                       now: float):
        """The policy's decision for the decode rows of ``plan`` at exit point ``exit_index``.

        confidence and active are [k, n] (k planned steps, n decode rows); returns a PolicyDecision.
        """
        e = self.exits[exit_index]
        k = confidence.shape[0]
        ctx = np.asarray(plan.decode_context, dtype=np.int64)[None, :] + np.arange(k)[:, None]
        higher = self.ee.metric != "entropy"
        wants = confidence > self.ee.threshold if higher else confidence < self.ee.threshold
        L, cost = self.num_layers, self.cost
        base = sum(c.num_tokens for c in plan.prefill)
        base_attn = sum(c.num_tokens * (c.start + c.num_tokens / 2) for c in plan.prefill)

        def split_pays(steps: np.ndarray, stay: np.ndarray) -> np.ndarray:
            act = active[steps]
            rows = act.sum(axis=1)
            staying = stay.sum(axis=1)
            exiting = rows - staying
            if self.cfg.profitability == "art":
                return exiting > self.art.art(rows)
            c = ctx[steps]
            saving = prof.split_saving_s(cost, e, L, rows, exiting, (c * act).sum(axis=1), (c * stay).sum(axis=1),
                                         self._predicted_flush_rows(e, staying, steps), base, base_attn)
            pays = saving > 0
            if self._slo_rows(plan):  # a parked row must still make its next-token deadline
                pays &= self._can_park(plan, stay, now, e)
            return pays

        def drain_pays(steps: np.ndarray) -> np.ndarray:
            if not plan.drain_ids or plan.drain_layer != e:
                return np.zeros(len(steps), dtype=bool)
            act = active[steps]
            saving = prof.drain_saving_s(cost, e, L, act.sum(axis=1), (ctx[steps] * act).sum(axis=1),
                                         len(plan.drain_ids), sum(plan.drain_context), base, base_attn)
            return saving > 0

        return self.policy.decide(ExitContext(e, L, wants, confidence, active, self.ee.threshold, higher,
                                              split_pays, drain_pays))

    def _predicted_flush_rows(self, layer: int, staying: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Rows the flush carrying these stayers is expected to hold, under the buffer's flush rules.

        steps are offsets into the planned run: the buffer ages by one per step.
        """
        cfg = self.cfg
        parked = self.buffer.get(layer, ())
        age = self.step_id + steps - parked[0].buffered_step if parked else 0
        wait = np.maximum(cfg.flush_max_wait_steps - age, 1)
        grown = len(parked) + staying * wait
        return np.minimum(grown, min(cfg.flush_rows, cfg.max_batch_size))

    def _slo_rows(self, plan: StepPlan) -> bool:
        return any(self.live[i].slo_tpot_ms is not None for i in plan.decode_ids)

    def _can_park(self, plan: StepPlan, stay: np.ndarray, now: float, layer: int) -> np.ndarray:
        rows = [self.live[i] for i in plan.decode_ids]
        deadline = np.array([r.last_token_s + r.slo_tpot_ms / 1e3 if r.slo_tpot_ms is not None else np.inf
                             for r in rows])
        ctx = np.array(plan.decode_context)
        flush = prof.deep_s(self.cost, layer, self.num_layers, stay.sum(axis=1), (stay * ctx).sum(axis=1))
        return ~(((now + 2 * flush)[:, None] >= deadline[None, :]) & stay).any(axis=1)
