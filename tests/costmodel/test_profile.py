"""Profile files: resumable writing, and clear errors for every way a profile can be unusable."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest

from drex.costmodel import profile as pf
from drex.costmodel.fit import fit_profile
from drex.costmodel.load import load_cost_model, load_fitted
from drex.real.profiler import check_device, run_grid, summarize
from drex.models import MODELS, with_layers

from profkit import synthetic_profile

SHAPE = MODELS["tiny"]


def _meta(points):
    return {"schema_version": pf.SCHEMA_VERSION, "device": {"requested": "cpu", "name": "mock"}, "dtype": "fp32",
            "model": pf.shape_dict(SHAPE), "grid": pf.grid_summary(points)}


def _timing(p: pf.Point):
    # Deterministic "measurement": samples are a function of the point only (a mocked timer).
    t = 1e-5 * (1 + p.num_rows + p.context / 100 + p.chunk / 10 + p.num_layers)
    return [0.9 * t, t, 1.1 * t], [t, 1.2 * t, 1.3 * t]


class Interrupt(Exception):
    pass


def _interrupting(after: int):
    count = {"n": 0}

    def measure(p):
        if count["n"] == after:
            raise Interrupt
        count["n"] += 1
        return _timing(p)

    return measure


def test_resume_after_interruption_gives_the_same_file(tmp_path):
    points = pf.build_grid(SHAPE, quick=True)
    units = len(points) * 3
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_grid(full, _meta(points), points, _timing, rounds=3, progress=False)
    for k in (7, 130):  # interrupted twice: once in the first round, once in the second
        with pytest.raises(Interrupt):
            run_grid(resumed, _meta(points), points, _interrupting(k), rounds=3, progress=False)
        assert pf.read_meta(resumed)["status"] == "running"
        assert not (resumed / pf.MEASUREMENTS).exists()
        with pytest.raises(ValueError, match="measurements.csv: missing"):
            pf.read_profile(resumed)
    # A kill in the middle of a write leaves half a line behind.
    with (resumed / pf.SAMPLES).open("a") as fh:
        fh.write("1,layer_decode,25,128,0,0,1.0e-3 1.1e-")
    calls = []
    run_grid(resumed, _meta(points), points, lambda p: calls.append(p) or _timing(p), rounds=3, progress=False)
    assert len(calls) == units - 137  # only the units not yet measured
    for name in (pf.MEASUREMENTS, pf.SAMPLES):
        assert (resumed / name).read_bytes() == (full / name).read_bytes(), name
    prof = pf.read_profile(resumed)
    assert [(r["op"], r["num_rows"], r["context"], r["chunk"], r["num_layers"]) for r in prof.rows] == \
        [p.key for p in points]
    assert all(r["reps"] == 9 for r in prof.rows)  # three rounds of three samples, no duplicates
    # Rerunning a complete profile measures nothing and writes nothing (a shipped profile stays untouched).
    stamps = {f.name: f.stat().st_mtime_ns for f in resumed.iterdir()}
    run_grid(resumed, _meta(points), points, lambda p: pytest.fail("re-measured"), rounds=3, progress=False)
    assert (resumed / pf.MEASUREMENTS).read_bytes() == (full / pf.MEASUREMENTS).read_bytes()
    assert {f.name: f.stat().st_mtime_ns for f in resumed.iterdir()} == stamps


def test_samples_are_shuffled_per_round_but_fixed():
    points = pf.build_grid(SHAPE, quick=True)
    a, b = pf.unit_order(points, 2), pf.unit_order(points, 2)
    assert a == b
    first = [p.key for r, p in a if r == 0]
    second = [p.key for r, p in a if r == 1]
    assert sorted(first) == sorted(second) == sorted(p.key for p in points) and first != second


def test_resume_refuses_a_profile_of_other_settings(tmp_path):
    points = pf.build_grid(SHAPE, quick=True)
    with pytest.raises(Interrupt):
        run_grid(tmp_path, _meta(points), points, _interrupting(3), progress=False)
    other = {**_meta(points), "dtype": "bf16"}
    with pytest.raises(ValueError, match="field dtype differs"):
        run_grid(tmp_path, other, points, _timing, progress=False)
    with pytest.raises(ValueError, match="field rounds differs"):
        run_grid(tmp_path, _meta(points), points, _timing, rounds=2, progress=False)
    run_grid(tmp_path, other, points, _timing, progress=False, restart=True)
    assert pf.read_profile(tmp_path).meta["dtype"] == "bf16"


def test_summarize_median_and_spread():
    t = summarize([3.0, 1.0, 2.0, 100.0, 2.0], [4.0, 1.0, 2.0, 9.0, 5.0])
    assert t.median_s == 2.0 and t.reps == 5 and t.p10_s <= t.median_s <= t.p90_s and t.wall_median_s == 4.0


def test_damaged_samples_file_is_refused(tmp_path):
    points = pf.build_grid(SHAPE, quick=True)
    with pytest.raises(Interrupt):
        run_grid(tmp_path, _meta(points), points, _interrupting(5), progress=False)
    lines = (tmp_path / pf.SAMPLES).read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace("e-", "x-", 1)
    (tmp_path / pf.SAMPLES).write_text("".join(lines))
    with pytest.raises(ValueError, match=r"samples.csv line 3: damaged row"):
        run_grid(tmp_path, _meta(points), points, _timing, progress=False)


@pytest.fixture(scope="module")
def fitted_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("template") / "tiny"
    synthetic_profile(path)
    fit_profile(path)
    return path


@pytest.fixture()
def fitted(tmp_path, fitted_template):
    root = tmp_path / "profiles"
    path = root / "cpu" / "tiny"
    shutil.copytree(fitted_template, path)
    return root, path


@pytest.mark.slow
def test_load_uses_fitted_profile(fitted):
    root, path = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp32 profile, 2-byte request
        model = load_cost_model("cpu", SHAPE, 2, root=root)
    assert model.name.startswith("profile:") and model.name.endswith("cpu/tiny")
    assert model.layer_s(16, 16 * 512) > 0
    # Fewer layers of the same width: per-layer costs still apply.
    assert load_cost_model("cpu", with_layers(SHAPE, 2), 4, root=root).name == model.name


def test_load_falls_back_to_roofline(tmp_path):
    roofline = pytest.importorskip("drex.costmodel.roofline")
    model = load_cost_model("h200", MODELS["llama2-7b"], 2, root=tmp_path)
    assert isinstance(model, roofline.RooflineCostModel)


def test_unknown_device(fitted):
    root, _ = fitted
    with pytest.raises(ValueError, match="unknown device 'tpu9'"):
        load_cost_model("tpu9", SHAPE, root=root)
    with pytest.raises(ValueError, match="unknown device 'tpu9'"):
        check_device("tpu9")


def test_gpu_requested_without_one():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    with pytest.raises(ValueError, match="cpu, no CUDA device"):
        check_device("h200")
    assert check_device("h200", force=True) == "cpu"
    assert check_device("cpu") == "cpu"


def test_model_shape_mismatch(fitted):
    root, path = fitted
    wider = MODELS["llama2-7b"].__class__(**{**pf.shape_dict(SHAPE), "hidden_size": 256, "trained_exits": ()})
    with pytest.raises(ValueError, match=r"meta.json: model field hidden_size is 128 .* has 256"):
        load_cost_model("cpu", wider, root=root)


def test_other_schema_version(fitted):
    root, path = fitted
    meta = json.loads((path / pf.META).read_text())
    meta["schema_version"] = pf.SCHEMA_VERSION + 1
    (path / pf.META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"meta.json: field schema_version is 2"):
        load_cost_model("cpu", SHAPE, root=root)
    with pytest.raises(ValueError, match="schema_version"):
        pf.read_profile(path)


@pytest.mark.parametrize("damage", ["meta_json", "fit_json", "csv_truncated", "csv_edited", "csv_cell", "fit_law"])
def test_corrupt_or_truncated_profile(fitted, tmp_path, damage):
    root, path = fitted
    csv_path, meta_path, fit_path = path / pf.MEASUREMENTS, path / pf.META, path / pf.FIT
    text = csv_path.read_text()
    if damage == "meta_json":
        meta_path.write_text(meta_path.read_text()[:50])
        expect = r"meta.json: corrupt JSON"
    elif damage == "fit_json":
        fit_path.write_text("{\"laws\": ")
        expect = r"fit.json: corrupt JSON"
    elif damage == "csv_truncated":
        csv_path.write_text(text[: len(text) // 2])
        expect = r"measurements.csv"
    elif damage == "csv_edited":
        csv_path.write_text(text.replace("e-0", "e-1", 1))
        expect = r"fit.json: field measurements_sha256 does not match"
    elif damage == "csv_cell":
        lines = text.splitlines(keepends=True)
        lines[3] = lines[3].replace("fit", "fit,extra", 1).replace("e-", "x-", 1)
        csv_path.write_text("".join(lines))
        expect = r"measurements.csv line 4"
    else:
        fit = json.loads(fit_path.read_text())
        del fit["laws"]["head"]["k"]
        fit_path.write_text(json.dumps(fit))
        expect = r"fit.json laws.head: malformed law"
    with pytest.raises(ValueError, match=expect):
        if damage in ("csv_truncated", "csv_cell"):
            pf.read_profile(path)
        else:
            load_fitted(path, SHAPE)
    if damage in ("csv_truncated", "csv_cell"):
        with pytest.raises(ValueError, match=expect):
            fit_profile(path)


def test_truncated_csv_keeping_whole_lines_is_caught(fitted):
    _, path = fitted
    lines = (path / pf.MEASUREMENTS).read_text().splitlines(keepends=True)
    (path / pf.MEASUREMENTS).write_text("".join(lines[:-5]))
    with pytest.raises(ValueError, match=r"measurements.csv: \d+ rows but meta.json's grid has \d+ points"):
        pf.read_profile(path)


def test_profile_without_fit_falls_back_with_warning(fitted):
    pytest.importorskip("drex.costmodel.roofline")
    root, path = fitted
    (path / pf.FIT).unlink()
    with pytest.warns(UserWarning, match="no fit.json"):
        model = load_cost_model("cpu", SHAPE, 4, root=root)
    assert model.name == "roofline"


def test_grids_have_held_points_for_every_op():
    for shape in (SHAPE, MODELS["llama2-70b"]):
        for quick in (True, False):
            pts = pf.build_grid(shape, quick)
            for op in pf.OPS:
                assert any(p.op == op and p.split == "held" for p in pts), (shape.name, quick, op)
                assert any(p.op == op and p.split == "fit" for p in pts), (shape.name, quick, op)
