"""Where a command may write: output directories checked before any work, shipped files protected.

Every command that writes a directory checks it first (``check_out_dir``), so a
mistyped ``--out`` fails in a second with one line, not after the whole run.
The repository's shipped profiles, checkpoints and traces are never written
unless the user says so (``is_shipped``): a default must not destroy data.
A path written into a record names no folder of the machine it was made on
(``recorded_path``): records are committed and read elsewhere.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from drex import REPO_ROOT

SHIPPED_ROOTS = ("profiles", "models", "traces")


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """``path`` must be a directory or creatable as one, and writable: no part of it may be an existing file, and
    drex must be able to create entries where it will (a probe directory, removed at once)."""
    p = target = Path(path)
    try:
        if p.exists() and not p.is_dir():
            raise ValueError(f"{flag} {path}: is a file, not a directory")
        for parent in p.parents:
            if target.exists():
                break
            if parent.exists() and not parent.is_dir():
                raise ValueError(f"{flag} {path}: {parent} is a file, not a directory")
            target = parent
        os.rmdir(tempfile.mkdtemp(prefix=".drex-probe-", dir=target))
    except OSError as e:  # read-only, no permission, a folder of /proc or /sys: said now, not after the work
        raise ValueError(f"{flag} {path}: cannot write in {target} ({e.strerror or e})") from None
    return p


def check_out_file(path: str | Path, flag: str) -> Path:
    """``path`` must be a file to write or overwrite: not a directory, its parent not a file."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {path}: is a directory, not a file")
    check_out_dir(p.parent, flag)
    return p


def is_shipped(path: str | Path) -> bool:
    """Whether ``path`` is, or lies in, one of the repository's shipped folders (profiles/, models/, traces/)
    and already holds files: what a clone of the repository (or the installed package) came with."""
    p = Path(path).resolve()
    for root in SHIPPED_ROOTS:
        base = (REPO_ROOT / root).resolve()
        if p == base or base in p.parents:
            return p.is_file() or (p.is_dir() and any(p.iterdir()))
    return False


def refuse_shipped(path: str | Path, what: str, override: str) -> None:
    """ValueError when ``path`` holds shipped files: ``what`` would overwrite them; ``override`` says how to
    do it anyway (or elsewhere)."""
    if is_shipped(path):
        raise ValueError(f"{path} is shipped with drex: {what} would overwrite it ({override})")


def recorded_path(path: str | Path) -> str:
    """``path`` as a file drex writes records it (a profile's source, a run's weights, a report's heading):
    never the absolute path of the machine it was made on. Inside the repository: relative to it
    (``models/tiny-ee``); under the home folder: ``~/...``; under the temporary folder: ``<tmp>/...``;
    beside the repository (shared data): ``../<folder>/...``; anything else as given."""
    p = Path(path).expanduser()
    try:
        p = p.resolve()
    except OSError:
        return str(path)
    for base, shown in ((REPO_ROOT, ""), (Path.home(), "~/"), (Path(tempfile.gettempdir()), "<tmp>/"),
                        (REPO_ROOT.parent, "../")):
        base = base.resolve()
        if p == base:
            return shown.rstrip("/") or "."
        if p.is_relative_to(base):
            return shown + p.relative_to(base).as_posix()
    return str(path)
