"""Database outages: a storage call that finds the database gone waits and tries again.

A server restart or a dropped connection is an outage; any other error is not. Each call gets
up to ``outage_seconds()`` from its own first failure, so a long trial never runs out of
patience before its tell; past that the call raises, the worker exits non-zero, and its trial
is retried elsewhere. ``hpo.store._optuna.HpoRDBStorage`` wraps every storage call with
``retrying``.

A process that is stopping (``request_stop``: the worker's SIGTERM / SIGINT, also one held
back for a moment) waits for no storage: a wait under way ends within a tenth of a second and
its call raises, and later calls raise at their first failure.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("hpo")

OUTAGE_VAR = "HPO_OUTAGE_SECONDS"
DEFAULT_OUTAGE_SECONDS = 300.0


def outage_seconds() -> float:
    """How long one storage call waits for a database that stopped answering
    (``$HPO_OUTAGE_SECONDS``, default 300): past that the call raises and the worker exits
    non-zero, and its trial is retried elsewhere."""
    try:
        return float(os.environ.get(OUTAGE_VAR, DEFAULT_OUTAGE_SECONDS))
    except ValueError:
        return DEFAULT_OUTAGE_SECONDS


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_POLL_SECONDS = 0.1


_stop_asked = False
"""``request_stop`` was called: a plain flag, which a signal handler may set."""


def request_stop() -> None:
    """The process is stopping: storage calls stop waiting out an outage, in every thread
    (they look every ``_POLL_SECONDS``). It takes no lock: the worker's signal handler calls
    it, and a second signal that interrupted the first handler inside ``Event.set`` waited
    for the lock that handler held, for ever (a worker killed with its launcher hung)."""
    global _stop_asked
    _stop_asked = True


def clear_stop() -> None:
    """Storage calls wait out outages again (a worker loop starting in this process)."""
    global _stop_asked
    _stop_asked = False


def stop_requested() -> bool:
    """``request_stop`` was called, or SIGTERM / SIGINT is pending while held back (a claim
    or a tell holds them: the storage wait ends, the call raises, and the signal arrives)."""
    if _stop_asked:
        return True
    try:
        return bool(signal.sigpending() & _STOP_SIGNALS)
    except (AttributeError, OSError):  # no sigpending on this platform
        return False


def pause_unless_stopping(seconds: float) -> bool:
    """Sleep ``seconds`` between two tries of a storage call; False at once if the process is
    stopping (then the caller gives up and raises)."""
    end = time.monotonic() + seconds
    while not stop_requested():
        left = end - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, _POLL_SECONDS))
    return False


_inside = threading.local()


def retrying(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` retried through an outage (a storage method: ``self`` comes first)."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_inside, "depth", 0):  # a call inside a retried call: the outer one retries
            return method(self, *args, **kwargs)
        _inside.depth = 1
        try:
            return with_outage_retry(lambda: method(self, *args, **kwargs))
        finally:
            _inside.depth = 0

    return call


def with_outage_retry(call: Callable[[], Any], seconds: float | None = None) -> Any:
    """Run ``call``; while the database does not answer (a restart), wait and try again, for
    up to ``seconds`` (default ``outage_seconds()``) from the first failure."""
    deadline = None
    delay = 0.5
    while True:
        try:
            return call()
        except Exception as e:
            cause = database_outage(e)
            if cause is None:
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + (outage_seconds() if seconds is None else seconds)
            if now >= deadline or stop_requested():
                raise
            log.warning("database unavailable (%s); retrying in %.1fs", first_line(cause), delay)
            if not pause_unless_stopping(min(delay, max(0.0, deadline - now))):
                raise
            delay = min(delay * 2, 5.0)


def database_outage(e: BaseException | None) -> BaseException | None:
    """The lost-connection error behind ``e`` (Optuna wraps them), or None if it is another
    kind of error."""
    import sqlalchemy

    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return e
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
            return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    lines = [ln.strip() for ln in str(orig).splitlines() if ln.strip()]
    return f"{type(orig).__name__}: {lines[0]}" if lines else type(orig).__name__
