"""Training tiny-ee: the exit losses fall, checkpoints round-trip, the config is validated."""

import json

import numpy as np
import pytest
import torch

from drex.lab import corpus as corpus_mod
from drex.lab.train import TrainConfig, encode_streams, eval_windows, evaluate, init_model, lr_at, save_checkpoint, \
    train_steps

pytestmark = pytest.mark.slow  # seconds each: the `not slow` subset stays under 20 s

TEXT = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 8,
    "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n" * 8,
]


def tiny_cfg(**kw):
    base = dict(num_layers=3, hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=2, vocab_size=320,
                exits=(1, 2), exit_loss_weights=(1.0, 1.0, 1.0), seq_len=32, batch_size=8, steps=25, lr=3e-3,
                warmup_steps=3, eval_every=25, eval_windows=4, mix=(1.0, 1.0, 0.0))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_data():
    tok = corpus_mod.train_tokenizer(TEXT, 320)
    docs = [corpus_mod.Document("plays", "p", TEXT[0]), corpus_mod.Document("python", "c", TEXT[1])]
    return tok, encode_streams(tok, docs, sources=("plays", "python"))


def test_a_few_steps_lower_the_loss_at_every_exit(tiny_data):
    _, streams = tiny_data
    cfg = tiny_cfg()
    model = init_model(cfg)
    windows = eval_windows(streams, cfg)
    before = evaluate(model, windows, cfg)
    train_steps(model, streams, cfg, np.random.default_rng(0))
    after = evaluate(model, windows, cfg)
    for src in windows:
        for layer in ("1", "2", "3"):
            assert after[src]["loss"][layer] < before[src]["loss"][layer] - 0.5, (src, layer, before, after)


def test_training_is_reproducible_from_the_seed(tiny_data):
    _, streams = tiny_data
    cfg = tiny_cfg(steps=3)
    runs = [train_steps(init_model(cfg), streams, cfg, np.random.default_rng(cfg.seed)) for _ in range(2)]
    assert runs[0] == runs[1]


def test_checkpoint_round_trips_through_from_pretrained(tiny_data, tmp_path):
    from drex.models import get_model
    from drex.real.model import EEModel

    tok, _ = tiny_data
    cfg = tiny_cfg(save_dtype="float32")
    model = init_model(cfg)
    save_checkpoint(model, tok, cfg, tmp_path, {})
    loaded = EEModel.from_pretrained(tmp_path)
    assert loaded.exit_layers == (1, 2)
    assert get_model(str(tmp_path)).trained_exits == (1, 2)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["drex_exit_layers"] == [1, 2] and config["eos_token_id"] == corpus_mod.eos_id(tok)
    ids = torch.tensor([tok.encode("def add(a, b):").ids])
    with torch.no_grad():
        a, b = model.forward_train(ids), loaded.forward_train(ids)
    for layer in (1, 2, 3):
        torch.testing.assert_close(a[layer], b[layer])
    assert corpus_mod.load_tokenizer(tmp_path).encode("to be").ids == tok.encode("to be").ids


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = tiny_cfg(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    lrs = [lr_at(cfg, s) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1e-3)
    assert all(x >= y for x, y in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.05)


@pytest.mark.parametrize("kw, msg", [
    (dict(exits=(2, 1)), "exits"),
    (dict(exits=(3,)), "exits"),
    (dict(exit_loss_weights=(1.0,)), "loss weights"),
    (dict(mix=(1.0, -1.0, 0.0)), "mix"),
    (dict(save_dtype="int8"), "save.dtype"),
])
def test_bad_config_is_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        tiny_cfg(**kw)


def test_corpus_split_holds_out_text_and_humaneval_prompts():
    c = corpus_mod.build_corpus()
    train_names = {d.name for d in c.train}
    assert not train_names & {d.name for d in c.heldout}
    assert not train_names & {d.name for d in c.heldout_prompts}
    assert {d.source for d in c.heldout} == {"plays", "python"}
    assert len(c.heldout_prompts) == 41 and all(d.source == "humaneval" for d in c.heldout_prompts)
    assert "**" not in c.train[0].text
