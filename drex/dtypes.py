"""Number formats by name: bytes per element, and the torch type each stands for (named, not imported)."""

from __future__ import annotations

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
DTYPE_NAMES = tuple(DTYPE_BYTES)
TORCH_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def default_dtype(device: str) -> str:
    """fp32 on a CPU (no fast half-precision matmuls there), bf16 on a GPU."""
    return "fp32" if device == "cpu" else "bf16"


def check_dtype(name: str) -> str:
    if name not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {name!r}")
    return name
