"""``drex train`` and ``drex quality``: the research tools' flags -> functions."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from drex.config import EEConfig
from drex.lab import quality, train, train_exits
from drex.progress import add_progress_flag


def _tuple(kind, flag: str):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes comma-separated numbers, got {text!r}") from None

    return parse


# What each training setting means (the help of its flag).
TRAIN_HELP = {
    "num_layers": "decoder layers", "hidden_size": "model width", "intermediate_size": "MLP width",
    "num_heads": "attention heads", "num_kv_heads": "key/value heads (grouped-query attention)",
    "vocab_size": "BPE vocabulary trained on the corpus", "exits": "exit layers trained with their own loss",
    "exit_loss_weights": "loss weight of each exit, then of the last layer", "seq_len": "tokens per sequence",
    "batch_size": "sequences per optimizer step", "steps": "optimizer steps", "lr": "peak learning rate",
    "min_lr_ratio": "final learning rate / peak (cosine decay)", "warmup_steps": "linear warm-up steps",
    "weight_decay": "AdamW weight decay", "grad_clip": "gradient norm clip",
    "mix": "sampling weights of the training sources (plays, stdlib, HumanEval)",
    "eval_every": "steps between held-out evaluations (each saves the checkpoint)",
    "eval_windows": "held-out windows per source", "seed": "seed of sampling and initialisation",
    "max_position": "longest position the model supports", "rope_theta": "RoPE base",
    "save_dtype": "dtype of the saved weights",
}


def add_parsers(sub) -> None:
    """``drex train`` (and, from drex.lab.quality, ``drex quality``)."""
    p = sub.add_parser("train", help="train the tiny early-exit model (CPU, one thread) from offline text",
                       description="Train a small early-exit model on CPU from offline text (minutes with the "
                                   "defaults). The shipped models/tiny-ee was made this way; --out must name "
                                   "another directory (or add --overwrite to replace a shipped checkpoint).")
    p.add_argument("--out", required=True, help="checkpoint directory to write (config.json, safetensors, tokenizer, "
                                                "train_log.jsonl)")
    p.add_argument("--log", default=None, help="JSON-lines log (default: OUT/train_log.jsonl)")
    p.add_argument("--overwrite", action="store_true", help="allow --out to be a checkpoint shipped with drex")
    add_progress_flag(p)
    _config_flags(p, train.TrainConfig(), TRAIN_HELP)
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("train-exits", help="train early exits (adapters + confidence estimators) over a frozen "
                                          "pretrained model by self-distillation (smollm2 -> models/smollm2-ee)")
    p.add_argument("--out", required=True,
                   help="directory for exits.safetensors + config.json (models/smollm2-ee ships them)")
    p.add_argument("--log", default=None, help="JSON-lines log (default OUT/train_log.jsonl)")
    p.add_argument("--overwrite", action="store_true", help="allow --out to be the exits shipped with drex")
    p.add_argument("--default-threshold", type=float, default=0.9, help="the learned metric's default threshold")
    p.add_argument("--adapters-from", default=None,
                   help="an exits.safetensors whose adapters and exit norms are kept; only estimators are trained")
    p.add_argument("--dump-val", default=None,
                   help="also save each exit's confidences and labels on the estimator's tokens (a torch file) to "
                        "compare exit sets offline (benchmarks/smollm2_exit_choice.py)")
    add_progress_flag(p)
    _config_flags(p, train_exits.ExitTrainConfig())
    p.set_defaults(func=_cmd_train_exits)
    add_quality_parser(sub)


def _config_flags(p, defaults, helps: dict | None = None) -> None:
    """A flag per field of a settings dataclass, with its meaning (``helps``) and its default."""
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        what = (helps or {}).get(name, name.replace("_", " "))
        if isinstance(value, tuple):
            p.add_argument(flag, type=_tuple(type(value[0]), flag), default=value, metavar="X,Y",
                           help=f"{what}, comma-separated (default: {','.join(map(str, value))})")
        else:
            p.add_argument(flag, type=type(value), default=value, help=f"{what} (default: {value})")


def _cmd_train_exits(args) -> int:
    from drex.outputs import refuse_shipped

    if not args.overwrite:
        refuse_shipped(args.out, "training exits", "--out another directory, or --overwrite")
    cfg = train_exits.ExitTrainConfig(**{k: getattr(args, k) for k in asdict(train_exits.ExitTrainConfig())})
    train_exits.run(cfg, Path(args.out), args.log, args.default_threshold, args.adapters_from, args.dump_val,
                    progress=not args.no_progress)
    return 0


def _cmd_train(args) -> int:
    from drex.outputs import refuse_shipped

    cfg = train.TrainConfig(**{k: getattr(args, k) for k in asdict(train.TrainConfig())})
    if not args.overwrite:
        refuse_shipped(args.out, "training", "--out another directory, or --overwrite")
        if args.log:
            refuse_shipped(args.log, "training's log", "--log another file, or --overwrite")
    train.run(cfg, Path(args.out), args.log, progress=not args.no_progress)
    return 0


def add_quality_parser(sub) -> None:
    p = sub.add_parser("quality", help="early-exit quality sweep (exit fraction, agreement, ROUGE-L) of a trained "
                                       "model, and policies under concurrent load",
                       description="Early-exit quality of a trained model: every prompt decoded at full depth, then "
                                   "once per KV fill, metric and threshold. With the defaults that is about 15 "
                                   "minutes on one CPU thread (the estimate is printed once the full-depth pass is "
                                   "timed); --metrics margin --kv-fill copy --num-code 8 --num-text 8 takes about a "
                                   "minute.")
    p.add_argument("--model", default="tiny-ee", help="shipped model name or checkpoint directory")
    p.add_argument("--out", required=True, help="directory for quality.csv and its companions")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens generated per prompt")
    p.add_argument("--num-code", type=int, default=24, help="HumanEval prompts (held-out tasks)")
    p.add_argument("--num-text", type=int, default=24, help="held-out text windows (plays + stdlib)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")
    p.add_argument("--metrics", default=None,
                   help="comma-separated; learned: the trained estimators (default: learned,margin for a model "
                        "with estimators such as smollm2-ee, else margin,maxprob,entropy)")
    p.add_argument("--thresholds", default=None,
                   help="comma-separated thresholds for every metric listed (default: each metric's own sweep)")
    p.add_argument("--no-bertscore", action="store_true", help="skip the BERTScore column (MiniLM encoder)")
    p.add_argument("--traces", default=None, help="also write confidence traces <model>-{humaneval,text}.csv here")
    p.add_argument("--trace-tokens", type=int, default=128, help="tokens per prompt in the confidence traces")
    p.add_argument("--trace-prompts", type=int, default=40, help="prompts per trace (HumanEval, text)")
    p.add_argument("--kv-fill", default="recompute,copy",
                   help="KV fill(s) for skipped layers, comma-separated; quality.csv is the first one's table")
    p.add_argument("--skip-sweep", action="store_true", help="only the policy comparison")
    p.add_argument("--policies", default=None,
                   help="also serve the prompts concurrently through the real executor under these policies "
                        "(e.g. drex,eager,lazy,average,off) and compare with decoding each alone: policies.csv")
    p.add_argument("--policy-metric", default="margin", help="confidence metric of the policy comparison")
    p.add_argument("--policy-threshold", type=float, default=0.4, help="exit threshold of the policy comparison")
    p.add_argument("--policy-cost", default="roofline,proportional",
                   help="cost model(s) the scheduler decides with: roofline (this device's prediction) and/or "
                        "proportional (every split pays, so drex honours every exit)")
    p.add_argument("--policy-exits", action="append", default=None,
                   help="exit layers for the policy comparison, e.g. 2,4 (default: trained); repeat for several")
    p.add_argument("--max-batch-size", type=int, default=8, help="scheduler batch limit for the policy comparison")
    add_progress_flag(p)
    p.set_defaults(func=_cmd_quality)


def _cmd_quality(args) -> int:
    if args.metrics is None:
        from drex.models import get_model

        learned = get_model(args.model).default_metric == "learned"
        args.metrics = "learned,margin" if learned else "margin,maxprob,entropy"
    metrics = tuple(m for m in args.metrics.split(",") if m)
    unknown = [m for m in metrics if m not in quality.THRESHOLDS]
    if unknown:
        raise ValueError(f"unknown confidence metric(s) {', '.join(unknown)}: {', '.join(quality.THRESHOLDS)}")
    thresholds = None
    if args.thresholds:
        try:
            values = tuple(float(t) for t in args.thresholds.split(",") if t)
        except ValueError:
            raise ValueError(f"--thresholds takes numbers like 0.5,0.9, got {args.thresholds!r}") from None
        thresholds = {m: values for m in metrics}
    fills = tuple(f for f in args.kv_fill.split(",") if f)
    if not fills or any(f not in ("copy", "recompute") for f in fills):
        raise ValueError(f"--kv-fill takes copy and/or recompute, got {args.kv_fill!r}")
    for name in ("max_new_tokens", "num_code", "num_text", "batch_size", "trace_tokens", "trace_prompts"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.skip_sweep and not args.policies:
        raise ValueError("--skip-sweep leaves only the policy comparison, which needs --policies (e.g. drex,off)")
    progress = not args.no_progress
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if not args.skip_sweep:
        quality.run(args.model, Path(args.out), args.max_new_tokens, args.num_code, args.num_text, args.batch_size,
                    metrics, thresholds, kv_fills=fills, trace_dir=Path(args.traces) if args.traces else None,
                    trace_tokens=args.trace_tokens, trace_prompts=args.trace_prompts, progress=progress,
                    bertscore=not args.no_bertscore)
    if args.policies:
        from drex.lab.policy_quality import POLICY_COLUMNS, compare_policies

        exit_sets = [tuple(int(e) for e in x.split(",")) for x in args.policy_exits] if args.policy_exits else [None]
        for exits in exit_sets:
            EEConfig(exits=exits or (), threshold=args.policy_threshold, metric=args.policy_metric)  # validates
        from drex.progress import each

        costs = tuple(c for c in args.policy_cost.split(",") if c)
        rows = []
        units = [(exits, fill) for exits in exit_sets for fill in fills]
        for exits, fill in each(units, "policy comparison", "setting", enabled=progress):
            rows += compare_policies(args.model, tuple(args.policies.split(",")), args.policy_metric,
                                     args.policy_threshold, args.max_new_tokens, args.num_code, args.num_text,
                                     args.max_batch_size, exits, fill, costs)
        quality.write_csv(Path(args.out) / "policies.csv", POLICY_COLUMNS, rows)
    return 0
