"""Read what the one-shot GPU run left in its work folder and write summary.md / summary.json.

Stdlib only: the report must come out even when a stage broke the Python environment. Every
reader tolerates a missing or partial file (a stage cut at its budget leaves one): its table
row then says what is missing instead of stopping the report.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def junit(path: Path) -> dict | None:
    """Counts and failing test ids of a pytest --junitxml file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_ids"] = [f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s.iter("testcase")
                            if c.find("failure") is not None or c.find("error") is not None]
    return counts


def collect(work: Path, policies) -> dict:
    """Everything the summary shows, from the files the stages wrote."""
    work = Path(work)
    profiles = sorted(work.glob("profiles/*/*/meta.json"))
    prof_dir = profiles[0].parent if profiles else None
    meta = read_json(prof_dir / "meta.json") if prof_dir else None
    fit_report = None
    if prof_dir and (prof_dir / "fit_report.txt").exists():
        fit_report = (prof_dir / "fit_report.txt").read_text()
    runs = {}
    for p in policies:
        d = work / "runs" / p
        runs[p] = {"summary": read_json(d / "summary.json"), "validate": read_json(d / "validate.json")}
    return {"tests": junit(work / "tests" / "junit.xml"),
            "profile": {"dir": str(prof_dir.relative_to(work)) if prof_dir else None,
                        "status": meta.get("status") if meta else None,
                        "device": ((meta or {}).get("device") or {}).get("name"), "dtype": (meta or {}).get("dtype"),
                        "points": ((meta or {}).get("grid") or {}).get("num_points"),
                        "fit_report": fit_report},
            "decode": read_json(work / "real_decode.json"),
            "runs": runs}


def _f(x, spec: str = ".2f", pct: bool = False) -> str:
    if x is None or not isinstance(x, (int, float)):
        return "-"
    return f"{100 * x:+.1f}%" if pct else format(x, spec)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def _env_lines(env: dict | None) -> list[str]:
    if not env:
        return ["(the environment stage wrote nothing)"]
    keys = ("gpu", "capability", "gpu_mem_gib", "driver", "torch", "torch_cuda_build", "triton", "transformers",
            "numpy", "pandas", "simpy", "python", "platform")
    return _table(["what", "found"], [[k, _f(env.get(k), ".1f") if k == "gpu_mem_gib" else str(env.get(k))]
                                      for k in keys if k in env])


def _decode_lines(dec: dict | None) -> list[str]:
    if not dec:
        return ["(no real_decode.json)"]
    out = [f"{dec.get('model')} on {dec.get('device')} ({dec.get('gpu')}), {dec.get('dtype')}; floor = bytes a "
           "step must read / the device table's peak bandwidth", ""]
    out += _table(["batch", "context", "step ms", "floor ms", "floor / step"],
                  [[str(d["batch"]), str(d["context"]), _f(d["step_ms"]), _f(d["floor_ms"], ".3f"),
                    _f(d["floor_fraction"], ".0%")] for d in dec.get("decode", [])])
    if dec.get("throughput"):
        out += ["", *_table(["batch", "prompt", "new", "drex tok/s", "HF generate tok/s", "drex / HF", "same tokens"],
                            [[str(t["batch"]), str(t["prompt_tokens"]), str(t["new_tokens"]), _f(t["drex_tok_s"], ".1f"),
                              _f(t["hf_generate_tok_s"], ".1f"), _f(t["speedup"]), _f(t["same_tokens_fraction"], ".0%")]
                             for t in dec["throughput"]])]
    return out


def _run_lines(runs: dict) -> list[str]:
    rows, vrows = [], []
    for p, r in runs.items():
        s, v = r["summary"] or {}, r["validate"] or {}
        rows.append([p, str(s.get("completed", "-")), _f(s.get("output_throughput"), ".1f"),
                     _f(s.get("median_ttft_ms"), ".1f"), _f(s.get("p99_ttft_ms"), ".1f"),
                     _f(s.get("median_tpot_ms"), ".2f"), _f(s.get("early_exit_fraction"), ".0%"),
                     str(s.get("involuntary_exits", "-")), _f(s.get("run_wall_s"), ".1f"), str(s.get("cost_model", "-"))])
        ag = v.get("exit_decision_agreement")
        vrows.append([p, _f(v.get("throughput_rel_error"), pct=True), _f(v.get("p50_ttft_rel_error"), pct=True),
                      _f(v.get("p50_tpot_rel_error"), pct=True), _f(v.get("step_duration_mape"), pct=True),
                      "-" if ag is None else f"{100 * ag:.1f}%", str(v.get("num_steps", "-"))])
    out = _table(["policy", "done", "out tok/s", "p50 TTFT ms", "p99 TTFT ms", "p50 TPOT ms", "early exits",
                  "forced", "wall s", "cost model"], rows)
    out += ["", "`drex validate` (simulator against the real run; sim - real over real):", ""]
    out += _table(["policy", "throughput", "p50 TTFT", "p50 TPOT", "step MAPE", "decisions agreeing", "steps"], vrows)
    return out


def markdown(head: dict, env: dict | None, stages: list[dict], results: dict) -> str:
    lines = [f"# drex GPU one-shot: {head['mode']}", "",
             f"{head['started']} UTC, {head.get('elapsed_s', 0):.0f} s of a {head['total_s']:.0f} s budget; "
             f"exit {head.get('exit', 'running')}. {head.get('note', '')}", "", "## Environment", "", *_env_lines(env),
             "", "## Stages", ""]
    lines += _table(["stage", "status", "seconds", "budget s", "note"],
                    [[s["name"], s["status"], _f(s.get("seconds"), ".1f"), _f(s.get("budget_s"), ".0f"),
                      s.get("note", "")] for s in stages])
    t = results.get("tests")
    lines += ["", "## Kernel tests", ""]
    lines += [f"{t['passed']} passed, {t['failures'] + t['errors']} failed, {t['skipped']} skipped of {t['tests']}"
              + ("".join(f"\n- FAILED {i}" for i in t["failed_ids"]))] if t else ["(no junit.xml)"]
    prof = results.get("profile") or {}
    lines += ["", "## Profile and fit", "",
              f"{prof.get('dir')}: status {prof.get('status')}, {prof.get('points')} points, dtype {prof.get('dtype')}, "
              f"device {prof.get('device')}"]
    if prof.get("fit_report"):
        lines += ["", "```", prof["fit_report"].rstrip(), "```"]
    lines += ["", "## Decode step and throughput (benchmarks/real_decode.py)", "", *_decode_lines(results.get("decode"))]
    lines += ["", "## Real runs and validation", "", head.get("runs_note", ""), "", *_run_lines(results.get("runs", {}))]
    if head.get("bundle"):
        lines += ["", f"Files: {head['bundle']}"]
    return "\n".join(lines) + "\n"
