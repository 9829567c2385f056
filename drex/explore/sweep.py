"""``drex sweep``'s driver: plan the grid, skip what is done, run the rest, write ``sweep.csv``.

Layout of ``--out DIR``: ``runs/<key>/`` per run (``config.json``, then the run's records ending
with ``summary.json``, or ``capacity.json`` and ``knee/`` for a capacity sweep; ``error.txt`` for a
failure) and ``sweep.csv``, one row per configuration (``config_id`` names its run), rebuilt from
those files after every sweep so a resumed sweep and a fresh one write the same table. ``<key>``
hashes the run's settings (every setting its policy reads, defaults included: configurations that
differ only in flags the policy never reads share one run, ``grid.run_config``), the task's
settings and drex's version; the file that a task writes last marks it done, so an interrupted
sweep resumes where it stopped. Failed runs are run again next time (a failure may be the
machine's, not the configuration's).
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

import drex
from drex.explore.grid import check, column_value, config_key, run_config, to_namespace
from drex.metrics import write_run
from drex.progress import Progress, say

SWEEP_COLUMNS = ("config_id", "status", "error")


@dataclass
class Plan:
    """The grid split into what runs, what is already done and what is invalid."""

    out: Path
    mode: str
    rows: list[dict] = field(default_factory=list)  # valid configurations: columns + key, grid order
    todo: list[dict] = field(default_factory=list)  # tasks still to run
    invalid: list[tuple[dict, str]] = field(default_factory=list)


def done_marker(run_dir: Path, mode: str) -> Path:
    return run_dir / ("capacity.json" if mode == "capacity" else "summary.json")


def plan(configs: list[dict], out: Path, mode: str = "simulate", search: dict | None = None) -> Plan:
    task_settings = {"mode": mode, **({"search": search} if mode == "capacity" else {})}
    p = Plan(Path(out), mode)
    seen, queued = set(), set()
    for cfg in configs:
        try:
            ns = to_namespace(cfg)
            check(ns)
        except ValueError as e:
            p.invalid.append((cfg, str(e)))
            continue
        if config_key(ns, task_settings) in seen:  # two spellings of one configuration (0.5 and .50): listed once
            continue
        seen.add(config_key(ns, task_settings))
        # Configurations differing only in flags their policy never reads (off at two thresholds) share one run.
        run_cfg = run_config(cfg, ns)
        key = config_key(to_namespace(run_cfg), task_settings)
        p.rows.append({dest: column_value(ns, dest) for dest in cfg} | {"config_id": key})
        if key not in queued and not done_marker(p.out / "runs" / key, mode).is_file():
            queued.add(key)
            p.todo.append({"key": key, "config": run_cfg, "mode": mode, "search": search or {},
                           "drex_version": drex.__version__})
    return p


def record(out: Path, task: dict, result: dict) -> None:
    """Write one finished task's files on the driver; the done marker last."""
    run_dir = out / "runs" / task["key"]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.txt").unlink(missing_ok=True)
    ns = to_namespace(task["config"])
    meta = {"config": task["config"], "columns": {dest: column_value(ns, dest) for dest in task["config"]},
            "mode": task["mode"], "search": task["search"], "drex_version": drex.__version__}
    (run_dir / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    if not result["ok"]:
        (run_dir / "error.txt").write_text(result["error"] + "\n")
        return
    if task["mode"] == "capacity":
        write_capacity(run_dir, result)
    else:
        write_run(run_dir, result["requests"], result["steps"], result["summary"])


def write_capacity(out_dir: Path, result: dict) -> None:
    from drex.metrics import _json_default

    knee = result["knee"]
    if knee is not None:
        write_run(out_dir / "knee", knee["requests"], knee["steps"], knee["summary"])
    text = json.dumps(result["capacity"], indent=2, sort_keys=True, default=_json_default)
    (out_dir / "capacity.json").write_text(text + "\n")


def _outcome(run_dir: Path, mode: str) -> dict:
    """A row's results read back from disk: summary keys, or capacity keys then the knee's summary."""
    marker = done_marker(run_dir, mode)
    if marker.is_file():
        data = json.loads(marker.read_text())
        if mode == "capacity":
            knee = data.pop("knee") or {}
            data.pop("runs", None)
            return {"status": "ok", "error": "", **data, **{k: v for k, v in knee.items() if k not in data}}
        return {"status": "ok", "error": "", **data}
    err = run_dir / "error.txt"
    if err.is_file():
        return {"status": "failed", "error": err.read_text().strip()}
    return {"status": "not run", "error": ""}


def write_table(p: Plan) -> pd.DataFrame:
    """sweep.csv: configuration columns, config_id/status/error, then every result key (sorted)."""
    rows, result_keys = [], {}
    for row in p.rows:
        got = _outcome(p.out / "runs" / row["config_id"], p.mode)
        # a result key named like a configuration column (policy, threshold...) keeps the configured value
        rows.append({**{k: v for k, v in got.items() if k not in row}, **row})
        result_keys |= dict.fromkeys(k for k in got if k not in row and k not in SWEEP_COLUMNS)
    config_cols = [c for c in (p.rows[0] if p.rows else {}) if c != "config_id"]
    cols = config_cols + list(SWEEP_COLUMNS) + sorted(result_keys)
    df = pd.DataFrame(rows, columns=cols)
    p.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(p.out / "sweep.csv", index=False)
    if p.invalid:
        bad = pd.DataFrame([{**cfg, "error": err} for cfg, err in p.invalid])
        bad.to_csv(p.out / "invalid.csv", index=False)
    else:
        (p.out / "invalid.csv").unlink(missing_ok=True)
    return df


def run(p: Plan, ray_mode: str = "auto", progress: bool = True) -> None:
    """Run the plan's tasks (none: Ray is neither started nor imported). Interrupted (Ctrl-C, or SIGTERM, which
    interrupts it the same way), it stops at once and keeps what finished, in its run folders and sweep.csv."""
    if not p.todo:
        return
    if ray_mode not in ("off", "auto"):
        from drex.explore.ray_pool import check_head

        check_head(ray_mode)  # before anything starts: nothing answering there fails in seconds, not minutes
    by_key = {t["key"]: t for t in p.todo}
    bar = Progress("sweep", len(p.todo), "run", enabled=progress)  # a failure: the command closes it
    done = 0
    try:
        with sigterm_interrupts(), closing(_results(p.todo, ray_mode)) as results:
            for result in results:
                record(p.out, by_key[result["key"]], result)
                done += 1
                bar.update(1)
                if not result["ok"]:
                    say(f"failed: {result['error']}")
    except KeyboardInterrupt:
        bar.close(done=False)
        write_table(p)
        say(f"{done} of {len(p.todo)} runs finished, kept in {p.out}/sweep.csv; the same command runs the rest")
        raise
    bar.close()


def _results(todo: list[dict], ray_mode: str) -> Iterator[dict]:
    if ray_mode == "off":
        from drex.explore.tasks import run_task

        return (run_task(t) for t in todo)
    from drex.explore.ray_pool import run_on_ray

    return run_on_ray(todo, ray_mode)


@contextmanager
def sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so that a terminated sweep stops as promptly and as
    cleanly (Ray shut down, finished runs kept). Only in the main thread, where signals are handled."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
