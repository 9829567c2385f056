"""What early exit costs in output quality, measured on a trained EE model (``drex quality``).

For each confidence metric and a sweep of thresholds, the held-out prompts
(HumanEval prompts of held-out tasks, and windows of held-out plays and
stdlib modules; see ``drex.lab.corpus``) are decoded greedily by the real
backend's per-row exit rule (``drex.real.generate.greedy_decode``), and
compared with the same prompts decoded at full depth. Each KV fill for the
layers an exited token skipped is swept apart: ``recompute`` (its true K/V,
computed before the request's next token) and ``copy`` (state copying: the
exit layer's K/V stands in for the deeper ones), since the fill, not the exit
decision, can be what changes the output.

- ``early_exit_fraction``: output tokens that left before the last layer
  (the prefill's first token always runs full depth and counts as not exited);
- ``token_agreement``: output positions holding the full model's token;
- ``rouge_l``: mean ROUGE-L F1 (``rouge-score``) of each output text against the
  full model's output text;
- ``bertscore``: mean BERTScore F1 of the same pairs with the offline MiniLM encoder
  (``drex.lab.bertscore``; empty when its package is not installed);
- ``output_throughput``: output tokens per second of the decode (CPU, one thread).

It also records the confidence traces the simulator replays: per request, per
output token, per exit point, the confidence of the exit head on the
full-depth decoding path, so any threshold can be replayed.

Records only: ``analysis/quality_plot.py`` draws the figure.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drex.config import EEConfig
from drex.progress import Progress, say

THRESHOLDS = {
    "margin": (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
    "maxprob": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98),
    "entropy": (4.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.75, 0.5, 0.3, 0.1),  # nats; lower is surer
    "learned": (0.5, 0.6, 0.7, 0.8, 0.9, 0.95),  # the exit's estimator: P(its token is the full model's)
}
QUALITY_COLUMNS = ("metric", "threshold", "early_exit_fraction", "token_agreement", "rouge_l", "bertscore",
                   "output_throughput")


@dataclass(frozen=True)
class PromptSet:
    name: str  # "humaneval" | "text"
    ids: list  # per prompt: token ids
    labels: list  # per prompt: where it came from


def _model_dir(name_or_path: str) -> Path:
    from drex.models import get_model

    shape = get_model(name_or_path)
    if shape.path is None:
        raise ValueError(f"model {name_or_path!r} is a shape without weights; quality needs a trained checkpoint "
                         "(e.g. tiny-ee, or a directory with config.json + model.safetensors + tokenizer.json)")
    return Path(shape.path)


def load_model(name_or_path: str):
    """(EEModel fp32 on CPU, tokenizer, checkpoint dir) for a shipped name, a fetched model with trained exits
    (smollm2-ee) or a checkpoint directory."""
    from drex.lab.corpus import load_tokenizer
    from drex.models import get_model
    from drex.real.model import EEModel

    directory = _model_dir(name_or_path)
    model = EEModel.from_pretrained(directory, extra=get_model(name_or_path).extra_weights)
    tokenizer = load_tokenizer(directory)
    if tokenizer.get_vocab_size() > model.shape.vocab_size:
        raise ValueError(f"{directory}: tokenizer has {tokenizer.get_vocab_size()} tokens, the model "
                         f"{model.shape.vocab_size}")
    return model, tokenizer, directory


def heldout_prompts(tokenizer, num_code: int, num_text: int, text_prompt_tokens: int = 64) -> list[PromptSet]:
    """HumanEval prompts of held-out tasks, and windows of held-out text starting at line starts.

    Deterministic: evenly spaced picks, no sampling.
    """
    from drex.lab.corpus import build_corpus

    corpus = build_corpus()
    tasks = corpus.heldout_prompts
    picks = np.linspace(0, len(tasks) - 1, num=min(num_code, len(tasks))).round().astype(int)
    code = PromptSet("humaneval", [tokenizer.encode(tasks[i].text).ids for i in picks],
                     [tasks[i].name for i in picks])
    ids, labels = [], []
    per_source = {"plays": (num_text + 1) // 2, "python": num_text // 2}
    for source, count in per_source.items():
        docs = [d for d in corpus.heldout if d.source == source]
        text = "".join(d.text for d in docs)
        for off in np.linspace(0, len(text) - 4000, num=count).astype(int):
            start = text.find("\n", int(off)) + 1
            enc = tokenizer.encode(text[start:start + 8 * text_prompt_tokens]).ids[:text_prompt_tokens]
            ids.append(enc)
            labels.append(f"{source}@{start}")
    return [code, PromptSet("text", ids, labels)]


def rouge_l(outputs: list[str], references: list[str]) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = []
    for out, ref in zip(outputs, references):
        if out == ref:  # also covers texts with no word tokens, which rouge-score scores 0
            scores.append(1.0)
        else:
            scores.append(scorer.score(ref, out)["rougeL"].fmeasure)
    return scores


def decode(model, prompts: list[list[int]], max_new_tokens: int, ee: EEConfig | None, batch_size: int,
           kv_fill: str = "copy"):
    """Greedy decode in batches of batch_size; returns (tokens, exit layers, seconds)."""
    from drex.real.generate import greedy_decode

    tokens, exits = [], []
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        out = greedy_decode(model, prompts[i:i + batch_size], max_new_tokens, ee, kv_fill=kv_fill)
        tokens += out.tokens
        exits += out.exit_layers
    return tokens, exits, time.perf_counter() - t0


def compare(tokens, exits, seconds, reference, tokenizer, exit_points, num_layers, reference_texts=None,
            scorer=None) -> dict:
    """The quality row of one decode against the full-depth reference (BERTScore when ``scorer`` is given)."""
    flat_exit = np.concatenate([np.asarray(e) for e in exits])
    agree = np.concatenate([np.asarray(t) == np.asarray(r) for t, r in zip(tokens, reference)])
    refs = reference_texts or [tokenizer.decode(r) for r in reference]
    texts = [tokenizer.decode(t) for t in tokens]
    rouge = rouge_l(texts, refs)
    return {
        "early_exit_fraction": float((flat_exit < num_layers).mean()),
        "token_agreement": float(agree.mean()),
        "rouge_l": float(np.mean(rouge)),
        "bertscore": float(np.mean(scorer.score(texts, refs))) if scorer is not None else None,
        "output_throughput": float(flat_exit.size / seconds),
        "per_exit": {int(e): float((flat_exit == e).mean()) for e in exit_points},
    }


def confidence_trace(model, prompts, outputs, metric: str = "margin") -> list[tuple[int, int, int, float]]:
    """(request_id, token_index, exit_layer, confidence) on the full-depth path.

    Output token i was sampled from the logits at position len(prompt) - 1 + i, so one dense
    pass over prompt + output gives every exit point's confidence for every output token.
    """
    import torch

    from drex.real.model import confidence

    rows = []
    with torch.inference_mode():
        for rid, (prompt, out) in enumerate(zip(prompts, outputs)):
            ids = torch.tensor([prompt + out[:-1]])
            logits = model.forward_train(ids)
            first = len(prompt) - 1
            for e in model.exit_layers:
                conf = confidence(logits[e][0, first:], metric).tolist()
                rows += [(rid, i, e, round(c, 5)) for i, c in enumerate(conf)]
    rows.sort()
    return rows


def write_trace(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("request_id", "token_index", "exit_layer", "confidence"))
        w.writerows(rows)


def sweep(model, tokenizer, sets: list[PromptSet], full: dict, max_new_tokens: int, batch_size: int, metrics,
          thresholds: dict, kv_fill: str, bar=None, scorer=None):
    """Quality rows (aggregate, per prompt set, per exit point) of every (metric, threshold) at one KV fill."""
    exit_points, L = model.exit_layers, model.num_layers
    rows, by_set, per_exit = [], [], []
    for metric in metrics:
        for th in thresholds[metric]:
            ee = EEConfig(exits=exit_points, threshold=th, metric=metric)
            all_tok, all_exit, all_ref, all_ref_text, secs = [], [], [], [], 0.0
            for ps in sets:
                tokens, exits, seconds = decode(model, ps.ids, max_new_tokens, ee, batch_size, kv_fill)
                ref, ref_text, _ = full[ps.name]
                r = compare(tokens, exits, seconds, ref, tokenizer, exit_points, L, ref_text, scorer)
                by_set.append({"kv_fill": kv_fill, "prompt_set": ps.name, "metric": metric, "threshold": th,
                               **{k: r[k] for k in QUALITY_COLUMNS[2:]}})
                all_tok += tokens
                all_exit += exits
                all_ref += ref
                all_ref_text += ref_text
                secs += seconds
                if bar is not None:
                    bar.update(1)
            r = compare(all_tok, all_exit, secs, all_ref, tokenizer, exit_points, L, all_ref_text, scorer)
            rows.append({"metric": metric, "threshold": th, **{k: r[k] for k in QUALITY_COLUMNS[2:]}})
            per_exit += [{"kv_fill": kv_fill, "metric": metric, "threshold": th, "exit_layer": e, "fraction": f}
                         for e, f in r["per_exit"].items()]
            line = (f"{kv_fill:9s} {metric:8s} {th:<5g} exit {r['early_exit_fraction']:.3f} "
                    f"agree {r['token_agreement']:.3f} rougeL {r['rouge_l']:.3f} "
                    f"bertscore {r['bertscore'] if r['bertscore'] is not None else float('nan'):.3f} "
                    f"{r['output_throughput']:.0f} tok/s")
            say(line, sys.stdout)  # above the bar, not through it
    return rows, by_set, per_exit


def run(model_name: str, out: Path, max_new_tokens: int = 48, num_code: int = 24, num_text: int = 24,
        batch_size: int = 8, metrics=("margin", "maxprob", "entropy"), thresholds: dict | None = None,
        kv_fills=("recompute", "copy"), trace_dir: Path | None = None, trace_tokens: int = 128,
        trace_prompts: int = 40, progress: bool = False, bertscore: bool = True) -> list[dict]:
    """The sweep at each KV fill: quality_<fill>.csv each, quality.csv = the first fill's table."""
    import torch

    torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, directory = load_model(model_name)
    if not model.exit_layers:
        raise ValueError(f"{directory}: config.json lists no drex_exit_layers; nothing can exit early")
    sets = heldout_prompts(tokenizer, num_code, num_text)
    thresholds = thresholds or THRESHOLDS
    scorer = _scorer() if bertscore else None

    # The time goes into decoding every prompt set once at full depth, then once per (KV fill, metric,
    # threshold): each pass costs about as much as the full-depth one, which gives the estimate.
    num_passes = len(kv_fills) * sum(len(thresholds[m]) for m in metrics) * len(sets)
    bar = Progress("decode passes", len(sets) + num_passes, "pass", enabled=progress)  # a failure: cli closes it
    full = {}
    for ps in sets:
        tokens, exits, seconds = decode(model, ps.ids, max_new_tokens, None, batch_size)
        full[ps.name] = (tokens, [tokenizer.decode(t) for t in tokens], seconds)
        bar.update(1)
    per_pass_s = sum(f[2] for f in full.values()) / max(len(sets), 1)
    say(f"drex quality: {num_passes} early-exit decode passes to go ({num_passes // len(sets)} settings x "
        f"{len(sets)} prompt sets, {max_new_tokens} tokens each), about {num_passes * per_pass_s / 60:.0f} min at "
        f"{per_pass_s:.1f} s a pass (fewer: --metrics, --kv-fill, --num-code, --num-text)")
    first_rows, by_set, per_exit = None, [], []
    for fill in kv_fills:
        rows, fill_by_set, fill_exits = sweep(model, tokenizer, sets, full, max_new_tokens, batch_size, metrics,
                                              thresholds, fill, bar, scorer)
        write_csv(out / f"quality_{fill}.csv", QUALITY_COLUMNS, rows)
        if first_rows is None:
            first_rows = rows
            write_csv(out / "quality.csv", QUALITY_COLUMNS, rows)
        by_set += fill_by_set
        per_exit += fill_exits
    bar.close()
    write_csv(out / "quality_by_set.csv", ("kv_fill", "prompt_set", *QUALITY_COLUMNS), by_set)
    write_csv(out / "quality_exits.csv", ("kv_fill", "metric", "threshold", "exit_layer", "fraction"), per_exit)
    full_tokens = sum(len(t) for ps in sets for t in full[ps.name][0])
    from drex.outputs import recorded_path

    meta = {"model": model_name, "checkpoint": recorded_path(directory), "num_layers": model.num_layers,
            "exit_layers": list(model.exit_layers), "max_new_tokens": max_new_tokens, "batch_size": batch_size,
            "kv_fills": list(kv_fills), "quality.csv": f"kv_fill={kv_fills[0]}",
            "prompts": {ps.name: ps.labels for ps in sets},
            "full_depth_output_throughput": full_tokens / sum(full[ps.name][2] for ps in sets),
            "device": "cpu", "torch_threads": torch.get_num_threads()}
    (out / "quality_meta.json").write_text(json.dumps(meta, indent=1) + "\n")

    if trace_dir is not None:
        for ps in heldout_prompts(tokenizer, trace_prompts, trace_prompts):
            tokens, _, _ = decode(model, ps.ids, trace_tokens, None, batch_size)
            write_trace(Path(trace_dir) / f"{Path(model_name).name}-{ps.name}.csv",
                        confidence_trace(model, ps.ids, tokens))
    return first_rows


def _scorer():
    """The offline BERTScore encoder, or None (with a note) when its package is not installed."""
    from drex.lab.bertscore import BertScorer

    try:
        return BertScorer()
    except FileNotFoundError as e:
        print(f"drex quality: no BERTScore column: {e}", file=sys.stderr)
        return None


def write_csv(path: Path, columns, rows) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
