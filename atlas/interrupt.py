"""Stopping queries: a deadline on every statement, ctrl-c, and another thread's interrupt().

Every connection :mod:`atlas.db` opens carries a progress handler (SQLite
calls it every few thousand virtual-machine steps) that stops the running
statement when its deadline passes or when a stop was requested for the whole
process (the CLI's ctrl-c handler). Why a statement stopped is noted per
thread, so the one ``interrupted`` error SQLite raises can be told apart:
a deadline, ctrl-c, or ``Connection.interrupt()`` from another thread (the
TUI quitting, the SQL console's escape).

Ctrl-c needs care: SQLite runs in C, and Python delivers SIGINT only when it
next runs Python code, which during a query is the progress handler; an
exception raised there is swallowed by the sqlite3 module (it only aborts
the statement). So the handler installed by :func:`sigint_stops_queries`
first records the stop, then raises KeyboardInterrupt for code outside SQLite.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_stop_all = threading.Event()
_notes = threading.local()

DEADLINE = "deadline"
CTRL_C = "ctrl-c"


def clear_stop() -> None:
    _stop_all.clear()


def note(reason: str | None, seconds: float | None = None) -> None:
    _notes.reason, _notes.seconds = reason, seconds


def stop_reason() -> tuple[str | None, float | None]:
    """(why the last statement of this thread stopped, its deadline in seconds) or (None, None)."""
    if _stop_all.is_set():
        return CTRL_C, None
    return getattr(_notes, "reason", None), getattr(_notes, "seconds", None)


class Budget:
    """The progress handler of one connection: a per-statement deadline, plus the process-wide stop."""

    __slots__ = ("deadline_s", "start")

    def __init__(self, deadline_s: float | None) -> None:
        self.deadline_s = deadline_s
        self.start = time.monotonic()

    def restart(self) -> None:
        self.start = time.monotonic()
        note(None)

    def __call__(self) -> int:
        if _stop_all.is_set():
            note(CTRL_C)
            return 1
        d = self.deadline_s
        if d is not None and time.monotonic() - self.start > d:
            note(DEADLINE, d)
            return 1
        return 0


@contextmanager
def sigint_stops_queries() -> Iterator[None]:
    """While the block runs (main thread only), ctrl-c stops a running query, also one with no deadline."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum: int, frame: object) -> None:
        _stop_all.set()
        raise KeyboardInterrupt

    clear_stop()
    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not allowed here (an embedding interpreter): keep Python's own handler
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        clear_stop()
