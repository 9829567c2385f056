"""The GPU evidence run in one command (issue 15): environment, kernel tests, profile + fit, decode
benchmark, real runs + validation, each stage under its own time budget, all results under $OUT.

    benchmarks/gpu/run.sh              # on one H100/H200: llama2-7b random bf16 weights, <= 9 min
    benchmarks/gpu/run.sh --dry-run    # the same stages on this CPU with the tiny model, < 3 min

Every stage is a subprocess (``python -m drex.cli ...`` from this source tree) with a timeout: a
stage that runs over is killed, reported as cut, and the rest go on; the whole run stops at its
total budget. $OUT (a temporary folder when unset) gets at most four files, no folders:
summary.md, summary.json, oneshot.log and results.tar.gz (the work folder: profile, fit, run
directories, decode results, test report). Nothing is written into the source tree except
Python's own caches.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402
import wheels  # noqa: E402

MAX_FILE = 15 * 2**20  # what comes back from the GPU machine: files of at most 16 MiB


@dataclass(frozen=True)
class Plan:
    """What each mode runs. Budgets are seconds per stage ("run"/"validate": per policy)."""

    mode: str
    model: str
    dtype: str
    device: str | None  # None: the GPU torch finds
    exits: str = "16"
    threshold: float = 0.5
    confidence: str = "beta:1,1"  # uniform confidences against 0.5: about half the tokens want to exit
    num_requests: int = 200
    prompt_cap: int = 1024
    output_cap: int = 128
    rate_scale: float = 4.0
    # KV capacity: the device's would be ~110 GB on an H200 for 200 requests; 6144 blocks of 16 tokens are
    # 51 GB at 7B shape (fits an H100 beside the weights) and hold the ~30 requests in flight at once.
    kv_blocks: int | None = 6144
    batches: str = "1,16,64"
    contexts: str = "1024"
    steps: int = 20
    policies: tuple[str, ...] = ("drex", "off", "lazy")  # drex first: the run that matters most if time runs out
    total_s: float = 540.0
    reserve_s: float = 20.0  # kept back for the report and the archive
    budgets: dict = field(default_factory=lambda: {"env": 25, "tests": 60, "profile": 130, "fit": 20, "decode": 80,
                                                   "run": 55, "validate": 10})


GPU = Plan("gpu", "llama2-7b", "bf16", None)
DRY = Plan("dry-run", "tiny", "fp32", "cpu", exits="2", num_requests=12, prompt_cap=256, output_cap=32,
           rate_scale=20.0, kv_blocks=None, batches="1,4", contexts="128", steps=3, total_s=170.0, reserve_s=10.0,
           budgets={"env": 30, "tests": 60, "profile": 90, "fit": 20, "decode": 60, "run": 30, "validate": 20})
STAGES = ("tests", "profile", "fit", "decode", "runs")


def scaled(plan: Plan, x: float) -> Plan:
    """The plan with every stage budget, the total and the reserve multiplied by ``x``."""
    return replace(plan, total_s=plan.total_s * x, reserve_s=plan.reserve_s * x,
                   budgets={k: v * x for k, v in plan.budgets.items()})


def log_line(msg: str, logf=None) -> None:
    line = f"[oneshot {datetime.now(timezone.utc):%H:%M:%S}] {msg}"
    print(line, file=sys.stderr, flush=True)
    if logf is not None:
        logf.write(line + "\n")
        logf.flush()


class Driver:
    def __init__(self, plan: Plan, out: Path, work: Path, python: str):
        self.plan, self.out, self.work, self.python = plan, out, work, python
        self.t0 = time.monotonic()
        self.started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        self.deadline = self.t0 + plan.total_s
        self.stages: list[dict] = []
        self.env_info: dict | None = None
        self.head: dict = {"mode": plan.mode, "started": self.started, "total_s": plan.total_s}
        self.logf = open(out / "oneshot.log", "w", encoding="utf-8", errors="replace")
        self.log_bytes = 0
        self.proc: subprocess.Popen | None = None
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1",
                        DREX_PROFILES=str(work / "profiles"))
        self.set_path([])

    def set_path(self, extra: list[str]) -> None:
        self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *extra, os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)

    def log(self, msg: str) -> None:
        log_line(msg, self.logf)

    # -- one subprocess under a timeout ------------------------------------------------------------

    def _tee(self, stream) -> None:
        for line in stream:
            sys.stderr.write(line)
            if self.log_bytes < MAX_FILE:  # the log must stay small enough to come back
                self.logf.write(line)
                self.log_bytes += len(line)
        self.logf.flush()

    def call(self, argv: list[str], timeout: float) -> int | None:
        """The command's exit code, or None when it ran past ``timeout`` and was killed (with its children)."""
        self.log(f"$ {' '.join(argv)}  (up to {timeout:.0f} s)")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace", start_new_session=True)
        reader = threading.Thread(target=self._tee, args=(self.proc.stdout,), daemon=True)
        reader.start()
        t0, rc = time.monotonic(), None
        while rc is None:
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                self.kill()
                break
            try:
                rc = self.proc.wait(min(left, 30.0))
            except subprocess.TimeoutExpired:
                self.log(f"... {time.monotonic() - t0:.0f} s of {timeout:.0f} s")
        reader.join(10)
        self.proc = None
        return rc

    def kill(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):  # SIGKILL also for what outlived a child that obeyed
            try:
                os.killpg(self.proc.pid, sig)  # our own child's session: it and whatever it started
                self.proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue

    # -- stages ------------------------------------------------------------------------------------

    def stage(self, name: str, budget: float, commands: list[list[str]], needs: str | None = None) -> bool:
        """Run a stage's commands within its budget and the run's deadline; record and report it."""
        rec = {"name": name, "budget_s": budget, "status": "skipped", "seconds": 0.0, "note": ""}
        self.stages.append(rec)
        left = self.deadline - self.plan.reserve_s - time.monotonic()
        if needs:
            rec["note"] = needs
        elif left < 3:
            rec["note"] = "no time left in the run's budget"
        else:
            timeout = min(budget, left)
            self.log(f"stage {name}: budget {budget:.0f} s" + (f" (cut to {timeout:.0f} s: the run's end)"
                                                              if timeout < budget else ""))
            t0 = time.monotonic()
            rec["status"] = "ok"
            for argv in commands:
                rc = self.call(argv, timeout - (time.monotonic() - t0))
                if rc is None:
                    rec["status"], rec["note"] = "cut", f"ran past {timeout:.0f} s and was stopped"
                    break
                if rc != 0:
                    rec["status"], rec["note"] = "failed", f"exit {rc}: see oneshot.log"
                    break
            rec["seconds"] = time.monotonic() - t0
        self.log(f"stage {name}: {rec['status']} {rec['note']}".rstrip())
        self.write_summary()
        return rec["status"] == "ok"

    def py(self, *args: str) -> list[str]:
        return [self.python, *args]

    def drex(self, *args: str) -> list[str]:
        return [self.python, "-m", "drex.cli", *args]

    def write_summary(self) -> None:
        self.head["elapsed_s"] = time.monotonic() - self.t0
        results = report.collect(self.work, self.plan.policies)
        (self.out / "summary.md").write_text(report.markdown(self.head, self.env_info, self.stages, results))
        data = {"head": self.head, "plan": {k: v for k, v in self.plan.__dict__.items()}, "env": self.env_info,
                "stages": self.stages, "results": results}
        (self.out / "summary.json").write_text(json.dumps(data, indent=2, default=str) + "\n")


def environment(d: Driver, plan: Plan) -> tuple[Plan, str | None]:
    """Wheels, then the environment stage. Returns the plan with its device and a fatal error, if any."""
    try:
        extra, note = wheels.prepare(d.work / "site", python=d.python)
        d.set_path(extra)
        d.log(f"packages: {note}")
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return plan, str(e)
    d.stage("env", plan.budgets["env"], [d.py(str(HERE / "envinfo.py"), "--json", str(d.work / "env.json"))])
    d.env_info = report.read_json(d.work / "env.json")
    info = d.env_info or {}
    if plan.mode == "dry-run":
        return plan, None
    if not info.get("cuda_available"):
        return plan, (f"torch cannot see CUDA (torch {info.get('torch')}, CUDA build {info.get('torch_cuda_build')}, "
                      f"{info.get('torch_error', 'no device')}): nothing to measure here; --dry-run rehearses on CPU")
    device = plan.device or info.get("device_key")
    if device is None:
        return plan, (f"drex has no device entry for GPU {info.get('gpu')!r}: pass --device h100|h200|a100 to "
                      "profile it under that name")
    return replace(plan, device=device), None


def write_trace(plan: Plan, path: Path, pythonpath: str) -> str:
    """The first N azure-conv requests with prompt and output lengths capped to fit the run's budget."""
    sys.path[:0] = [p for p in pythonpath.split(os.pathsep) if p]  # what the stages see: source tree, wheels
    from drex.workload import make_workload

    reqs = make_workload("azure-conv", num_requests=plan.num_requests)
    lines = ["arrival_s,prompt_tokens,output_tokens"]
    lines += [f"{r.arrival_s:.6f},{min(r.prompt_tokens, plan.prompt_cap)},{min(r.output_tokens, plan.output_cap)}"
              for r in reqs]
    path.write_text("\n".join(lines) + "\n")
    return (f"{len(reqs)} azure-conv requests, prompts capped at {plan.prompt_cap} and outputs at {plan.output_cap} "
            f"tokens, arrivals {plan.rate_scale:g}x compressed; {plan.model} random {plan.dtype} weights, exit at "
            f"layer {plan.exits}, confidence {plan.confidence} against threshold {plan.threshold}")


def run_stages(d: Driver, plan: Plan, only: set[str]) -> None:
    w, b, dev = d.work, plan.budgets, plan.device
    prof = w / "profiles" / dev / plan.model  # where $DREX_PROFILES makes drex run and validate look
    if "tests" in only:
        (w / "tests").mkdir(exist_ok=True)
        d.stage("tests", b["tests"], [d.py("-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
                                           "tests/real/test_kernels.py", "tests/real/test_kernels_gpu.py",
                                           f"--junitxml={w / 'tests' / 'junit.xml'}")])
    if "profile" in only:
        d.stage("profile", b["profile"], [d.drex("profile", "--gpu", dev, "--model", plan.model, "--dtype",
                                                 plan.dtype, "--quick", "--out", str(prof), "--no-progress")])
    if "fit" in only:
        missing = None if (prof / "measurements.csv").exists() else "needs a complete profile"
        d.stage("fit", b["fit"], [d.drex("costmodel", "fit", str(prof))], needs=missing)
    if "decode" in only:
        d.stage("decode", b["decode"], [d.py("benchmarks/real_decode.py", "--model", plan.model, "--device", dev,
                                             "--dtype", plan.dtype, "--batches", plan.batches, "--contexts",
                                             plan.contexts, "--steps", str(plan.steps),
                                             "--out", str(w / "real_decode.json"))])
    if "runs" in only:
        try:
            d.head["runs_note"] = write_trace(plan, w / "trace.csv", d.env["PYTHONPATH"])
        except Exception as e:  # a broken trace is this stage's failure, not the run's
            d.head["runs_note"] = f"could not write the trace: {type(e).__name__}: {e}"
            return
        for policy in plan.policies:
            run_dir = w / "runs" / policy
            kv = ["--num-kv-blocks", str(plan.kv_blocks)] if plan.kv_blocks else []
            ok = d.stage(f"run {policy}", b["run"], [d.drex(
                "run", "--model", plan.model, "--device", dev, "--dtype", plan.dtype, "--weights", "random",
                "--trace", str(w / "trace.csv"), "--policy", policy, "--exits", plan.exits, "--threshold",
                str(plan.threshold), "--confidence", plan.confidence, "--rate-scale", str(plan.rate_scale),
                *kv, "--out", str(run_dir), "--no-progress")])
            d.stage(f"validate {policy}", b["validate"], [d.drex("validate", str(run_dir))],
                    needs=None if ok else "needs its run")


def bundle(d: Driver) -> str:
    """The work folder as one archive under $OUT; the biggest files are left out until it fits."""
    files = sorted((p for p in d.work.rglob("*") if p.is_file() and "site" not in p.relative_to(d.work).parts),
                   key=lambda p: p.stat().st_size)
    left_out: list[str] = []
    target = d.out / "results.tar.gz"
    while True:
        with tarfile.open(target, "w:gz") as tar:
            for p in files:
                tar.add(p, arcname=str(Path("results") / p.relative_to(d.work)))
        if target.stat().st_size <= MAX_FILE or not files:
            break
        biggest = files.pop()
        left_out.append(f"{biggest.relative_to(d.work)} ({biggest.stat().st_size / 2**20:.1f} MiB)")
    note = f"results.tar.gz ({target.stat().st_size / 2**20:.2f} MiB, {len(files)} files)"
    return note + (f"; left out to fit: {', '.join(left_out)}" if left_out else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="the same stages on CPU with the tiny model (< 3 min)")
    p.add_argument("--out", default=None, help="result folder (default $OUT, else a new temporary folder)")
    p.add_argument("--device", default=None, help="drex device name (default: the GPU found; cpu in a dry run)")
    p.add_argument("--total-s", type=float, default=None, help="the whole run's budget in seconds")
    p.add_argument("--budget-scale", type=float, default=None,
                   help="multiply every stage's budget and the run's total by X (a loaded machine, or the test "
                        "suite's rehearsal: what it checks is the stages, not their speed)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"a subset of {','.join(STAGES)} (env always runs)")
    p.add_argument("--num-requests", type=int, default=None)
    p.add_argument("--rate-scale", type=float, default=None)
    p.add_argument("--keep-work", action="store_true", help="keep the work folder (its path is printed)")
    args = p.parse_args(argv)
    plan = DRY if args.dry_run else GPU
    only = {s.strip() for s in args.stages.split(",") if s.strip()}
    if only - set(STAGES):
        p.error(f"unknown stage(s) {', '.join(sorted(only - set(STAGES)))}; known: {', '.join(STAGES)}")
    for name, value in (("device", args.device), ("total_s", args.total_s), ("num_requests", args.num_requests),
                        ("rate_scale", args.rate_scale)):
        if value is not None:
            if not isinstance(value, str) and value <= 0:
                p.error(f"--{name.replace('_', '-')} must be > 0, got {value}")
            plan = replace(plan, **{name: value})
    if args.budget_scale is not None:
        if not args.budget_scale > 0:
            p.error(f"--budget-scale must be > 0, got {args.budget_scale}")
        plan = scaled(plan, args.budget_scale)
    out = Path(args.out or os.environ.get("OUT") or tempfile.mkdtemp(prefix="drex-gpu-out-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="drex-gpu-work-"))
    d = Driver(plan, out, work, sys.executable)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed from outside: still report and bundle
    code = 1
    try:
        d.log(f"{plan.mode}: results in {out}, work in {work}, budget {plan.total_s:.0f} s")
        plan, fatal = environment(d, plan)
        d.plan = plan
        if fatal:
            d.head["note"] = f"STOPPED: {fatal}"
            d.log(f"error: {fatal}")
            code = 3
        else:
            run_stages(d, plan, only)
            code = 0 if all(s["status"] == "ok" for s in d.stages) else 1
    finally:
        d.kill()
        d.head["exit"] = code
        d.head["bundle"] = bundle(d)
        d.write_summary()
        d.log(f"done in {time.monotonic() - d.t0:.0f} s, exit {code}: {out}/summary.md")
        d.logf.close()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    print((out / "summary.md").read_text())
    return code


if __name__ == "__main__":
    sys.exit(main())
