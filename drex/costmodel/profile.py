"""A measured profile on disk: its grid, its CSV of measurements and its meta.json.

``profiles/<device>/<model>/`` holds::

    meta.json          schema version, device, software versions, dtype, model shape, grid, dates
    measurements.csv   one row per grid point: the work it describes and the median/spread of its time
    samples.csv        every timed sample, per (round, point): what measurements.csv is computed from
    fit.json           fitted parameters (written by ``drex costmodel fit``)
    fit_report.txt     the held-out error table of that fit

This module knows the format only (no torch): the profiler writes through
``SampleWriter`` and everything else reads through ``read_profile``, which
refuses a truncated or corrupt profile, or one of another schema version,
with an error naming the file and the field.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from drex.jsonfile import read_json_object
from drex.models import ModelShape
from drex.outputs import recorded_path

SCHEMA_VERSION = 1
META = "meta.json"
MEASUREMENTS = "measurements.csv"
FIT = "fit.json"
FIT_REPORT = "fit_report.txt"

# Operations a profile measures. Decode/prefill ops describe one decoder layer.
OPS = ("layer_decode", "attn_decode", "layer_prefill", "attn_prefill", "mlp", "head", "buffer", "kv_copy", "step",
       "exit_eval", "regroup")
# Ops only imported profiles hold (vidur.py): "linear", the layer less attention (num_rows = tokens).
IMPORTED_OPS = ("linear",)
ALL_OPS = OPS + IMPORTED_OPS
SPLITS = ("fit", "held")  # held points are never used by the fit: they measure its error


@dataclass(frozen=True)
class Point:
    """One grid point. ``num_rows``: decode batch, head/buffer/step/exit-evaluation rows, rows going on past a
    regroup, KV-copy rows, or MLP tokens;
    ``context``: cached tokens per decode row, or prior context of a prefill chunk."""

    op: str
    split: str
    num_rows: int = 0
    context: int = 0
    chunk: int = 0
    num_layers: int = 0

    @property
    def key(self) -> tuple:
        return (self.op, self.num_rows, self.context, self.chunk, self.num_layers)

    # The work the point describes, in the cost model's terms (see costmodel.base).
    @property
    def num_tokens(self) -> int:
        return self.chunk if self.op.endswith("_prefill") else self.num_rows

    @property
    def decode_context(self) -> int:
        return self.num_rows * self.context if self.op.endswith("_decode") else 0

    @property
    def prefill_attn(self) -> float:
        return self.chunk * (self.context + self.chunk / 2) if self.op.endswith("_prefill") else 0.0


@dataclass(frozen=True)
class Timing:
    """Median and p10/p90 of the samples (CUDA events on GPU; the thread's CPU time on CPU), and the
    median wall time beside them (on a shared CPU the two part when other processes take the core)."""

    reps: int
    median_s: float
    p10_s: float
    p90_s: float
    wall_median_s: float = 0.0


POINT_COLS = [f.name for f in fields(Point)]
DERIVED_COLS = ["num_tokens", "decode_context", "prefill_attn"]
TIMING_COLS = [f.name for f in fields(Timing)]
COLUMNS = POINT_COLS + DERIVED_COLS + TIMING_COLS


# -- grids -------------------------------------------------------------------------------------


def _cap(values, limit):
    return [v for v in values if v <= limit]


def build_grid(shape: ModelShape, quick: bool = False) -> list[Point]:
    """The ordered grid for a model shape: ``fit`` points on powers of two, ``held`` points between them.

    Contexts stop at the model's max_position (a 4k-context model is never asked about 8k).
    """
    max_ctx = shape.max_position
    if quick:
        batches, contexts = [1, 2, 4, 8, 16, 32, 64, 128, 256], [128, 256, 512, 1024, 2048]
        held_decode = [(3, 384), (6, 192), (12, 1536), (48, 768), (96, 1536), (192, 384)]
        chunks, priors = [16, 32, 64, 128, 256, 512, 1024], [0, 512, 1024]
        held_prefill = [(48, 256), (96, 0), (192, 512), (384, 768), (768, 256)]
        max_decode_work = 256 * 1024  # the biggest decode points cost a second each on a CPU: CI stops here
        mlp_tokens, held_mlp = [1, 4, 16, 64, 256, 1024], [8, 128, 512]
        rows, held_rows = [1, 4, 16, 64, 256], [8, 128]
        kv_rows, kv_layers = [1, 16, 256], [1, 3]
        held_kv = [(4, 2), (64, 2)]
    else:
        batches, contexts = [1, 2, 4, 8, 16, 32, 64, 128, 256], [128, 256, 512, 1024, 2048, 4096, 8192]
        held_decode = [(3, 384), (6, 3072), (12, 1536), (24, 768), (48, 6144), (96, 1536), (192, 3072), (160, 384)]
        chunks, priors = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096], [0, 512, 2048, 4096]
        held_prefill = [(48, 256), (96, 1024), (384, 0), (768, 1536), (1536, 512), (3072, 768)]
        mlp_tokens = sorted(set(batches) | set(chunks))
        held_mlp = [3, 12, 48, 96, 192, 384, 1536, 3072]
        rows, held_rows = [1, 2, 4, 8, 16, 32, 64, 128, 256], [3, 12, 48, 96, 192]
        kv_rows, kv_layers = [1, 4, 16, 64, 256], [1, 4, 16, 64]
        held_kv = [(8, 2), (32, 8), (128, 32), (2, 48)]
        max_decode_work = 256 * 8192
    skipped_max = max(shape.num_layers - 1, 1)
    kv_layers = sorted({min(n, skipped_max) for n in kv_layers})
    held_kv = [(r, n) for r, n in held_kv if n <= skipped_max and n not in kv_layers] or [(held_kv[0][0], kv_layers[-1])]

    pts: list[Point] = []
    for op in ("layer_decode", "attn_decode"):
        pts += [Point(op, "fit", b, c) for b in batches for c in _cap(contexts, max_ctx) if b * c <= max_decode_work]
        pts += [Point(op, "held", b, c) for b, c in held_decode if c <= max_ctx and b * c <= max_decode_work]
    for op in ("layer_prefill", "attn_prefill"):
        pts += [Point(op, "fit", 1, p, n) for n in chunks for p in priors if n + p <= max_ctx]
        pts += [Point(op, "held", 1, p, n) for n, p in held_prefill if n + p <= max_ctx]
    pts += [Point("mlp", "fit", t) for t in mlp_tokens] + [Point("mlp", "held", t) for t in held_mlp]
    for op in ("head", "buffer", "step", "exit_eval", "regroup"):
        pts += [Point(op, "fit", r) for r in rows] + [Point(op, "held", r) for r in held_rows]
    pts += [Point("kv_copy", "fit", r, num_layers=n) for r in kv_rows for n in kv_layers]
    pts += [Point("kv_copy", "held", r, num_layers=n) for r, n in held_kv]
    keys = [p.key for p in pts]
    assert len(keys) == len(set(keys)), "grid has duplicate points"
    return pts


def grid_summary(points: list[Point]) -> dict:
    """The grid as stored in meta.json: every point's key, so a resumed run can check it is the same grid."""
    return {"num_points": len(points), "points": [[p.op, p.split, p.num_rows, p.context, p.chunk, p.num_layers]
                                                   for p in points]}


# -- reading -----------------------------------------------------------------------------------


@dataclass
class Profile:
    path: Path
    meta: dict
    rows: list[dict]  # parsed measurement rows, in file order

    @property
    def complete(self) -> bool:
        return self.meta.get("status") == "complete"


def read_meta(path: Path) -> dict:
    meta_path = Path(path) / META
    meta = read_json_object(meta_path, "no meta.json (not a profile directory)")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"{meta_path}: field schema_version is {version!r}; this drex reads schema {SCHEMA_VERSION} "
                         "(re-run drex profile)")
    for key in ("device", "dtype", "model", "grid"):
        if key not in meta:
            raise ValueError(f"{meta_path}: missing field {key!r}")
    return meta


def parse_row(raw: dict, where: str) -> dict:
    """One CSV row -> typed dict; ValueError naming the file, line and column when it is damaged."""
    if any(raw.get(c) in (None, "") for c in COLUMNS):
        missing = [c for c in COLUMNS if raw.get(c) in (None, "")]
        raise ValueError(f"{where}: truncated row (no {', '.join(missing)})")
    row: dict = {}
    for col in COLUMNS:
        val = raw[col]
        try:
            if col in ("op", "split"):
                row[col] = val
            elif col in ("median_s", "p10_s", "p90_s", "wall_median_s", "prefill_attn"):
                row[col] = float(val)
            else:
                row[col] = int(val)
        except ValueError:
            raise ValueError(f"{where}: column {col} has {val!r}") from None
    if row["op"] not in ALL_OPS:
        raise ValueError(f"{where}: unknown op {row['op']!r}")
    if row["split"] not in SPLITS:
        raise ValueError(f"{where}: unknown split {row['split']!r}")
    if not (math.isfinite(row["median_s"]) and row["median_s"] > 0):
        raise ValueError(f"{where}: median_s must be a positive time, got {row['median_s']}")
    return row


def read_rows(csv_path: Path) -> list[dict]:
    """Parse measurements.csv; ValueError naming the line when it is damaged."""
    lines = csv_path.read_text().splitlines(keepends=True)
    if not lines:
        raise ValueError(f"{csv_path}: empty (no header)")
    reader = csv.DictReader(lines)
    if reader.fieldnames != COLUMNS:
        raise ValueError(f"{csv_path}: header {reader.fieldnames} is not the schema-{SCHEMA_VERSION} header {COLUMNS}")
    return [parse_row(raw, f"{csv_path} line {i + 2}") for i, raw in enumerate(reader)]


def read_profile(path: str | Path, require_complete: bool = True) -> Profile:
    path = Path(path)
    meta = read_meta(path)
    csv_path = path / MEASUREMENTS
    if not csv_path.exists():
        raise ValueError(f"{csv_path}: missing (the profile has no measurements)")
    rows = read_rows(csv_path)
    prof = Profile(path, meta, rows)
    expected = meta["grid"].get("num_points")
    if require_complete:
        if not prof.complete:
            raise ValueError(f"{path / META}: field status is {meta.get('status')!r}: the profile run did not finish "
                             "(re-run the same drex profile command to resume it)")
        if expected is not None and len(rows) != expected:
            raise ValueError(f"{csv_path}: {len(rows)} rows but meta.json's grid has {expected} points (truncated?)")
    keys = [(r["op"], r["num_rows"], r["context"], r["chunk"], r["num_layers"]) for r in rows]
    if len(keys) != len(set(keys)):
        raise ValueError(f"{csv_path}: duplicate grid points")
    return prof


def check_shape(meta: dict, shape: ModelShape, meta_path: Path) -> None:
    """The per-layer fields must match: a profile of another width is another model."""
    model = meta.get("model") or {}
    for key in ("hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "vocab_size", "qkv_bias"):
        have, want = model.get(key), getattr(shape, key)
        if have != want:
            raise ValueError(f"{meta_path}: model field {key} is {have!r} but model {shape.name!r} has {want!r} "
                             "(profile of a different model shape)")


def shape_dict(shape: ModelShape) -> dict:
    d = asdict(shape)
    d["trained_exits"] = list(d["trained_exits"])
    if d["path"] is not None:
        d["path"] = recorded_path(d["path"])
    return d


# -- writing -----------------------------------------------------------------------------------
#
# A run visits every point ``rounds`` times, each round in its own shuffled order, so that a burst of
# load from another process on a shared machine lands on a third of one point's samples instead of on
# every sample of a run of neighbouring points. Each (round, point) unit is appended to samples.csv
# and flushed; a rerun skips the units already there. measurements.csv is computed from samples.csv
# at the end, in grid order: an interrupted and resumed run ends with the same file.

SAMPLES = "samples.csv"
SAMPLE_COLS = ["round", "op", "num_rows", "context", "chunk", "num_layers", "samples_s", "wall_s"]


def unit_order(points: list[Point], rounds: int, seed: int = 0) -> list[tuple[int, Point]]:
    """The (round, point) units in measuring order: a fixed shuffle per round (string seeds are stable)."""
    units = []
    for r in range(rounds):
        order = list(points)
        random.Random(f"drex-profile:{seed}:{r}").shuffle(order)
        units += [(r, p) for p in order]
    return units


def _unit_key(r: int, p: Point) -> tuple:
    return (r, *p.key)


class SampleWriter:
    """Appends one measured unit at a time (flushed), so an interrupted run loses at most one unit."""

    def __init__(self, path: Path, units: list[tuple[int, Point]], done: dict[tuple, tuple]):
        self.csv_path = Path(path) / SAMPLES
        self.units = units
        self.done = dict(done)
        # Rewrite what survives (minus a half-written tail) in unit order, then append in unit order.
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(SAMPLE_COLS)
            for r, p in units:
                if _unit_key(r, p) in self.done:
                    w.writerow(_sample_row(r, p, *self.done[_unit_key(r, p)]))
        tmp.replace(self.csv_path)
        self._fh = self.csv_path.open("a", newline="")
        self._writer = csv.writer(self._fh, lineterminator="\n")

    def write(self, r: int, p: Point, samples: list[float], walls: list[float]) -> None:
        self._writer.writerow(_sample_row(r, p, samples, walls))
        self._fh.flush()
        self.done[_unit_key(r, p)] = (list(samples), list(walls))

    def close(self) -> None:
        self._fh.close()


def _sample_row(r: int, p: Point, samples, walls) -> list:
    return [r, p.op, p.num_rows, p.context, p.chunk, p.num_layers,
            " ".join(f"{x:.6e}" for x in samples), " ".join(f"{x:.6e}" for x in walls)]


def load_samples(path: Path, units: list[tuple[int, Point]]) -> dict[tuple, tuple]:
    """Units already measured (a resumed run skips them); drops a half-written last line."""
    csv_path = Path(path) / SAMPLES
    if not csv_path.exists():
        return {}
    lines = csv_path.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    if not lines:
        return {}
    rows = list(csv.reader(lines))
    if rows[0] != SAMPLE_COLS:
        raise ValueError(f"{csv_path}: header {rows[0]} is not the schema-{SCHEMA_VERSION} header {SAMPLE_COLS}")
    wanted = {_unit_key(r, p) for r, p in units}
    done = {}
    for i, row in enumerate(rows[1:], start=2):
        try:
            key = (int(row[0]), row[1], *(int(v) for v in row[2:6]))
            samples = [float(x) for x in row[6].split()]
            walls = [float(x) for x in row[7].split()]
        except (ValueError, IndexError):
            raise ValueError(f"{csv_path} line {i}: damaged row {row!r} (--restart discards the run)") from None
        if not samples or len(samples) != len(walls):
            raise ValueError(f"{csv_path} line {i}: samples and wall times differ in number")
        if key in wanted:
            done[key] = (samples, walls)
    return done


def write_measurements(path: Path, points: list[Point], timings: dict[tuple, Timing]) -> None:
    """measurements.csv in grid order, written whole (atomically)."""
    csv_path = Path(path) / MEASUREMENTS
    tmp = csv_path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for p in points:
            row = {**asdict(p), "num_tokens": p.num_tokens, "decode_context": p.decode_context,
                   "prefill_attn": p.prefill_attn, **asdict(timings[p.key])}
            w.writerow({k: (f"{row[k]:.1f}" if k == "prefill_attn" else
                            f"{row[k]:.6e}" if isinstance(row[k], float) else row[k]) for k in COLUMNS})
    tmp.replace(csv_path)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_json(path: Path, obj: dict) -> None:
    tmp = Path(path).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
