"""Train ``tiny-ee``: a small Llama-family model with a loss at every exit point.

``drex train --out DIR`` trains a
byte-level BPE on the offline corpus (``drex.lab.corpus``), then the model of
``drex.real.model`` from random weights: at every exit layer and at the last
layer the hidden state goes through the shared final norm + LM head, and the
loss is the weighted mean of those cross-entropies. One torch thread, fixed
seeds (one numpy Generator for data, one torch Generator for the weights),
AdamW with linear warm-up and cosine decay. It writes Hugging Face Llama style
``model.safetensors`` + ``config.json`` (with ``drex_exit_layers``),
``tokenizer.json`` and ``train_log.jsonl`` (held-out loss per exit).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from drex.lab import corpus as corpus_mod
from drex.outputs import recorded_path
from drex.progress import Progress, say

SOURCES = ("plays", "python", "humaneval")


@dataclass(frozen=True)
class TrainConfig:
    num_layers: int = 6
    hidden_size: int = 256
    intermediate_size: int = 688
    num_heads: int = 4
    num_kv_heads: int = 4
    vocab_size: int = 2048
    exits: tuple[int, ...] = (2, 4)
    # Loss weight of each exit, then of the last layer (normalised to sum 1).
    exit_loss_weights: tuple[float, ...] = (1.0, 1.0, 1.0)
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 600
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 40
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # Sampling weights of the training sources (HumanEval is small: up-weighted, it repeats).
    mix: tuple[float, ...] = (0.45, 0.45, 0.10)
    eval_every: int = 100
    eval_windows: int = 16  # held-out windows per source
    seed: int = 0
    max_position: int = 1024
    rope_theta: float = 10000.0
    save_dtype: str = "float16"  # keeps the shipped weights under 20 MB

    def __post_init__(self) -> None:
        if list(self.exits) != sorted(set(self.exits)) or not all(0 < e < self.num_layers for e in self.exits):
            raise ValueError(f"--exits must be increasing layers in (0, {self.num_layers}), got "
                             f"{','.join(map(str, self.exits))}")
        if len(self.exit_loss_weights) != len(self.exits) + 1:
            raise ValueError(f"need {len(self.exits) + 1} exit loss weights (exits + last layer), "
                             f"got {len(self.exit_loss_weights)}")
        if len(self.mix) != len(SOURCES) or min(self.mix) < 0 or sum(self.mix) <= 0:
            raise ValueError(f"--mix needs {len(SOURCES)} non-negative weights, got {','.join(map(str, self.mix))}")
        for name in ("steps", "batch_size", "seq_len", "vocab_size", "eval_every", "eval_windows"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.save_dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"--save-dtype must be float16, bfloat16 or float32, got {self.save_dtype!r}")

    @property
    def loss_layers(self) -> tuple[int, ...]:
        return (*self.exits, self.num_layers)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def encode_streams(tokenizer, docs, sources=SOURCES) -> dict[str, np.ndarray]:
    """One token stream per source: documents joined by the end-of-text token."""
    eos = corpus_mod.eos_id(tokenizer)
    streams = {}
    for src in sources:
        texts = [d.text for d in docs if d.source == src]
        ids: list[int] = []
        for enc in tokenizer.encode_batch(texts):
            ids.extend(enc.ids)
            ids.append(eos)
        streams[src] = np.asarray(ids, dtype=np.int64)
    return streams


def sample_batch(streams: dict[str, np.ndarray], cfg: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    names = [s for s in SOURCES if s in streams and len(streams[s]) > cfg.seq_len + 1]
    weights = np.array([cfg.mix[SOURCES.index(s)] for s in names], dtype=float)
    picks = rng.choice(len(names), size=cfg.batch_size, p=weights / weights.sum())
    rows = []
    for i in picks:
        stream = streams[names[i]]
        start = int(rng.integers(0, len(stream) - cfg.seq_len - 1))
        rows.append(stream[start:start + cfg.seq_len + 1])
    return np.stack(rows)


def eval_windows(streams: dict[str, np.ndarray], cfg: TrainConfig) -> dict[str, np.ndarray]:
    """Evenly spaced held-out windows (deterministic: no sampling)."""
    out = {}
    for src, stream in streams.items():
        n = len(stream) - cfg.seq_len - 1
        if n <= 0:
            continue
        starts = np.linspace(0, n, num=cfg.eval_windows, dtype=np.int64)
        out[src] = np.stack([stream[s:s + cfg.seq_len + 1] for s in starts])
    return out


def exit_losses(model, batch, cfg: TrainConfig):
    """Cross-entropy at each loss layer (exits + last): {layer: scalar tensor}, and each exit's top-1 logits."""
    import torch.nn.functional as F

    x, y = batch[:, :-1], batch[:, 1:]
    logits = model.forward_train(x)
    losses, top1 = {}, {}
    for layer in cfg.loss_layers:
        lg = logits[layer].float()
        losses[layer] = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), y.reshape(-1))
        top1[layer] = lg.argmax(-1)
    return losses, top1


def evaluate(model, windows: dict[str, np.ndarray], cfg: TrainConfig) -> dict:
    """Held-out loss per source per exit layer, and how often each exit's top-1 matches the last layer's."""
    import torch

    report = {}
    with torch.no_grad():
        for src, arr in windows.items():
            batch = torch.from_numpy(arr)
            losses, top1 = exit_losses(model, batch, cfg)
            last = top1[cfg.num_layers]
            report[src] = {
                "loss": {str(k): round(float(v), 4) for k, v in losses.items()},
                "agree_with_last": {str(k): round(float((top1[k] == last).float().mean()), 4) for k in cfg.exits},
            }
    return report


def weighted_loss(losses: dict, cfg: TrainConfig):
    w = np.asarray(cfg.exit_loss_weights, dtype=float)
    w = w / w.sum()
    return sum(float(wi) * losses[layer] for wi, layer in zip(w, cfg.loss_layers))


def model_shape(cfg: TrainConfig, name: str = "tiny-ee"):
    from drex.models import ModelShape

    return ModelShape(name, cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                      cfg.num_kv_heads, cfg.vocab_size, max_position=cfg.max_position, rope_theta=cfg.rope_theta,
                      trained_exits=cfg.exits)


def init_model(cfg: TrainConfig):
    """GPT-2 style initialisation (std 0.02; residual projections scaled by 1/sqrt(2L)), from cfg.seed alone.

    EEModel.random is for timing (its wide LM head spreads margins); training wants small logits at start.
    """
    import torch

    from drex.real.model import EEModel

    gen = torch.Generator().manual_seed(cfg.seed)
    model = EEModel(model_shape(cfg), cfg.exits)
    resid_std = 0.02 / math.sqrt(2 * cfg.num_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.copy_(torch.randn(p.shape, generator=gen) * resid_std)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


def make_optimizer(model, cfg: TrainConfig):
    import torch

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))


def train_steps(model, streams, cfg: TrainConfig, rng: np.random.Generator, steps: int | None = None,
                on_step=None) -> list[dict[int, float]]:
    """Run optimizer steps; returns the per-layer training losses of every step."""
    import torch

    opt = make_optimizer(model, cfg)
    model.train()
    history = []
    for step in range(cfg.steps if steps is None else steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        batch = torch.from_numpy(sample_batch(streams, cfg, rng))
        losses, _ = exit_losses(model, batch, cfg)
        loss = weighted_loss(losses, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
        if on_step is not None:
            model.eval()
            on_step(step, history[-1])
            model.train()
    model.eval()
    return history


def save_checkpoint(model, tokenizer, cfg: TrainConfig, out: Path, extra: dict) -> None:
    import torch

    dtype = getattr(torch, cfg.save_dtype)
    out.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model).to(dtype).save_pretrained(out)  # a copy: the training weights stay fp32
    config = json.loads((out / "config.json").read_text())
    eos = corpus_mod.eos_id(tokenizer)
    config.update({"bos_token_id": eos, "eos_token_id": eos, "drex_training": {**asdict(cfg), **extra}})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save(str(out / "tokenizer.json"))


def run(cfg: TrainConfig, out: Path, log_path: Path | None = None, progress: bool = False) -> dict:
    import torch

    torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = Path(log_path) if log_path else out / "train_log.jsonl"
    log = log_path.open("w")

    def emit(record: dict) -> None:
        log.write(json.dumps(record) + "\n")
        log.flush()
        say(json.dumps(record), sys.stdout)  # above the bar, not through it

    t0 = time.monotonic()
    if progress:  # the first minute goes into text and tokenizer, before any step
        print("drex train: building the corpus and training the tokenizer (about a minute on one CPU thread)",
              file=sys.stderr, flush=True)
    corpus = corpus_mod.build_corpus()
    tokenizer = corpus_mod.train_tokenizer([d.text for d in corpus.train], cfg.vocab_size)
    train_streams = encode_streams(tokenizer, corpus.train)
    heldout_streams = encode_streams(tokenizer, corpus.heldout + corpus.heldout_prompts)
    windows = eval_windows(heldout_streams, cfg)
    emit({"event": "data", "corpus_sha256_16": corpus.fingerprint(),
          "train_tokens": {k: len(v) for k, v in train_streams.items()},
          "heldout_tokens": {k: len(v) for k, v in heldout_streams.items()},
          "tokenizer_s": round(time.monotonic() - t0, 1)})

    model = init_model(cfg)
    emit({"event": "model", "params": sum(p.numel() for p in model.parameters()), "config": asdict(cfg)})
    rng = np.random.default_rng(cfg.seed)
    t_train = time.monotonic()
    evals = []

    def on_step(step: int, losses: dict[int, float]) -> None:
        done = step + 1
        if done % 10 == 0 or done == 1:
            emit({"event": "train", "step": done, "lr": round(lr_at(cfg, step), 6),
                  "loss": {str(k): round(v, 4) for k, v in losses.items()},
                  "elapsed_s": round(time.monotonic() - t_train, 1)})
        if done % cfg.eval_every == 0 or done == cfg.steps:
            evals.append({"event": "eval", "step": done, "heldout": evaluate(model, windows, cfg),
                          "elapsed_s": round(time.monotonic() - t_train, 1)})
            emit(evals[-1])
            # A run stopped early still leaves its last evaluated weights.
            save_checkpoint(model, tokenizer, cfg, out, {"corpus_sha256_16": corpus.fingerprint(), "step": done,
                                                          "heldout_final": evals[-1]["heldout"]})

    # One CPU thread: the default 600 steps take minutes; the progress (stderr) says how many.
    with Progress("training", cfg.steps, "step", enabled=progress) as bar:
        def step_and_bar(step: int, losses: dict[int, float]) -> None:
            on_step(step, losses)
            bar.update(1)

        train_steps(model, train_streams, cfg, rng, on_step=step_and_bar)
    final = evals[-1]["heldout"]
    emit({"event": "done", "train_s": round(time.monotonic() - t_train, 1), "out": recorded_path(out)})
    log.close()
    return final
