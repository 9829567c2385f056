"""Applying what an executor did to the scheduler's state: tokens, exits, parking, flushes, finishing.

The Scheduler plans and decides; this half of it (a mixin, sharing its state)
turns a StepResult into request counters, token times, buffer moves and the
step log. Like the rest of the core it reads no clock: times come from the
step's start and its durations.
"""

from __future__ import annotations

import numpy as np

from drex.core.request import BUFFERED, FINISHED, RUNNING, Request
from drex.core.step import StepPlan


class StepAccounting:
    def complete(self, plan: StepPlan, result, start_s: float) -> None:
        """Apply a finished run of steps: tokens, exits, parking, flushes, finishing, and the step log."""
        dur = np.asarray(result.durations_s, dtype=float)
        k = len(dur)
        ends = start_s + np.cumsum(dur)
        L = self.num_layers
        buffered_before = self.num_buffered
        kv_blocks = self.blocks.num_used  # before this run's finished requests free theirs
        n_exited = n_buffered = 0
        layer_end = L
        if plan.kind == "flush":
            self._rejoin(self.buffer.pop(plan.flush_layer), ends[0])
            self.num_flushes += 1
        for ch in plan.prefill:
            r = self.live[ch.request_id]
            r.num_prefilled += ch.num_tokens
            if ch.last:
                self._emit(r, 1, float(ends[-1]), L, 0, 0, 0)
        out = result.outcome
        if plan.decode_ids and out is not None and out.is_plain:
            self._apply_full_depth([self.live[i] for i in plan.decode_ids], ends)
        elif plan.decode_ids and out is not None:
            n_exited, n_buffered = out.exited.sum(axis=1), out.buffered.sum(axis=1)
            layer_end = np.where(out.computing.any(axis=1) | bool(plan.prefill), L, out.reach.max(axis=1))
            self._apply_decode(plan, out, ends, ends - dur, result.token_offset_s)
        if self.cfg.profitability == "art" and self.policy.rebatches:
            split = out is not None and not out.is_plain and out.buffered.any()
            kind = "flush" if plan.kind == "flush" else ("split" if split else "full")
            self.art.update(kind, float(dur[-1]))
        self.running = [r for r in self.running if r.status == RUNNING]
        self.log.append(self.step_id, self.replica, start_s, dur, plan.kind, plan.num_rows, len(plan.decode_ids),
                        sum(c.num_tokens for c in plan.prefill), len(plan.flush_ids), n_exited, n_buffered,
                        layer_end, self._buffer_sizes(k, buffered_before),
                        plan.flush_layer if plan.kind == "flush" else 0, kv_blocks)
        self.step_id += k

    def _buffer_sizes(self, k: int, before: int):
        """Buffer size after each step of a run: it can only change in the run's last step."""
        after = self.num_buffered
        if k == 1 or after == before:
            return after
        sizes = np.full(k, before)
        sizes[-1] = after
        return sizes

    def _apply_decode(self, plan: StepPlan, out, ends: np.ndarray, starts: np.ndarray, offset_s) -> None:
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
        for j, r in enumerate(rows):
            # A parked token's involuntary stays count now, though it emits only at its flush.
            r.num_involuntary_stays += stayed[j]
            if counts[j]:
                self._emit(r, counts[j], last_time[j], layers[j], early[j], forced[j], 0)
            if parked[j] and r.status == RUNNING:
                r.status = BUFFERED
                r.buffer_layer = int(out.reach[-1, j])
                r.buffered_step = self.step_id + k - 1
                self.buffer.setdefault(r.buffer_layer, []).append(r)
        if out.buffered[-1].any():
            self.num_rebatches += 1
        if out.drain_layer >= 0:
            self._rejoin(self.buffer.pop(out.drain_layer), float(ends[k - 1]))
            self.num_drains += 1

    def _apply_full_depth(self, rows: list[Request], ends: np.ndarray) -> None:
        """Fast path: every row emitted a token from the last layer at every step."""
        k, L = len(ends), self.num_layers
        last = float(ends[-1])
        if k > 1:
            self.itl_s.append(np.repeat(np.diff(ends), len(rows)))
        self.itl_s.append(float(ends[0]) - np.array([r.last_token_s for r in rows]))
        for r in rows:
            r.num_generated += k
            r.last_token_s = last
            r.sum_exit_layer += k * L
            if r.num_generated >= r.output_tokens:
                self._finish(r)

    def _rejoin(self, rows: list[Request], time_s: float) -> None:
        """Buffered rows ran [e, L): each emits its token and rejoins the running set."""
        self.itl_s.append(np.array([time_s - r.last_token_s for r in rows]))
        for r in rows:
            r.status = RUNNING
            r.buffer_layer = -1
            self.running.append(r)
            self._emit(r, 1, time_s, self.num_layers, 0, 0, 0)

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
        r.status = FINISHED
        r.finish_s = r.last_token_s
        self.blocks.free(r.request_id)
        del self.live[r.request_id]
        self.finished.append(r)
