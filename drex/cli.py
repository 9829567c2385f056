"""The ``drex`` command: subcommands map to functions; the logic lives in the modules."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _torch_one_thread() -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drex", description="Serve early-exit LLMs with dynamic rebatching.")
    sub = parser.add_subparsers(dest="command", required=True)
    from drex.costmodel import cli as cm_cli
    from drex.explore import cli as explore_cli  # drex sweep, drex capacity, drex plot
    from drex.real import cli as real_cli
    from drex.lab import cli as lab_cli
    from drex.sim import cli as sim_cli
    from drex import validate

    for face in (sim_cli, real_cli, validate, cm_cli, lab_cli, explore_cli):
        face.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "uses_torch", True):  # the simulator never imports torch: skip its ~2 s import
        _torch_one_thread()
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"drex {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
