"""The shipped tiny-ee checkpoint, its error messages, the quality sweep and the confidence traces."""

import shutil
import socket

import numpy as np
import pandas as pd
import pytest
import torch

from drex import REPO_ROOT
from drex.config import EEConfig
from drex.lab import quality

pytestmark = pytest.mark.slow  # seconds each: the `not slow` subset stays under 20 s

SHIPPED = REPO_ROOT / "models" / "tiny-ee"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_ee():
    return quality.load_model("tiny-ee")


def test_shipped_model_loads_offline_and_predicts(no_network):
    from drex.models import get_model

    shape = get_model("tiny-ee")
    assert shape.trained_exits and shape.path
    model, tok, directory = quality.load_model("tiny-ee")
    assert directory == SHIPPED and model.exit_layers == shape.trained_exits
    assert (SHIPPED / "model.safetensors").stat().st_size <= 20 * 2**20
    ids = tok.encode("class Point(object):\n    def __init__(self").ids
    with torch.no_grad():
        logits = model.forward_train(torch.tensor([ids]))
    assert set(logits) == {*shape.trained_exits, shape.num_layers}
    # Trained, not random: every exit is sure a parameter list goes on after `self`.
    for layer, lg in logits.items():
        probs = lg[0, -1].softmax(-1)
        assert tok.decode([int(probs.argmax())]) == "," and probs.max() > 0.5, layer


def test_missing_weight_file_is_a_clear_error(tmp_path):
    from drex.real.model import EEModel

    ckpt = tmp_path / "tiny-ee"
    shutil.copytree(SHIPPED, ckpt)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors weight files"):
        EEModel.from_pretrained(ckpt)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        quality.load_model(str(ckpt))


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_corrupt_weight_file_is_a_clear_error(tmp_path, damage):
    from drex.real.model import EEModel

    ckpt = tmp_path / "tiny-ee"
    shutil.copytree(SHIPPED, ckpt)
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" + data[8:])
    with pytest.raises(ValueError, match="model.safetensors"):
        EEModel.from_pretrained(ckpt)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    ckpt = tmp_path / "tiny-ee"
    shutil.copytree(SHIPPED, ckpt)
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        quality.load_model(str(ckpt))


def test_shape_without_weights_is_refused():
    with pytest.raises(ValueError, match="without weights"):
        quality.load_model("tiny")


def test_quality_sweep_writes_the_table(tmp_path):
    rows = quality.run("tiny-ee", tmp_path, max_new_tokens=8, num_code=2, num_text=2, batch_size=4,
                       metrics=("margin", "entropy"), thresholds={"margin": (0.0, 1.0), "entropy": (0.0,)},
                       kv_fills=("recompute", "copy"))
    df = pd.read_csv(tmp_path / "quality.csv")
    pd.testing.assert_frame_equal(df, pd.read_csv(tmp_path / "quality_recompute.csv"))
    assert list(pd.read_csv(tmp_path / "quality_copy.csv").columns) == list(quality.QUALITY_COLUMNS)
    assert list(df.columns) == list(quality.QUALITY_COLUMNS)
    assert len(df) == len(rows) == 3
    never = df[(df.metric == "margin") & (df.threshold == 1.0)].iloc[0]  # margin > 1 never holds
    assert never.early_exit_fraction == 0 and never.token_agreement == 1 and never.rouge_l == 1
    always = df[(df.metric == "margin") & (df.threshold == 0.0)].iloc[0]  # every decode token exits at once
    assert always.early_exit_fraction == pytest.approx(7 / 8)
    exits = pd.read_csv(tmp_path / "quality_exits.csv")
    exits = exits[exits.kv_fill == "recompute"]
    first = exits[(exits.metric == "margin") & (exits.threshold == 0.0)].set_index("exit_layer")["fraction"]
    assert first.iloc[0] == pytest.approx(7 / 8) and first.iloc[1:].sum() == 0
    assert df[df.metric == "entropy"].iloc[0].early_exit_fraction == 0  # entropy < 0 never holds


def test_compare_counts_positions_and_rouge():
    class Tok:
        def decode(self, ids):
            return " ".join(f"w{i}" for i in ids)

    r = quality.compare([[1, 2, 3, 4]], [[6, 2, 6, 4]], 2.0, [[1, 2, 9, 4]], Tok(), (2, 4), 6)
    assert r["token_agreement"] == 0.75 and r["early_exit_fraction"] == 0.5
    assert r["per_exit"] == {2: 0.25, 4: 0.25} and r["output_throughput"] == 2.0
    assert r["rouge_l"] == pytest.approx(0.75)


def test_trace_is_the_exit_confidence_on_the_full_depth_path(tiny_ee):
    from drex.real.generate import greedy_decode

    model, tok, _ = tiny_ee
    prompts = [tok.encode("def f(x):\n    return").ids, tok.encode("HAMLET\nTo be, or not").ids]
    never = EEConfig(exits=model.exit_layers, threshold=1.0)  # records every exit's confidence, exits nowhere
    dec = greedy_decode(model, prompts, 12, never)
    rows = quality.confidence_trace(model, prompts, dec.tokens)
    assert len(rows) == 2 * 12 * len(model.exit_layers)
    table = {(r, i, e): c for r, i, e, c in rows}
    for r in range(2):
        for i in range(1, 12):  # token 0 comes from the prefill, which never consults an exit
            for e, c in dec.confidences[r][i].items():
                assert table[(r, i, e)] == pytest.approx(c, abs=1e-4)


@pytest.mark.parametrize("name", ["tiny-ee-humaneval.csv", "tiny-ee-text.csv"])
def test_shipped_traces_replay_in_the_simulator(name):
    from drex.confidence import make_confidence_source
    from drex.models import get_model

    shape = get_model("tiny-ee")
    path = REPO_ROOT / "traces" / name
    assert path.stat().st_size < 600_000
    df = pd.read_csv(path)
    assert list(df.columns) == ["request_id", "token_index", "exit_layer", "confidence"]
    assert set(df.exit_layer) == set(shape.trained_exits)
    assert df.confidence.between(0, 1).all() and df.confidence.std() > 0.1  # spread, not degenerate
    src = make_confidence_source(f"trace:{path}", shape.trained_exits, shape.num_layers, seed=0)
    got = src.confidence(np.array([0, 0]), np.array([0, 1]), 0)
    want = df[(df.request_id == 0) & (df.exit_layer == shape.trained_exits[0])].sort_values("token_index")
    np.testing.assert_allclose(got, want.confidence.to_numpy()[:2])
