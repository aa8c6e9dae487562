"""The worker's end of a script trial's session (``hpo.session``): reads the script's reports
over the socket, records them on the trial, asks the scheduler and answers; tells the script
to stop on a preemption; passes the script's stderr on, keeping its tail
(``hpo.run.worker._script`` starts the script and judges how it ended)."""

from __future__ import annotations

import collections
import json
import logging
import math
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from hpo.records import (
    BEST_METRICS_ATTR,
    CHECKPOINT_ATTR,
    FAIL_REASON_ATTR,
    METRICS_ATTR,
    PRUNE_REASON_ATTR,
    add_to_history,
    better,
)
from hpo.run.worker._signals import signals_held

log = logging.getLogger("hpo")

STOP_GRACE = 30.0
"""Seconds a script told to stop (a preemption) gets to checkpoint and exit before SIGKILL."""
STDERR_LINES = 20
"""Lines of the script's stderr kept for a failure's reason."""

_NOT_METRICS = {
    CHECKPOINT_ATTR,
    PRUNE_REASON_ATTR,
    FAIL_REASON_ATTR,
    METRICS_ATTR,
    BEST_METRICS_ATTR,
    "best_step",
    "pruned_at_step",
    "worker",
    "host",
    "pid",
    "seed",
}
"""The trial's own user attrs: a reported metric of one of these names stays in ``metrics``."""


class Relay:
    """The worker's end of the session: reads the script's reports, answers them."""

    def __init__(self, job_trial: Any, metric: str, params: dict, maximize: bool = False) -> None:
        self.job_trial = job_trial
        self.metric = metric
        self.maximize = maximize
        self.last_step = params.get("epochs") if isinstance(params.get("epochs"), int) else None
        self.finished = False
        self.best: float | None = None
        self.pruned: str | None = None
        self.seen: list[str] = []
        self.history: dict[str, dict[str, Any]] = {}  # the metrics attr
        self.stride = 1
        self.conns: dict[socket.socket, bytes] = {}
        self.stopping: str | None = None

    def serve(self, listener: socket.socket, procs: list[subprocess.Popen]) -> None:
        """Until the ranks exit: accept their connections, answer their reports. A rank that
        exits non-zero ends it at once (the others may wait on it forever)."""
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        try:
            while True:
                codes = [proc.poll() for proc in procs]
                if any(code not in (None, 0) for code in codes):
                    return
                if all(code == 0 for code in codes) and not self._readable(selector):
                    return
                for key, _ in selector.select(timeout=0.1):
                    if key.fileobj is listener:
                        conn, _ = listener.accept()
                        self.conns[conn] = b""
                        selector.register(conn, selectors.EVENT_READ)
                    else:
                        self._receive(key.fileobj, selector)  # type: ignore[arg-type]
        finally:
            selector.close()

    def _readable(self, selector: selectors.BaseSelector) -> bool:
        """After the script exited: whether its last words are still unread."""
        return bool(self.conns) and bool(selector.select(timeout=0))

    def _receive(self, conn: socket.socket, selector: selectors.BaseSelector) -> None:
        with signals_held():  # what arrived is relayed and answered whole
            try:
                chunk = conn.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                selector.unregister(conn)
                conn.close()
                del self.conns[conn]
                return
            buffer = self.conns[conn] + chunk
            *lines, self.conns[conn] = buffer.split(b"\n")
            for line in lines:
                answer = self._handle(json.loads(line))
                try:
                    conn.sendall(json.dumps(answer).encode() + b"\n")
                except OSError:
                    pass  # the script has gone: its exit says how

    def _handle(self, message: dict[str, Any]) -> dict[str, Any]:
        """One report: its checkpoint, its metrics and its value recorded (in one write of
        the attrs, and the value's), then the scheduler's answer. A report that arrives
        while the trial stops (a preemption) is recorded all the same: its checkpoint is
        where the next attempt starts, and the value of its step must be kept with it."""
        checkpoint = message.get("checkpoint")
        metrics: dict[str, float] = message.get("metrics") or {}
        step = int(message["step"]) if message.get("step") is not None else 0
        attrs: dict[str, Any] = {}
        if checkpoint:
            attrs[CHECKPOINT_ATTR] = checkpoint
        value = None
        if metrics and message.get("step") is not None:
            self.seen = sorted(set(self.seen) | set(metrics))
            self.stride = add_to_history(self.history, step, metrics, self.stride)
            attrs[METRICS_ATTR] = self.history
            if self.metric in metrics:
                value = float(metrics[self.metric])
        if value is not None and not math.isfinite(value):
            self.pruned = self.pruned or "nan"
            attrs.update({PRUNE_REASON_ATTR: "nan", "pruned_at_step": step})
            value = None
        elif value is not None and better(value, self.best, self.maximize):
            # The best report (by the study's direction): its metrics are the trial's, as attrs.
            self.best = value
            best = {k: v for k, v in metrics.items() if k not in _NOT_METRICS}
            attrs.update({**best, BEST_METRICS_ATTR: metrics, "best_step": step})
        if attrs:
            self.job_trial.set_attrs(attrs)
        if value is not None:
            self.job_trial.report(value, step)
        if self.stopping is not None or self.pruned is not None:
            return {"go_on": False, "why": self.stopping or self.pruned}
        # The last report cannot prune: the trial has run its epochs (as the built-in job).
        if value is not None and self.last_step is not None and step >= self.last_step:
            self.finished = True  # the trial's last report: it is trained
        if value is None or self.finished:
            return {"go_on": True}
        if self.job_trial.should_prune():
            decision = self.job_trial.decision
            self.job_trial.set_attrs({PRUNE_REASON_ATTR: decision.reason, "pruned_at_step": step})
            return {"go_on": False, "why": decision.reason}
        return {"go_on": True}

    def stop(self, procs: list[subprocess.Popen], why: str) -> None:
        """Tell the script to stop (``hpo.session.should_stop``), then serve its last
        reports (its checkpoint) until it exits, ``STOP_GRACE`` seconds at most."""
        self.stopping = why
        for conn in list(self.conns):
            try:
                conn.sendall(json.dumps({"stop": why}).encode() + b"\n")
            except OSError:
                pass
        if not self.conns:  # not connected yet: nothing to lose
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        selector = selectors.DefaultSelector()
        for conn in self.conns:
            selector.register(conn, selectors.EVENT_READ)
        try:
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.1):
                    self._receive(key.fileobj, selector)  # type: ignore[arg-type]
        finally:
            selector.close()
        if any(p.poll() is None for p in procs):
            log.warning("the script did not stop within %.0f s of being told; killed", STOP_GRACE)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.conns.clear()


class StderrTail(threading.Thread):
    """Passes the script's stderr through to the worker's, keeping its last lines."""

    def __init__(self, proc: subprocess.Popen, prefix: str = "") -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.prefix = prefix
        self.lines: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self.start()

    def run(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            sys.stderr.write(self.prefix + line)
            if line.strip():
                self.lines.append(line.rstrip())

    def text(self) -> str:
        """The last lines, the most telling last (a traceback's error line)."""
        lines = list(self.lines)
        return " | ".join(lines[-3:]) if lines else ""
