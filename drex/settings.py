"""One run's settings, shared by both bodies: the dataclass, the cost-model builder, and the flags.

``drex simulate``, ``drex compare`` and ``drex run`` take the same flags
(``add_run_flags``) and turn them into the same ``RunSettings``; ``drex run``
adds only its own (weights, dtype, KV fill).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from drex.config import ADMISSIONS, CONFIDENCE_METRICS, PROFITABILITY, EEConfig, SchedulerConfig
from drex.core.policies import POLICIES
from drex.devices import get_device
from drex.metrics import counted
from drex.models import ModelShape, get_model
from drex.progress import add_progress_flag
from drex.slo import add_slo_flags, with_default_slos
from drex.workload import make_workload

ROUTERS = ("round-robin", "least-outstanding")


@dataclass(frozen=True)
class RunSettings:
    """One run's settings, as both bodies read them (the real backend adds weights, dtype and KV fill)."""

    model: str = "tiny"
    device: str = "cpu"
    ee: EEConfig = field(default_factory=EEConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    confidence: str = "beta"
    replicas: int = 1
    router: str = "round-robin"
    seed: int = 0
    dtype_bytes: int = 2
    mem_utilization: float = 0.9
    num_kv_blocks: int | None = None  # override the capacity derived from device memory
    cost_model: str = "auto"  # "auto" (profile if present, else roofline) or "roofline"
    tp: int = 1  # tensor-parallel degree of each replica (costmodel.tensor_parallel)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"--replicas must be >= 1, got {self.replicas}")
        if self.router not in ROUTERS:
            raise ValueError(f"--router must be one of {', '.join(ROUTERS)}, got {self.router!r}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:  # 0 is no "default": None is
            raise ValueError(f"--num-kv-blocks must be >= 1, got {self.num_kv_blocks}")
        if self.seed < 0:
            raise ValueError(f"--seed must be a non-negative integer, got {self.seed}")



def build_cost_model(cfg: RunSettings, shape: ModelShape):
    from drex.costmodel.tensor_parallel import TensorParallel, check_tp

    check_tp(get_device(cfg.device), cfg.tp, shape)
    if cfg.cost_model == "roofline":
        from drex.costmodel.roofline import RooflineCostModel

        base = RooflineCostModel(shape, cfg.device, cfg.dtype_bytes, cfg.tp)
    else:
        from drex.costmodel.load import load_cost_model

        base = load_cost_model(cfg.device, shape, cfg.dtype_bytes, tp=cfg.tp)
    return base if cfg.tp == 1 else TensorParallel(base, get_device(cfg.device), shape.hidden_size, cfg.tp,
                                                   cfg.dtype_bytes)


def parse_exits(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--exits takes layer numbers like 20 or 10,20,30, got {text!r}") from None


def add_run_flags(p: argparse.ArgumentParser, *, policy: bool = True) -> None:
    """Flags shared by simulate, compare and the real backend's run."""
    p.add_argument("--trace", default="azure-code",
                   help="azure-code | azure-conv | mooncake | PATH | synthetic:SPEC | humaneval[:rate=R,output=N]")
    p.add_argument("--model", default="tiny", help="model name (tiny, llama2-7b, ...) or path to config.json")
    p.add_argument("--device", default="cpu", help="h100 | h200 | a100 | b200 | rtx3090ti | rtx5090 | cpu")
    if policy:
        p.add_argument("--policy", default="drex", help=", ".join(POLICIES))
    p.add_argument("--exits", type=parse_exits, default=None,
                   help="exit layers, e.g. 20 or 10,20,30 (default: the model's trained exits, else mid-depth)")
    p.add_argument("--threshold", type=float, default=None,
                   help="confidence a token needs at an exit point to leave there (default: the trained model's "
                        "own, e.g. smollm2-ee's; else 0.8)")
    p.add_argument("--metric", default=None, choices=CONFIDENCE_METRICS,
                   help="confidence of an exit head's distribution: top-1 minus top-2 probability, top-1 "
                        "probability, entropy (lower is surer), or learned: the exit's trained estimator, the LM head "
                        "only for rows that leave (default: the trained model's own, else margin)")
    p.add_argument("--confidence", default="beta",
                   help="where confidences come from: beta[:A,B[/A,B..]] (Beta per exit point) | trace:PATH "
                        "(a recorded request_id,token_index,exit_layer,confidence CSV)")
    p.add_argument("--max-batch-size", type=int, default=256, help="most requests running at once per replica")
    p.add_argument("--chunk-size", type=int, default=512, help="token budget per step (chunked prefill)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per paged-KV block")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="most tokens (prompt + output) one request may hold; a longer one is rejected (default: "
                        "the model's max position)")
    p.add_argument("--admission", default="reserve", choices=ADMISSIONS,
                   help="when a waiting request joins the batch: reserve (its whole prompt fits, with room kept for "
                        "the running requests' growth, adapted at each preemption), vllm (its whole prompt fits: "
                        "vLLM's and Vidur's rule), first-chunk (its first prefill chunk fits), oracle (simulator "
                        "only: knows output lengths); see drex/core/admission.py")
    p.add_argument("--profitability", default="costmodel", choices=PROFITABILITY,
                   help="drex's split rule: costmodel (its own prediction), art (the authors' running-average ART "
                        "rule), knobs (best-in-hindsight's family)")
    p.add_argument("--max-tpot-inflation", type=float, default=1.25,
                   help="parking may inflate a row's time per output token by at most this factor (inf: unbounded)")
    p.add_argument("--split-fraction", type=float, default=0.5,
                   help="knobs: split when at least this fraction of the batch wants to exit")
    p.add_argument("--split-continue", action="store_true",
                   help="knobs: the rows that go deeper continue at once instead of parking")
    p.add_argument("--flush-min-rows", type=int, default=0, help="flush the buffer at this many rows (0: max batch)")
    p.add_argument("--flush-max-wait-steps", type=int, default=16, help="flush a parked row after this many steps")
    p.add_argument("--no-inline-drain", action="store_true",
                   help="never run parked rows' deep layers inside a step (drain only by flushing)")
    p.add_argument("--every-exit-head", action="store_true",
                   help="drex: evaluate every exit head in every step (by default it skips the heads that no split "
                        "could pay for; see README, How the scheduler decides)")
    p.add_argument("--num-requests", type=int, default=None,
                   help="replay only the first N requests (default: the whole trace)")
    p.add_argument("--rate-scale", type=float, default=1.0, help="X > 1 compresses time (X times the rate)")
    p.add_argument("--replicas", type=int, default=1, help="model replicas serving the trace together")
    p.add_argument("--router", default="round-robin", choices=ROUTERS, help="how requests are spread over replicas")
    p.add_argument("--num-kv-blocks", type=int, default=None,
                   help="override KV capacity in blocks (default: what the device's memory holds)")
    p.add_argument("--cost-model", default="auto", choices=("auto", "roofline"),
                   help="auto: the device's measured profile when one is shipped, else the analytic roofline")
    p.add_argument("--tp", type=int, default=1,
                   help="tensor-parallel GPUs per replica: the profile measured at that degree + all-reduces")
    p.add_argument("--seed", type=int, default=0, help="one seed for every random choice (same seed, same files)")
    add_slo_flags(p)
    add_progress_flag(p)


def settings_from_args(args: argparse.Namespace, policy: str) -> RunSettings:
    shape = get_model(args.model)
    exits = args.exits
    max_len = shape.max_position if args.max_model_len is None else args.max_model_len  # 0 is refused, as -5
    if exits is None:
        exits = shape.trained_exits or (shape.num_layers // 2,)
    sched = SchedulerConfig(policy=policy, max_batch_size=args.max_batch_size, chunk_size=args.chunk_size,
                            block_size=args.block_size, max_model_len=max_len,
                            profitability=args.profitability, inline_drain=not args.no_inline_drain,
                            skip_exit_heads=not args.every_exit_head,
                            max_tpot_inflation=args.max_tpot_inflation, split_fraction=args.split_fraction,
                            split_continue=args.split_continue, flush_min_rows=args.flush_min_rows,
                            flush_max_wait_steps=args.flush_max_wait_steps, admission=args.admission)
    threshold = args.threshold if args.threshold is not None else (shape.default_threshold or 0.8)
    metric = args.metric or shape.default_metric or "margin"
    return RunSettings(model=args.model, device=args.device, ee=EEConfig(exits, threshold, metric),
                       scheduler=sched, confidence=args.confidence, replicas=args.replicas, router=args.router,
                       seed=args.seed, num_kv_blocks=args.num_kv_blocks, cost_model=args.cost_model, tp=args.tp)


def tokenizer_dir(model: str) -> str | None:
    """Where a model's tokenizer.json is (real prompts need it): its checkpoint, else the fetched smollm2's."""
    from drex.models import cache_dir

    for d in (get_model(model).path, cache_dir() / "smollm2"):
        if d is not None and (Path(d) / "tokenizer.json").exists():
            return str(d)
    return None


def load_workload(args: argparse.Namespace):
    from drex.prompts import is_humaneval

    tok = tokenizer_dir(args.model) if is_humaneval(args.trace) else None
    workload = make_workload(args.trace, num_requests=args.num_requests, rate_scale=args.rate_scale,
                             rng=np.random.default_rng(args.seed), tokenizer=tok)
    if args.num_requests is not None and len(workload) < args.num_requests:
        print(f"drex: warning: --num-requests {args.num_requests}, but {args.trace} holds only "
              f"{counted(len(workload), 'request')}: running all {len(workload)}", file=sys.stderr)
    return with_default_slos(workload, args.slo_ttft_ms, args.slo_tpot_ms)


