"""``drex run`` and ``drex validate``: flags -> RunConfig -> run_real -> records; run dir -> validate.json."""

from __future__ import annotations

import argparse

from drex.metrics import format_table


def cmd_run(args: argparse.Namespace) -> int:
    from drex.real.run import RunConfig, run_real, write_real_run
    from drex.sim.cli import load_workload, sim_config

    if args.replicas != 1:
        raise ValueError("drex run drives one real replica; --replicas is for drex simulate")
    if args.confidence != "beta":
        raise ValueError("drex run takes its confidences from the model; --confidence is for drex simulate")
    if args.tp != 1:
        raise ValueError("drex run drives one GPU; --tp is for drex simulate")
    cfg = RunConfig(sim_config(args, args.policy), weights=args.weights, dtype=args.dtype, kv_fill=args.kv_fill)
    workload = load_workload(args)
    res = run_real(cfg, workload)
    write_real_run(args.out, cfg, res, args.trace)
    s = res.summary
    print(format_table({args.policy: s}))
    copied = ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in s["copied_bytes_by_kind"].items()) or "nothing"
    print(f"kv fill {s['kv_fill']}: {s['kv_fill_s'] * 1e3:.1f} ms, {s['kv_copy_bytes'] / 2**20:.2f} MiB copied, "
          f"{s['recompute_token_layers']} token-layers recomputed | copied by rebatching and fill: {copied}")
    print(f"{len(workload)} requests on {s['torch_device']} ({s['dtype']}, weights {s['weights']}) in "
          f"{s['run_wall_s']:.1f} s wall, {s['step_time_s']:.1f} s in steps, {s['scheduler_s']:.2f} s scheduling; "
          f"records in {args.out}/")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from drex.real.validate import format_report, validate

    print(format_report(validate(args.run_dir)))
    print(f"written to {args.run_dir}/validate.json")
    return 0


def add_parsers(sub) -> None:
    from drex.real import DTYPE_NAMES, KV_FILLS
    from drex.sim.cli import add_run_flags

    p = sub.add_parser("run", help="serve a trace in real time on a real early-exit model (same flags as simulate)")
    add_run_flags(p)
    p.add_argument("--weights", default="auto",
                   help="checkpoint directory (config.json + safetensors) | random | auto (the model's own, else random)")
    p.add_argument("--dtype", default="fp32", choices=DTYPE_NAMES)
    p.add_argument("--kv-fill", default="copy", choices=KV_FILLS,
                   help="fill skipped layers' KV of exited tokens by state copy or by recompute")
    p.add_argument("--out", required=True, help="run directory: requests/steps/confidence CSVs, summary.json, ...")
    p.set_defaults(func=cmd_run)
    v = sub.add_parser("validate", help="replay a drex run in the simulator; write RUN_DIR/validate.json")
    v.add_argument("run_dir")
    v.set_defaults(func=cmd_validate)
