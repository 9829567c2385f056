"""drex's real backend (policy off) against Hugging Face ``generate`` on the same HumanEval prompts.

    python benchmarks/hf_generate_smollm2.py --drex-run RUN_DIR [--num-requests 32 --batch-size 16]

RUN_DIR is a ``drex run --model smollm2 --trace humaneval --num-requests 32 --max-batch-size 16
--policy off`` directory. ``generate`` (transformers' LlamaForCausalLM on the same converted
weights, fp32, one thread) decodes the same prompts in left-padded batches of the same maximum
batch size, 64 new tokens each, end-of-sequence ignored. Output throughput = output tokens over
the wall time of all batches. Tokens are compared position by position; where a request first
differs, the full model's top-two logit gap at that position (one unpadded forward) says whether it
is a near tie (< 1e-4). Writes benchmarks/results/hf_generate_cpu_smollm2.json, with a breakdown: HF's
prefill (padded tokens computed) and decode seconds, its full-batch decode step (the clock between
consecutive steps' logits), drex's seconds by step kind and its full-batch decode step (steps.csv), the
CPU seconds HF's process got (wall / CPU > 1: the core was shared), and, when
benchmarks/step_floor_smollm2.py has run, the matmul floor of one decode step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drex.models import get_model  # noqa: E402
from drex.prompts import humaneval_prompts  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NEAR_TIE = 1e-4


class StepClock:
    """A logits processor that only reads the clock: generate calls it once per step, after the forward."""

    def __init__(self):
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores):
        self.stamps.append(time.perf_counter())
        return scores


def hf_generate(model, prompts, new_tokens: int, batch_size: int, pad_id: int):
    """Tokens, wall seconds, CPU seconds of this process, and per batch: the prefill's seconds (to the first
    step's logits) and each decode step's seconds (clock between consecutive steps' logits)."""
    from transformers import LogitsProcessorList

    outs, batches, t0, c0 = [], [], time.perf_counter(), time.process_time()
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i:i + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        clock, start = StepClock(), time.perf_counter()
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                 eos_token_id=None, pad_token_id=pad_id,
                                 logits_processor=LogitsProcessorList([clock]))
        outs += gen[:, width:].tolist()
        st = clock.stamps
        batches.append({"rows": len(batch), "padded_width": width, "prompt_tokens": sum(len(p) for p in batch),
                        "prefill_s": st[0] - start, "decode_step_s": [b - a for a, b in zip(st, st[1:])]})
    return outs, time.perf_counter() - t0, time.process_time() - c0, batches


def drex_steps(run: Path) -> dict:
    """The drex run's time by step kind, and its full-batch decode step's median (steps.csv)."""
    import pandas as pd

    s = pd.read_csv(run / "steps.csv")
    full = s[(s.kind == "decode") & (s.num_decode == s.num_decode.max())]
    return {"seconds_by_kind": s.groupby("kind").duration_ms.sum().div(1e3).round(3).to_dict(),
            "steps_by_kind": s.groupby("kind").size().to_dict(),
            "full_batch_decode_step_ms_median": float(full.duration_ms.median()),
            "full_batch_rows": int(s.num_decode.max())}


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
    load_before = os.getloadavg()
    outs, wall_s, cpu_s, batches = hf_generate(model, prompts, args.new_tokens, args.batch_size, pad_id=0)
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
    full = [b for b in batches if b["rows"] == args.batch_size]
    hf_step_ms = 1e3 * statistics.median([t for b in full for t in b["decode_step_s"]])
    drex = drex_steps(run)
    breakdown = {
        "hf_cpu_s": cpu_s, "hf_wall_over_cpu": wall_s / cpu_s, "load_average_before_after": [load_before, os.getloadavg()],
        "hf_prefill_s": sum(b["prefill_s"] for b in batches),
        "hf_decode_s": sum(sum(b["decode_step_s"]) for b in batches),
        "hf_prefill_tokens_computed": sum(b["rows"] * b["padded_width"] for b in batches),
        "prompt_tokens": sum(len(p) for p in prompts),
        "hf_full_batch_decode_step_ms_median": hf_step_ms, "drex": drex,
        "decode_step_drex_over_hf": hf_step_ms / drex["full_batch_decode_step_ms_median"]}
    if summary.get("run_cpu_s"):  # output tokens per CPU-second each got: what sharing the core did not take
        breakdown["drex_cpu_s"] = summary["run_cpu_s"]
        breakdown["drex_over_hf_in_cpu_time"] = cpu_s / summary["run_cpu_s"]
    floor = RESULTS / "step_floor_cpu_smollm2.json"
    if floor.exists():  # benchmarks/step_floor_smollm2.py: the matmul floor of one decode step
        breakdown["step_floor"] = json.loads(floor.read_text())["median_ms"]
    res = {"model": "smollm2", "device": "cpu", "threads": 1, "num_requests": len(prompts),
           "batch_size": args.batch_size, "new_tokens": args.new_tokens, "prompt_tokens": [len(p) for p in prompts],
           "hf_generate_wall_s": wall_s, "hf_generate_output_throughput": hf_tps,
           "drex_off_output_throughput": drex_tps, "drex_over_hf": drex_tps / hf_tps,
           "target_drex_over_hf": 2.0, "requests_identical": len(prompts) - differing,
           "requests_differing": differing, "first_differences": gaps,
           "differences_at_near_ties": ties, "near_tie": NEAR_TIE, "breakdown": breakdown,
           "transformers": __import__("transformers").__version__, "torch": torch.__version__}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hf_generate_cpu_smollm2.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("prompt_tokens", "first_differences")}, indent=1))


if __name__ == "__main__":
    main()
