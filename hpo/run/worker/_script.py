"""A trial of a ``script`` task: the user's program in a process of its own, its reports
relayed to the trial over a Unix socket (the program's side: ``hpo.session``).

The worker stays the trial's one voice, as with a gang of ranks (``_gang``): it claimed the
trial, beats its heartbeat and tells it. What the script sends, it relays:

- a report's metrics: the study's ``metric`` is the trial's intermediate value at the step,
  the scheduler is asked, and the script gets its answer (go on, or stop: pruned or paused);
  a NaN stops it (``prune_reason: nan``); every report's metrics are kept by step (the
  ``metrics`` user attr, as the built-in job's), the best one's in ``best_metrics`` and as
  attrs of their own names;
- a report's checkpoint: the trial's ``checkpoint`` attr, which a continuation of its pause,
  a re-queue after SIGTERM or a retry after a kill resumes from (``HPO_RESUME_FROM``).

How the process ends decides the trial:

- exit 0: the best value of the metric it reported (the trial completes), or the stop it was
  told (pruned, paused); exit 0 without a report of the metric fails the trial, saying so;
- exit N: the trial fails, its ``fail_reason`` the last lines of the script's stderr;
- killed (a signal: kill -9, out of memory): as a rank that died, ``GangBroken`` (the trial
  is failed and retried, from its last reported checkpoint); after the trial's last report
  (its ``epochs``-th step) the result stands, with a warning: a rank's teardown that aborts
  (gloo's, at exit, on a loaded machine) does not undo a trained trial;
- SIGTERM / SIGINT to the worker (``Preempted``): the script is told to stop
  (``hpo.session.should_stop``), gets ``STOP_GRACE`` seconds to report a checkpoint of where
  it stands and exit, and the trial is re-queued to resume from there.

The script runs in a session of its own (the worker passes signals on as that stop); it gets
SIGKILL if the worker dies (``_DIE_WITH_WORKER``: ``PR_SET_PDEATHSIG`` before its ``exec``),
and a report to a worker that has gone answers stop. Its crash or leak is its own: the
worker lives on, warm, for the next trial.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hpo import session
from hpo.records import (
    BEST_METRICS_ATTR,
    CHECKPOINT_ATTR,
    FAIL_REASON_ATTR,
    METRICS_ATTR,
    PRUNE_REASON_ATTR,
    add_to_history,
)
from hpo.run.worker._gang import GangBroken, describe_exit
from hpo.run.worker._signals import signals_held
from hpo.store import _optuna

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


_DIE_WITH_WORKER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)
"""How a script's process starts: it asks for SIGKILL when the worker dies
(``PR_SET_PDEATHSIG``, kept across ``exec``), makes sure the worker has not died already,
then becomes the script. In the child, not in ``preexec_fn``: that runs between fork and exec
while the worker's other threads (the heartbeat) may hold locks it needs."""


class ScriptFailed(Exception):
    """The script exited non-zero, or without reporting its metric: the trial fails."""


def run_script(
    job_trial: Any,
    trial: Any,
    task: Any,
    params: dict,
    checkpoint_dir: Path,
    metric: str,
    devices: int = 1,
    maximize: bool = False,
) -> float:
    """Run the ``script`` task's command for ``trial``; relay its reports to ``job_trial``.

    Args:
        job_trial: the job's trial (``StudyTrial``): reports, decisions, attrs.
        trial: the Optuna trial (its number, its ``checkpoint`` attr to resume from).
        task: the ``TaskSpec`` (``command``).
        params: the trial's params, given to the script as JSON.
        checkpoint_dir: the folder of this trial's checkpoint directory.
        metric: the reported metric that is the objective (``study.metric``).
        devices: the processes (ranks) to start, with the environment ``torchrun`` gives
            its ranks (``rank_env``); rank 0 reports.
        maximize: the best value of ``metric`` is the highest (``study.direction``).

    Returns:
        The best (lowest, or highest with ``maximize``) value of ``metric`` reported.

    Raises:
        optuna.TrialPruned: the scheduler stopped it (``job_trial.decision``), or a NaN.
        ScriptFailed: a rank exited non-zero, or all exited without reporting ``metric``.
        GangBroken: a rank was killed by a signal (retry from the checkpoint).
        Preempted: SIGTERM / SIGINT; raised on once the script has stopped.
    """
    import optuna

    previous = trial.user_attrs.get(CHECKPOINT_ATTR)
    resume = previous if previous and Path(previous).exists() else None
    with tempfile.TemporaryDirectory(prefix="hpo-script-") as tmp:
        address = os.path.join(tmp, "session")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address)
        listener.listen(4)
        env = {
            **os.environ,
            session.SOCKET_VAR: address,
            session.PARAMS_VAR: json.dumps(params),
            session.CHECKPOINT_DIR_VAR: str(checkpoint_dir / f"trial-{trial.number}"),
            session.TRIAL_VAR: str(trial.number),
            "PYTHONUNBUFFERED": "1",
        }
        env.pop(session.RESUME_VAR, None)
        if resume is not None:
            env[session.RESUME_VAR] = str(resume)
            log.info("trial %d: resuming from %s", trial.number, resume)
        command = list(task.command)
        if command[0] in ("python", "python3"):
            command[0] = sys.executable  # the worker's interpreter, its environment's packages
        command = [sys.executable, "-c", _DIE_WITH_WORKER, str(os.getpid()), *command]
        relay = _Relay(job_trial, metric, params, maximize)
        store = _rendezvous_store(devices) if devices > 1 else None
        procs = [
            subprocess.Popen(
                command,
                env={**env, **rank_env(rank, devices, store)},
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            for rank in range(devices)
        ]
        tails = [
            _StderrTail(proc, f"[rank {r}] " if devices > 1 else "") for r, proc in enumerate(procs)
        ]
        try:
            relay.serve(listener, procs)
            ended = [proc.poll() for proc in procs]  # before the others are killed
        except BaseException:  # Preempted (SIGTERM): let it checkpoint where it stands
            relay.stop(procs, "preempted")
            raise
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            for proc, tail in zip(procs, tails):
                proc.wait()
                tail.join()
            listener.close()
            relay.close()
            del store
    if job_trial.decision is not None or relay.pruned is not None:
        raise optuna.TrialPruned(relay.pruned or job_trial.decision.reason)
    # As the ranks ended (None: still running, killed here): a death first, which caused the
    # others' errors, then an error.
    for rank, code in enumerate(ended):
        who = f"rank {rank} of {devices}" if devices > 1 else "the script"
        if code is not None and code < 0 and relay.finished and relay.best is not None:
            # After its last report: the trial is trained (a rank's teardown, e.g. gloo's
            # abort at exit), and its result stands.
            log.warning(
                "trial %d: %s was killed by %s after the trial's last report; its result stands",
                trial.number,
                who,
                describe_exit(code),
            )
            return relay.best
        if code is not None and code < 0:
            raise GangBroken(f"{who} was killed by {describe_exit(code)}")
    for rank, (code, tail) in enumerate(zip(ended, tails)):
        who = f"rank {rank} of {devices}" if devices > 1 else "the script"
        if code is not None and code != 0:
            raise ScriptFailed(f"{who} exited with {code}: {tail.text() or 'no stderr'}")
    if relay.best is None and resume is not None:
        # Resumed with nothing left to train (its worker died between the last report and
        # the tell): the value is the best its earlier attempts reported.
        values = [
            v
            for v in _optuna.frozen(trial.study, trial).intermediate_values.values()
            if math.isfinite(v)
        ]
        if values:
            return min(values)
    if relay.best is None:
        raise ScriptFailed(
            f"the script exited without reporting {metric} (study.metric) through "
            f"hpo.session.report; it reported {', '.join(relay.seen) or 'nothing'}"
        )
    return relay.best


def rank_env(rank: int, world: int, store: Any) -> dict[str, str]:
    """The environment ``torchrun`` gives rank ``rank`` of ``world`` on one machine: with
    ``init_process_group(init_method="env://")`` (DDP, FSDP, Accelerate, Lightning), every
    rank joins the store the worker hosts (``TORCHELASTIC_USE_AGENT_STORE``, as torchrun's
    agent does): no rank binds a port, so none can race another program for it."""
    if world == 1:
        return {}
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "GROUP_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(store.port),
        "TORCHELASTIC_USE_AGENT_STORE": "True",
    }


def _rendezvous_store(world: int) -> Any:
    """The ranks' ``TCPStore``, served by the worker on a port the kernel picks."""
    from datetime import timedelta

    from torch.distributed import TCPStore

    return TCPStore(
        "127.0.0.1", 0, world, True, timeout=timedelta(minutes=5), wait_for_workers=False
    )


class _Relay:
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
        elif value is not None and (
            self.best is None or (value > self.best if self.maximize else value < self.best)
        ):
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


class _StderrTail(threading.Thread):
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
