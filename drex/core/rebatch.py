"""The rebatching buffer: rows parked at an exit layer, oldest first, and the rules that flush them.

A parked row waits at the exit layer it left; a flush runs every row parked at
one layer through [e, L) at once, and an inline drain lets them join a live
decode batch at that layer. The buffer is a mapping exit layer -> rows; the
size and age rules (the authors' set) are one function, ``flush_in``, so that
flushing now and planning a run of steps ahead can never disagree; it also
honours a layer's due step, set where drex priced a park on a flush at the
next step.
"""

from __future__ import annotations

import numpy as np

from drex.config import SchedulerConfig
from drex.core.request import Request, RequestStatus
from drex.core.step import StepPlan


class RebatchBuffer(dict):
    """exit layer -> parked rows (oldest first)."""

    def __init__(self, cfg: SchedulerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # exit layer -> the step its rows flush at, whatever the rules say: set where drex priced a park on a
        # flush at the next step (the rules would have kept the rows waiting longer).
        self.due: dict[int, int] = {}

    @property
    def num_rows(self) -> int:
        return sum([len(rows) for rows in self.values()]) if self else 0

    def park(self, r: Request, layer: int, step_id: int) -> None:
        r.status = RequestStatus.BUFFERED
        r.buffer_layer = layer
        r.buffered_step = step_id
        self.setdefault(layer, []).append(r)

    def take(self, layer: int, step_id: int) -> list[Request]:
        """Remove the rows parked at layer as they rejoin at step_id, counting the steps each spent parked."""
        rows = self.pop(layer)
        self.due.pop(layer, None)
        for r in rows:
            r.num_parked_steps += max(step_id - r.buffered_step, 1)
        return rows

    def flush_in(self, rows: list[Request], step_id: int) -> int:
        """Steps until the buffer's size and age rules flush these rows (<= 0: now).

        The age-weighted rule |rows| * (1 + age * alpha) >= max_batch_size, solved for age,
        so that planning runs of steps and flushing use the very same rule.
        """
        cfg = self.cfg
        if len(rows) >= min(cfg.flush_rows, cfg.max_batch_size):
            return 0
        age = step_id - rows[0].buffered_step
        steps = cfg.flush_max_wait_steps - age
        if cfg.flush_age_alpha > 0:
            steps = min(steps, int(np.ceil((cfg.max_batch_size / len(rows) - 1) / cfg.flush_age_alpha)) - age)
        due = self.due.get(rows[0].buffer_layer)
        return steps if due is None else min(steps, due - step_id)

    def steps_until_flush(self, step_id: int) -> int:
        """Decode steps that can be planned at once before a rule may flush (1 when SLOs may force one)."""
        steps = self.cfg.max_lookahead_steps
        for rows in self.values():
            if any(r.slo_tpot_ms is not None for r in rows):
                return 1
            steps = min(steps, self.flush_in(rows, step_id))
        return max(steps, 1)

    def predicted_flush_rows(self, layer: int, staying: np.ndarray, steps: np.ndarray, step_id: int) -> np.ndarray:
        """Rows the flush carrying these stayers is expected to hold, under the flush rules.

        steps are offsets into the planned run: the buffer ages by one per step.
        """
        cfg = self.cfg
        parked = self.get(layer, ())
        age = step_id + steps - parked[0].buffered_step if parked else 0
        wait = np.maximum(cfg.flush_max_wait_steps - age, 1)
        grown = len(parked) + staying * wait
        return np.minimum(grown, min(cfg.flush_rows, cfg.max_batch_size))

    def predicted_flush_rows_one(self, layer: int, staying: int, step: int, step_id: int) -> int:
        """``predicted_flush_rows`` of one step (Python ints)."""
        cfg = self.cfg
        parked = self.get(layer, ())
        age = step_id + step - parked[0].buffered_step if parked else 0
        grown = len(parked) + staying * max(cfg.flush_max_wait_steps - age, 1)
        return min(grown, cfg.flush_rows, cfg.max_batch_size)

    def flush_plan(self, step_id: int, due) -> StepPlan | None:
        """A flush of the shallowest layer whose rows are ``due(rows)`` (a predicate), or None."""
        for layer, rows in sorted(self.items()):
            if due(rows):
                return StepPlan(step_id, "flush", flush_ids=[r.request_id for r in rows], flush_layer=layer,
                                flush_context=[r.context_len for r in rows],
                                flush_token_index=[r.num_generated for r in rows])
        return None

    def attach_drain(self, plan: StepPlan, deepest_exit: int) -> None:
        """Offer the shallowest layer's parked rows to a decode plan: they may join it at their layer.

        Only rows parked at the deepest exit point: a drained row joins the live rows and runs to the top, so
        one parked shallower goes through a flush instead, where it meets every deeper exit point.
        """
        if not (self.cfg.inline_drain and self and plan.decode_ids):
            return
        layer = min(self)
        if layer < deepest_exit:
            return
        rows = self[layer]
        plan.drain_ids = [r.request_id for r in rows]
        plan.drain_layer = layer
        plan.drain_context = [r.context_len for r in rows]
