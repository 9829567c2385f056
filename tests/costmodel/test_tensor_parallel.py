"""--tp N: the profile measured at that degree (or the roofline's share), plus the all-reduces per layer."""

import json

import numpy as np
import pytest

from drex.cli import main
from drex.costmodel.load import load_cost_model
from drex.costmodel.roofline import RooflineCostModel
from drex.costmodel.tensor_parallel import ALLREDUCE_LATENCY_S, TensorParallel
from drex.devices import get_device
from drex.models import get_model
from drex.settings import RunSettings, build_cost_model

SHAPE = get_model("llama2-70b")


def test_tp_loads_the_profile_measured_at_that_degree():
    one = load_cost_model("h100", SHAPE)
    four = load_cost_model("h100", SHAPE, tp=4)
    assert four.name.endswith("profiles/h100/llama2-70b/tp4")
    # A big step splits nearly four ways (measured: GEMMs scale, norms and launches do not).
    assert 3.0 < one.linear_s(4096) / four.linear_s(4096) < 4.2
    assert four.attn_s(64, 64 * 2048) < one.attn_s(64, 64 * 2048)


def test_tp_adds_two_allreduces_per_layer():
    cfg = RunSettings(model="llama2-70b", device="h100", tp=4)
    cost = build_cost_model(cfg, SHAPE)
    base = load_cost_model("h100", SHAPE, tp=4)
    assert isinstance(cost, TensorParallel) and " tp4 allreduce:measured:" in cost.name
    n = np.array([1.0, 256.0, 4096.0])
    extra = cost.layer_s(n, 0, 0) - base.layer_s(n, 0, 0)
    np.testing.assert_allclose(extra, cost.allreduce_s(n), rtol=1e-9)
    assert cost.head_s(8) == base.head_s(8) and cost.layers_s(0, 80, 8) == pytest.approx(80 * cost.layer_s(8))


def test_without_measured_collectives_tp_adds_two_ring_allreduces_per_layer():
    cost = build_cost_model(RunSettings(model="llama2-70b", device="h200", tp=4), SHAPE)
    base = load_cost_model("h200", SHAPE, tp=4)
    assert cost.name.endswith("tp4 allreduce:law(no measured all-reduce for h200 tp4)")
    n = np.array([1.0, 256.0, 4096.0])
    extra = cost.layer_s(n, 0, 0) - base.layer_s(n, 0, 0)
    # 2 x (latency + 2 * 3/4 * tokens * 8192 * 2 bytes / (0.8 * 450 GB/s))
    want = 2 * (ALLREDUCE_LATENCY_S + 1.5 * n * 8192 * 2 / (0.8 * 450e9))
    np.testing.assert_allclose(extra, want, rtol=1e-9)


def test_a_profile_of_another_degree_is_an_error(tmp_path):
    import shutil

    from drex import REPO_ROOT

    shutil.copytree(REPO_ROOT / "profiles/h100/llama2-7b/tp2", tmp_path / "h100/llama2-7b/tp4")
    with pytest.raises(ValueError, match="TP degree 2, asked for --tp 4"):
        load_cost_model("h100", get_model("llama2-7b"), root=tmp_path, tp=4)


def test_roofline_at_tp_splits_weights_and_heads():
    one, two = RooflineCostModel(SHAPE, "b200"), RooflineCostModel(SHAPE, "b200", tp=2)
    assert two.linear_s(1) < one.linear_s(1)  # half the weights to read
    assert two.layer_s(32, 32 * 4096) < one.layer_s(32, 32 * 4096)
    cpu_one, cpu_tp1 = RooflineCostModel(get_model("tiny"), "cpu"), RooflineCostModel(get_model("tiny"), "cpu", tp=1)
    assert cpu_one.layer_s(np.array([5.0]), 500) == cpu_tp1.layer_s(np.array([5.0]), 500)


def test_simulate_70b_needs_tp_and_runs_with_it(tmp_path, capsys):
    common = ["simulate", "--device", "h100", "--model", "llama2-70b", "--trace",
              "synthetic:poisson:rate=5,n=30,prompt=uniform:16:256,output=uniform:8:64", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "a")]) == 2  # 129 GiB of weights on one 80 GB GPU
    assert "do not fit" in capsys.readouterr().err
    assert main(common + ["--tp", "2", "--out", str(tmp_path / "b")]) == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["cost_model"] == ("profile:profiles/h100/llama2-70b/tp2 tp2 "
                                     "allreduce:measured:network/h100_dgx/all_reduce.csv:2gpu+launch20us")


def test_tp_without_a_link_is_refused(tmp_path, capsys):
    assert main(["simulate", "--device", "cpu", "--model", "tiny", "--tp", "2", "--no-progress",
                 "--out", str(tmp_path)]) == 2
    assert "no GPU-to-GPU link" in capsys.readouterr().err
    assert get_device("a100").link_bw_bytes_per_s == 300e9
