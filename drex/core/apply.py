"""The scheduler's other half: applying what a run of steps did to its requests.

Tokens emitted (at full depth, or from an exit point), rows parked in the rebatching
buffer or rejoining from it, inter-token latencies, and requests finishing. ``Scheduler``
(drex.core.scheduler) inherits it; it reads and writes the scheduler's state.
"""

from __future__ import annotations

import numpy as np

from drex.core.request import Request, RequestStatus
from drex.core.step import StepPlan

RUNNING = RequestStatus.RUNNING


class ApplyMixin:
    """``Scheduler``'s methods that apply a finished run (see ``Scheduler.complete``)."""

    def _complete_mixed_run(self, plan: StepPlan, dur: np.ndarray, start_s: float) -> None:
        """A run of mixed steps (``_mixed_run``), applied and logged as the single steps it stands for: times
        added step by step, a log entry per step with the KV blocks its single step held."""
        peak, used = self._mixed_kv
        self._mixed_kv = None
        k, L, n = len(dur), self.num_layers, len(plan.decode_ids)
        chunks = [*plan.prefill, *plan.later_prefill][:k]
        r = self.live[chunks[0].request_id]
        if k < plan.num_steps:  # cut by an arrival: the blocks taken for the steps that did not run go back
            self._trim_ahead(plan, k)
            self.blocks.trim(r.request_id, chunks[-1].start + chunks[-1].num_tokens)
            r.kv_tokens = self.blocks.capacity_tokens(r.request_id)
            self.blocks.peak_used = max(peak, used[k - 1])
        ends = np.cumsum(np.concatenate([[start_s], dur]))[1:]  # ((start + d0) + d1) + ...: single steps' times
        self.log.add_single_steps(self.step_id, self.replica, [start_s, *ends[:-1].tolist()], dur.tolist(), "mixed",
                                  n + 1, n, [ch.num_tokens for ch in chunks], L, used)
        finished_before = len(self.finished)
        r.num_prefilled = chunks[-1].start + chunks[-1].num_tokens
        if chunks[-1].last:
            self._emit(r, 1, float(ends[-1]), L, 0, 0, 0)
        self._apply_full_depth([self.live[i] for i in plan.decode_ids], ends, gaps_first=True)
        if len(self.finished) != finished_before:
            self.running = [x for x in self.running if x.status == RUNNING]
        self.admission.stepped(k)
        self.step_id += k

    def _apply_decode(self, plan: StepPlan, out, ends: np.ndarray, starts: np.ndarray, offset_s) -> None:
        if out.num_steps == 1 and offset_s is None:
            self._apply_decode_one(plan, out, float(ends[0]))
        else:
            self._apply_decode_run(plan, out, ends, starts, offset_s)

    def _apply_decode_run(self, plan: StepPlan, out, ends: np.ndarray, starts: np.ndarray, offset_s) -> None:
        k = out.num_steps
        emitted = ~out.buffered
        times = np.broadcast_to(ends[:k, None], emitted.shape) if offset_s is None else starts[:k, None] + offset_s
        rows = [self.live[i] for i in plan.decode_ids]
        if (offset_s is None and out.drain_layer < 0 and not out.exited.any() and not out.buffered.any()
                and not out.stayed.any()):
            self._apply_full_depth(rows, ends[:k])
            return
        prev = np.array([r.last_token_s for r in rows])
        itl = np.diff(np.vstack([prev, np.where(emitted, times, np.nan)]), axis=0)
        self.itl_s.append(itl[~np.isnan(itl)])
        counts = emitted.sum(axis=0).tolist()
        early = (out.exited & emitted).sum(axis=0).tolist()
        forced = out.forced.sum(axis=0).tolist()
        stayed = out.stayed.sum(axis=0).tolist()
        layers = np.where(emitted, out.reach, 0).sum(axis=0).tolist()
        last_emit = np.where(emitted[-1], k - 1, k - 2)
        last_time = times[np.maximum(last_emit, 0), np.arange(len(rows))].tolist()
        parked = out.buffered[-1].tolist()
        # The rows drained at the step's end leave the buffer before its own stayers enter it (the same step can
        # do both where prefill chunks carry the drained rows).
        drained = self.buffer.take(out.drain_layer, self.step_id + k - 1) if out.drain_layer >= 0 else None
        for j, r in enumerate(rows):
            # A parked token's involuntary stays count now, though it emits only at its flush.
            r.num_involuntary_stays += stayed[j]
            if counts[j]:
                self._emit(r, counts[j], last_time[j], layers[j], early[j], forced[j], 0)
            if parked[j] and r.status == RUNNING:
                self.buffer.park(r, int(out.reach[-1, j]), self.step_id + k - 1)
        self._parked_and_drained(np.unique(out.reach[-1][out.buffered[-1]]).tolist(), k - 1, drained,
                                 float(ends[k - 1]))

    def _apply_decode_one(self, plan: StepPlan, out, t: float) -> None:
        """``_apply_decode`` of one step whose tokens came at its end, row by row in Python numbers."""
        live = self.live
        rows = [live[i] for i in plan.decode_ids]
        parked = out.buffered[0].tolist()
        self.itl_s.extend_values([d for d in (t - r.last_token_s for r, p in zip(rows, parked) if not p) if d == d])
        drained = self.buffer.take(out.drain_layer, self.step_id) if out.drain_layer >= 0 else None
        reach = out.reach[0].tolist()
        for r, p, layer, early, forced, stayed in zip(rows, parked, reach, out.exited[0].tolist(),
                                                      out.forced[0].tolist(), out.stayed[0].tolist()):
            r.num_involuntary_stays += stayed
            if not p:
                self._emit(r, 1, t, layer, int(early), int(forced), 0)
            elif r.status == RUNNING:
                self.buffer.park(r, layer, self.step_id)
        self._parked_and_drained(sorted({layer for layer, p in zip(reach, parked) if p}), 0, drained, t)

    def _parked_and_drained(self, layers: list[int], last: int, drained, time_s: float) -> None:
        """After a run whose last step (``last`` steps in) parked rows at these exit layers and drained
        ``drained`` (or None) at time_s: one rebatch counted, each layer's due step set where its park was priced
        on a flush at the next step, and the drained rows rejoin."""
        if layers:
            self.num_rebatches += 1
            for layer in layers:
                if self.decider.flush_next.get(layer) == last:  # priced on a flush at the next step
                    self.buffer.due[layer] = self.step_id + last + 1
        self.decider.flush_next.clear()
        if drained is not None:
            self._rejoin(drained, time_s)
            self.num_drains += 1

    def _apply_full_depth(self, rows: list[Request], ends: np.ndarray, gaps_first: bool = False) -> None:
        """Fast path: every row emitted a token from the last layer at every step. Inter-token latencies: the
        later steps' first, then the first step's (a run of decode steps); ``gaps_first``: in step order (a
        run of mixed steps, recorded as its single steps record them)."""
        k = len(ends)
        last, first = float(ends[-1]), float(ends[0])
        if gaps_first:
            self.itl_s.extend_values([first - r.last_token_s for r in rows])
        if k > 1:
            self.itl_s.append(np.repeat(ends[1:] - ends[:-1], len(rows)))  # (np.diff)
        if not gaps_first:
            self.itl_s.extend_values([first - r.last_token_s for r in rows])
        layers = k * self.num_layers
        for r in rows:
            r.num_generated += k
            r.last_token_s = last
            r.sum_exit_layer += layers
            if r.num_generated >= r.output_tokens:
                self._finish(r)

    def _rejoin(self, rows: list[Request], time_s: float, layers=None, exited=None, stayed=None) -> None:
        """Buffered rows ran on from their layer (to the top, or to a deeper exit point in a flush): each
        emits its token and rejoins the running set."""
        self.itl_s.append(np.array([time_s - r.last_token_s for r in rows]))
        for j, r in enumerate(rows):
            r.status = RequestStatus.RUNNING
            r.buffer_layer = -1
            self.running.append(r)
            self._emit(r, 1, time_s, self.num_layers if layers is None else layers[j], int(bool(exited and exited[j])),
                       0, int(bool(stayed and stayed[j])))

    def _emit(self, r: Request, count: int, last_time_s: float, sum_layers: int, early: int, forced: int,
              stayed: int) -> None:
        if r.num_generated == 0:
            r.first_token_s = last_time_s  # the first token always comes from a prefill
        r.num_generated += count
        r.last_token_s = last_time_s
        r.sum_exit_layer += sum_layers
        r.num_early_exits += early
        r.num_involuntary_exits += forced
        r.num_involuntary_stays += stayed
        if r.num_generated >= r.output_tokens:
            self._finish(r)

    def _finish(self, r: Request) -> None:
        r.status = RequestStatus.FINISHED
        r.finish_s = r.last_token_s
        self.blocks.free(r.request_id)
        self._released.append(r.request_id)
        del self.live[r.request_id]
        self.finished.append(r)
        self.admission.finished(r.num_generated)

    def _take_run_blocks(self, plan: StepPlan, k: int) -> None:
        """kv_free_executor: the blocks each decode row's k steps needed, taken now (what ``_lookahead`` would
        have taken and ``_trim_ahead`` left)."""
        for rid, generated in zip(plan.decode_ids, plan.decode_token_index):
            r = self.live.get(rid)
            if r is not None and r.prompt_tokens + generated + k - 1 > r.kv_tokens:
                self._grow(r, r.prompt_tokens + generated + k - 1)

    def _trim_ahead(self, plan: StepPlan, k: int) -> None:
        """A planned run cut after k steps gives back the blocks ``_lookahead`` took for the steps that did not
        run: step by step, each row would hold only what its k-th step needed (macro-steps stay exact)."""
        for rid, generated in zip(plan.decode_ids, plan.decode_token_index):
            r = self.live.get(rid)
            if r is not None:
                need = r.prompt_tokens + generated + k - 1
                if r.kv_tokens > self.blocks.blocks_for(need) * self.blocks.block_size:
                    self.blocks.trim(rid, need)
                    r.kv_tokens = self.blocks.capacity_tokens(rid)
