"""The worker's stop signals: ``Preempted``, raised in the main thread by SIGTERM / SIGINT,
and ``signals_held``, the blocks it waits for (a claim, a pause and its tell, a report a
script is answered)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class Preempted(BaseException):
    """Raised in the main thread by SIGTERM / SIGINT: stop the trial, re-queue it.

    A BaseException so that neither the job nor the trial loop turns it into a failure.
    """


_held = 0
"""How deep the worker is in ``signals_held`` blocks."""
_deferred: Preempted | None = None
"""The stop a signal asked for while held: raised when the outermost block ends."""


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold the stop of SIGTERM / SIGINT (``Preempted``) back for a moment: it is raised when
    the outermost such block ends. Held in Python, not with the thread's signal mask: the
    kernel gives a process's signal to any thread that does not block it (torch's, the
    heartbeat's), and Python then runs the handler in the main thread all the same, so a
    masked main thread held nothing (a SIGTERM between a pause and its tell re-queued the
    paused trial). The handler still runs at once (``request_stop``: a storage wait gives up)."""
    global _held, _deferred
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _deferred is not None:
            stop, _deferred = _deferred, None
            raise stop


def stop_now_or_when_let(stop: Preempted) -> None:
    """Raise ``stop`` here, or when the ``signals_held`` block around here ends (the signal
    handler's way to stop the worker)."""
    global _deferred
    if _held:
        _deferred = _deferred or stop
    else:
        raise stop
