"""Print the machine the GPU run found (GPU, driver, torch, triton, ...) and write it as JSON.

    python benchmarks/gpu/envinfo.py --json env.json

Always exits 0 when it could look: whether a missing CUDA is fatal is the caller's decision
(``oneshot.py`` stops there on a GPU run, and carries on in a dry run).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

# Device-table names (drex/devices.py) as they appear in torch's device name, e.g. "NVIDIA H100 80GB HBM3".
KNOWN_GPUS = ("h200", "h100", "a100")


def device_key(gpu_name: str | None) -> str | None:
    """The drex device a GPU name is, or None when drex has no table entry for it."""
    if not gpu_name:
        return None
    flat = gpu_name.lower().replace(" ", "").replace("-", "")
    return next((k for k in KNOWN_GPUS if k in flat), None)


def _version(module: str) -> str | None:
    try:
        return getattr(__import__(module), "__version__", "?")
    except Exception as e:  # a broken install says so in the table rather than stopping it
        return f"unavailable ({type(e).__name__})"


def _driver() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def collect() -> dict:
    info = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
            "cuda_available": False, "gpu": None, "capability": None, "gpu_mem_gib": None, "device_key": None}
    for m in ("torch", "triton", "transformers", "numpy", "pandas", "scipy", "simpy", "tqdm"):
        info[m] = _version(m)
    try:
        import torch
    except Exception as e:
        info["torch_error"] = f"{type(e).__name__}: {e}"
        return info
    info["torch_cuda_build"] = torch.version.cuda
    info["cuda_available"] = bool(torch.cuda.is_available())
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", gpu_mem_gib=props.total_memory / 2**30,
                    gpu_count=torch.cuda.device_count(), device_key=device_key(props.name), driver=_driver())
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="write the facts here as JSON")
    args = p.parse_args(argv)
    info = collect()
    for k, v in info.items():
        print(f"{k:>18}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
