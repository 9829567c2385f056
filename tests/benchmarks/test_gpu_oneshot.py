"""benchmarks/gpu: the one-shot GPU run, rehearsed on CPU (``run.sh --dry-run``) so it cannot rot while no
GPU is at hand; its budget cut, its stop without CUDA, its wheel handling and its report on partial results."""

import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from drex import REPO_ROOT

GPU_DIR = REPO_ROOT / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU_DIR))
import envinfo  # noqa: E402
import oneshot  # noqa: E402
import report  # noqa: E402
import wheels  # noqa: E402


def _tree_state() -> str:
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO_ROOT,
                         capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else "(no git)"


@pytest.mark.slow
def test_dry_run_runs_every_stage_and_returns_a_small_flat_out(tmp_path):
    out = tmp_path / "OUT"
    before = _tree_state()
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    # The stage budgets are the benchmark's own check of its speed (run.sh --dry-run cuts a stage that runs
    # over); here they are stretched tenfold, so a loaded machine cannot cut a stage: this test checks what the
    # stages do. The timeout only stops a hang.
    proc = subprocess.run([str(GPU_DIR / "run.sh"), "--dry-run", "--budget-scale", "10", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _tree_state() == before  # nothing written into the source tree
    # What comes back from the GPU machine: at most 8 plain files, no folders, each under 16 MiB.
    files = sorted(p.name for p in out.iterdir())
    assert files == ["oneshot.log", "results.tar.gz", "summary.json", "summary.md"]
    assert all((out / f).stat().st_size < 16 * 2**20 for f in files)
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["ok"] * 11, summary["stages"]
    assert summary["head"]["total_s"] == 10 * oneshot.DRY.total_s and "elapsed_s" in summary["head"]
    assert [s["budget_s"] for s in summary["stages"][:3]] == [10 * oneshot.DRY.budgets[k] for k in ("env", "tests",
                                                                                                   "profile")]
    res = summary["results"]
    assert res["tests"]["passed"] > 0 and res["tests"]["failures"] == res["tests"]["errors"] == 0
    assert res["profile"]["status"] == "complete" and "held MAPE" in res["profile"]["fit_report"]
    assert [d["batch"] for d in res["decode"]["decode"]] == [1, 4]
    for policy in ("drex", "off", "lazy"):
        run = res["runs"][policy]
        assert run["summary"]["completed"] == 12 and run["summary"]["cost_model"].startswith("profile:")
        assert run["summary"]["confidence_source"] == "beta:1,1" and run["validate"]["num_steps"] > 0
    assert res["runs"]["drex"]["summary"]["early_exit_fraction"] > 0.1
    assert res["runs"]["off"]["summary"]["early_exit_fraction"] == 0
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"results/profiles/cpu/tiny/fit.json", "results/runs/drex/validate.json", "results/real_decode.json",
            "results/tests/junit.xml", "results/trace.csv", "results/env.json"} <= names
    md = (out / "summary.md").read_text()
    assert "| run drex | ok |" in md and "decisions agreeing" in md and "drex / HF" in md
    assert "## Real runs and validation" in proc.stdout  # the summary is printed last, for the output tail


def _driver(tmp_path, **plan) -> oneshot.Driver:
    (tmp_path / "out").mkdir()
    (tmp_path / "work").mkdir()
    return oneshot.Driver(oneshot.Plan("test", "tiny", "fp32", "cpu", **plan), tmp_path / "out", tmp_path / "work",
                          sys.executable)


@pytest.mark.slow
def test_a_stage_over_its_budget_is_cut_and_the_rest_go_on(tmp_path):
    d = _driver(tmp_path)
    marker = tmp_path / "grandchild-finished"
    grandchild = tmp_path / "grandchild.py"
    grandchild.write_text(f"import time\ntime.sleep(4)\nopen({str(marker)!r}, 'w').close()\n")
    # A child that starts a grandchild: the cut must stop both (the whole process group).
    pidfile = tmp_path / "child.pid"
    sleepy = (f"import os, subprocess, sys, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); "
              f"subprocess.Popen([sys.executable, {str(grandchild)!r}]); time.sleep(60)")
    assert not d.stage("slow", 1.5, [d.py("-c", sleepy)])  # cut: the child's 60 s sleep was not waited out
    with pytest.raises(ProcessLookupError):  # and the child is gone (killed and reaped), not left running
        os.kill(int(pidfile.read_text()), 0)
    assert d.stage("next", 10, [d.py("-c", "print('still here')")])
    time.sleep(5)
    assert not marker.exists()
    assert [(s["name"], s["status"]) for s in d.stages] == [("slow", "cut"), ("next", "ok")]
    assert "ran past" in d.stages[0]["note"]
    assert "still here" in (tmp_path / "out" / "oneshot.log").read_text()
    assert "| slow | cut |" in (tmp_path / "out" / "summary.md").read_text()
    d.deadline = time.monotonic()  # the run's own budget spent: later stages are skipped, not started
    assert not d.stage("late", 10, [d.py("-c", "pass")])
    assert d.stages[-1]["status"] == "skipped" and "no time left" in d.stages[-1]["note"]
    d.logf.close()


@pytest.mark.slow
def test_gpu_mode_without_cuda_stops_at_once_with_the_reason(tmp_path):
    if pytest.importorskip("torch").cuda.is_available():
        pytest.skip("has a GPU: the real run would start")
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run([str(GPU_DIR / "run.sh"), "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 3
    assert "torch cannot see CUDA" in proc.stderr and "Traceback" not in proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["env"]  # nothing after the environment ran
    assert "STOPPED: torch cannot see CUDA" in (tmp_path / "summary.md").read_text()


def _wheel(path: Path, module: str) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}/__init__.py", "ANSWER = 42\n")
        z.writestr(f"{module}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
        z.writestr(f"{module}-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                    "Tag: py3-none-any\n")
        z.writestr(f"{module}-1.0.dist-info/RECORD", "")
    return path


def _imports(paths, module: str) -> bool:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    return subprocess.run([sys.executable, "-c", f"import {module}; assert {module}.ANSWER == 42"], env=env).returncode == 0


@pytest.mark.slow
def test_wheels_install_offline_or_go_on_the_path(tmp_path):
    mod = "drex_oneshot_fakepkg"
    assert wheels.prepare(tmp_path / "none", wheels=tmp_path, modules={"os": "os"}) == ([], "all imports present")
    with pytest.raises(RuntimeError, match="no wheels in .*fetch_wheels.sh"):
        wheels.prepare(tmp_path / "site0", wheels=tmp_path / "empty", modules={mod: mod})
    good = tmp_path / "good"
    good.mkdir()
    _wheel(good / f"{mod}-1.0-py3-none-any.whl", mod)
    paths, note = wheels.prepare(tmp_path / "site1", wheels=good, modules={mod: mod})
    assert paths == [str(tmp_path / "site1")] and "pip installed" in note and _imports(paths, mod)
    bad = tmp_path / "bad"  # pip refuses this file name: the zip itself goes on the path
    bad.mkdir()
    _wheel(bad / "not-a-wheel-name.whl", mod)
    paths, note = wheels.prepare(tmp_path / "site2", wheels=bad, modules={mod: mod})
    assert paths == [str(bad / "not-a-wheel-name.whl")] and "pip failed" in note and _imports(paths, mod)


def test_gpu_names_map_to_device_table_entries():
    assert envinfo.device_key("NVIDIA H100 80GB HBM3") == "h100"
    assert envinfo.device_key("NVIDIA H200") == "h200"
    assert envinfo.device_key("NVIDIA A100-SXM4-80GB") == "a100"
    assert envinfo.device_key("NVIDIA L4") is None and envinfo.device_key(None) is None


def test_report_of_an_empty_work_folder_says_what_is_missing(tmp_path):
    results = report.collect(tmp_path, ("drex",))
    md = report.markdown({"mode": "gpu", "started": "now", "total_s": 540}, None, [], results)
    assert "(no junit.xml)" in md and "(no real_decode.json)" in md and "| drex | - |" in md


@pytest.mark.parametrize("gpu,device,want_device,want_error", [
    ("NVIDIA H200", None, "h200", None),
    ("NVIDIA H100 80GB HBM3", None, "h100", None),
    ("NVIDIA L4", None, None, "no device entry for GPU 'NVIDIA L4': pass --device"),
    ("NVIDIA L4", "h100", "h100", None),
    (None, None, None, "torch cannot see CUDA"),
])
def test_gpu_mode_takes_its_device_from_the_gpu_found(tmp_path, monkeypatch, gpu, device, want_device, want_error):
    """The GPU-only branch of the environment stage, fed the facts a GPU machine would report."""
    d = _driver(tmp_path)
    monkeypatch.setattr(oneshot.wheels, "prepare", lambda *a, **k: ([], "all imports present"))
    facts = {"cuda_available": gpu is not None, "gpu": gpu, "device_key": envinfo.device_key(gpu), "torch": "2.11"}
    monkeypatch.setattr(d, "stage", lambda *a, **k: (d.work / "env.json").write_text(json.dumps(facts)))
    plan, error = oneshot.environment(d, oneshot.replace(oneshot.GPU, device=device))
    assert plan.device == want_device
    assert (error is None) if want_error is None else (want_error in error)
    d.logf.close()
