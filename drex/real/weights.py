"""Load and save EE checkpoints as local Hugging Face directories (config.json + *.safetensors).

Tensor names are transformers' Llama / Qwen2 names (``model.layers.3.self_attn.q_proj.weight``,
``lm_head.weight``). Separately trained exit heads are stored beside them as
``exit_heads.<layer>.norm.weight`` / ``exit_heads.<layer>.lm_head.weight`` (either may be absent:
that part is shared with the top), and config.json lists the exits in ``drex_exit_layers``.
No network: a missing or unreadable file is an error that names the file.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from drex.models import from_hf_config
from drex.real.init import uninitialised

# Tensors transformers may store that carry no weights of ours.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _our_name(hf_name: str) -> str:
    return hf_name[len("model."):] if hf_name.startswith("model.") else hf_name


def read_safetensors(directory: Path, only: Path | None = None) -> dict[str, tuple[Path, object]]:
    """name -> (file, open handle) over every *.safetensors file of a checkpoint directory (or the one ``only``)."""
    from safetensors import safe_open

    files = [only] if only is not None else sorted(directory.glob("*.safetensors"))
    if not files or not files[0].exists():
        raise FileNotFoundError(f"{only or directory}: no *.safetensors weight files")
    index: dict[str, tuple[Path, object]] = {}
    for f in files:
        try:
            handle = safe_open(str(f), framework="pt", device="cpu")
            names = list(handle.keys())
        except Exception as e:  # safetensors raises its own error types for truncated / garbled headers
            raise ValueError(f"{f}: not a readable safetensors file ({type(e).__name__}: {e})") from None
        for name in names:
            index[name] = (f, handle)
    return index


def _head_sizes(index, names) -> dict[int, dict]:
    """exit layer -> add_exit_head keyword arguments, from the exit_heads.* tensors present (and their shapes)."""
    heads: dict[int, dict] = {}
    for n in names:
        if not n.startswith("exit_heads."):
            continue
        _, layer, part = n.split(".")[:3]
        kw = heads.setdefault(int(layer), {"norm": False, "lm_head": False, "adapter_rank": 0, "estimator_width": 0})
        if part in ("norm", "lm_head"):
            kw[part] = True
        elif n.endswith("adapter.down.weight"):
            kw["adapter_rank"] = index[names[n]][1].get_slice(names[n]).get_shape()[0]
        elif n.endswith("estimator.fc1.weight"):
            kw["estimator_width"] = index[names[n]][1].get_slice(names[n]).get_shape()[0]
    return heads


def load_pretrained(cls, path, dtype=torch.float32, device="cpu", exit_layers=None, extra=None):
    """A checkpoint directory; ``extra``: a safetensors file of trained exit parts over it (smollm2-ee)."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"{directory / 'config.json'}: missing (a checkpoint needs config.json + *.safetensors)")
    shape = from_hf_config(directory)
    index = read_safetensors(directory)
    if extra is not None:
        index |= read_safetensors(Path(extra).parent, only=Path(extra))
    names = {_our_name(n): n for n in index if not n.endswith(_IGNORED_SUFFIXES)}
    if any(n.endswith("o_proj.bias") for n in names):
        raise ValueError(f"{directory}: o_proj bias is not supported (Llama attention_bias=True); "
                         "drex models q/k/v bias only (Qwen2)")

    head_parts = _head_sizes(index, names)
    if extra is not None:
        shape = replace(shape, trained_exits=tuple(sorted(head_parts)))
    if exit_layers is None:
        exit_layers = tuple(sorted(set(shape.trained_exits) | set(head_parts)))

    with uninitialised(dtype, device):
        model = cls(shape, exit_layers)
        for layer, kw in sorted(head_parts.items()):
            model.add_exit_head(layer, **kw)
    tie = shape.tie_embeddings or ("lm_head.weight" not in names and "embed_tokens.weight" in names)
    if tie:
        model.lm_head.weight = model.embed_tokens.weight

    missing, bad_shapes = [], []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name not in names:
                missing.append(name)
                continue
            file, handle = index[names[name]]
            try:
                tensor = handle.get_tensor(names[name])
            except Exception as e:
                raise ValueError(f"{file}: cannot read tensor {names[name]} ({type(e).__name__}: {e})") from None
            if tuple(tensor.shape) != tuple(param.shape):
                bad_shapes.append(f"{names[name]} {tuple(tensor.shape)} != expected {tuple(param.shape)}")
                continue
            param.copy_(tensor)
    if bad_shapes:
        raise ValueError(f"{directory}: weights do not match config.json: {'; '.join(bad_shapes[:5])}")
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ValueError(f"{directory}: weights missing from the safetensors files: {', '.join(missing[:5])}{more}")
    model.shape = shape
    return model.eval()


def hf_config(model) -> dict:
    s = model.shape
    qwen = s.qkv_bias
    return {
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen else "llama",
        "hidden_size": s.hidden_size,
        "intermediate_size": s.intermediate_size,
        "num_hidden_layers": s.num_layers,
        "num_attention_heads": s.num_heads,
        "num_key_value_heads": s.num_kv_heads,
        "vocab_size": s.vocab_size,
        "max_position_embeddings": s.max_position,
        "rope_theta": s.rope_theta,
        "rms_norm_eps": s.rms_norm_eps,
        "hidden_act": "silu",
        "attention_bias": False,  # Qwen2 has q/k/v bias by construction; Llama's flag would add o_proj bias
        "tie_word_embeddings": s.tie_embeddings,
        "torch_dtype": str(model.dtype).removeprefix("torch."),
        "drex_exit_layers": list(model.exit_layers),
    }


def save_pretrained(model, path) -> None:
    from safetensors.torch import save_file

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, param in model.named_parameters():
        if name == "lm_head.weight" and model.shape.tie_embeddings:
            continue
        hf_name = name if name.startswith(("lm_head.", "exit_heads.")) else f"model.{name}"
        tensors[hf_name] = param.detach().contiguous().cpu()
    (directory / "config.json").write_text(json.dumps(hf_config(model), indent=2) + "\n")
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
