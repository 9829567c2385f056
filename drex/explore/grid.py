"""A sweep's grid: every ``drex simulate`` flag as an axis, the product of the axes as configurations.

A configuration is an ordered ``{dest: value}`` of the flags the user gave (strings as typed, or
booleans for on/off flags). It becomes an ``argparse.Namespace`` by re-parsing it with the very
flags ``drex simulate`` uses, so a sweep accepts and checks values exactly as a single run does.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
from pathlib import Path

import drex
from drex.settings import add_run_flags
from drex.slo import check_slos

# Values that themselves contain commas: these axes vary only by repeating the flag (or in YAML).
NO_SPLIT = ("exits", "confidence")
# Flags that describe how a run is shown, not what it computes: never axes, never in the key.
NOT_AXES = ("no_progress",)
# Flags a policy never reads, by the policy's own flags (drex.core.policies): without exit points (off) nothing
# about exiting or rebatching matters; without a rebatching buffer nothing about parking, splitting or flushing.
EXIT_FLAGS = ("exits", "threshold", "metric", "confidence")
REBATCH_FLAGS = ("profitability", "max_tpot_inflation", "split_fraction", "split_continue", "flush_min_rows",
                 "flush_max_wait_steps", "no_inline_drain", "every_exit_head")


class _RaisingParser(argparse.ArgumentParser):
    """argparse that raises ValueError instead of printing usage and exiting."""

    def error(self, message: str):
        raise ValueError(message)


def config_parser() -> argparse.ArgumentParser:
    """The flags one configuration takes: drex simulate's run flags."""
    p = _RaisingParser(prog="configuration", add_help=False)
    add_run_flags(p)
    return p


def axis_actions() -> list[argparse.Action]:
    return [a for a in config_parser()._actions if a.option_strings and a.dest not in NOT_AXES]


def is_switch(action: argparse.Action) -> bool:
    return isinstance(action, argparse._StoreTrueAction)


def add_axis_flags(p: argparse.ArgumentParser) -> None:
    """Every run flag again, repeatable: ``--policy off,drex --threshold 0.3 --threshold 0.5``. Each says what
    a configuration gets without it: drex simulate's default."""
    for a in axis_actions():
        text = a.help or ""
        if is_switch(a):
            p.add_argument(*a.option_strings, dest=a.dest, action="store_true", default=None,
                           help=f"{text} (default: off; given: on in every configuration)".strip())
            continue
        many = "repeat the flag" if a.dest in NO_SPLIT else "repeat or comma-list"
        default = "" if "default" in text else f"default: {'none' if a.default is None else a.default}; "
        p.add_argument(*a.option_strings, dest=a.dest, action="append", default=None, metavar="V",
                       help=f"{text} ({default.replace('%', '%%')}{many} to sweep)".strip())


def _split(dest: str, value: str) -> list[str]:
    if dest in NO_SPLIT or (dest == "trace" and value.startswith("synthetic:")):
        return [value]
    parts = [v.strip() for v in value.split(",")]
    if any(not v for v in parts):
        raise ValueError(f"--{dest.replace('_', '-')}: empty value in {value!r}")
    return parts


def _yaml_value(dest: str, item) -> str | bool:
    if isinstance(item, bool):
        return item
    if isinstance(item, (list, tuple)):  # exits: [10, 20]
        return ",".join(str(x) for x in item)
    if item is None or isinstance(item, dict):
        raise ValueError(f"grid axis {dest!r}: values must be numbers, strings or lists, got {item!r}")
    return str(item)


def load_grid_file(path: str | Path) -> dict[str, list]:
    """``{axis: [values]}`` from a YAML mapping; keys are flag names with or without ``--``."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such grid file") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a grid file is a mapping of flag -> value or list of values")
    known = {a.dest: a for a in axis_actions()}
    axes: dict[str, list] = {}
    for key, values in data.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in known:
            raise ValueError(f"{path}: unknown axis {key!r}; axes are drex simulate's flags, e.g. policy, threshold")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ValueError(f"{path}: axis {key!r} has no values")
        axes[dest] = [_yaml_value(dest, v) for v in values]
    return axes


def grid_axes(args: argparse.Namespace, grid_file: str | None = None) -> dict[str, list]:
    """Axes in drex simulate's flag order; a flag on the command line overrides the same axis in the file."""
    from_file = load_grid_file(grid_file) if grid_file else {}
    axes: dict[str, list] = {}
    for a in axis_actions():
        given = getattr(args, a.dest, None)
        if given is None or (is_switch(a) and not given):
            if a.dest in from_file:
                axes[a.dest] = from_file[a.dest]
            continue
        if is_switch(a):
            axes[a.dest] = [True]
            continue
        values = [v for raw in given for v in _split(a.dest, raw)]
        axes[a.dest] = list(dict.fromkeys(values))  # drop repeats, keep order
    return axes


def configurations(axes: dict[str, list]) -> list[dict]:
    """The product of the axes, the last axis varying fastest."""
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*(axes[n] for n in names))]


def to_argv(config: dict) -> list[str]:
    flags = {a.dest: a.option_strings[0] for a in axis_actions()}
    argv: list[str] = []
    for dest, value in config.items():
        if isinstance(value, bool):
            argv += [flags[dest]] if value else []
        else:
            argv += [flags[dest], str(value)]
    return argv


def to_namespace(config: dict) -> argparse.Namespace:
    """The Namespace ``drex simulate`` would see; ValueError for a value it would refuse."""
    ns = config_parser().parse_args(to_argv(config))
    ns.no_progress = True
    return ns


def check(ns: argparse.Namespace) -> None:
    """Build everything a run builds except the workload: refuses what the run would refuse."""
    from drex.settings import settings_from_args
    from drex.sim.simulator import Simulation

    Simulation(settings_from_args(ns, ns.policy), [])
    check_slos(ns.slo_ttft_ms, ns.slo_tpot_ms)


def unused_flags(policy: str) -> tuple[str, ...]:
    """The flags ``policy`` never reads: configurations that differ only in them cannot differ in results."""
    from drex.core.policies import get_policy

    pol = get_policy(policy)
    return (() if pol.rebatches else REBATCH_FLAGS) + (() if pol.uses_exits else EXIT_FLAGS)


def run_config(config: dict, ns: argparse.Namespace) -> dict:
    """What a configuration runs: ``config`` (parsed as ``ns``) without the flags its policy never reads."""
    unused = unused_flags(ns.policy)
    return {dest: value for dest, value in config.items() if dest not in unused}


def column_value(ns: argparse.Namespace, dest: str):
    """A configuration column: the parsed value (so 0.50 and .5 agree), exits as '10,20'."""
    v = getattr(ns, dest)
    if isinstance(v, tuple):
        return ",".join(str(x) for x in v)
    return v


def config_key(ns: argparse.Namespace, task: dict) -> str:
    """Hash of every setting of the run (defaults included), the task's own settings and drex's version."""
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(vars(ns).items())
                if k not in NOT_AXES}
    blob = json.dumps({"args": settings, "task": task, "drex": drex.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
