"""Device table: peak dense matmul FLOP/s, memory bandwidth and capacity.

These numbers price the analytic roofline cost model; a measured profile
(``profiles/<device>/<model>/``) replaces them when present.
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024**3


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

    def __post_init__(self) -> None:
        if self.peak_flops <= 0 or self.mem_bw_bytes_per_s <= 0 or self.mem_bytes <= 0:
            raise ValueError(f"device {self.name}: peak_flops, bandwidth and memory must be positive")


DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device("h100", 989e12, 3.35e12, 80 * GiB, 250e-6),
        Device("h200", 989e12, 4.8e12, 141 * 10**9, 250e-6),
        Device("a100", 312e12, 2.0e12, 80 * GiB, 300e-6),
        # A laptop-class CPU core running fp32: slow, but enough for the tiny model.
        Device("cpu", 50e9, 20e9, 16 * GiB, 1e-3, flops_efficiency=0.5, bw_efficiency=0.5),
    )
}


def get_device(name: str) -> Device:
    try:
        return DEVICES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown device {name!r}; known: {', '.join(DEVICES)}") from None
