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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from drex.lab.corpus import build_corpus
from drex.models import get_model
from drex.progress import each, say
from drex.real.model import DenseMeta, EEModel


@dataclass(frozen=True)
class ExitTrainConfig:
    base: str = "smollm2"
    exits: tuple[int, ...] = (8, 15, 22)
    seq_len: int = 256
    windows_per_source: int = 40  # teacher-forced windows of raw text from each of plays, stdlib, humaneval
    num_generate: int = 48  # training HumanEval tasks whose prompt (only) the model itself continues
    generate_tokens: int = 96
    num_generate_text: int = 0  # 64-token windows of training plays/stdlib text continued by the model
    text_generate_tokens: int = 64
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
    say(line)  # above a bar, not through it


def _windows(ids: list[int], seq_len: int, num: int, rng) -> list[list[int]]:
    starts = np.arange(0, max(1, len(ids) - seq_len), seq_len)
    pick = rng.choice(starts, size=min(num, len(starts)), replace=False)
    return [ids[s:s + seq_len] for s in sorted(pick)]


def _continue(model: EEModel, prompts: list[list[int]], tokens: int, desc: str, progress: bool) -> list[list[int]]:
    """The model's own greedy continuations (full depth), in batches of 16: prompt + continuation."""
    from drex.real.generate import greedy_decode

    out: list[list[int]] = []
    for i in each(range(0, len(prompts), 16), desc, "batch", enabled=progress):
        batch = prompts[i:i + 16]
        dec = greedy_decode(model, batch, tokens)
        out += [p + t for p, t in zip(batch, dec.tokens)]
    return out


def _text_prompts(corpus, tok, num: int, length: int, rng) -> list[list[int]]:
    """``num`` windows of ``length`` tokens from training plays and stdlib text, starting at line starts."""
    prompts = []
    for k, source in enumerate(("plays", "python")):
        text = "".join(d.text for d in corpus.train if d.source == source)
        for off in rng.integers(0, len(text) - 4000, size=(num + 1 - k) // 2):
            start = text.find("\n", int(off)) + 1
            prompts.append(tok.encode(text[start:start + 8 * length]).ids[:length])
    return prompts


def build_windows(cfg: ExitTrainConfig, model: EEModel, tok, rng, log,
                  progress: bool = True) -> list[tuple[list[int], int]]:
    """Teacher-forced sequences, each with where its model-generated part starts (len: none): raw windows of
    plays, stdlib and HumanEval training tasks; the model's own greedy continuations of training HumanEval
    prompts (the prompt alone, as ``drex quality`` and ``--trace humaneval`` give it) and of text windows:
    with recompute fill, decoding's hidden states are exactly a teacher-forced pass over its own output."""
    from drex.lab.corpus import HUMANEVAL_HOLDOUT_EVERY, load_humaneval

    corpus = build_corpus()
    eos = tok.token_to_id("<|endoftext|>") or 0
    out: list[tuple[list[int], int]] = []
    for source in ("plays", "python", "humaneval"):
        ids: list[int] = []
        for doc in corpus.train:
            if doc.source == source:
                ids += tok.encode(doc.text).ids + [eos]
        got = _windows(ids, cfg.seq_len, cfg.windows_per_source, rng)
        _log(log, event="source", source=source, tokens=len(ids), windows=len(got))
        out += [(w, len(w)) for w in got]
    tasks = [t for i, t in enumerate(load_humaneval()) if i % HUMANEVAL_HOLDOUT_EVERY != 0]
    for name, prompts, tokens in (
            ("generated", [tok.encode(t["prompt"]).ids for t in tasks[: cfg.num_generate]], cfg.generate_tokens),
            ("generated_text", _text_prompts(corpus, tok, cfg.num_generate_text, 64, rng), cfg.text_generate_tokens)):
        if not prompts:
            continue
        t0 = time.perf_counter()
        seqs = _continue(model, prompts, tokens, f"generating {name}", progress)
        out += [(s, len(p)) for s, p in zip(seqs, prompts)]
        _log(log, event="source", source=name, prompts=len(prompts), tokens=sum(map(len, seqs)),
             generated=len(prompts) * tokens, seconds=round(time.perf_counter() - t0, 1))
    return out


@torch.no_grad()  # not inference_mode: its tensors could not feed the adapters' autograd later
def collect(model: EEModel, windows: list[tuple[list[int], int]], exits, top_k: int, progress: bool = True):
    """Per token: the hidden state after each exit layer, the top's top-k ids and log-probabilities, and
    whether the token's position is in the model-generated part of its sequence."""
    hid = {e: [] for e in exits}
    top_ids, top_lp, gen_mask = [], [], []
    for w, gen_start in each(windows, "teacher pass", "window", enabled=progress):
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
        # a decode step feeds a generated token (position >= gen_start) and predicts the next one
        gen_mask.append(torch.arange(len(w)) >= gen_start)
    return {e: torch.cat(v) for e, v in hid.items()}, torch.cat(top_ids), torch.cat(top_lp), torch.cat(gen_mask)


def train_adapter(model: EEModel, e: int, h, top_ids, top_lp, cfg: ExitTrainConfig, gen, log,
                  progress: bool = True) -> None:
    head = model.exit_heads[str(e)]
    params = [p for n, p in head.named_parameters() if not n.startswith("estimator")]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    emb = model.lm_head.weight
    target = top_lp.exp()
    for step in each(range(cfg.steps), f"exit {e} adapter", "step", enabled=progress):
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


def train_estimator(model: EEModel, e: int, x, y, gen_mask, cfg: ExitTrainConfig, gen, log):
    """BCE on (exit token == full model's token), early-stopped on a fifth held apart: a few thousand tokens
    overfit within a few hundred steps, and an overconfident estimator exits wrong tokens. Returns the
    held-apart fifth's (rows, confidences) for the log and an optional dump."""
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
    for part, rows in (("all", torch.ones(len(val), dtype=torch.bool)), ("generated", gen_mask[val])):
        for thr in (0.5, 0.8, 0.9, 0.95, 0.99):
            sel = (pv > thr) & rows
            _log(log, event="estimator", exit=e, tokens=part, threshold=thr,
                 exit_fraction=round(sel.float().sum().item() / max(1, rows.sum().item()), 3),
                 agreement_of_exited=round(y[val][sel].mean().item(), 3) if sel.any() else None)
    _log(log, event="estimator_done", exit=e, val_tokens=len(val), base_agreement=round(y[val].mean().item(), 3),
         base_agreement_generated=round(y[val][gen_mask[val]].mean().item(), 3) if gen_mask[val].any() else None)
    return val, pv


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


def _exit_rng(cfg: ExitTrainConfig, e: int) -> torch.Generator:
    """Each exit's own seeded generator (and initialisation): an exit trains the same whatever others do."""
    torch.manual_seed(cfg.seed * 1000 + e)
    return torch.Generator().manual_seed(cfg.seed * 1000 + e)


def run(cfg: ExitTrainConfig, out: Path, log_path: str | None = None, default_threshold: float = 0.9,
        adapters_from: str | None = None, dump_val: str | None = None, progress: bool = True) -> None:
    """Train (or, with ``adapters_from``, load an exits.safetensors' adapters and norms and retrain only the
    estimators) and write ``out``; ``dump_val``: also save each exit's held-apart confidences and labels
    (torch file) to compare exit sets offline."""
    from tokenizers import Tokenizer

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    shape = get_model(cfg.base)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path or out / "train_log.jsonl", "w") as log:
        _log(log, event="config", **asdict(cfg))
        model = EEModel.from_pretrained(shape.path, exit_layers=cfg.exits)
        for p in model.parameters():
            p.requires_grad_(False)
        tok = Tokenizer.from_file(str(Path(shape.path) / "tokenizer.json"))
        windows = build_windows(cfg, model, tok, rng, log, progress)
        order = rng.permutation(len(windows))
        est_w = [windows[i] for i in order[: cfg.estimator_windows]]
        fit_w = [] if adapters_from else [windows[i] for i in order[cfg.estimator_windows:]]
        h, top_ids, top_lp, _ = collect(model, fit_w, cfg.exits, cfg.top_k, progress) if fit_w else (None,) * 4
        h_est, ids_est, _, gen_est = collect(model, est_w, cfg.exits, 1, progress)
        _log(log, event="collected", fit_tokens=0 if top_ids is None else int(top_ids.shape[0]),
             estimator_tokens=int(ids_est.shape[0]), estimator_generated_tokens=int(gen_est.sum()),
             seconds=round(time.perf_counter() - t0, 1))
        dump = {"generated": gen_est}
        for e in cfg.exits:
            gen = _exit_rng(cfg, e)
            model.add_exit_head(e, norm=True, lm_head=False, adapter_rank=cfg.adapter_rank,
                                estimator_width=cfg.estimator_width)
            _, before = exit_labels(model, e, h_est[e], ids_est)
            if adapters_from:
                _load_parts(model, e, adapters_from)
            else:
                train_adapter(model, e, h[e], top_ids, top_lp, cfg, gen, log, progress)
            x, y = exit_labels(model, e, h_est[e], ids_est)
            _log(log, event="exit_agreement", exit=e, before=round(before.mean().item(), 3),
                 after=round(y.mean().item(), 3), after_generated=round(y[gen_est].mean().item(), 3))
            val, pv = train_estimator(model, e, x, y, gen_est, cfg, gen, log)
            with torch.no_grad():
                dump[e] = {"conf": model.estimate(x, e).float(), "right": y, "val": val}
            for p in model.parameters():
                p.requires_grad_(False)
            _log(log, event="exit_done", exit=e, seconds=round(time.perf_counter() - t0, 1))
        save_exits(model, cfg, out, default_threshold)
        if dump_val:
            torch.save(dump, dump_val)
        _log(log, event="done", seconds=round(time.perf_counter() - t0, 1))
