"""Device table: peak dense matmul FLOP/s, memory bandwidth and capacity.

These numbers price the analytic roofline cost model; a measured profile
(``profiles/<device>/<model>/``) replaces them when present.
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024**3


@dataclass(frozen=True)
class EfficiencyCurve:
    """Efficiencies of one decoder layer's linear work against tokens per step, fitted to measured GPU profiles
    (``benchmarks/roofline_vs_vidur.py``): the GEMMs reach ``flops_efficiency * n / (n + flops_half_tokens)`` of
    peak FLOP/s at n tokens (small steps cannot fill the GPU), the weights stream at ``bw_efficiency`` of peak
    bandwidth, the elementwise ops (norms, RoPE, activation, adds) move ``elementwise_bytes`` x hidden x dtype
    bytes per token, and ``layer_launch_s`` is fixed per layer; compute and memory time meet in a smooth max
    of sharpness ``p``."""

    flops_efficiency: float
    flops_half_tokens: float
    bw_efficiency: float
    elementwise_bytes: float
    layer_launch_s: float
    p: float
    fitted_on: str


# Fitted on Vidur's TP-1 profiles (every shared model but h100 internlm-20b, held out): see
# benchmarks/results/roofline_vs_vidur.md.
A100_CURVE = EfficiencyCurve(0.7385, 69.26, 0.7932, 24.78, 39.05e-6, 5.545, "vidur a100 (7 models)")
H100_CURVE = EfficiencyCurve(0.6791, 110.5, 0.9046, 9.424, 47.61e-6, 7.013, "vidur h100 (4 models)")


@dataclass(frozen=True)
class Device:
    name: str
    peak_flops: float  # dense bf16/fp16 matmul FLOP/s (fp32 for cpu)
    mem_bw_bytes_per_s: float
    mem_bytes: int
    # Fixed cost of one step outside the layers: launches, sampling, scheduling.
    step_overhead_s: float
    # Achievable fractions of peak (a roofline without them is optimistic).
    flops_efficiency: float = 0.7
    bw_efficiency: float = 0.8
    # Measured efficiency curves of a layer's linear work; None: the constant efficiencies above.
    curve: EfficiencyCurve | None = None
    # GPU-to-GPU link, one direction (NVLink, else PCIe): prices tensor parallelism's all-reduces. 0: no TP.
    link_bw_bytes_per_s: float = 0.0

    def __post_init__(self) -> None:
        if self.peak_flops <= 0 or self.mem_bw_bytes_per_s <= 0 or self.mem_bytes <= 0:
            raise ValueError(f"device {self.name}: peak_flops, bandwidth and memory must be positive")


DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device("h100", 989e12, 3.35e12, 80 * GiB, 250e-6, curve=H100_CURVE, link_bw_bytes_per_s=450e9),
        # H200: H100's compute (same GH100 die and clocks) with HBM3e: H100's fitted efficiencies.
        Device("h200", 989e12, 4.8e12, 141 * 10**9, 250e-6, curve=H100_CURVE, link_bw_bytes_per_s=450e9),
        Device("a100", 312e12, 2.0e12, 80 * GiB, 300e-6, curve=A100_CURVE, link_bw_bytes_per_s=300e9),
        # Datasheet peaks, dense bf16 with FP32 accumulate (what PyTorch runs); efficiencies carried from the
        # nearest measured architecture (Ampere: A100; Hopper/Blackwell: H100), an assumption, not a measurement.
        # Links: 3090 Ti's NVLink bridge (112.5 GB/s both ways), 5090's PCIe 5.0 x16, B200's NVLink 5.
        Device("rtx3090ti", 80e12, 1.008e12, 24 * GiB, 300e-6, curve=A100_CURVE, link_bw_bytes_per_s=56.25e9),
        Device("rtx5090", 209.5e12, 1.792e12, 32 * GiB, 250e-6, curve=H100_CURVE, link_bw_bytes_per_s=64e9),
        Device("b200", 2.25e15, 8.0e12, 180 * 10**9, 250e-6, curve=H100_CURVE, link_bw_bytes_per_s=900e9),
        # A laptop-class CPU core running fp32: slow, but enough for the tiny model.
        Device("cpu", 50e9, 20e9, 16 * GiB, 1e-3, flops_efficiency=0.5, bw_efficiency=0.5),
    )
}


def get_device(name: str) -> Device:
    try:
        return DEVICES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown device {name!r}; known: {', '.join(DEVICES)}") from None
