"""Pick the cost model for a device and model: the fitted profile when one is shipped, else the roofline.

``load_cost_model("h200", shape)`` returns the model fitted from
``profiles/h200/<shape.name>/`` when that directory holds a fitted profile
(its ``name`` is ``profile:<path>``), and ``RooflineCostModel`` otherwise.
A profile that exists but is broken (corrupt, truncated, another schema
version, another model shape, re-measured since its fit) is an error, never a
silent fallback: a user who shipped a profile wants to know why it is not used.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from drex import REPO_ROOT
from drex.jsonfile import read_json_object
from drex.costmodel import profile as pf
from drex.costmodel.fitted import FAMILIES, OPTIONAL_FAMILIES, FittedCostModel, Law
from drex.devices import get_device
from drex.dtypes import DTYPE_BYTES
from drex.models import ModelShape

PROFILES_DIR = REPO_ROOT / "profiles"


def profile_dir(device: str, model_name: str, root: str | Path | None = None) -> Path:
    """``<root>/<device>/<model>``; root defaults to $DREX_PROFILES, else the shipped profiles/ (a scratch
    root keeps a fresh profile, e.g. benchmarks/gpu's, out of the tracked tree)."""
    root = root if root is not None else os.environ.get("DREX_PROFILES") or PROFILES_DIR
    return Path(root) / device.lower() / model_name


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def load_fitted(path: str | Path, shape: ModelShape | None = None) -> FittedCostModel:
    """The fitted model of one profile directory; ValueError naming the file and field when it is unusable."""
    path = Path(path)
    meta = pf.read_meta(path)
    if shape is not None:
        pf.check_shape(meta, shape, path / pf.META)
    fit_path = path / pf.FIT
    fit = read_json_object(fit_path, f"missing (run drex costmodel fit {path})")
    if fit.get("schema_version") != pf.SCHEMA_VERSION:
        raise ValueError(f"{fit_path}: field schema_version is {fit.get('schema_version')!r}; this drex reads "
                         f"schema {pf.SCHEMA_VERSION} (re-run drex costmodel fit)")
    csv_path = path / pf.MEASUREMENTS
    if csv_path.exists():
        if fit.get("measurements_sha256") != pf.file_sha256(csv_path):
            raise ValueError(f"{fit_path}: field measurements_sha256 does not match {csv_path.name} "
                             f"(re-measured or edited since the fit: re-run drex costmodel fit {path})")
    laws_json = fit.get("laws")
    if not isinstance(laws_json, dict):
        raise ValueError(f"{fit_path}: missing field 'laws'")
    missing = [f for f in FAMILIES if f not in laws_json and f not in OPTIONAL_FAMILIES]
    if missing:
        raise ValueError(f"{fit_path}: field laws lacks {missing}")
    laws = {fam: Law.from_json(laws_json[fam], f"{fit_path} laws.{fam}") for fam in FAMILIES if fam in laws_json}
    model = FittedCostModel(laws, name=f"profile:{_display(path)}")
    model.decode_attends_batch = (meta.get("device") or {}).get("requested") == "cpu"
    return model


def load_cost_model(device: str, shape: ModelShape, dtype_bytes: int = 2, root: str | Path | None = None,
                    tp: int = 1):
    """The profile of ``<root>/<device>/<model>/`` (``.../tp<N>/`` at tensor-parallel degree N > 1) when it is
    fitted, else the analytic roofline; one GPU's share of a layer (``tensor_parallel`` adds the all-reduces)."""
    get_device(device)  # an unknown device is an error before anything else
    path = profile_dir(device, shape.name, root)
    if shape.base is not None and not (path / pf.META).exists():  # smollm2-ee runs on smollm2's measured layers
        path = profile_dir(device, shape.base, root)
    if tp > 1:
        path = path / f"tp{tp}"
    if (path / pf.META).exists() and (path / pf.FIT).exists():
        model = load_fitted(path, shape)
        meta = pf.read_meta(path)
        have_tp = (meta.get("source") or {}).get("tp", 1)
        if have_tp != tp:
            raise ValueError(f"{path / pf.META}: profile of TP degree {have_tp}, asked for --tp {tp}")
        have = DTYPE_BYTES.get(meta["dtype"])
        # CPUs run fp32 (devices.py prices them so) whatever width a caller defaults to: no warning there.
        if have != dtype_bytes and device.lower() != "cpu":
            warnings.warn(f"{path / pf.META}: profile measured in {meta['dtype']} ({have} bytes), "
                          f"but {dtype_bytes}-byte weights were asked for; using the profile as measured",
                          stacklevel=2)
        return model
    if (path / pf.META).exists():
        warnings.warn(f"{path} has a profile but no fit.json (run drex costmodel fit {path}); using the roofline",
                      stacklevel=2)
    from drex.costmodel.roofline import RooflineCostModel

    return RooflineCostModel(shape, device, dtype_bytes, tp)
