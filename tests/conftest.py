"""Test set-up: one torch thread (two make small matmuls ~100x slower on 2-core VMs) and
Triton's interpreter on machines without CUDA, set before any kernel module is imported."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)
except ImportError:  # the core tests run without torch
    pass

import sys
from pathlib import Path

# Shared test helpers (simkit) live beside this file; the tests mirror the package in sub-folders.
sys.path.insert(0, str(Path(__file__).resolve().parent))
