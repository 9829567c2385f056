"""What went wrong, and whose fault it was.

The command line reports a bad input (``ValueError`` and the file errors) as the user's mistake, exit 2.
Anything else that escapes a command is drex's own: an ``InternalError`` (or any other exception) is
reported in one line as an internal error, exit 70, never dressed as a bad input. Work that has begun
(a run serving its requests, a simulation) wraps what fails inside it in an ``InternalError``: by then
every input has been checked, so a ``ValueError`` there is a bug, not a mistake of the user's.
"""

from __future__ import annotations

EXIT_INTERNAL = 70  # EX_SOFTWARE (sysexits.h): an internal software error


class InternalError(RuntimeError):
    """A failure of drex itself (a bug), raised once the inputs have been checked."""
