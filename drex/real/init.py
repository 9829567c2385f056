"""Building modules without their default initialisation (every weight is overwritten next)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def uninitialised(dtype: torch.dtype, device):
    """Build modules straight on ``device`` in ``dtype`` and skip their default init (every weight is
    overwritten next): no fp32 copy of a 7B model, no seconds of kaiming init, no meta-device detour."""
    saved = nn.Linear.reset_parameters, nn.Embedding.reset_parameters, torch.get_default_dtype()
    nn.Linear.reset_parameters = nn.Embedding.reset_parameters = lambda self: None
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        nn.Linear.reset_parameters, nn.Embedding.reset_parameters = saved[:2]
        torch.set_default_dtype(saved[2])


def torch_dtype(name: str) -> torch.dtype:
    """The torch type of a dtype name (fp32, bf16, fp16)."""
    from drex.dtypes import TORCH_NAMES, check_dtype

    return getattr(torch, TORCH_NAMES[check_dtype(name)])
