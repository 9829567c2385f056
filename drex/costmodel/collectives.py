"""Measured collectives: one collective's time against its message size, from Vidur's network profiles.

``profiles/network/<device>_<topology>/<collective>.csv`` (``all_reduce``, ``send_recv``; shipped by
``benchmarks/network_import.py``) hold Vidur's median time of one collective of ``size`` bytes over
``num_workers`` GPUs, ``devices_per_node`` of them in one node. ``tp_all_reduce(device, tp)`` is the table
that prices tensor parallelism inside one node: the ``all_reduce`` rows with ``num_workers ==
devices_per_node == tp``, as Vidur keeps them, on the topology Vidur's runs of that device use (``TOPOLOGY``);
``None`` where nothing was measured, and the caller keeps its analytic law.

A message of ``size`` bytes is priced by linear interpolation between the medians of the measured sizes on
either side of it: a measured size costs its median, any size between two measured ones lies between their
medians. Below the smallest measured size (2 KiB) it costs the smallest one's median (a collective's latency
floor); beyond the largest (64 MiB: 4,096 tokens of hidden 8,192 in fp16) the largest one's median plus, per
byte more, the slope of a least-squares line through the upper half of the measured sizes (where the time is
bandwidth-bound and nearly linear).

The medians are noisy below about 1 MiB: neighbouring sizes alternate between two levels (about 20 and 60 us
on A100 at 4 workers) and the interpolation keeps them; a monotone fit would miss the measured median by more
than 10% at most sizes under 1 MiB.

``LAUNCH_S`` is what Vidur adds to every measured median (its ``nccl_cpu_launch_overhead_ms``): the host's
cost of launching one collective, which the measurement (GPU time) leaves out.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from drex import REPO_ROOT

NETWORK_DIR = REPO_ROOT / "profiles" / "network"
# The topology Vidur's runs of each device use (NVSwitch nodes of 8 GPUs); devices not here have no data.
TOPOLOGY = {"a100": "a100_dgx", "h100": "h100_dgx"}
LAUNCH_S = 20e-6  # Vidur's nccl_cpu_launch_overhead_ms (0.02), added per collective on top of the median
COLUMNS = ("num_workers", "devices_per_node", "size", "median_ms")


@dataclass(frozen=True, eq=False)
class MeasuredCollective:
    """One collective's medians at one worker count: ``time_s(size)`` in seconds for ``size`` bytes."""

    source: str  # e.g. "network/a100_dgx/all_reduce.csv"
    num_workers: int
    devices_per_node: int
    size: np.ndarray  # bytes, ascending, each once
    median_s: np.ndarray
    tail_s_per_byte: float = field(init=False)  # beyond the largest size

    def __post_init__(self) -> None:
        upper = self.size >= self.size[-1] / 2
        slope = np.polyfit(self.size[upper], self.median_s[upper], 1)[0] if upper.sum() > 1 else 0.0
        object.__setattr__(self, "tail_s_per_byte", max(float(slope), 0.0))

    def time_s(self, size_bytes):
        """Median seconds of one collective of ``size_bytes`` (array or scalar), as the module states."""
        s = np.asarray(size_bytes, dtype=float)
        t = np.interp(s, self.size, self.median_s)
        return t + np.maximum(s - self.size[-1], 0.0) * self.tail_s_per_byte

    @property
    def label(self) -> str:
        return f"measured:{self.source}:{self.num_workers}gpu"


def _read(path: Path) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """(num_workers, devices_per_node) -> (sizes, medians in seconds); ValueError naming file and line."""
    groups: dict[tuple[int, int], list[tuple[float, float]]] = {}
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or tuple(header) != COLUMNS:
            raise ValueError(f"{path}:1: header must be {','.join(COLUMNS)}, got {','.join(header or [])!r}")
        for line, row in enumerate(rows, 2):
            try:
                nw, dpn, size, med = int(row[0]), int(row[1]), float(row[2]), float(row[3])
            except (ValueError, IndexError):
                raise ValueError(f"{path}:{line}: expected {len(COLUMNS)} numbers, got {','.join(row)!r}") from None
            if nw < 1 or dpn < 1 or not size > 0 or not med > 0:
                raise ValueError(f"{path}:{line}: workers and devices must be >= 1, size and median_ms > 0")
            groups.setdefault((nw, dpn), []).append((size, med * 1e-3))
    out = {}
    for key, pts in groups.items():
        pts.sort()
        size, med = np.array(pts).T
        if np.any(np.diff(size) == 0):
            raise ValueError(f"{path}: size {size[np.argmax(np.diff(size) == 0)]:.0f} appears twice for "
                             f"num_workers={key[0]}, devices_per_node={key[1]}")
        out[key] = (size, med)
    return out


@lru_cache(maxsize=None)
def _read_cached(path: str):
    return _read(Path(path))


def measured_collective(topology: str, collective: str, num_workers: int, devices_per_node: int,
                        root: str | Path | None = None) -> MeasuredCollective | None:
    """The medians of ``<root>/<topology>/<collective>.csv`` at that worker count, or None where not measured."""
    path = Path(root if root is not None else NETWORK_DIR) / topology / f"{collective}.csv"
    if not path.exists():
        return None
    pts = _read_cached(str(path)).get((num_workers, devices_per_node))
    if pts is None:
        return None
    return MeasuredCollective(f"network/{topology}/{collective}.csv", num_workers, devices_per_node, *pts)


def tp_all_reduce(device: str, tp: int, root: str | Path | None = None) -> MeasuredCollective | None:
    """The all-reduce of tensor parallelism ``tp`` inside one node of ``device``; None: no measurement."""
    topology = TOPOLOGY.get(device.lower())
    return None if topology is None else measured_collective(topology, "all_reduce", tp, tp, root)
