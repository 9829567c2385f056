"""The shipped GPU profiles (imported from Vidur), ``costmodel predict``, and the roofline's fitted GPU curves."""

import json
from pathlib import Path

import numpy as np
import pytest

from drex import REPO_ROOT
from drex.cli import main
from drex.costmodel import profile as pf
from drex.costmodel.attention_law import CALIBRATION, calibrate
from drex.costmodel.load import load_cost_model
from drex.costmodel.roofline import RooflineCostModel
from drex.devices import A100_CURVE, H100_CURVE, get_device
from drex.models import get_model

SHIPPED = sorted(p.parent for p in (REPO_ROOT / "profiles").glob("[ah]100/*/fit.json"))
SHARED = REPO_ROOT.parent / "shared" / "vidur-profiles" / "compute"  # the shared data folder beside the repository


def test_every_shared_model_is_shipped_on_both_gpus_it_was_measured_on():
    names = {f"{p.parent.name}/{p.name}" for p in SHIPPED}
    assert len(names) == 12
    assert {"a100/llama2-7b", "h100/llama2-7b", "a100/llama3-70b", "a100/codellama-34b", "h100/qwen-72b",
            "h100/internlm-20b", "a100/phi-2"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_profile_is_the_default_and_meets_the_held_out_bar(path):
    model = load_cost_model(path.parent.name, get_model(path.name))
    assert model.name == f"profile:profiles/{path.parent.name}/{path.name}"
    fit = json.loads((path / pf.FIT).read_text())
    assert fit["errors"]["linear"]["held"]["mape"] <= 0.05
    meta = pf.read_meta(path)
    assert meta["source"]["commit"] == "7d47513" and "MIT" in meta["source"]["licence"]


def test_simulate_a100_llama2_7b_uses_the_measured_profile(tmp_path, capsys):
    rc = main(["simulate", "--device", "a100", "--model", "llama2-7b", "--trace",
               "synthetic:poisson:rate=5,n=40,prompt=uniform:16:256,output=uniform:8:64",
               "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    assert json.loads((tmp_path / "summary.json").read_text())["cost_model"] == "profile:profiles/a100/llama2-7b"


def test_predict_prints_the_steps_pieces(capsys):
    path = REPO_ROOT / "profiles" / "a100" / "llama2-7b"
    assert main(["costmodel", "predict", str(path), "--num-tokens", "72", "--decode-context",
                 str(72 * 1024)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"layer_s", "attn_s", "linear_s", "head_s", "step_overhead_s"}
    assert out["layer_s"] == pytest.approx(out["attn_s"] + out["linear_s"])
    # The linear work at 72 tokens (a fitted point) is what Vidur measured there.
    row = next(r for r in pf.read_profile(path).rows if r["op"] == "linear" and r["num_tokens"] == 72)
    assert row["split"] == "fit" and out["linear_s"] == pytest.approx(row["median_s"], rel=0.01)
    # 72 rows reading 1,024 cached tokens of 32 KV heads x 128 dims x K,V x 2 bytes at ~80% of 2 TB/s.
    assert out["attn_s"] == pytest.approx(72 * 1024 * 16384 / (0.8 * 2.0e12), rel=0.1)


def test_predict_rejects_bad_input(tmp_path, capsys):
    assert main(["costmodel", "predict", str(tmp_path), "--num-tokens", "4"]) == 2
    assert main(["costmodel", "predict", str(REPO_ROOT / "profiles/a100/llama2-7b"), "--num-tokens", "0"]) == 2
    assert capsys.readouterr().err.count("drex costmodel: error:") == 2


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_roofline_curve_is_within_10_percent_of_the_measured_linear_work(path):
    rows = [r for r in pf.read_profile(path).rows if r["op"] == "linear"]
    n = np.array([r["num_tokens"] for r in rows], dtype=float)
    y = np.array([r["median_s"] for r in rows])
    roof = RooflineCostModel(get_model(path.name), path.parent.name)
    assert np.mean(np.abs(roof.linear_s(n) / y - 1)) < 0.10
    # ... where the constant-efficiency roofline was not (too fast between 200 and 1,000 tokens).
    from dataclasses import replace

    flat = RooflineCostModel(get_model(path.name), replace(get_device(path.parent.name), curve=None))
    mid = (n >= 200) & (n <= 1000)
    assert np.mean(flat.linear_s(n[mid]) / y[mid] - 1) < np.mean(roof.linear_s(n[mid]) / y[mid] - 1)


def test_new_devices():
    h100, h200 = get_device("h100"), get_device("h200")
    assert h200.curve is H100_CURVE and h200.mem_bw_bytes_per_s > h100.mem_bw_bytes_per_s
    assert get_device("rtx3090ti").curve is A100_CURVE and get_device("rtx3090ti").mem_bytes == 24 * 1024**3
    assert get_device("b200").peak_flops > get_device("h100").peak_flops
    assert get_device("rtx5090").mem_bytes == 32 * 1024**3
    # The CPU keeps the constant-efficiency roofline (its tests and profiles are unchanged).
    assert get_device("cpu").curve is None


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.exists(), reason="needs ../shared/vidur-profiles")
def test_attention_constants_are_the_calibration_of_the_shared_profile():
    got = calibrate(SHARED / "a100/meta-llama/Llama-2-70b-hf/attention.csv")
    for key in ("decode_c0_s", "decode_per_row_s", "decode_bw_efficiency", "prefill_c0_s", "prefill_flops_efficiency",
                "decode_mape", "prefill_mape"):
        assert got[key] == pytest.approx(CALIBRATION[key], rel=0.01), key
