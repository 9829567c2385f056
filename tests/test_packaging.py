"""pyproject.toml declares torch by a lower bound, never a pin: installing drex keeps a torch already installed
(a CUDA build, say) when it is recent enough."""

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from drex import REPO_ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def test_torch_is_declared_with_a_lower_bound_and_no_pin():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    torch = [r for r in map(Requirement, project["dependencies"]) if r.name == "torch"]
    assert len(torch) == 1
    ops = {spec.operator for spec in torch[0].specifier}
    assert ops == {">="}, f"torch must be declared as torch>=X only, got {torch[0]}"
    # 2.5: the oldest torch with scaled_dot_product_attention(enable_gqa=...), which drex/real uses.
    assert Version(next(iter(torch[0].specifier)).version) >= Version("2.5")
