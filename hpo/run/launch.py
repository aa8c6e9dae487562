"""Launch: one worker process per GPU slot, supervised.

``WorkerOptions`` is what a worker is told on its command line: the launcher writes it as argv
(``to_argv``), ``hpo worker`` reads its flags back into it (``from_args``).
Which worker gets which GPU is ``hpo.run.slots``' (``assign_slots``). The ``Supervisor`` starts
``hpo worker`` children with their slot's ``CUDA_VISIBLE_DEVICES`` and
``HPO_WORKER_INDEX`` set before any of them imports torch (and the storage URL in
``HPO_STORAGE``, never in a command line that ``ps`` shows), restarts a child that dies (bounded,
with backoff) after handing its running trial on (``on_exit``), passes on its lines (one per
finished trial) and says a summary at the end, and on
Ctrl-C / SIGTERM asks every child to checkpoint and re-queue its trial (passing the signal on),
then waits for them. A child outlives no launcher: if the launcher is killed, the kernel sends
each child SIGTERM. With ``--per-gpu auto`` (``hpo.run.memory.MemoryWatch``) it starts and
retires workers so that each GPU runs as many trials as its memory holds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from hpo.run.slots import Slot, usable_cores
from hpo.run.worker import describe_exit, stop_signal_words

EXIT_RECYCLE = 75
"""A worker that exits with this code asks to be restarted at once (process recycling)."""
EXIT_PREEMPTED = 143
"""A worker stopped by SIGTERM / SIGINT after re-queueing its trial."""
EXIT_GAVE_UP = 3
"""A worker whose trials kept failing: restarting it would fail the same way."""
MAX_RESTARTS = 5
"""Crash restarts per slot before the supervisor gives the slot up."""
SQLITE_SAFE_WORKERS = 8
"""More SQLite workers than this contend for the file lock; PostgreSQL is the answer."""
STOP_GRACE = 30.0
"""Seconds a worker gets to checkpoint and re-queue after SIGTERM before SIGKILL."""


@dataclass(frozen=True)
class WorkerOptions:
    """One worker's orders: ``hpo worker STUDY`` and its flags, None where a flag is not given.

    The storage URL is not among them: it reaches a child through ``$HPO_STORAGE``, never its
    command line, which ``ps`` shows to everyone on the machine.
    """

    study: str
    """The study the worker joins."""
    n_trials: int | None = None
    """``--n-trials``: finished trials of the study, across all workers (the spec's budget)."""
    timeout: float | None = None
    """``--timeout``: seconds after which no new trial starts (the spec's budget)."""
    checkpoint_dir: str | None = None
    """``--checkpoint-dir``: where trial checkpoints go (default: ``$HPO_CHECKPOINT_DIR``)."""
    max_trials_per_process: int | None = None
    """``--max-trials-per-process``: trials after which the process exits to be restarted."""

    @classmethod
    def from_args(cls, args: Any, **given: Any) -> WorkerOptions:
        """The options from parsed flags (an ``argparse.Namespace``); ``given`` wins over them,
        e.g. ``study=`` where the command names a spec, not a study."""
        options: dict[str, Any] = {
            f.name: given[f.name] if f.name in given else getattr(args, f.name, None)
            for f in fields(cls)
        }
        return cls(**options)

    def to_argv(self) -> list[str]:
        """The ``hpo worker`` arguments: ``[STUDY, --flag, value, ...]`` for the set options."""
        argv = [self.study]
        for f in fields(self)[1:]:
            value = getattr(self, f.name)
            if value is not None:
                argv += ["--" + f.name.replace("_", "-"), str(value)]
        return argv


# --------------------------------------------------------------------------------------------
# The supervisor.


REBALANCE_SECONDS = 10.0
"""How often the supervisor asks ``rebalance`` how many workers each GPU should run."""


@dataclass
class _Child:
    slot: Slot
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    done: bool = False
    exit_codes: list[int] = field(default_factory=list)
    retiring: bool = False
    """Asked to stop because its GPU runs fewer workers now (``rebalance``): its exit, by
    SIGTERM after re-queueing its trial, is no failure and starts no replacement."""


class Supervisor:
    """Runs and watches the worker processes of one study on this machine.

    Args:
        worker_args: the ``hpo worker`` arguments after ``worker``: ``WorkerOptions.to_argv()``.
        slots: from ``assign_slots``.
        env: added to every child's environment (``HPO_STORAGE``: secrets stay out of argv).
        say: where the supervisor's and the workers' lines go.
        status: returns the summary's text (study counts, the best), said once when the
            workers are done. While they run, each change is one line of a worker's (a trial
            finished, pruned, paused or failed; a new best): no periodic block.
        on_exit: called with a child's slot, pid and exit code when it exits non-zero, before
            it is restarted: the launcher fails and re-queues the trial it was running.
        rebalance: ``--per-gpu auto``: called every ``rebalance_seconds`` with the slots of the
            live workers, returns how many workers each GPU should run now (``Packing``).
            The supervisor starts workers on a GPU that should run more, and asks the
            newest worker of one that should run fewer to re-queue its trial and stop.
    """

    def __init__(
        self,
        worker_args: list[str],
        slots: list[Slot],
        *,
        env: dict[str, str] | None = None,
        say: Callable[[str], None] = print,
        status: Callable[[], str] | None = None,
        on_exit: Callable[[Slot, int, int], None] | None = None,
        max_restarts: int = MAX_RESTARTS,
        rebalance: Callable[[list[Slot]], dict[str, int]] | None = None,
        rebalance_seconds: float = REBALANCE_SECONDS,
    ) -> None:
        self.worker_args = worker_args
        self.children = [_Child(slot) for slot in slots]
        self.env = dict(env or {})
        self.say = say
        self.status = status
        self.on_exit = on_exit
        self.max_restarts = max_restarts
        self.rebalance = rebalance
        self.rebalance_seconds = rebalance_seconds
        self._next_rebalance = 0.0
        self._finishing = False
        self._stopping = False
        self._lock = threading.Lock()

    def run(self) -> int:
        """Run until every worker is done. Returns the exit code for the CLI."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while True:
                now = time.monotonic()
                for child in self.children:
                    self._tend(child, now)
                if all(c.done for c in self.children):
                    break
                if self.rebalance is not None and now >= self._next_rebalance:
                    self._next_rebalance = now + self.rebalance_seconds
                    self._rebalance(now)
                time.sleep(0.2)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self.status:
            self._status()
        if self._stopping:
            return 130
        failed = [
            c
            for c in self.children
            if c.exit_codes and c.exit_codes[-1] not in (0,) and not c.retiring
        ]
        return 1 if failed else 0

    def _rebalance(self, now: float) -> None:
        """Start or retire workers so that each GPU runs as many as ``rebalance`` says."""
        assert self.rebalance is not None
        live = [c for c in self.children if not c.done and not c.retiring]
        if self._stopping or not live or all(c.proc is None for c in live):
            return  # stopping, or every worker finished: the study is done
        try:
            wanted = self.rebalance([c.slot for c in live])
        except Exception as e:  # the view must never stop the study
            self.say(f"hpo: could not rebalance the GPUs: {type(e).__name__}: {e}")
            return
        # New workers get their share of the cores among all the GPUs' workers; those running
        # keep theirs.
        threads = max(1, usable_cores() // max(1, sum(wanted.values())))
        for gpu, count in wanted.items():
            mine = [c for c in live if c.slot.gpu == gpu]
            if len(mine) < count and not self._finishing:
                # (A worker that finished found the budget met: new ones would too.)
                for _ in range(count - len(mine)):
                    slot = Slot(len(self.children), gpu, threads)
                    self.children.append(_Child(slot, next_start=now))
                self.say(f"hpo: GPU {gpu}: {count} workers (was {len(mine)})")
            elif len(mine) > count:
                for child in sorted(mine, key=lambda c: -c.slot.index)[: len(mine) - count]:
                    child.retiring = True
                    if child.proc is None:
                        child.done = True
                    else:  # it re-queues its running trial, which a sibling resumes
                        child.proc.send_signal(signal.SIGTERM)
                self.say(f"hpo: GPU {gpu}: {count} workers (was {len(mine)})")

    def _tend(self, child: _Child, now: float) -> None:
        if child.done:
            return
        if child.proc is None:
            if self._stopping:
                child.done = True
            elif now >= child.next_start:
                self._start(child)
            return
        code = child.proc.poll()
        if code is None:
            return
        pid, child.proc = child.proc.pid, None
        child.exit_codes.append(code)
        if code != 0 and self.on_exit is not None:
            try:
                self.on_exit(child.slot, pid, code)
            except Exception as e:  # its trial then goes stale and is retried all the same
                self.say(
                    f"[{child.slot.label}] could not re-queue its trial: {type(e).__name__}: {e}"
                )
        if code == 0 and not child.retiring:
            self._finishing = True
        if code == 0 or self._stopping or child.retiring:
            child.done = True
        elif code == EXIT_RECYCLE:
            self.say(f"[{child.slot.label}] recycling the worker process")
            child.next_start = now
        elif code in (EXIT_GAVE_UP, 2):
            # Its trials keep failing, or its input is bad: restarting will not help.
            self.say(f"[{child.slot.label}] worker gave up; not restarting it")
            child.done = True
        elif child.restarts >= self.max_restarts:
            self.say(
                f"[{child.slot.label}] worker died (exit {code}) {child.restarts + 1} "
                "times; giving the slot up"
            )
            child.done = True
        else:
            delay = min(60.0, 2.0**child.restarts)
            child.restarts += 1
            self.say(
                f"[{child.slot.label}] worker died (exit {describe_exit(code)}); restart "
                f"{child.restarts}/{self.max_restarts} in {delay:.0f}s"
            )
            child.next_start = now + delay

    def _start(self, child: _Child) -> None:
        cmd = [sys.executable, "-m", "hpo", "worker", *self.worker_args]
        child.proc = subprocess.Popen(
            cmd,
            env=child.slot.env({**os.environ, **self.env}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # signals reach a child only through the supervisor
            preexec_fn=_die_with_parent(os.getpid()),
        )
        threading.Thread(
            target=self._pump, args=(child.slot.label, child.proc), daemon=True
        ).start()

    def _pump(self, label: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lock:
                self.say(f"[{label}] {line.rstrip()}")

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._stopping:  # a second Ctrl-C: stop now
            for child in self.children:
                if child.proc is not None:
                    child.proc.kill()
            return
        self._stopping = True
        self.say(
            f"hpo: {stop_signal_words(signum)}: asking the workers to checkpoint and "
            f"re-queue their trials (up to {STOP_GRACE:.0f}s; again to kill them)"
        )
        procs = [c.proc for c in self.children if c.proc is not None]
        for proc in procs:
            proc.send_signal(signum)  # the signal it was: a Ctrl-C is said as one
        threading.Thread(target=_kill_after_grace, args=(procs, STOP_GRACE), daemon=True).start()

    def _status(self) -> None:
        try:
            text = self.status() if self.status else ""
        except Exception as e:  # the view must never stop the study
            text = f"(status unavailable: {type(e).__name__}: {e})"
        with self._lock:
            self.say(text)


def _kill_after_grace(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGKILL the processes still alive after ``grace`` seconds. It holds its own list: the
    main loop clears ``_Child.proc`` when a child exits, at any moment."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if all(p.poll() is not None for p in procs):
            return
        time.sleep(0.2)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn``: the child gets SIGTERM when the launcher dies, even by SIGKILL
    (Linux ``PR_SET_PDEATHSIG``), so that it re-queues its trial instead of running on
    unsupervised. None where there is no ``prctl``."""
    import ctypes

    try:  # loaded here, in the launcher: a forked child must not import (another thread's lock)
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def arm() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the launcher died before the line above
            os._exit(EXIT_PREEMPTED)

    return arm
