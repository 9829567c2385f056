"""``drex costmodel import-vidur``: a drex profile from Vidur's public per-operation GPU measurements.

Vidur (github.com/microsoft/vidur, MIT licence) publishes, per GPU and model, the
medians of one decoder layer's non-attention operations against ``num_tokens``
and tensor-parallel degree (``mlp.csv``), and for one model an attention profile
(``attention.csv``). An import writes what ``drex profile`` writes:

- ``measurements.csv`` with op ``linear`` (the layer less attention: the sum of
  the medians of the nine per-layer operations, each once; ``emb`` is not part
  of a layer) and op ``mlp`` (post-attention norm, up/gate, activation, down),
  every fourth point held out; ``attn_decode``/``attn_prefill`` rows only where
  the folder's attention.csv is of this model at this TP degree. p10_s/p90_s
  hold the sums of Vidur's min/max (it stores no percentiles);
- ``meta.json`` with the source (files, their sha256, licence, commit) and a
  statement of every cost the profile does not measure;

then fits it (``vidur_fit.py``) by its fit rule (``source.fit_rule``; absent: ``measured``). This module is
torch-free.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from drex import __version__
from drex.costmodel import profile as pf
from drex.costmodel.attention_law import attention_times, read_attention_csv
from drex.devices import get_device
from drex.models import ModelShape, get_model
from drex.outputs import recorded_path

LINEAR_OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
              "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
MLP_OPS = ("post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj")
SHAPE_COLS = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "use_gated_mlp")
HELD_EVERY = 4  # every 4th point (from the 3rd) is held out: always between two fitted points
ATTN_STRIDE = 16  # attention.csv has ~15k rows: every 16th keeps its whole range at a readable size
LICENCE = "MIT, Copyright (c) Microsoft Corporation (github.com/microsoft/vidur)"
# Vidur's <org>/<model> folders -> drex model names of the same shape (drex/models.py).
VIDUR_MODELS = {
    "meta-llama/Llama-2-7b-hf": "llama2-7b", "meta-llama/Llama-2-70b-hf": "llama2-70b",
    "meta-llama/Meta-Llama-3-70B": "llama3-70b", "codellama/CodeLlama-34b-Instruct-hf": "codellama-34b",
    "Qwen/Qwen-72B": "qwen-72b", "internlm/internlm-20b": "internlm-20b", "microsoft/phi-2": "phi-2",
}


def _col(op: str, stat: str = "median") -> str:
    return f"time_stats.{op}.{stat}"


def read_mlp_csv(path: Path):
    """mlp.csv as a DataFrame; ValueError naming the file and the missing columns when it is not one."""
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV ({e})") from None
    need = ["num_tokens", "num_tensor_parallel_workers", *SHAPE_COLS,
            *(_col(op, s) for op in ("attn_pre_proj", "mlp_up_proj", "mlp_down_proj")
              for s in ("median", "min", "max"))]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a Vidur mlp.csv profile (no columns {', '.join(missing[:4])}"
                         f"{' ...' if len(missing) > 4 else ''})")
    if df.empty:
        raise ValueError(f"{path}: no rows")
    return df


def check_vidur_shape(df, shape: ModelShape, tp: int, where: Path) -> dict:
    """The profile's per-layer shape must be the model's: another width is another model. Returns Vidur's shape."""
    row = df.iloc[0]
    vidur = {c: (bool(row[c]) if c == "use_gated_mlp" else int(row[c])) for c in SHAPE_COLS}
    vidur["vocab_size"] = int(row["vocab_size"]) if "vocab_size" in df else None
    want = {"n_head": shape.num_heads, "n_kv_head": shape.num_kv_heads, "n_embd": shape.hidden_size,
            "n_expanded_embd": shape.intermediate_size, "use_gated_mlp": shape.gated_mlp}
    bad = [f"{k} {vidur[k]} (model {want[k]})" for k in want if vidur[k] != want[k]]
    if bad:
        raise ValueError(f"{where}: profile of another shape than model {shape.name!r}: {', '.join(bad)}")
    if shape.num_heads % tp:
        raise ValueError(f"--tp {tp} does not divide the {shape.num_heads} heads of {shape.name}")
    return vidur


def _sums(df, ops) -> dict[str, np.ndarray]:
    """Per row: sums of the ops' median/min/max/mean (ms -> s); ops the profile lacks count zero."""
    present = [op for op in ops if _col(op) in df]
    return {stat: sum(df[_col(op, stat)].to_numpy(dtype=float) for op in present) * 1e-3
            for stat in ("median", "min", "max", "mean")}


def linear_points(df) -> tuple[list[pf.Point], dict, list[str]]:
    """Points and timings of ops ``linear`` and ``mlp`` for one TP degree's rows (sorted by num_tokens)."""
    df = df.sort_values("num_tokens").drop_duplicates("num_tokens")
    tokens = df["num_tokens"].to_numpy(dtype=int)
    if np.any(tokens <= 0):
        raise ValueError("mlp.csv has num_tokens <= 0")
    absent = [op for op in LINEAR_OPS if _col(op) not in df]  # Phi-2: one norm before parallel attention + MLP
    points, timings = [], {}
    for op, ops in (("linear", LINEAR_OPS), ("mlp", MLP_OPS)):
        t = _sums(df, ops)
        if not np.all(np.isfinite(t["median"]) & (t["median"] > 0)):
            raise ValueError(f"mlp.csv: op {op} has missing or non-positive medians")
        for i, n in enumerate(tokens):
            p = pf.Point(op, "held" if i % HELD_EVERY == 2 else "fit", int(n))
            points.append(p)
            timings[p.key] = pf.Timing(0, *(float(t[s][i]) for s in ("median", "min", "max", "mean")))
    return points, timings, absent


def attention_points(df, shape: ModelShape, tp: int, where: Path) -> tuple[list[pf.Point], dict]:
    """Measured attention rows of this model at this TP degree, or none (the law then prices attention)."""
    row = df.iloc[0]
    if (int(row["n_embd"]), int(row["n_q_head"]), int(row["n_kv_head"])) != (
            shape.hidden_size, shape.num_heads, shape.num_kv_heads):
        return [], {}
    df = df[df["num_tensor_parallel_workers"] == tp]
    if df.empty:
        return [], {}
    _, y = attention_times(df)
    keep = np.arange(len(df)) % ATTN_STRIDE == 0
    points, timings = [], {}
    for j, i in enumerate(np.flatnonzero(keep & (y > 0))):
        r = df.iloc[i]
        split = "held" if j % HELD_EVERY == 2 else "fit"
        if bool(r["is_prefill"]):
            p = pf.Point("attn_prefill", split, 1, int(r["kv_cache_size"]), int(r["prefill_chunk_size"]))
        else:
            p = pf.Point("attn_decode", split, int(r["batch_size"]), int(r["kv_cache_size"]))
        if p.key in timings:
            continue
        points.append(p)
        timings[p.key] = pf.Timing(0, float(y[i]), float(y[i]), float(y[i]), float(y[i]))
    return points, timings


def source_commit(path: Path) -> str | None:
    """The Vidur commit a README above the folder names ("... at commit 7d47513"), if one does."""
    for d in [path, *path.parents]:
        readme = d / "README.md"
        if readme.is_file():
            m = re.search(r"at\s+commit\s+`?([0-9a-f]{7,40})", readme.read_text(errors="replace"))
            if m:
                return m.group(1)
    return None


def import_vidur(src: str | Path, device: str, model: str, tp: int = 1, out: str | Path | None = None,
                 fit: bool = True, fit_rule: str = "measured") -> tuple[Path, str]:
    """Write the drex profile of a Vidur profile folder into ``out`` and fit it by ``fit_rule`` (``vidur_fit``:
    ``measured``, a model of the GPU, or ``vidur``, Vidur's predictor). Returns (out, fit report)."""
    from drex.costmodel.attention_law import describe
    from drex.costmodel.vidur_fit import check_fit_rule, fit_imported, unmeasured_statements

    src = Path(src)
    if out is None:
        raise ValueError("--out is required (name profiles/<device>/<model>/ to ship the profile)")
    if tp < 1:
        raise ValueError(f"--tp must be >= 1, got {tp}")
    check_fit_rule(fit_rule)
    mlp_path = src / "mlp.csv"
    if not mlp_path.is_file():
        raise FileNotFoundError(f"{mlp_path}: no such file (a Vidur profile folder holds mlp.csv)")
    dev = get_device(device)
    shape = get_model(model)
    df = read_mlp_csv(mlp_path)
    vidur_shape = check_vidur_shape(df, shape, tp, mlp_path)
    sel = df[df["num_tensor_parallel_workers"] == tp]
    if sel.empty:
        have = sorted(int(v) for v in df["num_tensor_parallel_workers"].unique())
        raise ValueError(f"{mlp_path}: no rows at --tp {tp} (it measured TP degrees {have})")
    points, timings, absent = linear_points(sel)
    attn_path = src / "attention.csv"
    files = [mlp_path]
    attn_points: list[pf.Point] = []
    if attn_path.is_file():
        attn_points, attn_timings = attention_points(read_attention_csv(attn_path), shape, tp, attn_path)
        if attn_points:
            points += attn_points
            timings.update(attn_timings)
            files.append(attn_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pf.write_measurements(out, points, timings)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta = {
        "schema_version": pf.SCHEMA_VERSION, "drex_version": __version__,
        "device": {"requested": dev.name, "name": f"{dev.name} (Vidur's measurements)"},
        "versions": {}, "dtype": "fp16", "model": pf.shape_dict(shape),
        "grid": pf.grid_summary(points), "budget": None, "clock": "vidur (CUDA events / kineto, medians)",
        "layers_built": 1, "date_started": now, "rounds": None, "status": "complete", "date_finished": now,
        "source": {
            "kind": "vidur", "path": recorded_path(src), "tp": tp, "licence": LICENCE,
            "repository": "github.com/microsoft/vidur", "commit": source_commit(src.resolve()),
            "files": {p.name: pf.file_sha256(p) for p in files}, "vidur_shape": vidur_shape,
            "linear_ops": [op for op in LINEAR_OPS if op not in absent], "absent_ops": absent,
            "fit_rule": fit_rule,
            "timing_columns": "median_s: sum of Vidur's medians (ms -> s); p10_s/p90_s: sums of its min/max; "
                              "wall_median_s: sum of its means; reps: not recorded (0)",
        },
        "attention": ("measured: attention.csv of this model at this TP degree (kernel + reshapes)" if attn_points
                      else describe()),
        "unmeasured": unmeasured_statements(shape, dev, tp, fit_rule),
    }
    pf.write_json(out / pf.META, meta)
    if not fit:
        return out, ""
    _, report = fit_imported(out)
    return out, report
