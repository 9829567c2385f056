"""``drex profile``: measure one decoder layer, the exit head and the rebatching work on a device.

The driver visits the grid of ``profile.build_grid`` in a few rounds, each in a
fixed shuffled order, measures each point (warm-up, then repetitions until a
time budget) and appends the samples of each (round, point) to samples.csv at
once; at the end measurements.csv gets each point's median and p10/p90 over
all its samples. A rerun of the same command skips the units already measured,
so an interrupted profile resumes where it stopped and ends with the same rows
in the same order as an uninterrupted one. What is timed lives in
``bench.py`` (torch); this module is the loop, the device check and meta.json.
"""

from __future__ import annotations

import platform
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from drex import __version__
from drex.costmodel import profile as pf
from drex.devices import DEVICES
from drex.dtypes import check_dtype, default_dtype
from drex.models import ModelShape
from drex.progress import Progress


@dataclass(frozen=True)
class Budget:
    """How long to measure each point, per round: enough samples for a stable median on a noisy machine."""

    rounds: int = 3
    warmup: int = 1
    min_reps: int = 3
    max_reps: int = 30
    min_time_s: float = 0.04

    @classmethod
    def for_run(cls, quick: bool, cuda: bool) -> Budget:
        if cuda:
            return cls(rounds=2, warmup=3, min_reps=10, max_reps=100, min_time_s=0.05 if quick else 0.1)
        # Wall time is noisy on a shared machine: several samples per round, five rounds apart in time, so the
        # median has ten (quick) or fifteen samples even of the slowest point.
        return cls(rounds=5, warmup=1, min_reps=2 if quick else 3, max_reps=30, min_time_s=0.025 if quick else 0.05)


# -- the device ----------------------------------------------------------------------------------


def found_device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu, no CUDA device"


def check_device(requested: str, force: bool = False) -> str:
    """The torch device to profile on ("cuda" or "cpu"); ValueError when it is not the one asked for."""
    import torch

    requested = requested.lower()
    if requested not in DEVICES:
        raise ValueError(f"unknown device {requested!r}; known: {', '.join(DEVICES)}")
    if requested == "cpu":
        return "cpu"
    found = found_device()
    if torch.cuda.is_available() and requested in found.lower().replace(" ", "").replace("-", ""):
        return "cuda"
    if not force:
        raise ValueError(f"--gpu {requested} asked for, but the device found is {found!r} "
                         "(--force profiles it anyway, under the requested name)")
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def software_versions() -> dict:
    import numpy
    import torch

    v = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
         "cuda": torch.version.cuda, "triton": None, "driver": None, "platform": platform.platform(),
         "cpu": cpu_model(), "torch_threads": torch.get_num_threads()}
    try:
        import triton

        v["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available() and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            v["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            pass
    return v


# -- timing --------------------------------------------------------------------------------------


def time_calls(fn: Callable[[], object], budget: Budget, cuda: bool, inner: int = 1) -> tuple[list, list]:
    """Samples of fn's time, and the wall times beside them: each sample times ``inner`` back-to-back
    calls and divides.

    GPU: CUDA events (fn's launches are asynchronous). CPU: wall-clock time (perf_counter), as a real run
    times its steps: a profile in thread CPU time leaves out what a step waits for (memory, the scheduler
    of a shared core) and the real run's measured throughput falls short of the simulated one. A loaded
    machine then makes some samples slow; the profile's statistic is the median over several rounds, each
    visiting the points in a shuffled order, so load that comes and goes widens p10-p90 instead of moving
    the median (meta.json's ``clock`` and ``statistic`` say so). A ``time_scale`` attribute on fn scales both;
    a ``self_timed`` one says fn returns its own time.
    """
    scale = getattr(fn, "time_scale", 1.0) / inner
    if getattr(fn, "self_timed", False):  # fn measures itself (the real executor's own step clock)
        def one() -> tuple[float, float]:
            t = float(fn()) * scale * inner
            return t, t
    elif cuda:
        import torch

        def one() -> tuple[float, float]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            w0 = time.perf_counter()
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 * scale, (time.perf_counter() - w0) * scale
    else:
        def one() -> tuple[float, float]:
            w0 = time.perf_counter()
            for _ in range(inner):
                fn()
            w = (time.perf_counter() - w0) * scale
            return w, w

    for _ in range(budget.warmup):
        one()
    samples: list[float] = []
    walls: list[float] = []
    total = 0.0
    while len(samples) < budget.min_reps or (total < budget.min_time_s and len(samples) < budget.max_reps):
        t, w = one()
        samples.append(t)
        walls.append(w)
        total += w
    return samples, walls


def summarize(samples: list[float], walls: list[float] | None = None) -> pf.Timing:
    s = sorted(samples)
    q = statistics.quantiles(s, n=10, method="inclusive") if len(s) > 1 else [s[0]] * 9
    wall = statistics.median(walls) if walls else statistics.median(s)
    return pf.Timing(reps=len(s), median_s=statistics.median(s), p10_s=q[0], p90_s=q[-1], wall_median_s=wall)


# -- the resumable loop --------------------------------------------------------------------------


def run_grid(out: Path, meta: dict, points: list[pf.Point], measure: Callable[[pf.Point], tuple[list, list]],
             rounds: int = 1, progress: bool = True, restart: bool = False) -> Path:
    """Measure every (round, point) unit not yet in ``out/samples.csv``, then write measurements.csv.

    ``measure(point)`` returns (samples, wall times). meta.json is written first (status "running") and
    marked "complete" at the end. An existing profile of other settings (device, dtype, model, grid,
    rounds) is refused rather than mixed in. Returns ``out``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / pf.META
    meta = {**meta, "rounds": rounds}
    if restart:
        for name in (pf.META, pf.MEASUREMENTS, pf.SAMPLES, pf.FIT, pf.FIT_REPORT):
            (out / name).unlink(missing_ok=True)
    units = pf.unit_order(points, rounds)
    done: dict = {}
    if meta_path.exists():
        old = pf.read_meta(out)
        for key in ("device", "dtype", "model", "grid", "rounds", "clock"):  # thread-CPU and wall samples never mix
            if _comparable(old.get(key), key) != _comparable(meta.get(key), key):
                raise ValueError(f"{meta_path}: field {key} differs from this run's; the directory holds another "
                                 "profile (--restart discards it, --out writes elsewhere)")
        done = pf.load_samples(out, units)
        if len(done) == len(units) and old.get("status") == "complete":
            return out  # nothing to measure: rewrite nothing either (the files, and a fit of them, stay as they are)
        meta = {**meta, "date_started": old.get("date_started", meta.get("date_started"))}
    elif (out / pf.SAMPLES).exists() or (out / pf.MEASUREMENTS).exists():
        raise ValueError(f"{out} holds measurements without meta.json (--restart discards them)")
    if len(done) < len(units):  # new measurements to come: a fit of the old ones would not match
        for name in (pf.FIT, pf.FIT_REPORT):
            (out / name).unlink(missing_ok=True)
    meta = {**meta, "status": "running"}
    pf.write_json(meta_path, meta)

    todo = [(r, p) for r, p in units if (r, *p.key) not in done]
    writer = pf.SampleWriter(out, units, done)
    try:
        with Progress("measuring", len(units), "pt", enabled=progress, initial=len(units) - len(todo)) as bar:
            for r, p in todo:
                bar.note(f"{p.op} rows={p.num_rows} ctx={p.context} chunk={p.chunk}")
                writer.write(r, p, *measure(p))
                bar.update(1)
    finally:
        writer.close()
    timings = {}
    for p in points:
        per_round = [writer.done[(r, *p.key)] for r in range(rounds)]
        timings[p.key] = summarize([x for s, _ in per_round for x in s], [x for _, w in per_round for x in w])
    pf.write_measurements(out, points, timings)
    meta.update(status="complete", date_finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    pf.write_json(meta_path, meta)
    return out


def _comparable(value, key):
    if key == "device" and isinstance(value, dict):  # versions may change between a run and its resume
        return {k: value.get(k) for k in ("requested", "name")}
    return value


def make_meta(requested: str, device_name: str, dtype: str, shape: ModelShape, points: list[pf.Point],
              budget: Budget, quick: bool, layers_built: int) -> dict:
    return {
        "schema_version": pf.SCHEMA_VERSION,
        "drex_version": __version__,
        "device": {"requested": requested, "name": device_name},
        "versions": software_versions(),
        "dtype": dtype,
        "model": pf.shape_dict(shape),
        "grid": {"quick": quick, **pf.grid_summary(points)},
        "budget": {"rounds": budget.rounds, "warmup": budget.warmup, "min_reps": budget.min_reps, "max_reps": budget.max_reps,
                   "min_time_s": budget.min_time_s},
        "clock": "wall_perf_counter" if device_name.startswith("cpu") else "cuda_events",
        "statistic": ("median over all rounds' samples (rounds visit the points in shuffled orders, so load on "
                      "the machine shows as a wide p10-p90, not as a shifted median); measured in wall time, as "
                      "drex run times its steps"),
        "layers_built": layers_built,
        "date_started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def profile(gpu: str, model: str, dtype: str | None = None, quick: bool = False, out: str | Path | None = None,
            force: bool = False, restart: bool = False, progress: bool = True) -> Path:
    """``drex profile``: the whole command. Returns the profile directory."""
    import torch

    from drex.real.bench import Bench, inner_repeats
    from drex.costmodel.load import profile_dir
    from drex.models import get_model

    shape = get_model(model)
    device = check_device(gpu, force)
    if dtype is None:
        dtype = default_dtype(device)
    check_dtype(dtype)
    if device == "cpu":
        torch.set_num_threads(1)  # two threads make small matmuls slower on 2-core VMs; profile what runs
    out = Path(out) if out is not None else profile_dir(gpu, shape.name)
    points = pf.build_grid(shape, quick)
    budget = Budget.for_run(quick, device == "cuda")
    device_name = "cpu" if device == "cpu" else found_device()
    if device == "cpu":
        device_name = f"cpu ({cpu_model()}, {torch.get_num_threads()} thread)"
    cuda = device == "cuda"
    with torch.inference_mode():  # as the real backend runs: no autograd bookkeeping in the timings
        bench = Bench(shape, dtype, device, points)
        meta = make_meta(gpu, device_name, dtype, shape, points, budget, quick, bench.layers_built)
        return run_grid(out, meta, points, lambda p: time_calls(bench.fn(p), budget, cuda, inner_repeats(p, cuda)),
                        budget.rounds, progress, restart)
