"""drex's real backend (policy off) against Hugging Face ``generate`` on the same HumanEval prompts.

    python benchmarks/hf_generate_smollm2.py --drex-run RUN_DIR [--num-requests 32 --batch-size 16]

RUN_DIR is a ``drex run --model smollm2 --trace humaneval --num-requests 32 --max-batch-size 16
--policy off`` directory. ``generate`` (transformers' LlamaForCausalLM on the same converted
weights, fp32, one thread) decodes the same prompts in left-padded batches of the same maximum
batch size, 64 new tokens each, end-of-sequence ignored. Output throughput = output tokens over
the wall time of all batches. Tokens are compared position by position; where a request first
differs, the full model's top-two logit gap at that position (one unpadded forward) says whether it
is a near tie (< 1e-4). Writes benchmarks/results/hf_generate_cpu_smollm2.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drex.models import get_model  # noqa: E402
from drex.prompts import humaneval_prompts  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NEAR_TIE = 1e-4


def hf_generate(model, prompts, new_tokens: int, batch_size: int, pad_id: int):
    outs, t0 = [], time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i:i + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                 eos_token_id=None, pad_token_id=pad_id)
        outs += gen[:, width:].tolist()
    return outs, time.perf_counter() - t0


def top2_gap(model, ids: list[int]) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].float()
    top = logits.topk(2).values
    return float(top[0] - top[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--drex-run", required=True, help="drex run directory (policy off, smollm2, humaneval)")
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers import LlamaForCausalLM

    run = Path(args.drex_run)
    summary = json.loads((run / "summary.json").read_text())
    drex_out = {}
    for line in (run / "tokens.jsonl").read_text().splitlines():
        rec = json.loads(line)
        drex_out[rec["request_id"]] = rec["tokens"]
    path = get_model("smollm2").path
    prompts = [list(p) for p in humaneval_prompts(path)[: args.num_requests]]
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    outs, wall_s = hf_generate(model, prompts, args.new_tokens, args.batch_size, pad_id=0)
    num_tokens = sum(len(o) for o in outs)
    differing, ties, gaps = 0, 0, []
    for rid, (p, hf) in enumerate(zip(prompts, outs)):
        ours = drex_out[rid]
        first = next((i for i, (a, b) in enumerate(zip(ours, hf)) if a != b), None)
        if first is None:
            continue
        differing += 1
        gap = top2_gap(model, p + hf[:first])
        gaps.append({"request_id": rid, "position": first, "top2_gap": gap})
        ties += gap < NEAR_TIE
    hf_tps = num_tokens / wall_s
    drex_tps = summary["output_throughput"]
    res = {"model": "smollm2", "device": "cpu", "threads": 1, "num_requests": len(prompts),
           "batch_size": args.batch_size, "new_tokens": args.new_tokens, "prompt_tokens": [len(p) for p in prompts],
           "hf_generate_wall_s": wall_s, "hf_generate_output_throughput": hf_tps,
           "drex_off_output_throughput": drex_tps, "drex_over_hf": drex_tps / hf_tps,
           "target_drex_over_hf": 2.0, "requests_identical": len(prompts) - differing,
           "requests_differing": differing, "first_differences": gaps,
           "differences_at_near_ties": ties, "near_tie": NEAR_TIE,
           "transformers": __import__("transformers").__version__, "torch": torch.__version__}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hf_generate_cpu_smollm2.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("prompt_tokens", "first_differences")}, indent=1))


if __name__ == "__main__":
    main()
