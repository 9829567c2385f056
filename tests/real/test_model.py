"""The EE decoder: greedy decoding over the paged cache equals transformers' generate; checkpoints load."""

import json

import pytest
import torch

from drex.models import ModelShape, get_model
from drex.real.generate import greedy_decode
from drex.real.model import EEModel, confidence

transformers = pytest.importorskip("transformers")

TINY = get_model("tiny")
QWEN_TINY = ModelShape("qwen-tiny", 2, 64, 160, 4, 2, 256, rms_norm_eps=1e-6, rope_theta=1e6, qkv_bias=True)


def _hf_generate(path, arch, prompts, max_new):
    model = getattr(transformers, arch).from_pretrained(path, dtype=torch.float32).eval()
    outs = []
    for p, n in zip(prompts, max_new):
        ids = torch.tensor([p])
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
        outs.append(gen[0, len(p):].tolist())
    return outs


@pytest.mark.slow
@pytest.mark.parametrize("shape,arch", [(TINY, "LlamaForCausalLM"), (QWEN_TINY, "Qwen2ForCausalLM")])
def test_paged_greedy_equals_hf_generate(tmp_path, shape, arch):
    model = EEModel.random(shape, seed=1)
    model.save_pretrained(tmp_path)
    gen = torch.Generator().manual_seed(0)
    lengths, max_new = [3, 17, 40, 9, 1], [12, 20, 7, 16, 5]
    prompts = [torch.randint(shape.vocab_size, (n,), generator=gen).tolist() for n in lengths]
    ours = greedy_decode(model, prompts, max_new, block_size=8)  # batched, paged, chunked prefill
    assert ours.tokens == _hf_generate(tmp_path, arch, prompts, max_new)


def test_forward_train_logits_at_every_exit():
    model = EEModel.random(TINY, exit_layers=(1, 3))
    ids = torch.randint(TINY.vocab_size, (2, 11))
    out = model.forward_train(ids)
    assert sorted(out) == [1, 3, 4]
    assert all(v.shape == (2, 11, TINY.vocab_size) for v in out.values())
    # the top logits are what the paged path computes for the last token
    last = greedy_decode(model, ids.tolist(), 1).tokens
    assert [[int(t)] for t in out[4][:, -1].argmax(-1)] == last
    loss = torch.nn.functional.cross_entropy(out[1].flatten(0, 1), ids.flatten())
    loss.backward()  # the training engineer's use: gradients reach the layers
    assert model.layers[0].mlp.up_proj.weight.grad is not None


def test_random_builds_only_the_first_layers():
    model = EEModel.random(ModelShape("wide", 80, 256, 512, 8, 2, 300), num_layers=2)
    assert model.num_layers == 2 and len(model.layers) == 2
    h = model.embed(torch.tensor([1, 2]))
    assert model.layers[1].mlp_block(h).shape == (2, 256)


def test_separate_exit_head_round_trips(tmp_path):
    model = EEModel.random(TINY, exit_layers=(2,))
    head = model.add_exit_head(2, norm=False)
    with torch.no_grad():
        head.lm_head.weight.mul_(-1)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["drex_exit_layers"] == [2]
    loaded = EEModel.from_pretrained(tmp_path)
    assert loaded.exit_layers == (2,) and "2" in loaded.exit_heads and loaded.exit_heads["2"].norm is None
    h = torch.randn(3, TINY.hidden_size)
    torch.testing.assert_close(loaded.exit_logits(h, 2), model.exit_logits(h, 2))
    torch.testing.assert_close(loaded.exit_logits(h, 2), -loaded.exit_logits(h, 4))
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n


def test_clear_errors_for_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        EEModel.from_pretrained(tmp_path / "nowhere")
    model = EEModel.random(TINY)
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    blob = weights.read_bytes()

    weights.write_bytes(blob[: len(blob) // 3])  # truncated download
    with pytest.raises(ValueError, match="model.safetensors"):
        EEModel.from_pretrained(tmp_path)
    weights.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="model.safetensors"):
        EEModel.from_pretrained(tmp_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        EEModel.from_pretrained(tmp_path)
    weights.write_bytes(blob)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        EEModel.from_pretrained(tmp_path)


def test_missing_and_misshapen_tensors_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    EEModel.random(TINY).save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.3.mlp.up_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="layers.3.mlp.up_proj.weight"):
        EEModel.from_pretrained(tmp_path)
    tensors["model.layers.3.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"up_proj.weight \(3, 3\)"):
        EEModel.from_pretrained(tmp_path)


def test_confidence_metrics():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]]))
    torch.testing.assert_close(confidence(logits, "margin"), torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(confidence(logits, "maxprob"), torch.tensor([0.7, 0.4]))
    ent = confidence(logits, "entropy")
    assert ent[0] < ent[1]
    with pytest.raises(ValueError):
        confidence(logits, "nope")
