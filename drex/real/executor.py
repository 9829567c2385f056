"""The real executor: carries out the scheduler's StepPlans on an EE model and measures them.

Same interface as the simulator's executor (``execute(plan, now, until)`` ->
``StepResult``), driven by the same ``Scheduler`` object. Inside a step, at
each exit point it runs the exit head over the rows still deciding, asks
``scheduler.decide_at_exit`` what each row does, and carries it out:

- EXIT: the row's token is the exit head's argmax; its skipped layers' K/V are
  filled (state copy for all of the step's exits in one scatter at step end,
  or recompute: its hidden state waits for its request's next step);
- BUFFER: the row's hidden state is parked in the rebatching pool;
- CONTINUE: the row goes deeper; buffered rows may join it (inline drain).

A flush fetches parked rows and runs [e, L). Regrouping rows rebuilds only an
``AttnMeta`` (index tensors into the pool and block tables); the hidden-state
rows that move are counted by the ``CopyMeter``. Block ids come from the
scheduler's BlockManager, so the cache holds what the scheduler planned.
Runs of k planned decode steps are executed one by one, stopping where the
batch changes or the next arrival is due (the simulator's ``until``).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from drex.core.step import BUFFER, CONTINUE, EXIT, StepOutcome, StepPlan, StepResult
from drex.real import KV_FILLS
from drex.real.batch import Batch, concat_outcomes, copy_record, memory_totals, plan_record
from drex.real.buffer import CopyMeter, HiddenPool, nbytes
from drex.real.kvcache import PagedKVCache, RecomputeFill
from drex.real.model import EEModel, confidence


class RealExecutor:
    def __init__(self, scheduler, model: EEModel, num_blocks: int, block_size: int, max_rows: int,
                 max_model_len: int, prompts: dict[int, list[int]], output_tokens: dict[int, int],
                 kv_fill: str = "copy", clock=time.monotonic, confidence_source=None):
        if scheduler.policy.ideal:
            raise ValueError(f"policy {scheduler.policy.name!r} is an upper bound priced by the simulator; "
                             "it cannot run on a real model")
        if kv_fill not in KV_FILLS:
            raise ValueError(f"kv fill must be one of {KV_FILLS}, got {kv_fill!r}")
        self.sched, self.model, self.kv_fill, self.clock = scheduler, model, kv_fill, clock
        self.num_layers = model.num_layers
        self.metric = scheduler.ee.metric
        lacking = [e for e in scheduler.exits if self.metric == "learned" and not model.has_estimator(e)]
        if lacking:
            raise ValueError(f"metric 'learned' needs a trained confidence estimator at every exit; exits {lacking} "
                             "have none (a model like smollm2-ee has them)")
        # Replaces the exit heads' confidences (drex run --confidence beta:...): random weights' are meaningless.
        self.source = confidence_source
        shape, dtype, device = model.shape, model.dtype, model.device
        self.cuda = device.type == "cuda"
        self.cache = PagedKVCache(shape, num_blocks, block_size, max_rows, -(-max_model_len // block_size),
                                  dtype=dtype, device=device)
        self.meter = CopyMeter()
        self.pool = HiddenPool(max_rows, shape.hidden_size, dtype, device, self.meter, kind="buffer")
        self.recompute = (RecomputeFill(max_rows, shape.hidden_size, dtype, device, self.meter)
                          if kv_fill == "recompute" else None)
        self.rows: dict[int, int] = {}  # request id -> cache row
        self._tables: dict[int, list[int]] = {}  # the plan's block tables (the scheduler's BlockManager)
        self._free_rows = list(range(max_rows - 1, -1, -1))
        self.prompts, self.output_tokens = prompts, output_tokens  # request id -> prompt ids, tokens to generate
        # Records: what the model said at every exit point, what was decided, per-token exit layers.
        self.confidences: list[tuple[int, int, int, float]] = []
        self.decisions: list[tuple[int, int, int, int]] = []
        self.exit_layers: dict[int, list[int]] = {}
        self.outputs: dict[int, list[int]] = {}  # request id -> every token generated (kept across preemptions)
        self._new_tokens: dict[int, list[int]] = {}  # tokens of the run of steps being executed
        # Each executed step as planned, with the decisions taken: drex validate re-prices them with the cost model.
        self.plans: list[dict] = []
        self.step_records: list[dict] = []
        self.kv_fill_s = 0.0
        self.recompute_token_layers = 0

    # -- bookkeeping ---------------------------------------------------------------------------

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _seq(self, rid: int) -> list[int]:
        return self.prompts[rid] + self.outputs.get(rid, [])

    def _release(self, plan: StepPlan) -> None:
        """Free cache rows of requests whose KV the scheduler freed (finished or preempted) since the last plan."""
        for rid in plan.released_ids:
            if rid in self.rows:
                row = self.rows.pop(rid)
                self.cache.clear_row(row)
                self.pool.drop(row)
                if self.recompute is not None:
                    self.recompute.drop(row)
                self._free_rows.append(row)

    def _row(self, rid: int) -> int:
        if rid not in self.rows:
            if not self._free_rows:
                raise RuntimeError("more live requests than cache rows (max_rows)")
            self.rows[rid] = self._free_rows.pop()
        row = self.rows[rid]
        self.cache.set_blocks(row, self._tables.get(rid, []))
        return row

    def _emit(self, rid: int, token: int, layer: int) -> None:
        self.outputs.setdefault(rid, []).append(int(token))
        self._new_tokens.setdefault(rid, []).append(int(token))
        self.exit_layers.setdefault(rid, []).append(layer)

    # -- the interface --------------------------------------------------------------------------

    @torch.inference_mode()
    def execute(self, plan: StepPlan, now: float, until: float = np.inf) -> StepResult:
        self._release(plan)
        self._tables = plan.block_tables or {}
        self._new_tokens = {}
        result = self._flush(plan) if plan.kind == "flush" else self._decode(plan, until)
        result.tokens = self._new_tokens
        return result

    def _decode(self, plan: StepPlan, until: float) -> StepResult:
        outcomes, durations, offsets = [], [], []
        for s in range(plan.num_steps):
            t0 = self.clock()
            out, offset = self._step(plan, s, t0)
            self._sync()
            durations.append(self.clock() - t0)
            self._record_step(plan.kind)
            self.plans[-1]["duration_s"] = durations[-1]
            if out is None:
                break
            outcomes.append(out)
            offsets.append(np.where(np.isnan(offset), durations[-1], offset))
            if out.buffered.any() or out.drain_layer >= 0 or self.clock() >= until:
                break
        result = StepResult(np.asarray(durations, dtype=float), concat_outcomes(outcomes) if outcomes else None)
        if outcomes and self.sched.policy.keeps_batch:
            result.token_offset_s = np.vstack(offsets)
        result.copied_bytes = sum(r["copied_bytes"] for r in self.step_records[-len(durations):])
        return result

    # -- one decode / prefill / mixed step -----------------------------------------------------------

    def _step(self, plan: StepPlan, s: int, t0: float):
        """Step s of a planned run: layers in segments between exit points, decisions at each exit."""
        model, sched, L = self.model, self.sched, self.num_layers
        dec = plan.decode_ids
        n = len(dec)
        step_plan, record, dec_rows, positions, batch, h = self._start_step(plan, s)

        out = StepOutcome(1, n, L) if n else None
        active = np.ones(n, dtype=bool)  # still deciding
        computing = np.ones(n, dtype=bool)  # still running layers
        tokens: list[int | None] = [None] * n
        offset = np.full((1, n), np.nan)
        copies: list[tuple[int, int, int]] = []  # (cache row, position, exit layer): one scatter at step end
        # Learned exits' tokens wait for the step's one LM-head pass (it reads its weights once, not per exit).
        pending: list | None = None if sched.policy.keeps_batch else []
        layer = 0
        for i, e in enumerate(sched.exits if n else ()):
            h = model.run_layers(h, batch.meta, self.cache, layer, e)
            layer = e
            asking = [] if i in step_plan.skip_exits else [j for j in range(n) if active[j]]  # skipped: all go on
            if not asking:
                continue
            idx = batch.first_tokens([("d", j) for j in asking])  # their rows in h
            conf, exit_tokens = self._exit_confidence(h[idx], e)
            if self.source is not None:
                conf = self.source.confidence(np.array([dec[j] for j in asking]),
                                              np.array([step_plan.decode_token_index[j] for j in asking]), i)
            conf_all = np.full((1, n), np.nan)
            conf_all[0, asking] = conf
            d = sched.decide_at_exit(step_plan, i, conf_all, active[None, :].copy(), self.clock())
            out.record(e, d.actions, d.forced, d.stayed, d.drain, sched.policy.keeps_batch)
            acts = d.actions[0]
            record["decisions"].append([i, acts.tolist(), d.forced[0].tolist(), d.stayed[0].tolist(), bool(d.drain[0])])
            for k, j in enumerate(asking):
                self.confidences.append((dec[j], step_plan.decode_token_index[j], e, float(conf[k])))
                self.decisions.append((dec[j], step_plan.decode_token_index[j], e, int(acts[j])))

            exiting = [k for k, j in enumerate(asking) if acts[j] == EXIT]
            argmax = exit_tokens(exiting, [dec[asking[k]] for k in exiting], pending)
            for k in exiting:
                tokens[asking[k]] = -1 if argmax is None else argmax[k]  # -1: its token comes at step end
                if argmax is not None:
                    self._emit(dec[asking[k]], argmax[k], e)
                offset[0, asking[k]] = self.clock() - t0
            if not sched.policy.keeps_batch and exiting:  # latency-only rows keep computing: nothing to fill
                computing[[asking[k] for k in exiting]] = False
                fill = [k for k in exiting if self._needs_fill(dec[asking[k]])]
                if self.recompute is not None and fill:
                    self.recompute.add([dec_rows[asking[k]] for k in fill], h[[idx[k] for k in fill]], e,
                                       [positions[asking[k]] for k in fill])
                copies += [(dec_rows[asking[k]], positions[asking[k]], e) for k in fill]
            parking = [k for k, j in enumerate(asking) if acts[j] == BUFFER]
            if parking:
                self.pool.park([dec_rows[asking[k]] for k in parking], h[[idx[k] for k in parking]], e)
                computing[[asking[k] for k in parking]] = False
            active[[j for j in asking if acts[j] != CONTINUE]] = False
            drained = list(plan.drain_ids) if d.drain[0] else []
            if (exiting and not sched.policy.keeps_batch) or parking or drained:
                h = self._regroup(batch, h, computing, drained, plan.drain_context)
                if not batch.tags:
                    break
        if batch.tags and layer < L:
            h = model.run_layers(h, batch.meta, self.cache, layer, L)
        self._finish_top(h, batch, tokens, dec, pending)
        if copies and self.recompute is None:
            self._copy_fill(copies)
        return out, offset

    def _exit_confidence(self, h, e: int):
        """Confidences [n] of the rows h at exit e, and a function: row positions that exit -> {position: token}.

        With the learned metric only the exit's small estimator runs over every row and the LM head only
        over the rows that leave; otherwise the full exit logits of every row give both (computed either
        way: the step's cost includes them even when ``--confidence`` replaces the value).
        """
        model = self.model
        if self.metric == "learned":
            x = model.exit_hidden(h, e)
            conf = model.estimate(x, e).cpu().numpy()

            def tokens(exiting, rids, pending):
                """{position: token}, or None: the rows' normed states joined ``pending`` (the shared LM head
                runs once at step end over them and the top's rows)."""
                if not exiting:
                    return {}
                if pending is not None and model.shares_top_head(e):
                    pending.append((x[exiting], e, rids))
                    return None
                return dict(zip(exiting, model.head_logits(x[exiting], e).argmax(-1).tolist()))
            return conf, tokens
        logits = model.exit_logits(h, e)
        argmax = logits.argmax(-1).tolist()
        return confidence(logits, self.metric).cpu().numpy(), lambda exiting, *_: {k: argmax[k] for k in exiting}

    def _start_step(self, plan: StepPlan, s: int):
        """Step s of a run: KV recompute owed by its decode rows, its plan and record, the batch, embeddings."""
        model, dec = self.model, plan.decode_ids
        n = len(dec)
        dec_rows = [self._row(rid) for rid in dec]
        if self.recompute is not None and dec:  # skipped layers of these rows' last tokens, before anything reads them
            t = self.clock()
            self.recompute_token_layers += self.recompute.run(model, self.cache, dec_rows)
            self._sync()
            self.kv_fill_s += self.clock() - t
        positions = [c + s for c in plan.decode_context]
        step_plan = dataclasses.replace(plan, decode_context=positions, num_steps=1,
                                        decode_token_index=[t + s for t in plan.decode_token_index])
        record = plan_record(step_plan)
        self.plans.append(record)
        ids = [self.outputs[rid][-1] for rid in dec]  # decode rows have >= 1 output token
        batch = Batch([("d", j) for j in range(n)], list(dec_rows), list(positions), [1] * n)
        for ch in plan.prefill:
            batch.add(("c", ch), self._row(ch.request_id), ch.start, ch.num_tokens)
            ids.extend(self._seq(ch.request_id)[ch.start:ch.start + ch.num_tokens])
        batch.meta = self.cache.meta(batch.rows, batch.starts, batch.lens)
        h = model.embed(torch.tensor(ids, device=model.device))  # [N, H]
        return step_plan, record, dec_rows, positions, batch, h

    def _copy_fill(self, copies: list[tuple[int, int, int]]) -> None:
        """State copy: each exited token's K/V into the layers it skipped, one scatter for the step."""
        t = self.clock()
        nb = self.cache.copy_fill(*zip(*copies))
        self._sync()
        self.kv_fill_s += self.clock() - t
        self.meter.add("kv_copy", nb)

    def _regroup(self, batch: Batch, h, computing, drained: list[int], drain_context) -> torch.Tensor:
        """Keep the rows still computing (and all prefill chunks), append drained rows from the pool.

        Only hidden-state rows move (counted); the new AttnMeta is index tensors into the same KV.
        """
        keep = [k for k, tag in enumerate(batch.tags) if tag[0] != "d" or computing[tag[1]]]
        meta = batch.meta
        tok_idx = [t for k in keep for t in range(meta.token_start[k], meta.token_start[k] + meta.lens[k])]
        parts = [h[tok_idx]] if tok_idx else []
        if parts:
            self.meter.add("gather", nbytes(parts[0]))
        batch.keep(keep)
        if drained:
            drain_rows = [self._row(rid) for rid in drained]
            parts.append(self.pool.take(drain_rows))
            for rid, row, ctx in zip(drained, drain_rows, drain_context):
                batch.add(("r", rid), row, ctx, 1)
        if not batch.tags:
            return h
        batch.meta = self.cache.meta(batch.rows, batch.starts, batch.lens)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _needs_fill(self, rid: int) -> bool:
        """A request's last token (just emitted) needs no KV in the skipped layers: nobody will attend to it."""
        return len(self.outputs[rid]) < self.output_tokens[rid]

    def _finish_top(self, h, batch: Batch, tokens, dec, pending=None) -> None:
        """Top-of-model tokens: decode rows that ran full depth, drained rows, prompts' last chunks; and the
        learned exits' deferred tokens, in the same LM-head pass."""
        want, who = [], []
        for k, (kind, ref) in enumerate(batch.tags):
            first = batch.meta.token_start[k]
            if kind == "d" and tokens[ref] is None:
                want.append(first)
                who.append(dec[ref])
            elif kind == "r":
                want.append(first)
                who.append(ref)
            elif kind == "c" and ref.last:
                want.append(first + batch.meta.lens[k] - 1)
                who.append(ref.request_id)
        xs = [x for x, _, _ in pending or ()]
        owners = [(rid, e) for _, e, rids in pending or () for rid in rids]
        if want:
            xs.append(self.model.exit_hidden(h[want], self.num_layers))
            owners += [(rid, self.num_layers) for rid in who]
        if not xs:
            return
        top = self.model.head_logits(torch.cat(xs) if len(xs) > 1 else xs[0], self.num_layers).argmax(-1).tolist()
        for (rid, layer), tok in zip(owners, top):
            self._emit(rid, tok, layer)

    # -- a flush: parked rows through [e, L) -------------------------------------------------------------

    def _flush(self, plan: StepPlan) -> StepResult:
        """Parked rows run on from their layer, meeting every deeper exit point (where they may exit)."""
        t0 = self.clock()
        record = plan_record(plan)
        self.plans.append(record)
        n, L = len(plan.flush_ids), self.num_layers
        rows = [self._row(rid) for rid in plan.flush_ids]
        h = self.pool.take(rows)
        batch = Batch([("d", j) for j in range(n)], list(rows), list(plan.flush_context), [1] * n)
        batch.meta = self.cache.meta(batch.rows, batch.starts, batch.lens)
        deeper = [(i, e) for i, e in enumerate(self.sched.exits) if e > plan.flush_layer]
        out = StepOutcome(1, n, L) if deeper else None
        tokens: list[int | None] = [None] * n
        copies: list[tuple[int, int, int]] = []
        active, computing = np.ones(n, dtype=bool), np.ones(n, dtype=bool)
        layer = plan.flush_layer
        for i, e in deeper:
            h = self.model.run_layers(h, batch.meta, self.cache, layer, e)
            layer = e
            asking = [j for j in range(n) if active[j]]
            idx = batch.first_tokens([("d", j) for j in asking])
            conf, exit_tokens = self._exit_confidence(h[idx], e)
            if self.source is not None:
                conf = self.source.confidence(np.array([plan.flush_ids[j] for j in asking]),
                                              np.array([plan.flush_token_index[j] for j in asking]), i)
            conf_all = np.full((1, n), np.nan)
            conf_all[0, asking] = conf
            d = self.sched.decide_at_exit(plan, i, conf_all, active[None, :].copy(), self.clock())
            out.record(e, d.actions, d.forced, d.stayed, d.drain, False)
            acts = d.actions[0]
            record["decisions"].append([i, acts.tolist(), d.forced[0].tolist(), d.stayed[0].tolist(), False])
            exiting = [k for k, j in enumerate(asking) if acts[j] == EXIT]
            for k, tok in exit_tokens(exiting, None, None).items():
                j = asking[k]
                tokens[j] = tok
                self._emit(plan.flush_ids[j], tok, e)
            for k, j in enumerate(asking):
                self.confidences.append((plan.flush_ids[j], plan.flush_token_index[j], e, float(conf[k])))
                self.decisions.append((plan.flush_ids[j], plan.flush_token_index[j], e, int(acts[j])))
            active[[j for j in asking if acts[j] != CONTINUE]] = False
            if exiting:
                computing[[asking[k] for k in exiting]] = False
                fill = [k for k in exiting if self._needs_fill(plan.flush_ids[asking[k]])]
                if self.recompute is not None and fill:
                    self.recompute.add([rows[asking[k]] for k in fill], h[[idx[k] for k in fill]], e,
                                       [plan.flush_context[asking[k]] for k in fill])
                copies += [(rows[asking[k]], plan.flush_context[asking[k]], e) for k in fill]
                h = self._regroup(batch, h, computing, [], [])
                if not batch.tags:
                    break
        if batch.tags:
            h = self.model.run_layers(h, batch.meta, self.cache, layer, L)
            self._finish_top(h, batch, tokens, plan.flush_ids)
        if copies and self.recompute is None:
            self._copy_fill(copies)
        self._sync()
        dur = self.clock() - t0
        self._record_step("flush")
        self.plans[-1]["duration_s"] = dur
        return StepResult(np.array([dur]), outcome=out, copied_bytes=self.step_records[-1]["copied_bytes"])

    def _record_step(self, kind: str) -> None:
        self.step_records.append(copy_record(self.meter.take_step()))

    def stats(self) -> dict:
        """Totals for summary.json: what moved, and what KV fill cost."""
        return {"kv_fill": self.kv_fill, "kv_fill_s": self.kv_fill_s, "recompute_token_layers": self.recompute_token_layers,
                **memory_totals(self.meter.total, self.pool, self.cache, self.recompute)}
