"""One sweep task: a configuration's simulation or capacity search, run where the scheduler puts it.

A task touches no file: it returns its records to the driver, which writes them, so a Ray worker
on another node needs no shared filesystem and ``--ray off`` writes byte-for-byte the same files.
Errors come back as values, so one bad configuration never stops a sweep.
"""

from __future__ import annotations

import os
import traceback

os.environ.setdefault("OMP_NUM_THREADS", "1")


def run_task(task: dict) -> dict:
    """``task``: {"key", "config", "mode": "simulate" | "capacity", "search": {...}, "drex_version"} -> a result
    dict. A node of a user's cluster runs the drex installed there: another version would answer another question."""
    import drex
    from drex.explore.grid import to_namespace

    wanted = task.get("drex_version", drex.__version__)
    if wanted != drex.__version__:
        return {"key": task["key"], "ok": False, "error": f"this Ray node runs drex {drex.__version__}, the sweep "
                f"drex {wanted}: install the same drex on every node of the cluster"}
    try:
        ns = to_namespace(task["config"])
        if task["mode"] == "capacity":
            return {"key": task["key"], "ok": True, **_capacity(ns, task["search"])}
        return {"key": task["key"], "ok": True, **_simulate(ns)}
    except Exception as e:  # noqa: BLE001 - recorded in sweep.csv; the sweep goes on
        where = traceback.extract_tb(e.__traceback__)[-1]
        detail = "" if isinstance(e, ValueError) else f" (at {os.path.basename(where.filename)}:{where.lineno})"
        return {"key": task["key"], "ok": False, "error": f"{type(e).__name__}: {e}{detail}"}


def _simulate(ns) -> dict:
    from drex.settings import load_workload, settings_from_args
    from drex.sim.simulator import simulate

    res = simulate(settings_from_args(ns, ns.policy), load_workload(ns))  # load_workload applies --slo-* defaults
    return {"summary": res.summary, "requests": res.requests, "steps": res.steps}


def _capacity(ns, search: dict) -> dict:
    from drex.explore.capacity import search as capacity_search

    out = capacity_search(ns, **search)
    knee = out["knee"]
    return {"capacity": out["capacity"],
            "knee": None if knee is None else {"summary": knee.summary, "requests": knee.requests,
                                               "steps": knee.steps}}
