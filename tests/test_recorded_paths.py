"""What drex writes into a record names paths relative to the repository, the home or the temporary folder
(``drex.outputs.recorded_path``): a committed record never names a folder of the machine it was made on."""

import json
import tempfile
from pathlib import Path

import pytest

from drex import REPO_ROOT
from drex.costmodel import profile as pf
from drex.costmodel.fit import fit_profile
from drex.costmodel.vidur import import_vidur
from drex.models import get_model
from drex.outputs import recorded_path
from costmodel.test_vidur_import import write_vidur
from profkit import synthetic_profile

pytestmark = pytest.mark.slow  # profiles and fits written end to end: the `not slow` subset stays under 20 s

HOME, TMP = Path.home().resolve(), Path(tempfile.gettempdir()).resolve()


def test_recorded_path_is_relative_to_the_repository_home_or_temporary_folder(monkeypatch):
    assert recorded_path(REPO_ROOT / "models" / "tiny-ee") == "models/tiny-ee"
    assert recorded_path(REPO_ROOT) == "."
    assert recorded_path(HOME / ".cache" / "drex" / "smollm2") == "~/.cache/drex/smollm2"
    assert recorded_path(TMP / "base03d") == "<tmp>/base03d"
    if not (REPO_ROOT.parent.is_relative_to(HOME) or REPO_ROOT.parent.is_relative_to(TMP)):
        assert recorded_path(REPO_ROOT.parent / "shared" / "vidur-profiles") == "../shared/vidur-profiles"
    monkeypatch.chdir(REPO_ROOT)
    assert recorded_path("profiles/cpu/tiny") == "profiles/cpu/tiny"
    assert recorded_path("~/x") == "~/x"


def test_a_profiles_model_path_is_recorded_relative_to_the_repository():
    shape = get_model("tiny-ee")
    assert Path(shape.path).is_absolute()
    assert pf.shape_dict(shape)["path"] == "models/tiny-ee"


def _written_text(folder: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(folder.rglob("*")) if p.suffix in (".json", ".txt"))


def test_a_vidur_import_records_its_source_without_the_machines_folders(tmp_path):
    src = write_vidur(tmp_path / "vidur" / "a100" / "meta-llama" / "Llama-2-7b-hf")
    out, report = import_vidur(src, "a100", "llama2-7b", 1, tmp_path / "prof")
    meta = json.loads((out / pf.META).read_text())
    assert meta["source"]["path"] == "<tmp>/" + src.resolve().relative_to(TMP).as_posix()
    assert str(tmp_path) not in _written_text(out) + report
    assert f"source: {meta['source']['path']} (mlp.csv)" in (out / pf.FIT_REPORT).read_text()


def test_a_fit_report_names_the_profile_without_the_machines_folders(tmp_path):
    synthetic_profile(tmp_path / "p")
    _, report = fit_profile(tmp_path / "p")
    assert report.startswith(f"drex cost-model fit of <tmp>/{(tmp_path / 'p').resolve().relative_to(TMP).as_posix()}\n")
    assert str(tmp_path) not in _written_text(tmp_path / "p")


def test_a_real_runs_records_name_its_weights_without_the_machines_folders():
    from drex.real.run import recorded_weights

    assert recorded_weights("random") == "random"
    assert recorded_weights("auto") == "auto"
    assert recorded_weights(str(HOME / ".cache" / "drex" / "smollm2")) == "~/.cache/drex/smollm2"
    assert recorded_weights(str(REPO_ROOT / "models" / "tiny-ee")) == "models/tiny-ee"
