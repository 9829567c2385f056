"""Ship Vidur's measured collectives compactly: the medians of its network profiles, per topology.

    python benchmarks/network_import.py --vidur ../shared/vidur-profiles/network --out-root profiles/network

For each topology (``a100_dgx``, ``h100_dgx`` by default: the ones Vidur's A100 and H100 runs use) it reads
``<topology>/all_reduce.csv`` and ``send_recv.csv`` and writes ``OUT_ROOT/<topology>/`` the same files with
only ``num_workers, devices_per_node, size`` (bytes) and ``median_ms`` (``time_stats.<collective>.median``),
sorted, one row per (num_workers, devices_per_node, size): a size measured twice (Vidur's two sweeps meet at
16 MiB) keeps the median of its medians. ``OUT_ROOT/README.md`` records the sources (sha256), the commit and the
licence; ``drex.costmodel.collectives`` reads the result.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import pandas as pd

TOPOLOGIES = ("a100_dgx", "h100_dgx")
COLLECTIVES = ("all_reduce", "send_recv")
KEYS = ["num_workers", "devices_per_node", "size"]
SOURCE_COMMIT = "7d47513"


def compact(src: Path, collective: str) -> pd.DataFrame:
    """One Vidur network CSV as (num_workers, devices_per_node, size, median_ms), duplicates collapsed."""
    df = pd.read_csv(src)
    median = f"time_stats.{collective}.median"
    missing = [c for c in KEYS + [median] if c not in df.columns]
    if missing:
        raise ValueError(f"{src}: not a Vidur {collective} profile (no columns {', '.join(missing)})")
    out = df.groupby(KEYS, as_index=False)[median].median().rename(columns={median: "median_ms"})
    out["median_ms"] = out["median_ms"].round(6)
    return out.sort_values(KEYS, ignore_index=True)


def readme(sources: list[tuple[str, str, int]], vidur_arg: str) -> str:
    lines = ["# Measured collectives (from Vidur)", "",
             "Medians of Vidur's NCCL collective measurements: `median_ms` (milliseconds) of one collective of "
             "`size` bytes over `num_workers` GPUs, `devices_per_node` of them in one node (`*_dgx`: NVSwitch "
             "nodes of 8). `drex/costmodel/collectives.py` prices tensor parallelism's all-reduces with "
             "`all_reduce.csv` (the rows with `devices_per_node == num_workers`, as Vidur does); `send_recv.csv` "
             "is shipped beside it for pipeline stages.", "",
             f"Made by `python benchmarks/network_import.py --vidur {vidur_arg} --out-root profiles/network` "
             "(a size measured twice keeps the median of its medians).", "",
             "## Attribution", "",
             f"Derived from Microsoft's Vidur simulator, github.com/microsoft/vidur, `data/profiling/network/` at "
             f"commit {SOURCE_COMMIT} (files last changed in bee57da, May 2024), MIT licence, Copyright (c) "
             "Microsoft Corporation: see `../LICENSE-vidur`, which must travel with these files.", "",
             "| file | source | sha256 of the source | rows |", "|---|---|---|---|"]
    lines += [f"| `{dst}` | `{src}` | `{sha}` | {n} |" for dst, src, n, sha in sources]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vidur", required=True, help="Vidur's network/ folder (network/<topology>/all_reduce.csv)")
    ap.add_argument("--out-root", required=True, help="topologies go to OUT_ROOT/<topology>/")
    ap.add_argument("--topologies", default=",".join(TOPOLOGIES), help="comma-separated (default %(default)s)")
    a = ap.parse_args()
    root, out_root = Path(a.vidur), Path(a.out_root)
    sources = []
    for topo in a.topologies.split(","):
        for coll in COLLECTIVES:
            src = root / topo / f"{coll}.csv"
            if not src.exists():
                continue
            df = compact(src, coll)
            (out_root / topo).mkdir(parents=True, exist_ok=True)
            df.to_csv(out_root / topo / src.name, index=False)
            sha = hashlib.sha256(src.read_bytes()).hexdigest()
            sources.append((f"{topo}/{src.name}", f"{a.vidur.rstrip('/')}/{topo}/{src.name}", len(df), sha))
            print(f"{topo}/{src.name}: {len(df)} rows", file=sys.stderr)
    if not sources:
        raise SystemExit(f"no network profiles under {root} for {a.topologies}")
    (out_root / "README.md").write_text(readme(sources, a.vidur.rstrip("/")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
