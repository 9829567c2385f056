"""``drex train-exits``: trained early exits over a frozen pretrained model (``smollm2-ee``), on this CPU.

Self-distillation: the full model's own next-token distribution is the target of
every exit. The backbone is frozen, so one teacher-forced pass collects each
exit's hidden states and the top's top-k log-probabilities; then, per exit,

- an adapter (residual bottleneck) and an exit norm are trained so the shared LM
  head reads the full model's distribution from the exit's hidden state (soft
  cross-entropy on the teacher's top-k, softmax over the batch's candidate tokens:
  no 49,152-wide softmax per step);
- a confidence estimator (a small MLP on the exit's normed hidden state) is
  trained to predict whether the exit's argmax equals the full model's, on
  windows the adapter never saw. At serving time it decides the exit and the
  LM head runs only for the rows that leave.

Text: the tiny-ee corpus' training split (plays, stdlib, HumanEval tasks not held
out) plus the model's own greedy continuations of the training HumanEval prompts
(what decoding actually sees). Only the trained parts are written
(``exits.safetensors``), with config.json naming the base and a JSON-lines log.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from drex.lab.corpus import build_corpus
from drex.models import get_model
from drex.real.model import DenseMeta, EEModel


@dataclass(frozen=True)
class ExitTrainConfig:
    base: str = "smollm2"
    exits: tuple[int, ...] = (8, 15, 22)
    seq_len: int = 256
    windows_per_source: int = 40  # teacher-forced windows from each of plays, stdlib, humaneval, generated
    num_generate: int = 48  # training HumanEval prompts continued by the model itself
    generate_tokens: int = 96
    estimator_windows: int = 32  # held apart from adapter training: the estimator's labels are honest
    adapter_rank: int = 128
    estimator_width: int = 64
    steps: int = 500
    batch_tokens: int = 256
    top_k: int = 16
    lr: float = 2e-3
    estimator_steps: int = 600
    seed: int = 0


def _log(f, **rec) -> None:
    line = json.dumps(rec)
    f.write(line + "\n")
    f.flush()
    print(line, file=sys.stderr)


def _windows(ids: list[int], seq_len: int, num: int, rng) -> list[list[int]]:
    starts = np.arange(0, max(1, len(ids) - seq_len), seq_len)
    pick = rng.choice(starts, size=min(num, len(starts)), replace=False)
    return [ids[s:s + seq_len] for s in sorted(pick)]


def build_windows(cfg: ExitTrainConfig, model: EEModel, tok, rng, log) -> list[list[int]]:
    """Teacher-forced windows: plays, stdlib, HumanEval training tasks, and the model's own continuations."""
    from drex.real.generate import greedy_decode

    corpus = build_corpus()
    eos = tok.token_to_id("<|endoftext|>") or 0
    out: list[list[int]] = []
    for source in ("plays", "python", "humaneval"):
        ids: list[int] = []
        for doc in corpus.train:
            if doc.source == source:
                ids += tok.encode(doc.text).ids + [eos]
        got = _windows(ids, cfg.seq_len, cfg.windows_per_source, rng)
        _log(log, event="source", source=source, tokens=len(ids), windows=len(got))
        out += got
    prompts = [tok.encode(d.text).ids for d in corpus.train if d.source == "humaneval"][: cfg.num_generate]
    t0 = time.perf_counter()
    gen: list[list[int]] = []
    for i in tqdm(range(0, len(prompts), 16), desc="generating continuations", file=sys.stderr):
        batch = prompts[i:i + 16]
        dec = greedy_decode(model, batch, cfg.generate_tokens)
        gen += [(p + t)[-cfg.seq_len:] for p, t in zip(batch, dec.tokens)]
    _log(log, event="source", source="generated", prompts=len(prompts), windows=len(gen),
         seconds=round(time.perf_counter() - t0, 1))
    return out + gen


@torch.no_grad()  # not inference_mode: its tensors could not feed the adapters' autograd later
def collect(model: EEModel, windows: list[list[int]], exits, top_k: int):
    """Per token: the hidden state after each exit layer, the top's top-k ids and log-probabilities."""
    hid = {e: [] for e in exits}
    top_ids, top_lp = [], []
    for w in tqdm(windows, desc="teacher pass", file=sys.stderr):
        ids = torch.tensor([w])
        h = model.embed(ids)
        meta = DenseMeta(ids.shape[1], ids.device)
        for i, layer in enumerate(model.layers):
            h = layer(h, meta)
            if i + 1 in exits:
                hid[i + 1].append(h[0].clone())
        lp = torch.log_softmax(model.exit_logits(h[0], model.num_layers), -1)
        v, k = lp.topk(top_k, -1)
        top_ids.append(k)
        top_lp.append(v)
    return {e: torch.cat(v) for e, v in hid.items()}, torch.cat(top_ids), torch.cat(top_lp)


def train_adapter(model: EEModel, e: int, h, top_ids, top_lp, cfg: ExitTrainConfig, gen, log) -> None:
    head = model.exit_heads[str(e)]
    params = [p for n, p in head.named_parameters() if not n.startswith("estimator")]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    emb = model.lm_head.weight
    target = top_lp.exp()
    for step in tqdm(range(cfg.steps), desc=f"exit {e} adapter", file=sys.stderr):
        b = torch.randint(0, h.shape[0], (cfg.batch_tokens,), generator=gen)
        cand, where = torch.unique(top_ids[b], return_inverse=True)  # where [B, k]: position in cand
        x = model.exit_hidden(h[b], e)
        logq = torch.log_softmax(x @ emb[cand].T, -1)
        loss = -(target[b] * logq.gather(1, where)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            agree = (logq.argmax(-1) == where[:, 0]).float().mean().item()
            _log(log, event="adapter", exit=e, step=step, loss=round(loss.item(), 4), batch_agree=round(agree, 3))


@torch.no_grad()
def exit_labels(model: EEModel, e: int, h, top_ids, chunk: int = 512):
    """The exit's normed hidden states and whether its full-vocabulary argmax is the full model's token."""
    xs, ok = [], []
    for i in range(0, h.shape[0], chunk):
        x = model.exit_hidden(h[i:i + chunk], e)
        xs.append(x)
        ok.append(model.head_logits(x, e).argmax(-1) == top_ids[i:i + chunk, 0])
    return torch.cat(xs), torch.cat(ok).float()


def train_estimator(model: EEModel, e: int, x, y, cfg: ExitTrainConfig, gen, log) -> None:
    """BCE on (exit token == full model's token), early-stopped on a fifth held apart: a few thousand tokens
    overfit within a few hundred steps, and an overconfident estimator exits wrong tokens."""
    est = model.exit_heads[str(e)].estimator
    opt = torch.optim.AdamW(est.parameters(), lr=1e-3, weight_decay=1e-2)
    n = x.shape[0]
    perm = torch.randperm(n, generator=gen)
    val, tr = perm[: n // 5], perm[n // 5:]

    def logit(rows):
        return est.fc2(F.silu(est.fc1(x[rows]))).squeeze(-1)

    best, best_step, best_state = float("inf"), 0, None
    for step in range(cfg.estimator_steps):
        b = tr[torch.randint(0, len(tr), (256,), generator=gen)]
        loss = F.binary_cross_entropy_with_logits(logit(b), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            with torch.no_grad():
                val_bce = F.binary_cross_entropy_with_logits(logit(val), y[val]).item()
            if val_bce < best:
                best, best_step = val_bce, step
                best_state = {k: v.clone() for k, v in est.state_dict().items()}
            elif step - best_step >= 200:
                break
    est.load_state_dict(best_state)
    _log(log, event="estimator_stop", exit=e, best_step=best_step, val_bce=round(best, 4), last_step=step)
    with torch.no_grad():
        pv = est(x[val])
    for thr in (0.5, 0.7, 0.8, 0.9, 0.95):
        sel = pv > thr
        _log(log, event="estimator", exit=e, threshold=thr, exit_fraction=round(sel.float().mean().item(), 3),
             agreement_of_exited=round(y[val][sel].mean().item(), 3) if sel.any() else None)
    _log(log, event="estimator_done", exit=e, val_tokens=len(val), base_agreement=round(y[val].mean().item(), 3))


def _load_parts(model: EEModel, e: int, path: str) -> None:
    """An earlier run's adapter and exit norm for exit e (the estimator is trained again)."""
    from safetensors.torch import load_file

    saved = load_file(path)
    prefix = f"exit_heads.{e}."
    with torch.no_grad():
        for name, p in model.exit_heads[str(e)].named_parameters():
            if not name.startswith("estimator"):
                p.copy_(saved[prefix + name])


def save_exits(model: EEModel, cfg: ExitTrainConfig, out: Path, default_threshold: float) -> None:
    from safetensors.torch import save_file

    tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if n.startswith("exit_heads.")}
    save_file(tensors, str(out / "exits.safetensors"), metadata={"base": cfg.base})
    config = {"drex_base": cfg.base, "drex_exit_layers": list(cfg.exits), "drex_default_metric": "learned",
              "drex_default_threshold": default_threshold, "drex_train_config": asdict(cfg)}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def run(cfg: ExitTrainConfig, out: Path, log_path: str | None = None, default_threshold: float = 0.9,
        adapters_from: str | None = None) -> None:
    """Train (or, with ``adapters_from``, load an exits.safetensors' adapters and norms and retrain only the
    estimators) and write ``out``."""
    from tokenizers import Tokenizer

    torch.manual_seed(cfg.seed)
    rng, gen = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    shape = get_model(cfg.base)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path or out / "train_log.jsonl", "w") as log:
        _log(log, event="config", **asdict(cfg))
        model = EEModel.from_pretrained(shape.path, exit_layers=cfg.exits)
        for p in model.parameters():
            p.requires_grad_(False)
        tok = Tokenizer.from_file(str(Path(shape.path) / "tokenizer.json"))
        windows = build_windows(cfg, model, tok, rng, log)
        order = rng.permutation(len(windows))
        est_w = [windows[i] for i in order[: cfg.estimator_windows]]
        fit_w = [] if adapters_from else [windows[i] for i in order[cfg.estimator_windows:]]
        h, top_ids, top_lp = collect(model, fit_w, cfg.exits, cfg.top_k) if fit_w else (None, None, None)
        h_est, ids_est, _ = collect(model, est_w, cfg.exits, 1)
        _log(log, event="collected", fit_tokens=0 if top_ids is None else int(top_ids.shape[0]),
             estimator_tokens=int(ids_est.shape[0]),
             seconds=round(time.perf_counter() - t0, 1))
        for e in cfg.exits:
            model.add_exit_head(e, norm=True, lm_head=False, adapter_rank=cfg.adapter_rank,
                                estimator_width=cfg.estimator_width)
            _, before = exit_labels(model, e, h_est[e], ids_est)
            if adapters_from:
                _load_parts(model, e, adapters_from)
            else:
                train_adapter(model, e, h[e], top_ids, top_lp, cfg, gen, log)
            x, y = exit_labels(model, e, h_est[e], ids_est)
            _log(log, event="exit_agreement", exit=e, before=round(before.mean().item(), 3),
                 after=round(y.mean().item(), 3))
            train_estimator(model, e, x, y, cfg, gen, log)
            for p in model.parameters():
                p.requires_grad_(False)
        save_exits(model, cfg, out, default_threshold)
        _log(log, event="done", seconds=round(time.perf_counter() - t0, 1))
