"""GGUF conversion on a small GGUF file written here (never the 98 MB model)."""

import json

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from drex.models import get_model, with_layers  # noqa: E402
from drex.real.gguf_convert import convert_gguf, permute_qk, unpermute_qk  # noqa: E402
from drex.real.model import EEModel  # noqa: E402

_TO_GGUF = {"input_layernorm.weight": "attn_norm", "post_attention_layernorm.weight": "ffn_norm",
            "self_attn.q_proj.weight": "attn_q", "self_attn.k_proj.weight": "attn_k",
            "self_attn.v_proj.weight": "attn_v", "self_attn.o_proj.weight": "attn_output",
            "mlp.gate_proj.weight": "ffn_gate", "mlp.up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down"}


def write_gguf(model: EEModel, path, quantize_embeddings: bool = False) -> None:
    """What llama.cpp's converter writes for a tied Llama: permuted q/k, llama.cpp names."""
    s = model.shape
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(s.num_layers)
    w.add_context_length(s.max_position)
    w.add_embedding_length(s.hidden_size)
    w.add_feed_forward_length(s.intermediate_size)
    w.add_head_count(s.num_heads)
    w.add_head_count_kv(s.num_kv_heads)
    w.add_rope_freq_base(s.rope_theta)
    w.add_layer_norm_rms_eps(s.rms_norm_eps)
    w.add_vocab_size(s.vocab_size)
    for name, p in model.named_parameters():
        a = p.detach().numpy().astype(np.float32)
        if name == "embed_tokens.weight":
            if quantize_embeddings:
                w.add_tensor("token_embd.weight", gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0),
                             raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                w.add_tensor("token_embd.weight", a)
            continue
        if name == "norm.weight":
            w.add_tensor("output_norm.weight", a)
            continue
        if name == "lm_head.weight":
            continue  # tied
        _, layer, rest = name.split(".", 2)
        kind = _TO_GGUF[rest]
        if kind == "attn_q":
            a = permute_qk(a, s.num_heads)
        elif kind == "attn_k":
            a = permute_qk(a, s.num_kv_heads)
        w.add_tensor(f"blk.{layer}.{kind}.weight", a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _tied_tiny():
    from dataclasses import replace

    return replace(with_layers(get_model("tiny"), 2), tie_embeddings=True, rope_theta=100000.0)


def test_permute_roundtrip():
    w = np.arange(6 * 8 * 3, dtype=np.float32).reshape(6 * 8, 3)
    assert not np.array_equal(permute_qk(w, 6), w)
    assert np.array_equal(unpermute_qk(permute_qk(w, 6), 6), w)


def test_gguf_converts_to_the_same_model(tmp_path):
    ref = EEModel.random(_tied_tiny(), seed=3)
    write_gguf(ref, tmp_path / "m.gguf")
    out = convert_gguf(tmp_path / "m.gguf", tmp_path / "hf", progress=False)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] and cfg["num_key_value_heads"] == 2 and cfg["rope_theta"] == 100000.0
    got = EEModel.from_pretrained(out)
    ids = torch.tensor([[1, 5, 9, 77, 3, 200]])
    with torch.no_grad():
        a, b = ref.forward_train(ids)[2], got.forward_train(ids)[2]
    assert torch.equal(a, b)


def test_quantized_gguf_dequantizes_close(tmp_path):
    ref = EEModel.random(_tied_tiny(), seed=4)
    write_gguf(ref, tmp_path / "q.gguf", quantize_embeddings=True)
    got = EEModel.from_pretrained(convert_gguf(tmp_path / "q.gguf", tmp_path / "hf", progress=False))
    diff = (got.embed_tokens.weight - ref.embed_tokens.weight).abs().max().item()
    assert 0 < diff < 0.05  # Q8_0: 8-bit blocks, not bit-exact


def test_bad_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        convert_gguf(bad, tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out", progress=False)


def test_unfetched_model_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DREX_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="drex model fetch smollm2"):
        get_model("smollm2")
