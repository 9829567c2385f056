"""``drex run``: replay a workload in real time through the scheduler and the real executor.

Requests join the scheduler when the monotonic clock passes their arrival; the
scheduler plans each step from ``now`` and the RealExecutor runs it. The run
directory gets the simulator's files (requests.csv, steps.csv with measured
durations, summary.json) plus confidence.csv (what the model said at every
exit point each token reached, or the ``--confidence`` source that replaced
it), decisions.csv, tokens.jsonl, workload.csv and run.json — everything
``drex validate`` needs to replay the run in simulation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from drex.config import EEConfig
from drex.confidence import make_confidence_source
from drex.core.blocks import num_kv_blocks
from drex.core.request import Request, RequestStatus
from drex.core.scheduler import Scheduler
from drex.devices import get_device
from drex.dtypes import DTYPE_BYTES, check_dtype
from drex.metrics import check_accounted, request_records, run_fields, summarize, write_run
from drex.models import get_model
from drex.outputs import recorded_path
from drex.real.batch import synthetic_prompt
from drex.real.executor import RealExecutor
from drex.real.init import torch_dtype
from drex.real.model import EEModel
from drex.settings import RunSettings, build_cost_model



INTERRUPTED = "interrupted"  # requests.csv status of a request a Ctrl-C cut short


@dataclass(frozen=True)
class RunConfig:
    sim: RunSettings  # model, device, exits, scheduler settings, seed, KV blocks: as the simulator reads them
    weights: str = "auto"  # a checkpoint directory, "random", or "auto" (the model's checkpoint if it has one)
    dtype: str = "fp32"
    kv_fill: str = "copy"
    confidence: str = "model"  # the exit heads', or a simulator source (beta:A,B | trace:PATH) replacing them

    def __post_init__(self) -> None:
        check_dtype(self.dtype)

    @property
    def torch_device(self) -> str:
        return "cpu" if self.sim.device == "cpu" else "cuda"


@dataclass
class RunResult:
    requests: pd.DataFrame
    steps: pd.DataFrame
    summary: dict
    executor: RealExecutor
    workload: list = field(default_factory=list)
    failure: BaseException | None = None  # the internal error that cut the run short (records kept)


def build_model(cfg: RunConfig, exits: tuple[int, ...]) -> EEModel:
    shape = get_model(cfg.sim.model)
    dtype, device = torch_dtype(cfg.dtype), cfg.torch_device
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {cfg.sim.device} needs CUDA, which this machine lacks (use --device cpu)")
    weights = resolve_weights(cfg)
    extra = shape.extra_weights if cfg.weights == "auto" and weights != "random" else None  # trained exits
    if weights == "random":
        return EEModel.random(shape, dtype=dtype, device=device, seed=cfg.sim.seed, exit_layers=exits)
    return EEModel.from_pretrained(weights, dtype=dtype, device=device, exit_layers=exits, extra=extra)


def resolve_weights(cfg: RunConfig) -> str:
    """``auto``: the checkpoint of the model's config.json when its folder holds weights, else random weights."""
    if cfg.weights == "auto":
        folder = get_model(cfg.sim.model).path
        return folder if folder is not None and any(Path(folder).glob("*.safetensors")) else "random"
    return cfg.weights


def recorded_weights(weights: str) -> str:
    """The weights as a run's records name them: ``random``, or the checkpoint folder (``recorded_path``)."""
    return weights if weights in ("random", "auto") else recorded_path(weights)


def default_num_blocks(cfg: RunConfig, workload, shape, dtype_bytes: int) -> int:
    """The device's capacity, but no more than the whole workload needs at once (a CPU run allocates it)."""
    sched = cfg.sim.scheduler
    per_req = [-(-min(w.prompt_tokens + w.output_tokens, sched.max_model_len) // sched.block_size) for w in workload]
    need = sum(sorted(per_req)[-sched.max_batch_size:]) + 1
    dev = get_device(cfg.sim.device)
    have = num_kv_blocks(dev.mem_bytes, shape.weight_bytes(dtype_bytes), shape.kv_bytes_per_token(dtype_bytes),
                         sched.block_size, cfg.sim.mem_utilization)
    return max(1, min(need, have))


def warm_up(executor: RealExecutor) -> None:
    """One short prefill, decode and KV copy on a scratch cache: lazy init and kernel compiles happen here."""
    from drex.real.generate import greedy_decode

    ee = EEConfig(exits=executor.sched.exits[:1], threshold=0.0) if executor.sched.exits else None
    with torch.inference_mode():
        greedy_decode(executor.model, [[1, 2, 3, 4, 5]], 3, ee=ee, block_size=executor.cache.block_size)
    executor._sync()


def run_real(cfg: RunConfig, workload, prompts: dict[int, list[int]] | None = None, model: EEModel | None = None,
             cost=None, progress: bool = False) -> RunResult:
    """Serve ``workload`` in real time. ``prompts`` (request id -> token ids) default to synthetic ones;
    ``model`` and ``cost`` override the ones cfg names (tests share one model with a reference decoder)."""
    sim = cfg.sim
    shape = get_model(sim.model)
    sim.ee.check_model(shape.num_layers)
    dtype_bytes = DTYPE_BYTES[cfg.dtype]
    sim = dataclasses.replace(sim, dtype_bytes=dtype_bytes)
    cost = cost or build_cost_model(sim, shape)
    blocks = sim.num_kv_blocks or default_num_blocks(cfg, workload, shape, dtype_bytes)
    sched = Scheduler(shape, sim.ee, sim.scheduler, cost, blocks)
    source = (None if cfg.confidence == "model"
              else make_confidence_source(cfg.confidence, sim.ee.exits, shape.num_layers, sim.seed))
    model = model or build_model(cfg, sched.exits)
    t_start = time.monotonic()
    prompts = prompts or {}
    prompts = {w.request_id: prompts.get(w.request_id) or synthetic_prompt(sim.seed, w.request_id, w.prompt_tokens,
                                                                            shape.vocab_size) for w in workload}
    executor = RealExecutor(sched, model, blocks, sim.scheduler.block_size, sim.scheduler.max_batch_size,
                            sim.scheduler.max_model_len, prompts, {w.request_id: w.output_tokens for w in workload},
                            cfg.kv_fill, clock=lambda: time.monotonic() - t_start, confidence_source=source)
    warm_up(executor)

    requests = [Request(w.request_id, w.arrival_s, w.prompt_tokens, w.output_tokens, w.slo_ttft_ms, w.slo_tpot_ms)
                for w in workload]
    t_start = time.monotonic()  # the clock starts at the first arrival (time 0 of the trace)
    cpu_start = time.process_time()
    failure = None
    try:
        sched_s = _serve(sched, executor, requests, progress)
        interrupted = False
    except KeyboardInterrupt:  # Ctrl-C: keep what finished; the rest is marked interrupted below
        sched_s, interrupted = math.nan, True
    except Exception as e:  # noqa: BLE001 - every input was checked: a bug; keep what finished, as for Ctrl-C
        sched_s, interrupted, failure = math.nan, True, e
    wall_s = executor.clock()
    cpu_s = time.process_time() - cpu_start  # < wall_s: the core was shared (another process ran on it)

    if not interrupted:
        check_accounted(requests, "run")
    req_df = request_records(requests)
    if interrupted:
        cut = ~req_df.status.isin([RequestStatus.FINISHED.value, RequestStatus.REJECTED.value])
        req_df.loc[cut, "status"] = INTERRUPTED
        req_df.loc[cut, "reason"] = ("the run was interrupted (Ctrl-C) before this request finished" if failure is None
                                     else f"drex failed (internal error) before this request finished: {failure!r}")
    steps = pd.DataFrame(sched.log.columns())
    extra_cols = pd.DataFrame(executor.step_records)
    if len(extra_cols) == len(steps):
        steps = pd.concat([steps, extra_cols], axis=1)
    itl = np.concatenate(sched.itl_s or [np.array([])])
    extra = run_fields([sched], blocks, cost.name, source.name if source is not None else "model", sim,
                       shape.name)
    extra |= {"backend": "real", "torch_device": cfg.torch_device, "dtype": cfg.dtype,
              "weights": recorded_weights(resolve_weights(cfg)),
              "run_wall_s": wall_s, "run_cpu_s": cpu_s, "scheduler_s": sched_s, "interrupted": interrupted,
              "step_time_s": float(steps["duration_ms"].sum() / 1e3) if len(steps) else 0.0}
    extra |= executor.stats()
    return RunResult(req_df, steps, summarize(req_df, steps, itl, extra), executor, list(workload), failure)


def _serve(sched: Scheduler, executor: RealExecutor, requests: list[Request], progress: bool) -> float:
    """The real-time loop: admit arrivals, plan, execute, complete. Returns the seconds spent scheduling."""
    from drex.progress import Progress

    clock = executor.clock
    i = 0
    sched_s = 0.0
    shown_s = 0.0
    with Progress("serving", len(requests), "req", enabled=progress) as bar:
        while True:
            now = clock()
            while i < len(requests) and requests[i].arrival_s <= now:
                sched.add_request(requests[i], requests[i].arrival_s)
                i += 1
            if progress and now - shown_s > 0.25:  # counting the finished is O(n): a few times a second
                shown_s = now
                bar.note(f"arrived {i}/{len(requests)}, trace time {now:.0f} s")
                bar.set(sum(r.status.done for r in requests))
            t = clock()
            plan = sched.schedule(now)
            sched_s += clock() - t
            if plan is None:
                if i < len(requests):
                    time.sleep(max(0.0, min(requests[i].arrival_s - clock(), 0.25 if progress else math.inf)))
                    continue
                if sched.has_work():
                    raise RuntimeError("scheduler has work but planned no step")
                break
            nxt = requests[i].arrival_s if i < len(requests) else math.inf
            start = clock()
            result = executor.execute(plan, start, nxt)
            t = clock()
            sched.complete(plan, result, start)
            sched_s += clock() - t
        bar.set(len(requests))
    return sched_s


def run_config_json(cfg: RunConfig, trace: str, num_kv_blocks: int) -> dict:
    sim, sched = cfg.sim, cfg.sim.scheduler
    return {"model": sim.model, "device": sim.device, "exits": list(sim.ee.exits), "threshold": sim.ee.threshold,
            "metric": sim.ee.metric, "scheduler": dataclasses.asdict(sched), "seed": sim.seed,
            "num_kv_blocks": num_kv_blocks, "cost_model": sim.cost_model, "trace": trace,
            "weights": recorded_weights(cfg.weights), "dtype": cfg.dtype, "kv_fill": cfg.kv_fill, "confidence": cfg.confidence}


def write_real_run(out_dir, cfg: RunConfig, res: RunResult, trace: str) -> None:
    out = Path(out_dir)
    write_run(out, res.requests, res.steps, res.summary)
    ex = res.executor
    pd.DataFrame(ex.confidences, columns=["request_id", "token_index", "exit_layer", "confidence"]).to_csv(
        out / "confidence.csv", index=False, float_format="%.6f")
    pd.DataFrame(ex.decisions, columns=["request_id", "token_index", "exit_layer", "action"]).to_csv(
        out / "decisions.csv", index=False)
    with open(out / "tokens.jsonl", "w") as f:
        for rid in sorted(ex.exit_layers):
            f.write(json.dumps({"request_id": rid, "tokens": ex.outputs[rid], "exit_layers": ex.exit_layers[rid]})
                    + "\n")
    pd.DataFrame([{"arrival_s": f"{w.arrival_s:.9f}", "prompt_tokens": w.prompt_tokens,
                   "output_tokens": w.output_tokens,
                   "slo_ttft_ms": "" if w.slo_ttft_ms is None else w.slo_ttft_ms,
                   "slo_tpot_ms": "" if w.slo_tpot_ms is None else w.slo_tpot_ms} for w in res.workload]).to_csv(
        out / "workload.csv", index=False)
    with open(out / "plans.jsonl", "w") as f:
        for rec in ex.plans:
            f.write(json.dumps(rec) + "\n")
    (out / "run.json").write_text(json.dumps(run_config_json(cfg, trace, res.summary["kv_total_blocks"]), indent=2,
                                             sort_keys=True) + "\n")
