"""The real backend: an early-exit decoder over a paged KV cache, run by the shared scheduler.

model (EEModel, confidence), weights (HF checkpoint load/save), kvcache (paged
KV cache, state-copy and recompute KV fill), buffer (rebatching pool, copy
meter), kernels (Triton on CUDA, torch on CPU), executor (carries out the
scheduler's steps and measures them).
"""

# Names the CLI offers without importing torch.
KV_FILLS = ("copy", "recompute")
