"""Attention kernels priced from the one public GPU attention profile, carried to other models and GPUs.

Vidur's ``a100/meta-llama/Llama-2-70b-hf/attention.csv`` measures FlashAttention
decode and prefill kernels of Llama-2-70B at tensor-parallel degree 2 on an A100
(32 query / 4 KV heads of dimension 128 per GPU). ``calibrate`` fits two laws to it::

    decode  t = c0 + per_row * rows + kv_bytes_read / (bw_efficiency * peak bandwidth)
    prefill t = c0 + 4 * q_heads * head_dim * query_key_pairs / (flops_efficiency * peak FLOP/s)

and states them as the achieved fraction of the A100's bandwidth and dense FLOP/s.
``attention_law`` carries them to another model by its heads per GPU (KV bytes
per cached token, FLOPs per query-key pair) and to another GPU by its peak
bandwidth and FLOP/s at the same efficiencies; the fixed and per-row costs
(launch latency, per-sequence bookkeeping) stay in seconds. The constants below
are ``calibrate``'s output on the shared file (a test re-derives them).
Measured on A100 only: its error there is the floor of any other model's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from drex.costmodel.fitted import Law
from drex.devices import Device, get_device
from drex.models import ModelShape

CALIBRATION = {
    "source": "vidur compute/a100/meta-llama/Llama-2-70b-hf/attention.csv (Llama-2-70B, TP-2, A100)",
    "device": "a100",
    "decode_c0_s": 1.613e-05,
    "decode_per_row_s": 2.524e-08,
    "decode_bw_efficiency": 0.7986,
    "prefill_c0_s": 2.015e-05,
    "prefill_flops_efficiency": 0.2807,
    # MAPE of the calibrated laws on the file's medians (kernel + reshapes, all 14,658 rows)
    "decode_mape": 0.103,
    "prefill_mape": 0.195,
}

# attention.csv columns of one operation's timing (ms) and the shape columns of its model.
_STAT = "time_stats.{}.median"
ATTN_SHAPE_COLS = ("n_embd", "n_q_head", "n_kv_head", "num_tensor_parallel_workers", "batch_size",
                   "kv_cache_size", "prefill_chunk_size", "is_prefill")


def per_gpu_heads(shape: ModelShape, tp: int) -> tuple[int, int]:
    """Query and KV heads on one GPU of tp (KV heads are replicated when there are fewer than GPUs)."""
    return max(shape.num_heads // tp, 1), max(shape.num_kv_heads // tp, 1)


def attention_times(df) -> tuple[np.ndarray, np.ndarray]:
    """Seconds of each row's attention op: the kernel plus the reshapes around it (Vidur times them apart)."""
    kernel = np.where(df["is_prefill"].to_numpy(dtype=bool), df[_STAT.format("attn_prefill")].fillna(0.0),
                      df[_STAT.format("attn_decode")].fillna(0.0))
    reshape = sum(df[_STAT.format(op)].fillna(0.0).to_numpy() for op in ("attn_input_reshape", "attn_output_reshape")
                  if _STAT.format(op) in df)
    return np.asarray(kernel, dtype=float) * 1e-3, np.asarray(kernel + reshape, dtype=float) * 1e-3


def read_attention_csv(path: str | Path):
    """attention.csv as a DataFrame; ValueError naming the file and the missing columns when it is not one."""
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV ({e})") from None
    need = list(ATTN_SHAPE_COLS) + [_STAT.format("attn_decode"), _STAT.format("attn_prefill")]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a Vidur attention profile (no columns {', '.join(missing)})")
    return df


def calibrate(path: str | Path, device: str = "a100") -> dict:
    """Fit the decode and prefill laws of one attention.csv; efficiencies relative to ``device``'s peaks."""
    from drex.costmodel.fit import fit_law

    df = read_attention_csv(path)
    dev = get_device(device)
    n_embd, q_heads, kv_heads = (int(df[c].iloc[0]) for c in ("n_embd", "n_q_head", "n_kv_head"))
    tp = int(df["num_tensor_parallel_workers"].iloc[0])
    head_dim = n_embd // q_heads
    q_gpu, kv_gpu = max(q_heads // tp, 1), max(kv_heads // tp, 1)
    _, y = attention_times(df)
    pre = df["is_prefill"].to_numpy(dtype=bool)
    rows = df["batch_size"].to_numpy(dtype=float)
    ctx = df["kv_cache_size"].to_numpy(dtype=float)
    chunk = df["prefill_chunk_size"].to_numpy(dtype=float)
    dec_feats = {"decode_context": rows[~pre] * ctx[~pre], "decode_rows": rows[~pre]}
    dec = fit_law((), ("decode_context", "decode_rows"), dec_feats, y[~pre])
    pre_feats = {"prefill_attn": chunk[pre] * (ctx[pre] + chunk[pre] / 2)}
    pf_law = fit_law((), ("prefill_attn",), pre_feats, y[pre])
    kv_bytes = 2 * kv_gpu * head_dim * 2  # K and V, fp16
    mape = lambda law, feats, t: float(np.mean(np.abs(law(feats) / t - 1.0)))  # noqa: E731
    return {
        "source": str(path), "device": device,
        "decode_c0_s": dec.c0, "decode_per_row_s": dec.a[1],
        "decode_bw_efficiency": kv_bytes / (dec.a[0] * dev.mem_bw_bytes_per_s),
        "prefill_c0_s": pf_law.c0,
        "prefill_flops_efficiency": 4 * q_gpu * head_dim / (pf_law.a[0] * dev.peak_flops),
        "decode_mape": mape(dec, dec_feats, y[~pre]), "prefill_mape": mape(pf_law, pre_feats, y[pre]),
    }


def attention_law(shape: ModelShape, device: Device | str, tp: int = 1, dtype_bytes: int = 2,
                  calib: dict = CALIBRATION) -> Law:
    """One layer's attention on one GPU of ``tp``, as a law over the cost model's attention features."""
    dev = get_device(device) if isinstance(device, str) else device
    q_gpu, kv_gpu = per_gpu_heads(shape, tp)
    kv_bytes = 2 * kv_gpu * shape.head_dim * dtype_bytes
    a_ctx = kv_bytes / (calib["decode_bw_efficiency"] * dev.mem_bw_bytes_per_s)
    a_pair = 4 * q_gpu * shape.head_dim / (calib["prefill_flops_efficiency"] * dev.peak_flops)
    # One fixed cost: a mixed step launches both kernels, but the two differ by 4 us; the decode one stands.
    return Law((), ("decode_context", "prefill_attn", "decode_rows"), float(calib["decode_c0_s"]), 0.0, 1.0, (),
               (a_ctx, a_pair, float(calib["decode_per_row_s"])))


def describe(calib: dict = CALIBRATION) -> str:
    """The statement meta.json and the fit report carry where attention is not measured."""
    return (f"not measured for this model: law calibrated on {calib['source']} (decode: "
            f"{100 * calib['decode_bw_efficiency']:.1f}% of peak bandwidth reading the KV cache + "
            f"{1e9 * calib['decode_per_row_s']:.1f} ns per row + {1e6 * calib['decode_c0_s']:.1f} us; prefill: "
            f"{100 * calib['prefill_flops_efficiency']:.1f}% of peak dense FLOP/s over 4*heads*head_dim FLOPs per "
            f"query-key pair; MAPE there {100 * calib['decode_mape']:.1f}% decode, {100 * calib['prefill_mape']:.1f}% "
            "prefill), carried by heads per GPU and to other GPUs by their peak bandwidth and FLOP/s")
