"""import-vidur: a Vidur profile folder -> a fitted drex profile; errors are one line; the law table round-trips."""

import json

import numpy as np
import pandas as pd
import pytest

from drex.cli import main
from drex.costmodel import profile as pf
from drex.costmodel.fitted import Law
from drex.costmodel.load import load_cost_model, load_fitted
from drex.costmodel.vidur import LINEAR_OPS, MLP_OPS, import_vidur
from drex.models import MODELS

SHAPE = MODELS["llama2-7b"]
OPS = ("emb",) + LINEAR_OPS


def truth_ms(op, n):
    """A staircase GEMM time (ms) per op: a weight-read floor, then a slope with steps every 128 tokens."""
    steps = np.ceil(n / 128.0) * 128.0
    scale = {"attn_pre_proj": 3.0, "mlp_up_proj": 5.0, "mlp_down_proj": 2.5, "attn_post_proj": 1.0}.get(op, 0.1)
    return scale * (0.02 + np.maximum(0.0, 1e-4 * (0.7 * n + 0.3 * steps) - 0.01))


def write_vidur(folder, tps=(1, 2), shape=SHAPE, drop=()):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for tp in tps:
        for n in [1, 2, 4] + list(range(8, 2049, 8)):
            r = {"n_head": shape.num_heads, "n_kv_head": shape.num_kv_heads, "n_embd": shape.hidden_size,
                 "n_expanded_embd": shape.intermediate_size, "vocab_size": 32768, "use_gated_mlp": True,
                 "num_tokens": n, "num_tensor_parallel_workers": tp}
            for op in OPS:
                if op in drop:
                    continue
                t = truth_ms(op, n) / tp
                r.update({f"time_stats.{op}.{s}": v for s, v in
                          (("min", 0.98 * t), ("max", 1.05 * t), ("mean", t), ("median", t), ("std", 0.01 * t))})
            rows.append(r)
    pd.DataFrame(rows).to_csv(folder / "mlp.csv", index=False)
    return folder


def test_import_fits_linear_work_and_states_what_it_does_not_measure(tmp_path):
    src = write_vidur(tmp_path / "vidur")
    (tmp_path / "README.md").write_text("Source: github.com/microsoft/vidur at commit abc1234 (MIT)\n")
    out, report = import_vidur(src, "a100", "llama2-7b", 1, tmp_path / "prof")
    fit = json.loads((out / pf.FIT).read_text())
    assert fit["errors"]["linear"]["held"]["mape"] < 0.05 and fit["errors"]["linear"]["held"]["n"] > 50
    meta = pf.read_meta(out)
    assert meta["source"]["commit"] == "abc1234" and meta["source"]["tp"] == 1
    assert "MIT" in meta["source"]["licence"] and "mlp.csv" in meta["source"]["files"]
    assert "calibrated" in meta["attention"] and set(meta["unmeasured"]) >= {"head", "step", "all_reduce"}
    assert "held MAPE" in report and "not measured by the profile" in report
    # The linear rows are the sum of the nine per-layer medians (not emb), in seconds.
    rows = [r for r in pf.read_profile(out).rows if r["op"] == "linear"]
    n = np.array([r["num_tokens"] for r in rows], dtype=float)
    want = sum(truth_ms(op, n) for op in LINEAR_OPS) * 1e-3
    np.testing.assert_allclose([r["median_s"] for r in rows], want, rtol=1e-5)
    mlp_rows = [r for r in pf.read_profile(out).rows if r["op"] == "mlp"]
    np.testing.assert_allclose([r["median_s"] for r in mlp_rows], sum(truth_ms(op, n) for op in MLP_OPS) * 1e-3,
                               rtol=1e-5)
    # Loaded as any profile; one layer = its linear work + its attention.
    model = load_fitted(out, SHAPE)
    for tokens, ctx in ((1, 500), (64, 64 * 1000), (700, 0)):
        assert model.layer_s(tokens, ctx) == pytest.approx(model.linear_s(tokens) + model.attn_s(tokens, ctx))
    assert model.attn_s(64, 64 * 2000) > model.attn_s(64, 64 * 1000) > 0


def test_import_at_tp2_prices_one_gpus_share(tmp_path):
    src = write_vidur(tmp_path / "v")
    one = load_fitted(import_vidur(src, "a100", "llama2-7b", 1, tmp_path / "tp1")[0])
    two = load_fitted(import_vidur(src, "a100", "llama2-7b", 2, tmp_path / "tp2")[0])
    assert two.linear_s(1024) == pytest.approx(one.linear_s(1024) / 2, rel=0.03)
    assert two.attn_s(8, 8000) < one.attn_s(8, 8000)  # half the KV heads per GPU


def test_absent_ops_count_zero(tmp_path):
    src = write_vidur(tmp_path / "v", drop=("post_attention_layernorm",))
    out, _ = import_vidur(src, "h100", "llama2-7b", 1, tmp_path / "p")
    assert pf.read_meta(out)["source"]["absent_ops"] == ["post_attention_layernorm"]


@pytest.mark.parametrize("args, message", [
    (["MISSING", "--device", "a100", "--model", "llama2-7b"], "no such file"),
    (["SRC", "--device", "a100", "--model", "llama2-70b"], "profile of another shape"),
    (["SRC", "--device", "a100", "--model", "llama2-7b", "--tp", "4"], "no rows at --tp 4"),
    (["SRC", "--device", "tpu", "--model", "llama2-7b"], "unknown device"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
    src = write_vidur(tmp_path / "v")
    args = [str(src) if a == "SRC" else str(tmp_path / "nothing") if a == "MISSING" else a for a in args]
    assert main(["costmodel", "import-vidur", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("drex costmodel: error:") and message in err and len(err.splitlines()) == 1


def test_out_is_required(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["costmodel", "import-vidur", str(tmp_path), "--device", "a100", "--model", "llama2-7b"])
    assert "--out" in capsys.readouterr().err


def test_not_a_vidur_csv(tmp_path):
    (tmp_path / "mlp.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a Vidur mlp.csv"):
        import_vidur(tmp_path, "a100", "llama2-7b", 1, tmp_path / "o")


def test_law_table_round_trips_and_is_checked():
    law = Law(("tokens",), (), 1e-5, 2e-4, 2.0, (1e-6,), (), (), ((1.0, 100.0, 200.0), (1.0, 1.2, 0.9)))
    again = Law.from_json(json.loads(json.dumps(law.to_json())), "here")
    assert again == law
    feats = {"tokens": np.array([1.0, 150.0, 5000.0])}
    plain = Law(("tokens",), (), 1e-5, 2e-4, 2.0, (1e-6,), ())
    ratio = (law(feats) - 1e-5) / (plain(feats) - 1e-5)
    np.testing.assert_allclose(ratio, [1.0, 1.05, 0.9])  # interpolated inside, the end factors outside
    bad = law.to_json()
    bad["table"]["knots"] = [3.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="increasing knots"):
        Law.from_json(bad, "here")


def test_cpu_profile_still_loads_without_a_linear_law():
    model = load_cost_model("cpu", MODELS["tiny"], 4)
    assert "linear" not in model.laws
    assert model.linear_s(16) == pytest.approx(model.layer_s(16) - model.attn_s(16))
