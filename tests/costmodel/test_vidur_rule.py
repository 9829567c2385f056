"""Fit rule ``vidur``: an imported profile priced as Vidur's own predictor prices a step (issue 24, vs_vidur).

Vidur (commit 7d47513, LinearRegressionExecutionTimePredictor, default settings) prices a Llama-2-70B TP-2 A100
decode step of 32 rows at 1,536 tokens of context at 61.2 ms: per layer, its least-squares lines through the nine
ops' medians at 32 tokens (0.538 ms), decode attention (0.090 ms: its fit of the kernel times 1.1) and two
all-reduces (0.137 ms with its 20 us launch each), times 80 layers; no LM head, embedding or CPU overhead. The
measured rule (the default) prices it 67.3 ms: the GEMMs' measured floor at small batches (0.603 ms a layer),
an LM head and a step overhead.
"""

import json
import shutil

import numpy as np
import pytest

from drex import REPO_ROOT
from drex.cli import main
from drex.costmodel import profile as pf
from drex.costmodel.load import load_cost_model, load_fitted
from drex.costmodel.price import step_s
from drex.costmodel.vidur import import_vidur
from drex.costmodel.vidur_fit import fit_imported
from drex.models import get_model
from drex.settings import RunSettings, build_cost_model
from tests.costmodel.test_vidur_import import write_vidur

pytestmark = pytest.mark.slow  # imports and fits a Vidur profile: the `not slow` subset stays under 20 s

SHAPE = get_model("llama2-70b")
SHIPPED = REPO_ROOT / "profiles" / "a100" / "llama2-70b" / "tp2"
VIDUR_DECODE_32X1536_MS = 61.2  # Vidur's predictor on the same medians (module docstring)


def vidur_rule_root(tmp_path):
    """A profiles root whose a100/llama2-70b/tp2 is the shipped import refitted by the vidur rule."""
    out = tmp_path / "a100" / "llama2-70b" / "tp2"
    shutil.copytree(SHIPPED, out)
    meta = json.loads((out / pf.META).read_text())
    meta["source"]["fit_rule"] = "vidur"
    (out / pf.META).write_text(json.dumps(meta))
    fit_imported(out)
    return out


def decode_step_ms(cost, rows=32, context=1536):
    return 1e3 * float(step_s(cost, [80], [rows], [rows * context], 0.0, head_rows=[rows], overhead_rows=rows))


def test_vidur_rule_prices_a_decode_step_as_vidurs_predictor(tmp_path, monkeypatch):
    vidur_rule_root(tmp_path)
    monkeypatch.setenv("DREX_PROFILES", str(tmp_path))
    cost = build_cost_model(RunSettings(model="llama2-70b", device="a100", tp=2), SHAPE)
    assert cost.name.startswith(f"profile:{tmp_path}")
    assert decode_step_ms(cost) == pytest.approx(VIDUR_DECODE_32X1536_MS, rel=0.03)
    assert cost.head_s(32) == 0.0 and cost.step_overhead_s(32) == 0.0
    monkeypatch.delenv("DREX_PROFILES")  # the shipped (measured) profile prices the GPU, dearer here
    measured = build_cost_model(RunSettings(model="llama2-70b", device="a100", tp=2), SHAPE)
    assert decode_step_ms(measured) > 1.07 * VIDUR_DECODE_32X1536_MS


def test_vidur_rule_linear_work_is_the_least_squares_line_at_tokens_rounded_up_to_8(tmp_path):
    model = load_fitted(vidur_rule_root(tmp_path), SHAPE)
    rows = [r for r in pf.read_profile(SHIPPED).rows if r["op"] == "linear"]  # fit and held: Vidur trains on all
    n = np.array([r["num_tokens"] for r in rows], dtype=float)
    k, c0 = np.polyfit(n, [r["median_s"] for r in rows], 1)
    for tokens in (1, 8, 32, 33, 128, 500, 4096):
        assert model.linear_s(tokens) == pytest.approx(c0 + k * 8 * np.ceil(tokens / 8), rel=1e-6)
    assert model.linear_s(33) == model.linear_s(40) > model.linear_s(32)
    assert model.layer_s(33, 33 * 1000) == pytest.approx(model.linear_s(33) + model.attn_s(33, 33 * 1000))
    # Vidur's lines miss the GEMMs' weight-read floor: small batches cheaper than the measured rule prices them.
    measured = load_cost_model("a100", SHAPE, tp=2)
    assert model.linear_s(8) < 0.8 * measured.linear_s(8)
    assert model.attn_s(32, 32 * 1536) == measured.attn_s(32, 32 * 1536)  # attention: the measured kernels


def test_import_vidur_fit_rule_flag(tmp_path, capsys):
    src = write_vidur(tmp_path / "v")
    out = tmp_path / "p"
    assert main(["costmodel", "import-vidur", str(src), "--device", "a100", "--model", "llama2-7b",
                 "--fit-rule", "vidur", "--out", str(out)]) == 0
    assert "fit rule vidur" in capsys.readouterr().out
    meta = pf.read_meta(out)
    assert meta["source"]["fit_rule"] == "vidur" and "not priced" in meta["unmeasured"]["head"]
    law = json.loads((out / pf.FIT).read_text())["laws"]["linear"]
    assert law["x"] == ["tokens_up8"] and "table" not in law
    assert pf.read_meta(import_vidur(src, "a100", "llama2-7b", 1, tmp_path / "m")[0])["source"]["fit_rule"] == "measured"


def test_unknown_fit_rule_is_a_one_line_error(tmp_path, capsys):
    src = write_vidur(tmp_path / "v")
    with pytest.raises(SystemExit):
        main(["costmodel", "import-vidur", str(src), "--device", "a100", "--model", "llama2-7b",
              "--fit-rule", "guess", "--out", str(tmp_path / "o")])
    assert "invalid choice: 'guess'" in capsys.readouterr().err
    out, _ = import_vidur(src, "a100", "llama2-7b", 1, tmp_path / "p")
    meta = json.loads((out / pf.META).read_text())
    meta["source"]["fit_rule"] = "guess"
    (out / pf.META).write_text(json.dumps(meta))
    assert main(["costmodel", "fit", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "source.fit_rule" in err and "unknown fit rule 'guess'" in err and len(err.splitlines()) == 1
