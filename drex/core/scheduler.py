"""The scheduler: plans the next step from ``now``, decides at exit points, and applies what ran.

One object drives both the simulator and the real backend; it never reads a
clock. Per step it (1) flushes the rebatching buffer when a rule says so,
(2) admits waiting requests up to the max batch size, (3) packs decode rows
and Sarathi-style prefill chunks into a token budget, preempting (recompute)
the newest requests when KV blocks run out, and (4) when nothing it controls
can change for a while, plans a run of identical decode steps at once. After
a step ran, ``complete`` applies the executor's StepResult: tokens, exits,
parking, flushes, finishing, and the step log; times come from the step's
start and its durations.

A ``recorder`` (optional) is told every exit decision and every completed
run of steps: ``drex validate`` uses it to keep the decisions that took effect.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from drex.config import EEConfig, SchedulerConfig
from drex.core.admission import Admission
from drex.core.apply import ApplyMixin
from drex.core import profitability as prof
from drex.core.blocks import BlockManager
from drex.core.decision import ExitDecider
from drex.core.policies import PolicyDecision, get_policy
from drex.core.rebatch import RebatchBuffer
from drex.core.request import Request, RequestStatus
from drex.core.step import PrefillChunk, StepPlan, StepResult
from drex.core.steplog import ChunkedArrays, StepLog
from drex.costmodel.base import CostModel
from drex.models import ModelShape

RUNNING = RequestStatus.RUNNING


class Scheduler(ApplyMixin):
    def __init__(self, shape: ModelShape, ee: EEConfig, cfg: SchedulerConfig, cost: CostModel,
                 num_blocks: int, replica: int = 0, recorder=None) -> None:
        ee.check_model(shape.num_layers)
        self.shape, self.ee, self.cfg, self.cost = shape, ee, cfg, cost
        self.num_layers = shape.num_layers
        self.policy = get_policy(cfg.policy)
        self.exits = ee.exits if self.policy.uses_exits else ()
        self.blocks = BlockManager(num_blocks, cfg.block_size)
        self.admission = Admission(cfg.admission, int(cfg.kv_watermark * num_blocks), cfg.block_size, cfg.chunk_size)
        self.replica = replica
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.buffer = RebatchBuffer(cfg)  # exit layer -> parked rows, oldest first
        self.finished: list[Request] = []
        self.live: dict[int, Request] = {}  # admitted or queued, not finished
        self.itl_s: list[np.ndarray] = ChunkedArrays()  # inter-token latencies, in order
        self.step_id = 0
        self.art = prof.ArtAverages()
        self.log = StepLog()
        self.num_rebatches = self.num_flushes = self.num_drains = self.num_preemptions = 0
        self.recorder = recorder
        # The executor holds no KV and runs StepPlan.later_prefill (the simulator's sets this): plan runs of
        # mixed steps, and take a planned run's blocks once its steps ran (counted when planned).
        self.kv_free_executor = False
        self._mixed_kv: tuple[int, list[int]] | None = None  # a planned mixed run: peak before it, KV per step
        self._released: list[int] = []  # requests whose KV blocks were freed since the last plan
        self.decider = ExitDecider(ee, cfg, cost, self.policy, self.num_layers, self.exits, self.buffer, self.live,
                                   self.art)

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
        return self.buffer.num_rows

    @property
    def num_outstanding(self) -> int:
        return len(self.waiting) + len(self.running) + self.num_buffered

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.buffer)

    # -- planning -----------------------------------------------------------------------------

    def schedule(self, now: float) -> StepPlan | None:
        plan = self._plan(now)
        if plan is not None:
            plan.block_tables = self.blocks.tables
            if self._released:
                plan.released_ids, self._released = self._released, []
        return plan

    def _plan(self, now: float) -> StepPlan | None:
        self.decider.skip.start(self.step_id)
        flush = self._flush_plan(now)
        if flush is not None:
            return flush
        self._admit()
        plan = self._pack()
        while plan is None and self.running:  # a preemption freed blocks: pack again, admitting nobody
            plan = self._pack()
        if plan is None and self.waiting and not self.running:
            self._admit(headroom=False)
            plan = self._pack()
        if plan is None and self.buffer:  # everyone left is parked: nothing else can free them
            return self._flush_plan(now, force=True)
        return plan

    def _admit(self, headroom: bool = True) -> None:
        """Admit waiting requests, oldest (and preempted) first, under the admission rule (core/admission.py).

        Admission keeps headroom (a watermark of free blocks; under ``first-chunk`` also the blocks the running
        decode rows need for their next token), so that admitting a request (a preempted one above all) does
        not at once force another preemption. ``headroom=False`` when nothing runs (no one to protect).
        """
        room = self.cfg.max_batch_size - len(self.running) - self.num_buffered
        if not (self.waiting and room > 0):
            return
        adm = self.admission
        free = adm.free_blocks(self.blocks.num_free, self.running) if headroom else self.blocks.num_free
        while self.waiting and room > 0:
            req = self.waiting[0]
            need = adm.blocks_to_join(req, lambda tokens: self.blocks.needed(req.request_id, tokens), headroom)
            if need > free:
                break
            free -= need
            self.waiting.popleft()
            req.admit()
            self.running.append(req)
            if take := adm.tokens_taken_on_joining(req):
                self._grow(req, take)
            room -= 1

    def _pack(self) -> StepPlan | None:
        """Decode rows first, then prefill chunks in the leftover token budget; None after a preemption."""
        decode, prefilling, ids, context, generated = [], [], [], [], []
        for r in self.running:
            if r.num_prefilled < r.prefill_target:  # r.in_prefill, inlined
                prefilling.append(r)
                continue
            # The next decode writes slot context_len = prompt + generated - 1: it needs prompt + generated slots.
            g = r.num_generated
            need = r.prompt_tokens + g
            if need > r.kv_tokens and not self._grow(r, need):
                self._preempt(protect=r)
                return None
            decode.append(r)
            ids.append(r.request_id)
            context.append(need - 1 if g else r.prompt_tokens)  # r.context_len, inlined
            generated.append(g)
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
        plan = StepPlan(self.step_id, kind, ids, chunks, decode_context=context, decode_token_index=generated)
        if kind == "decode":
            plan.num_steps = self._lookahead(decode, context)
        elif kind == "mixed" and self.kv_free_executor and len(chunks) == 1:
            self._mixed_run(plan, decode, len(prefilling) > 1)
        if self.buffer:
            self.buffer.attach_drain(plan, max(self.exits, default=0))
        plan.skip_exits = self.decider.skip.skips(plan)
        return plan

    def _grow(self, r: Request, num_tokens: int) -> bool:
        if not self.blocks.allocate(r.request_id, num_tokens):
            return False
        r.kv_tokens = len(self.blocks.tables.get(r.request_id, ())) * self.blocks.block_size  # capacity, inlined
        return True

    def _preempt(self, protect: Request) -> None:
        """Free a running request's blocks (recompute later), the one the admission rule names."""
        victim = self.admission.victim(self.running, protect)
        self.running.remove(victim)
        self.blocks.free(victim.request_id)
        victim.kv_tokens = 0
        victim.preempt()
        if victim.num_generated and victim.preempted_step < 0:  # an outage of its decoding starts (ends re-prefilled)
            victim.preempted_step = self.step_id
        self._released.append(victim.request_id)
        self.waiting.appendleft(victim)
        self.num_preemptions += 1
        self.admission.preempted()
        self.decider.no_park_until = self.step_id + self.cfg.park_calm_steps

    def _lookahead(self, decode: list[Request], context: list[int]) -> int:
        """Identical decode steps that can be planned at once: nothing the scheduler controls changes."""
        if self.waiting and len(self.running) + self.num_buffered < self.cfg.max_batch_size:
            return 1  # an admission may happen at the next step
        if self.policy.rebatches and (self.cfg.profitability == "art" or self.decider.parked):
            return 1  # the running averages move every step; or the last run parked at once (so may this one)
        if self.policy.rebatches and any(r.slo_tpot_ms is not None for r in decode):
            return 1  # whether a row may park depends on the clock and its last token time, which move every step
        k = min(self.cfg.max_lookahead_steps, min([r.output_tokens - r.num_generated for r in decode]))
        if self.buffer:
            k = min(k, self.buffer.steps_until_flush(self.step_id))
        if (self.policy.rebatches and self.cfg.profitability == "costmodel"
                and 0 < self.decider.no_park_until - self.step_id < k):
            k = self.decider.no_park_until - self.step_id  # parking is allowed again from then on
        k = self.decider.skip.run_cap(self.step_id, context, k)  # (the rows' context_len)
        if k <= 1:
            return 1
        short = [r for r in decode if r.prompt_tokens + r.num_generated + k - 1 > r.kv_tokens]
        bs = self.blocks.block_size  # (a row's kv_tokens is its blocks' capacity: blocks.needed, inlined)
        need = sum([-(-(r.prompt_tokens + r.num_generated + k - 1) // bs) - r.kv_tokens // bs for r in short])
        if need > self.blocks.num_free - len(decode):
            # Do not take blocks ahead under memory pressure: run only as far as the blocks held go.
            return max(1, min(k, *(r.kv_tokens - r.prompt_tokens - r.num_generated + 1 for r in decode)))
        if self.kv_free_executor:  # taken in complete, for the steps that ran; the peak counts them now
            self.blocks.peak_used = max(self.blocks.peak_used, self.blocks.num_used + need)
            return k
        for r in short:
            self._grow(r, r.prompt_tokens + r.num_generated + k - 1)
        return k

    def _mixed_run(self, plan: StepPlan, decode: list[Request], others: bool) -> None:
        """Mixed steps planned at once: the same decode rows beside the next chunks of one prompt, each filling
        the token budget (its last chunk too, unless it leaves budget to ``others`` in prefill), while nothing
        else can change: no exit points, nothing parked, no admission, no decode row finishing before the run
        ends. Blocks are taken step by step as single steps take them (so not under ``vllm`` admission, where a
        joining request takes its prompt's at once); ``complete`` logs and times the steps as single steps
        (outputs stay byte-identical)."""
        first = plan.prefill[0]
        r = self.live[first.request_id]
        budget = self.cfg.chunk_size - len(decode)
        if (first.last or first.num_tokens != budget or r.num_generated or self.exits or self.buffer
                or self.recorder is not None or self.admission.takes_all_at_once
                or (self.waiting and len(self.running) + self.num_buffered < self.cfg.max_batch_size)):
            return
        steps = min(self.cfg.max_lookahead_steps, min([x.output_tokens - x.num_generated for x in decode]))
        used, start, blocks = [self.blocks.num_used], first.start + first.num_tokens, self.blocks
        peak = blocks.peak_used
        while len(used) < steps and start < r.prefill_target:
            j, n = len(used), min(budget, r.prefill_target - start)
            if n < budget and others:
                break  # the budget this last chunk leaves goes to another prompt: a step of another shape
            # A decode row's next token needs a block when its step-(j-1) token filled its last one.
            grow = [x for x in decode if x.prompt_tokens + x.num_generated + j > x.kv_tokens]
            if len(grow) + blocks.needed(r.request_id, start + n) > blocks.num_free:
                break  # (this step would run without its chunk, or preempt)
            for x in grow:  # as _pack takes them: the decode rows' next token, then the chunk
                self._grow(x, x.prompt_tokens + x.num_generated + j)
            if start + n > r.kv_tokens:
                self._grow(r, start + n)
            used.append(blocks.num_used)
            plan.later_prefill.append(PrefillChunk(r.request_id, start, n, start + n == r.prefill_target))
            start += n
        if plan.later_prefill:
            plan.num_steps = len(used)
            self._mixed_kv = (peak, used)

        # -- the rebatching buffer ----------------------------------------------------------------

    def _flush_due(self, rows: list[Request], now: float) -> bool:
        if self.buffer.flush_in(rows, self.step_id) <= 0:
            return True
        # A parked row whose next-token deadline would pass before a flush finishes cannot wait longer.
        if all(r.slo_tpot_ms is None for r in rows):
            return False
        deep = prof.deep_s(self.cost, rows[0].buffer_layer, self.num_layers, len(rows),
                           sum(r.context_len for r in rows))
        return any(r.slo_tpot_ms is not None and now + deep >= r.last_token_s + r.slo_tpot_ms / 1e3 for r in rows)

    def _flush_plan(self, now: float, force: bool = False) -> StepPlan | None:
        if not self.buffer:
            return None
        return self.buffer.flush_plan(self.step_id, lambda rows: force or self._flush_due(rows, now))

    # -- decisions inside a step ----------------------------------------------------------------

    def decide_at_exit(self, plan: StepPlan, exit_index: int, confidence: np.ndarray, active: np.ndarray,
                       now: float) -> PolicyDecision:
        """The policy's decision for the rows of ``plan`` at exit point ``exit_index`` (confidence, active: [k, n])."""
        if plan.kind == "flush":
            d = self.decider.decide_flush(plan, exit_index, confidence, active)
        else:
            d = self.decider.decide(plan, exit_index, confidence, active, now, self.step_id)
        if self.recorder is not None:
            self.recorder.decided(plan, self.exits[exit_index], active, d.actions)
        return d

    def decisions_mark(self) -> int | None:
        """Where an executor may decide a run's first step alone and take those decisions back (a rebatching
        policy whose decisions nobody records): a mark for ``retract_decisions``; else None."""
        return len(self.decider.skip.pending) if self.recorder is None and self.policy.rebatches else None

    def retract_decisions(self, mark: int) -> None:
        del self.decider.skip.pending[mark:]  # (their rows' counts: a step that parks or drains is never retracted)

    # -- applying what ran ------------------------------------------------------------------------

    def complete(self, plan: StepPlan, result: StepResult, start_s: float) -> None:
        """Apply a finished run of steps: tokens, exits, parking, flushes, finishing, and the step log."""
        dur = result.durations_s
        if type(dur) is not np.ndarray or dur.dtype != float:
            dur = np.asarray(dur, dtype=float)
        k = len(dur)
        if plan.later_prefill:
            self._complete_mixed_run(plan, dur, start_s)
            return
        if self.recorder is not None:
            self.recorder.completed(plan, k)
        self.decider.skip.commit(k)
        if self.kv_free_executor and plan.num_steps > 1:
            self._take_run_blocks(plan, k)  # (nothing was taken ahead: nothing to trim)
        elif k < plan.num_steps:
            self._trim_ahead(plan, k)
        if result.tokens:
            for rid, tokens in result.tokens.items():
                self.live[rid].tokens.extend(tokens)
        ends = start_s + (np.cumsum(dur) if k > 1 else dur)
        L = self.num_layers
        buffered_before = self.num_buffered
        finished_before = len(self.finished)
        kv_blocks = self.blocks.num_used  # before this run's finished requests free theirs
        n_exited = n_buffered = 0
        layer_end = L
        if plan.kind == "flush":
            rows = self.buffer.take(plan.flush_layer, self.step_id)
            fo = result.outcome  # where each flushed row exited (None: all at the top)
            self._rejoin(rows, ends[0], None if fo is None else fo.reach[0].tolist(),
                         None if fo is None else fo.exited[0].tolist(), None if fo is None else fo.stayed[0].tolist())
            self.num_flushes += 1
        for ch in plan.prefill:
            r = self.live[ch.request_id]
            r.num_prefilled += ch.num_tokens
            if ch.last:
                if r.num_generated:  # a re-prefill after a preemption: the client saw this whole gap
                    self.itl_s.append(np.array([float(ends[-1]) - r.last_token_s]))
                    r.num_parked_steps += max(self.step_id - r.preempted_step, 1)  # its wait counts as parking's
                    r.preempted_step = -1
                self._emit(r, 1, float(ends[-1]), L, 0, 0, 0)
        out = result.outcome
        if plan.decode_ids and out is not None and out.is_plain:
            live = self.live
            self._apply_full_depth([live[i] for i in plan.decode_ids], ends)
        elif plan.decode_ids and out is not None:
            if k == 1:  # (the commonest, as numbers)
                n_exited, n_buffered = int(np.count_nonzero(out.exited)), int(np.count_nonzero(out.buffered))
                layer_end = L if plan.prefill or out.computing.any() else int(out.reach.max())
            else:
                n_exited, n_buffered = out.exited.sum(axis=1), out.buffered.sum(axis=1)
                layer_end = np.where(out.computing.any(axis=1) | bool(plan.prefill), L, out.reach.max(axis=1))
            self._apply_decode(plan, out, ends, ends - dur, result.token_offset_s)
        if self.cfg.profitability == "art" and self.policy.rebatches:
            split = out is not None and not out.is_plain and out.buffered.any()
            kind = "flush" if plan.kind == "flush" else ("split" if split else "full")
            self.art.update(kind, float(dur[-1]))
        if len(self.finished) != finished_before or (out is not None and not out.is_plain):  # some left
            self.running = [r for r in self.running if r.status == RUNNING]
        self.admission.stepped(k)
        self.log.add(self.step_id, self.replica, start_s, dur, plan.kind, plan.num_rows, len(plan.decode_ids),
                     sum(c.num_tokens for c in plan.prefill) if plan.prefill else 0, len(plan.flush_ids), n_exited,
                     n_buffered, layer_end, self._buffer_sizes(k, buffered_before),
                     plan.flush_layer if plan.kind == "flush" else 0, kv_blocks)
        self.step_id += k

    def _buffer_sizes(self, k: int, before: int):
        """Buffer size after each step of a run: it can only change in the run's last step."""
        after = self.num_buffered
        if k == 1 or after == before:
            return after
        return np.concatenate([np.full(k - 1, before), [after]])
