"""$DREX_PROFILES moves the profiles root: a scratch profile is used without writing into the tracked tree."""

import shutil

from drex import REPO_ROOT
from drex.costmodel.load import load_cost_model, profile_dir
from drex.models import get_model

TINY = get_model("tiny")


def test_profiles_root_follows_the_environment(tmp_path, monkeypatch):
    assert load_cost_model("cpu", TINY, 4).name.startswith("profile:")  # the shipped profiles/cpu/tiny
    monkeypatch.setenv("DREX_PROFILES", str(tmp_path))
    assert profile_dir("cpu", "tiny") == tmp_path / "cpu" / "tiny"
    assert load_cost_model("cpu", TINY, 4).name == "roofline"  # an empty root: no profile there
    shutil.copytree(REPO_ROOT / "profiles" / "cpu" / "tiny", tmp_path / "cpu" / "tiny")
    assert load_cost_model("cpu", TINY, 4).name == f"profile:{tmp_path / 'cpu' / 'tiny'}"
    monkeypatch.setenv("DREX_PROFILES", "")  # empty means unset
    assert profile_dir("cpu", "tiny") == REPO_ROOT / "profiles" / "cpu" / "tiny"
