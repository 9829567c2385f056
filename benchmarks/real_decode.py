"""Real-backend decode benchmark: step time against the memory-bandwidth floor, and throughput against
Hugging Face ``generate`` with the same batch on the same device; plus the two KV fills side by side.

    python benchmarks/real_decode.py --model tiny --device cpu                      # minutes on a laptop core
    python benchmarks/real_decode.py --model llama2-7b --device h100 --dtype bf16   # on the GPU

Writes benchmarks/results/real_decode_<device>_<model>.json. The floor is the bytes a decode step must
read (every layer's weights, the LM head, each row's KV) over the device's peak bandwidth.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drex.config import EEConfig  # noqa: E402
from drex.devices import get_device  # noqa: E402
from drex.models import get_model  # noqa: E402
from drex.real.generate import greedy_decode  # noqa: E402
from drex.real.kvcache import PagedKVCache  # noqa: E402
from drex.real.model import EEModel  # noqa: E402
from drex.dtypes import DTYPE_NAMES, default_dtype  # noqa: E402
from drex.real.init import torch_dtype  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def decode_step_s(model: EEModel, batch: int, context: int, steps: int, device: str) -> float:
    """Median seconds of one full-depth decode step (metadata, layers, top head, argmax) at a context."""
    shape, bs = model.shape, 16
    cache = PagedKVCache(shape, batch * (-(-(context + steps + 1) // bs)), bs, batch, dtype=model.dtype, device=device)
    for r in range(batch):
        cache.reserve(r, context + steps + 1)
    ids = torch.zeros(batch, dtype=torch.long, device=device)
    times = []
    for s in range(steps + 2):  # two warm-up steps
        sync(device)
        t = time.perf_counter()
        meta = cache.meta(range(batch), [context + s] * batch, [1] * batch)
        h = model.run_layers(model.embed(ids), meta, cache, 0, model.num_layers)
        ids = model.exit_logits(h, model.num_layers).argmax(-1)
        sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times[2:]))


def floor_s(model: EEModel, batch: int, context: int, device_name: str) -> float:
    shape, nbytes = model.shape, model.embed_tokens.weight.element_size()
    read = (shape.num_layers * shape.layer_params + shape.head_params) * nbytes
    read += batch * context * shape.kv_bytes_per_token(nbytes)
    return read / get_device(device_name).mem_bw_bytes_per_s


def hf_model(model: EEModel):
    """transformers' Llama / Qwen2 with the same weights, on the same device, in the same dtype."""
    import transformers

    from drex.real.weights import hf_config

    cfg = hf_config(model)
    cls = transformers.Qwen2ForCausalLM if cfg["model_type"] == "qwen2" else transformers.LlamaForCausalLM
    config = (transformers.Qwen2Config if cfg["model_type"] == "qwen2" else transformers.LlamaConfig)(**cfg)
    with torch.device(model.device):
        hf = cls(config).to(model.dtype).eval()
    state = {(k if k.startswith("lm_head.") else f"model.{k}"): v for k, v in model.state_dict().items()
             if not k.startswith("exit_heads.")}
    missing, _ = hf.load_state_dict(state, strict=False)
    if [m for m in missing if "rotary" not in m]:
        raise RuntimeError(f"HF model lacks weights: {missing[:3]}")
    return hf


@torch.inference_mode()
def throughput(model: EEModel, batch: int, prompt: int, new: int, device: str) -> dict:
    """Output tokens/s of drex's batched greedy decoder and of HF generate on the same prompts."""
    prompts = torch.randint(model.shape.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(0))
    greedy_decode(model, prompts[:, :8].tolist(), 2)  # warm-up
    sync(device)
    t = time.perf_counter()
    ours = greedy_decode(model, prompts.tolist(), new)
    sync(device)
    ours_s = time.perf_counter() - t
    hf = hf_model(model)
    ids = prompts.to(device)
    # An explicit mask: generate would otherwise take every token id 0 in a prompt for padding.
    hf.generate(ids[:, :8], attention_mask=torch.ones_like(ids[:, :8]), max_new_tokens=2, do_sample=False,
                eos_token_id=None, pad_token_id=0)
    sync(device)
    t = time.perf_counter()
    ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                      eos_token_id=None, pad_token_id=0)
    sync(device)
    hf_s = time.perf_counter() - t
    same = float(np.mean([a == b for a, b in zip(ours.tokens, ref[:, prompt:].tolist())]))
    del hf
    return {"batch": batch, "prompt_tokens": prompt, "new_tokens": new, "drex_tok_s": batch * new / ours_s,
            "hf_generate_tok_s": batch * new / hf_s, "speedup": hf_s / ours_s, "same_tokens_fraction": same}


@torch.inference_mode()
def kv_fill(model: EEModel, batch: int, prompt: int, new: int, threshold: float) -> dict:
    """The two KV fills on the same requests and exit rule: bytes moved, time spent, tokens that differ."""
    exits = (model.num_layers // 2,)
    ee = EEConfig(exits=exits, threshold=threshold)
    prompts = torch.randint(model.shape.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(1))
    out = {}
    for fill in ("copy", "recompute"):
        t = time.perf_counter()
        res = greedy_decode(model, prompts.tolist(), new, ee=ee, kv_fill=fill)
        out[fill] = {"wall_s": time.perf_counter() - t,
                     "early_exit_fraction": float(np.mean([e < model.num_layers for t in res.exit_layers for e in t]))}
        out[fill]["tokens"] = res.tokens
    nbytes = model.embed_tokens.weight.element_size()
    exited = sum(e < model.num_layers for t in res.exit_layers for e in t[:-1])
    skipped = model.num_layers - exits[0]
    out["copy"]["kv_bytes_written"] = exited * skipped * model.shape.kv_bytes_per_token_layer(nbytes)
    out["recompute"]["token_layers_recomputed"] = exited * skipped
    out["recompute"]["hidden_bytes_held_per_row"] = model.shape.hidden_size * nbytes
    same = np.mean([a == b for a, b in zip(out["copy"].pop("tokens"), out["recompute"].pop("tokens"))])
    return {"exit_layer": exits[0], "threshold": threshold, "batch": batch, "new_tokens": new,
            "same_tokens_fraction": float(same), **out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--device", default="cpu", help="device table name (cpu, h100, h200, a100)")
    p.add_argument("--dtype", default=None, choices=DTYPE_NAMES, help="default fp32 on cpu, bf16 on GPU")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--contexts", default="128,1024")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1) if args.device == "cpu" else None
    dev = "cpu" if args.device == "cpu" else "cuda"
    dtype = args.dtype or default_dtype(dev)
    model = EEModel.random(get_model(args.model), dtype=torch_dtype(dtype), device=dev)
    batches = [int(b) for b in args.batches.split(",")]
    result = {"model": args.model, "device": args.device, "dtype": dtype, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if dev == "cuda" else platform.processor() or "cpu",
              "decode": [], "throughput": [], "kv_fill": None}
    for batch in batches:
        for context in (int(c) for c in args.contexts.split(",")):
            step = decode_step_s(model, batch, context, args.steps, dev)
            floor = floor_s(model, batch, context, args.device)
            result["decode"].append({"batch": batch, "context": context, "step_ms": step * 1e3,
                                     "floor_ms": floor * 1e3, "floor_fraction": floor / step})
            print(f"decode b={batch:<4} ctx={context:<6} {step * 1e3:8.2f} ms/step  floor {floor * 1e3:7.3f} ms "
                  f"({100 * floor / step:.0f}% of it)", flush=True)
    for batch in batches:
        r = throughput(model, batch, 128, 32 if dev == "cpu" else 128, dev)
        result["throughput"].append(r)
        print(f"generate b={batch:<4} drex {r['drex_tok_s']:9.1f} tok/s  HF {r['hf_generate_tok_s']:9.1f} tok/s  "
              f"same tokens {100 * r['same_tokens_fraction']:.0f}%", flush=True)
    result["kv_fill"] = kv_fill(model, batches[-1], 64, 32, threshold=0.3)
    print("kv fill:", json.dumps(result["kv_fill"]))
    out = Path(args.out or RESULTS / f"real_decode_{args.device}_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
