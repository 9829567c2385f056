"""The fit recovers a known cost law from synthetic measurements, and its report holds out points."""

from __future__ import annotations

import json

import numpy as np
import pytest

from drex.costmodel import profile as pf
from drex.costmodel.fit import fit_law, fit_profile
from drex.costmodel.fitted import smooth_max
from drex.costmodel.load import load_fitted
from profkit import TRUE, synthetic_profile

# A GPU-like law: flat (weights read once) until ~200 tokens, then compute-bound; attention apart.
def test_smooth_max_limits():
    assert smooth_max(0.0, 3.0, 4.0) == pytest.approx(3.0)
    assert smooth_max(2.0, 3.0, 64.0) == pytest.approx(3.0, rel=1e-3)
    assert smooth_max(2.0, 3.0, 1.0) == pytest.approx(5.0)


def test_fit_law_recovers_roofline_parameters():
    law = TRUE["mlp"]
    tokens = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096], dtype=float)
    y = law({"tokens": tokens})
    got = fit_law(("tokens",), (), {"tokens": tokens}, y)
    assert got.k[0] == pytest.approx(law.k[0], rel=0.02)
    assert got.c0 + got.m == pytest.approx(law.c0 + law.m, rel=0.02)
    test = np.array([3, 100, 300, 3000], dtype=float)
    np.testing.assert_allclose(got({"tokens": test}), law({"tokens": test}), rtol=0.01)


@pytest.mark.slow
def test_fit_recovers_known_law_from_profile(tmp_path):
    truth = synthetic_profile(tmp_path, quick=False)  # the quick grid has too few head rows to place a knee
    fit, report = fit_profile(tmp_path)
    for op, d in fit["errors"].items():
        assert d["held"]["mape"] < 0.01, (op, d)
    model = load_fitted(tmp_path)
    # Off the grid: a mixed step, a deep layer range, KV copy into many layers.
    T, Cd, Pa = np.array([40.0, 300.0]), np.array([40 * 700.0, 200 * 1500.0]), np.array([0.0, 100 * 600.0])
    np.testing.assert_allclose(model.layer_s(T, Cd, Pa), truth.layer_s(T, Cd, Pa), rtol=0.02)
    np.testing.assert_allclose(model.layers_s(0, 3, T, Cd, Pa), 3 * truth.layer_s(T, Cd, Pa), rtol=0.02)
    assert model.kv_copy_s(100, 3) == pytest.approx(truth.kv_copy_s(100, 3), rel=0.02)
    assert model.head_s(0) == 0.0 and model.layer_s(0) == 0.0
    assert "held MAPE" in report and (tmp_path / pf.FIT_REPORT).exists()


@pytest.mark.slow
def test_fit_tolerates_noise_and_reports_it(tmp_path):
    synthetic_profile(tmp_path, noise=0.03, seed=1)
    fit, _ = fit_profile(tmp_path)
    for op, d in fit["errors"].items():
        assert d["held"]["mape"] < 0.08, (op, d)


@pytest.mark.slow
def test_fit_json_round_trips(tmp_path):
    synthetic_profile(tmp_path)
    fit, _ = fit_profile(tmp_path)
    loaded = json.loads((tmp_path / pf.FIT).read_text())
    assert loaded["laws"] == json.loads(json.dumps(fit["laws"]))
    assert loaded["measurements_sha256"] == pf.file_sha256(tmp_path / pf.MEASUREMENTS)


@pytest.mark.slow
def test_wall_timing_fits_the_wall_clock(tmp_path):
    """A shared CPU: samples (thread time) stay put, wall times are 1.6x; --timing wall predicts the wall."""
    from drex.costmodel.fit import wall_rows

    rows = [{"median_s": 1.0, "p10_s": 0.9, "p90_s": 1.1, "wall_median_s": 1.6}]
    assert wall_rows(rows)[0]["median_s"] == pytest.approx(1.6) and wall_rows(rows)[0]["p90_s"] == pytest.approx(1.76)
    synthetic_profile(tmp_path)
    measurements = tmp_path / pf.MEASUREMENTS
    text = measurements.read_text().splitlines()
    cols = text[0].split(",")
    w = cols.index("wall_median_s")
    out = [text[0]]
    for line in text[1:]:
        cells = line.split(",")
        cells[w] = repr(1.6 * float(cells[cols.index("median_s")]))
        out.append(",".join(cells))
    measurements.write_text("\n".join(out) + "\n")
    cpu_fit, _ = fit_profile(tmp_path)
    cpu = load_fitted(tmp_path).layer_s(np.array([8.0]), np.array([8 * 256.0]), np.array([0.0]))
    wall_fit, report = fit_profile(tmp_path, timing="wall")
    wall = load_fitted(tmp_path).layer_s(np.array([8.0]), np.array([8 * 256.0]), np.array([0.0]))
    assert wall_fit["timing"] == "wall" and cpu_fit["timing"] == "cpu" and "fitted to the median wall times" in report
    np.testing.assert_allclose(wall, 1.6 * cpu, rtol=0.03)
    with pytest.raises(ValueError, match="timing"):
        fit_profile(tmp_path, timing="gpu")
