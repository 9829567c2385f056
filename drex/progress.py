"""Progress of long work on stderr, the same rule for every command.

On a terminal a tqdm bar. Anywhere else (a log file, a pipe) a few plain lines: one when the work
starts, one each time another tenth of it is done (at most one every ``MIN_GAP_S`` seconds, and one
at least every ``HEARTBEAT_S`` while it moves), and one when it ends. ``enabled=False`` (a command's
``--no-progress``) shows neither. ``run_command`` closes whatever is still open when a command ends,
so an error printed after it starts on its own line, never on a bar's. tqdm is imported only when a
bar is drawn.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence

MIN_GAP_S = 3.0  # plain lines: at most one a tenth, and no closer together than this
HEARTBEAT_S = 60.0  # ...but one at least this often while the work moves (a slow tenth)

_open: list[Progress] = []
_command: list[str] = []  # the command running (run_command): plain lines begin "drex CMD:"


def add_progress_flag(parser) -> None:
    """``--no-progress``, the same on every command that shows progress."""
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress on stderr (a bar on a terminal, a few plain lines elsewhere)")


def run_command(name: str, func, args):
    """``func(args)`` as command ``name``; every progress still open when it returns or fails is closed."""
    _command.append(name)
    try:
        return func(args)
    finally:
        close_all()
        _command.pop()


def close_all() -> None:
    """Close every open progress, as a failure does: a bar keeps what it showed and ends its line."""
    for p in reversed(list(_open)):
        p.close(done=False)


def say(text: str, file=None) -> None:
    """A line on ``file`` (stderr) that goes above any bar drawn, not through it."""
    file = sys.stderr if file is None else file
    if any(p.bar is not None for p in _open):
        from tqdm import tqdm

        tqdm.write(text, file=file)
    else:
        print(text, file=file, flush=True)


def each(items: Sequence, desc: str, unit: str, enabled: bool = True) -> Iterator:
    """``items`` one by one, counting them."""
    with Progress(desc, len(items), unit, enabled) as p:
        for item in items:
            yield item
            p.update(1)


def _terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


class Progress:
    """``total`` units of work called ``desc``; ``update``/``set`` count them, ``note`` says more.

    Used as a context manager: leaving it normally ends the work (its count becomes its total: a search
    that stops before its limit is complete); leaving it on an exception closes it without a last line.
    """

    def __init__(self, desc: str, total: int, unit: str, enabled: bool = True, initial: int = 0,
                 clock=time.monotonic) -> None:
        self.desc, self.total, self.unit, self.n = desc, total, unit, initial
        self.bar = None
        self.text = ""
        self._clock = clock
        self._lines = enabled and not _terminal()
        if not enabled:
            return
        if not self._lines:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, mininterval=0.5,
                            dynamic_ncols=True)
        else:
            self._t0 = clock()
            self._line(self._t0)
        _open.append(self)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(done=exc_type is None)

    def update(self, k: int = 1) -> None:
        self.set(self.n + k)

    def set(self, n: int) -> None:
        """``n`` units done in all."""
        if self.bar is not None:
            if n != self.bar.n:
                self.bar.update(n - self.bar.n)  # tqdm redraws at most every mininterval
            else:
                self.bar.refresh()  # the same count, maybe a new note
        self.n = n
        if self._lines:
            now = self._clock()
            gap = now - self._shown_s
            if (self._tenth() > self._shown_tenth and gap >= MIN_GAP_S) or gap >= HEARTBEAT_S:
                self._line(now)

    def note(self, text: str) -> None:
        """What the bar (or the next line) says after the count."""
        self.text = text
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def close(self, done: bool = True) -> None:
        if self not in _open:
            return
        _open.remove(self)
        if done:
            self.total = self.n
        if self.bar is not None:
            if done:
                self.bar.total = self.n
                self.bar.refresh()
            self.bar.close()
        elif done and self._shown_n != self.n:  # its last line may have said it already
            self._line(self._clock())

    def _tenth(self) -> int:
        return 10 * self.n // self.total if self.total else 0

    def _line(self, now: float) -> None:
        self._shown_s, self._shown_tenth, self._shown_n = now, self._tenth(), self.n
        pct = f" {100 * self.n // self.total}%" if self.total else ""
        more = f"; {self.text}" if self.text else ""
        cmd = f" {_command[-1]}" if _command else ""
        print(f"drex{cmd}: {self.desc}{pct} ({self.n}/{self.total} {self.unit}{more}), "
              f"{now - self._t0:.0f} s", file=sys.stderr, flush=True)
