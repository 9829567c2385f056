"""The ``drex`` command: subcommands map to functions; the logic lives in the modules.

What every subcommand shares lives here: output directories are checked before
any work (writable too), bad input, a file the system refuses (no permission,
a full disk) and Ctrl-C end in one line (no traceback), a failure of
drex itself ends in one line that says so (exit 70, ``drex.errors``), and a
closed pipe (``drex ... | head``) ends quietly.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from drex import progress
from drex.errors import EXIT_INTERNAL, InternalError

os.environ.setdefault("OMP_NUM_THREADS", "1")

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
# What a write refused by the system raises without naming its file (f.write on a full disk): the outputs' fault.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM)


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


# Each face's module and the subcommands it registers (tests/cli checks this against what they register).
# A command line naming one of them imports only that face: ``drex simulate`` never imports torch (~1 s).
FACES = {
    "drex.sim.cli": ("simulate", "compare"),
    "drex.real.cli": ("run", "profile", "model"),
    "drex.validate": ("validate",),
    "drex.costmodel.cli": ("costmodel",),
    "drex.lab.cli": ("train", "train-exits", "quality"),
    "drex.explore.cli": ("sweep", "capacity", "plot"),
}


def _faces_for(argv: list[str]) -> list[str]:
    """The faces to register: the one owning the command ``argv`` names, or all (help, version, a typo)."""
    first = next((a for a in argv if not a.startswith("-")), None)
    owners = [face for face, commands in FACES.items() if first in commands]
    return owners or list(FACES)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole command (``argv`` None), or only the face that owns the command ``argv`` names."""
    import importlib

    from drex import __version__

    parser = argparse.ArgumentParser(prog="drex", description="Serve early-exit LLMs with dynamic rebatching.",
                                     epilog="drex CMD --help shows a command's flags and their defaults.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"drex {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for face in (list(FACES) if argv is None else _faces_for(argv)):
        importlib.import_module(face).add_parsers(sub)
    _format_all(parser)
    return parser


def _format_all(parser: argparse.ArgumentParser) -> None:
    """Every sub-parser shows its defaults (they are registered by each face's cli.py)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                p.formatter_class = HelpFormatter
                _format_all(p)


def _unrecognized(parser: argparse.ArgumentParser, argv: list[str], unknown: list[str]) -> str:
    """One line for flags the command does not take: the closest flag it does take, not the top-level usage."""
    import difflib

    for token in argv:  # down to the (sub-)command the line names: drex simulate, drex costmodel fit
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is not None and token in sub.choices:
            parser = sub.choices[token]
    flags = [t.split("=", 1)[0] for t in unknown if t.startswith("-")]
    if not flags:
        return f"{parser.prog}: error: unrecognized argument{'s' if len(unknown) > 1 else ''} {' '.join(unknown)}"
    known = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(flags[0], known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f"; {parser.prog} --help lists its flags"
    return f"{parser.prog}: error: unrecognized flag {flags[0]}{hint}"


def _check_outputs(args: argparse.Namespace) -> None:
    """Output paths are checked before any work: a file where a directory must go fails now, not at the end."""
    from drex.outputs import check_out_dir, check_out_file

    for flag, path in _out_paths(args):
        (check_out_file if flag == "--log" else check_out_dir)(path, flag)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(_unrecognized(parser, argv, unknown), file=sys.stderr)
        return EXIT_BAD_INPUT
    if getattr(args, "uses_torch", True):  # the simulator never imports torch: skip its ~2 s import
        _torch_one_thread()
    name = args.command
    try:
        _check_outputs(args)
        rc = int(progress.run_command(name, args.func, args) or 0)  # closes its bars before any message
        sys.stdout.flush()  # a pipe's buffered output: a closed pipe shows here, inside the handler, not at exit
        return rc
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError) as e:
        print(f"drex {name}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except InternalError as e:
        return _internal(name, e.__cause__ or e, str(e))
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
    except OSError as e:  # the system refused a file (no permission, read-only, disk full): the user's to fix
        line = _os_error_line(args, e)
        if line is None:
            return _internal(name, e, f"{type(e).__name__}: {e}")
        print(f"drex {name}: error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001 - anything else is drex's own fault, said in one line
        return _internal(name, e, f"{type(e).__name__}: {e}")


def _out_paths(args: argparse.Namespace) -> list[tuple[str, str | os.PathLike]]:
    """The output paths a command line names, as (flag, path)."""
    return [("--" + name, value) for name in ("out", "traces", "log")
            if isinstance(value := getattr(args, name, None), (str, os.PathLike))]


def _os_error_line(args: argparse.Namespace, e: OSError) -> str | None:
    """One line for an OS error on a file: the path, or the outputs for a write refused without one (a full
    disk); None for an OS error that names no file and is not a write's (drex's own, then)."""
    if e.filename is not None:
        return f"{e.filename}{f' -> {e.filename2}' if e.filename2 else ''}: {e.strerror or e}"
    if e.errno in WRITE_ERRNOS:
        outs = ", ".join(f"{flag} {path}" for flag, path in _out_paths(args)) or "the outputs"
        return f"writing {outs}: {e.strerror or e}"
    return None


def _internal(name: str, cause: BaseException, text: str) -> int:
    """One line for a failure of drex itself (not the user's input); DREX_DEBUG=1 raises it with its traceback."""
    if os.environ.get("DREX_DEBUG"):
        raise cause
    print(f"drex {name}: internal error (a bug in drex, not in your input): {text}; DREX_DEBUG=1 shows the "
          f"traceback", file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
