"""The ``drex`` command: subcommands map to functions; the logic lives in the modules.

What every subcommand shares lives here: output directories are checked before
any work, bad input and Ctrl-C end in one line (no traceback), and a closed
pipe (``drex ... | head``) ends quietly.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


def _torch_one_thread() -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every flag's default beside its help (flags without help get their default too)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in text:
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return (text + " " if text else "") + "(default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    from drex import __version__

    parser = argparse.ArgumentParser(prog="drex", description="Serve early-exit LLMs with dynamic rebatching.",
                                     epilog="drex CMD --help shows a command's flags and their defaults.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"drex {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    from drex.costmodel import cli as cm_cli
    from drex.explore import cli as explore_cli  # drex sweep, drex capacity, drex plot
    from drex.real import cli as real_cli
    from drex.lab import cli as lab_cli
    from drex.sim import cli as sim_cli
    from drex import validate

    for face in (sim_cli, real_cli, validate, cm_cli, lab_cli, explore_cli):
        face.add_parsers(sub)
    _format_all(parser)
    return parser


def _format_all(parser: argparse.ArgumentParser) -> None:
    """Every sub-parser shows its defaults (they are registered by each face's cli.py)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                p.formatter_class = HelpFormatter
                _format_all(p)


def _check_outputs(args: argparse.Namespace) -> None:
    """Output paths are checked before any work: a file where a directory must go fails now, not at the end."""
    from drex.outputs import check_out_dir, check_out_file

    for name in ("out", "traces"):
        value = getattr(args, name, None)
        if isinstance(value, (str, os.PathLike)):
            check_out_dir(value, "--" + name)
    if isinstance(getattr(args, "log", None), (str, os.PathLike)):
        check_out_file(args.log, "--log")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "uses_torch", True):  # the simulator never imports torch: skip its ~2 s import
        _torch_one_thread()
    name = args.command
    try:
        _check_outputs(args)
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a pipe's buffered output: a closed pipe shows here, inside the handler, not at exit
        return rc
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError) as e:
        print(f"drex {name}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        resume = "; the same command resumes it" if name == "profile" else ""  # samples.csv keeps each point
        print(f"\ndrex {name}: interrupted{resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (drex costmodel show ... | head): stop quietly. Python would still report the
        # broken pipe when it flushes stdout at exit, so stdout is pointed at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
