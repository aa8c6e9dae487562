"""Chaos: randomized fault injection into ``hpo launch``, and the invariants checked after.

    python -m benchmarks.chaos --rounds N [--backends sqlite,postgresql,mariadb] [--seed S]
                               [--faults 1-4] [--out benchmarks/RESULTS.md] [--workdir DIR]

Each round takes the next backend (round-robin over ``--backends``), makes a fresh database
with ``benchmarks.databases`` (a SQLite file; ``CREATE DATABASE hpo_chaos_<hex>`` on the server
at ``$HPO_BENCH_POSTGRES`` / ``$HPO_BENCH_MARIADB``, dropped afterwards), creates a
study of ``tests/support/fastjob.py:epochs_job`` (8-12 trials of 3-5 epochs of 0.3 s, no pruner,
heartbeat 1 s, grace period 3 s) with ``hpo create`` and runs ``hpo launch --workers 3`` on it.
While it runs, 1-4 faults drawn from ``random.Random(seed)`` hit it at random moments:

- ``kill9_worker``: SIGKILL a worker process of the launcher;
- ``kill9_claim``: SIGKILL the worker of a trial the moment it is claimed (the trial's ``pid``
  user attr; without one, the child whose ``HPO_WORKER_INDEX`` matches its ``worker`` attr);
- ``sigterm_worker``: SIGTERM a worker (it re-queues its trial and exits 143);
- ``kill9_pause``: SIGKILL the worker of a trial the moment it pauses (rounds whose pruner
  pauses: ``promotion``, ``pbt``): seen with its ``prune_reason`` written and still RUNNING,
  before or after its continuation is queued, before its tell;
- ``kill9_launcher``: SIGKILL the launcher itself, then start the same command again;
- ``restart_postgresql``: ``pg_ctlcluster ... restart`` (PostgreSQL rounds, as root only), or
  the restart ``run_round`` is given (the tests restart a server of their own).

When the (last) launcher has exited the study is read with ``optuna.load_study`` and checked:

1. finished configurations == n_trials exactly (a configuration: a trial with its retries
   and, with ``--pruner promotion`` or ``pbt``, the continuations of its pauses; a PBT
   member's exploits too);
2. no trial RUNNING; a trial left WAITING only if it is a queued retry (system attr
   ``failed_trial`` / ``retry_history``) or a re-queued trial with progress (intermediate
   values): once a trial has failed (stale, or its worker died) or was preempted, its retry or
   the trial itself waits in the queue, and when the other workers finish the budget first it
   is simply never needed (by design; the round's report lists it). Any other WAITING trial
   -- a fresh, param-less surplus of a worker that asked past the budget, or a re-queued trial
   that had reported nothing -- breaks the invariant; a paused configuration that was never
   promoted is allowed too;
3. the last launcher exited 0 (within the round's time limit);
4. every interrupted trial resumed where its checkpoint was: from the epoch log
   (``trial epoch pid`` lines), each later attempt of a trial (a retry: system attr
   ``failed_trial`` / ``retry_history``; a re-queue: the same number, another pid) redoes at
   most one epoch the trial had already logged, and a finished trial's ``resumed_from_epoch``
   is at least the last epoch its earlier attempts logged (the job checkpoints, then logs);
5. no duplicate trial numbers, and at most one finished trial per configuration (its
   pauses aside);
6. the best trial's checkpoint (user attr ``checkpoint``: a file, or a script's directory) exists;
7. (extra) every COMPLETE trial has a validation loss for each of its epochs (the retry
   inherits the failed attempt's values);
8. no pause lost: every trial told PRUNED as paused (or a PBT continuation replaced,
   ``exploited``) has its continuation (a trial whose ``paused_from`` is its number).

One line per round (backend, faults by kind, invariants, seconds), the details of every broken
invariant (the fault sequence, the trials), then a table per backend; ``--out`` puts it in the
results file under "Chaos: randomized fault injection" (replacing that section). Exit 1 if an
invariant broke. Every wait is bounded; whatever happens, a round ends by killing every process
it started (found by a tag in their environment) and dropping its database.

The study, its environment and the epoch log come from ``tests/test_worker.py`` (``FAST``,
``fast_env``, ``make_study``, ``epoch_log``): the chaos runner drives the same job as the
worker tests. ``tests/test_chaos.py`` runs one short round per backend.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchmarks.databases import fresh_database, unavailable
from benchmarks.table import revision, write_section

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "tests" / "support"
if str(SUPPORT) not in sys.path:  # fastjob, and the tests' study helpers
    sys.path.insert(0, str(SUPPORT))

BACKENDS = ("sqlite", "postgresql", "mariadb")
FAULTS = ("kill9_worker", "kill9_claim", "sigterm_worker", "kill9_launcher",
          "restart_postgresql", "kill9_pause")
PAUSING = ("promotion", "pbt")
"""The pruners whose trials pause (``kill9_pause`` is drawn only in their rounds)."""
INVARIANTS = {
    1: "finished configurations == n_trials",
    2: "nothing RUNNING, WAITING only to resume",
    3: "last launcher exited 0",
    4: "resumed from its checkpoint",
    5: "no duplicate trials",
    6: "best checkpoint exists",
    7: "every epoch's value kept",
    8: "no pause lost",
}
SECTION = "Chaos: randomized fault injection"
DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"
TAG_VAR = "HPO_CHAOS_TAG"
"""Set in the launcher's environment (its workers inherit it): how a round finds, and only
ever kills, the processes it started."""
WORKERS = 3
EPOCH_SECONDS = 0.3
FAULT_DELAY = (0.2, 2.0)
"""Seconds from the first running trial to the first fault, and between faults (uniform):
a round without faults takes about 8 s."""
PRUNERS = ("none", "promotion", "pbt", "both", "all")
"""``both``: none and promotion, round by round (by backend cycle); ``all``: none, promotion
and pbt."""
ROUND_TIMEOUT = 240.0
"""Seconds a round may run, faults and all, before its launcher counts as hung."""


@dataclass
class Fault:
    kind: str
    at: float = 0.0
    """Seconds since the round's first launcher started."""
    target: str = ""
    injected: bool = False
    note: str = ""

    def __str__(self) -> str:
        what = self.target if self.injected else f"not injected: {self.note}"
        extra = f"; {self.note}" if self.injected and self.note else ""
        return f"{self.at:6.1f}s {self.kind}: {what}{extra}"


@dataclass
class RoundResult:
    index: int
    backend: str
    seed: str
    study: str = ""
    n_trials: int = 0
    pruner: str = "none"
    """``none``, ``promotion`` (trials pause at rungs and their configurations resume) or
    ``pbt`` (every member pauses each epoch; the worst go on from the best's checkpoint)."""
    faults: list[Fault] = field(default_factory=list)
    broken: dict[int, list[str]] = field(default_factory=dict)
    """Invariant number -> what broke."""
    launcher_codes: list[int | None] = field(default_factory=list)
    seconds: float = 0.0
    trials_table: str = ""
    notes: list[str] = field(default_factory=list)
    launcher_tail: str = ""
    skipped: str = ""
    left_waiting: list[str] = field(default_factory=list)
    """The WAITING trials invariant 2 allows (queued retries, re-queued trials with
    progress, that the budget did not need)."""

    @property
    def ok(self) -> bool:
        return not self.broken and not self.skipped

    @property
    def injected(self) -> list[Fault]:
        return [f for f in self.faults if f.injected]

    def line(self) -> str:
        kinds = Counter(f.kind for f in self.injected)
        faults = ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())) or "none"
        if self.skipped:
            verdict = f"skipped ({self.skipped})"
        elif self.ok:
            verdict = "ok"
        else:
            verdict = "BROKEN " + ", ".join(f"{i} ({INVARIANTS[i]})" for i in sorted(self.broken))
        if self.left_waiting:
            verdict += f" ({len(self.left_waiting)} queued trial(s) left WAITING, allowed)"
        pruner = "" if self.pruner == "none" else f" {self.pruner}"
        return (f"round {self.index:3d} {self.backend:10s}{pruner} {self.n_trials:2d} trials  "
                f"faults: {faults}  -> {verdict}  {self.seconds:.0f} s")

    def report(self) -> str:
        """The round in full: verdict, fault sequence, what broke, the trials."""
        lines = [self.line(), f"  study {self.study}, round seed {self.seed!r}, launcher exit "
                              f"codes {self.launcher_codes}"]
        lines += ["  faults:"] + [f"    {f}" for f in self.faults]
        for number in sorted(self.broken):
            lines.append(f"  invariant {number} ({INVARIANTS[number]}) broke:")
            lines += [f"    {d}" for d in self.broken[number]]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  left waiting (allowed): {w}" for w in self.left_waiting]
        if self.trials_table:
            lines += ["  trials:"] + [f"    {t}" for t in self.trials_table.splitlines()]
        if self.launcher_tail and not self.ok:
            lines += ["  end of the last launcher's output:"]
            lines += [f"    | {t}" for t in self.launcher_tail.splitlines()]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Databases (``benchmarks.databases`` makes and drops them).


def backend_of(url: str) -> str:
    if url.startswith("sqlite"):
        return "sqlite"
    if url.startswith("postgresql"):
        return "postgresql"
    if url.startswith("mysql"):
        return "mariadb"
    raise ValueError(f"unknown backend of {url.split(':', 1)[0]}")


# --------------------------------------------------------------------------------------------
# Processes.


def can_restart_postgresql() -> bool:
    return (os.path.isdir("/etc/postgresql") and hasattr(os, "geteuid") and os.geteuid() == 0
            and shutil.which("pg_ctlcluster") is not None)


def restart_postgresql() -> float:
    """Restart the local PostgreSQL cluster; return the seconds it took."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    start = time.monotonic()
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
                   check=True, capture_output=True, timeout=120)
    return time.monotonic() - start


class _Proc:
    """The little of ``psutil.Process`` the runner uses, read from /proc (where psutil is not
    installed; it comes with ``accelerate``, a test dependency)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._start = self._stat()[21]  # start time in clock ticks: tells a reused pid apart

    def _stat(self) -> list[str]:
        text = Path(f"/proc/{self.pid}/stat").read_text()
        return [text[:text.index(" (")], "comm", *text[text.rindex(")") + 2:].split()]

    def _check(self) -> None:
        if self._stat()[21] != self._start:
            raise ProcessLookupError(self.pid)

    def environ(self) -> dict[str, str]:
        self._check()
        raw = Path(f"/proc/{self.pid}/environ").read_bytes().decode(errors="replace")
        return dict(e.split("=", 1) for e in raw.split("\0") if "=" in e)

    def cmdline(self) -> list[str]:
        return Path(f"/proc/{self.pid}/cmdline").read_bytes().decode(
            errors="replace").split("\0")[:-1]

    def is_zombie(self) -> bool:
        return self._stat()[2] == "Z"

    def create_time(self) -> float:
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + int(self._start) / os.sysconf("SC_CLK_TCK")

    def children(self) -> "list[_Proc]":
        return [p for p in _all_procs() if _parent(p) == self.pid]

    def send_signal(self, sig: int) -> None:
        self._check()
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def is_running(self) -> bool:
        try:
            self._check()
            return not self.is_zombie()
        except OSError:
            return False


def _psutil():
    try:
        import psutil
    except ImportError:
        return None
    return psutil


PROC_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, IndexError)
if _psutil() is not None:
    PROC_ERRORS += (_psutil().Error,)


def _process(pid: int):
    """A process object (psutil's, else ``_Proc``); raises one of ``PROC_ERRORS`` if gone."""
    psutil = _psutil()
    return psutil.Process(pid) if psutil is not None else _Proc(pid)


def _all_procs() -> list:
    psutil = _psutil()
    if psutil is not None:
        return list(psutil.process_iter())
    procs = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(*PROC_ERRORS):
                procs.append(_Proc(int(entry)))
    return procs


def _parent(p) -> int | None:
    try:
        return p.ppid() if hasattr(p, "ppid") else int(p._stat()[3])
    except PROC_ERRORS:
        return None


def _zombie(p) -> bool:
    psutil = _psutil()
    if psutil is not None:
        return p.status() == psutil.STATUS_ZOMBIE
    return p.is_zombie()


def _tagged(tag: str) -> list:
    """Every live process whose environment carries ``tag`` (this round's launchers and
    workers, orphans included)."""
    found = []
    for p in _all_procs():
        try:
            if p.environ().get(TAG_VAR) == tag and not _zombie(p):
                found.append(p)
        except PROC_ERRORS:
            continue
    return found


def _workers_of(launcher: subprocess.Popen | None) -> list:
    """The live worker processes (direct children) of a running launcher."""
    if launcher is None or launcher.poll() is not None:
        return []
    try:
        children = _process(launcher.pid).children()
    except PROC_ERRORS:
        return []
    live = []
    for c in children:
        try:
            if not _zombie(c) and "worker" in c.cmdline():
                live.append(c)
        except PROC_ERRORS:
            continue
    return live


def _describe_proc(p) -> str:
    try:
        index = p.environ().get("HPO_WORKER_INDEX", "?")
    except Exception:  # noqa: BLE001 - gone already
        index = "?"
    return f"pid {p.pid} (w{index})"


def _kill_all(tag: str, launchers: list[subprocess.Popen], timeout: float = 10.0) -> list[str]:
    """SIGKILL every process of the round; return those that were still alive."""
    alive = []
    for proc in launchers:
        if proc.poll() is None:
            alive.append(f"launcher pid {proc.pid}")
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
    for p in _tagged(tag):
        try:
            what = " ".join(p.cmdline()[2:4])
        except PROC_ERRORS:
            what = ""
        alive.append(f"{_describe_proc(p)} {what}".rstrip())
        with contextlib.suppress(*PROC_ERRORS):
            p.kill()
    for proc in launchers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while _tagged(tag) and time.monotonic() < deadline:  # orphans: init reaps them
        time.sleep(0.1)
    return alive


# --------------------------------------------------------------------------------------------
# One round.


class _Poller:
    """Reads the study's trials while the round runs, through one storage (pre-ping: it
    survives a server restart); ``None`` while the database does not answer."""

    def __init__(self, url: str, study: str) -> None:
        self.url, self.study = url, study
        self._storage = None
        self._study_id = None

    def trials(self, states=None):
        import optuna

        try:
            if self._storage is None:
                kwargs = {}
                if not self.url.startswith("sqlite"):
                    kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}}
                self._storage = optuna.storages.RDBStorage(self.url, engine_kwargs=kwargs,
                                                           skip_compatibility_check=True,
                                                           skip_table_creation=True)
                self._study_id = self._storage.get_study_id_from_name(self.study)
            return self._storage.get_all_trials(self._study_id, deepcopy=False, states=states)
        except Exception:  # noqa: BLE001 - mid-restart, locked: the caller polls again
            return None

    def close(self) -> None:
        if self._storage is not None:
            with contextlib.suppress(Exception):
                self._storage.engine.dispose()


def run_round(backend: str, url: str, workdir: Path, rng: random.Random, *, index: int = 0,
              seed: str = "", n_faults: int | None = None, faults_range: tuple[int, int] = (1, 4),
              kinds: tuple[str, ...] | None = None, faults: list[str] | None = None,
              timeout: float = ROUND_TIMEOUT, say: Callable[[str], None] = print,
              restart: Callable[[], float] | None = None, pruner: str = "none",
              job: str = "custom") -> RoundResult:
    """One round: a study on ``url``, ``hpo launch --workers 3``, faults, then the checks.

    Args:
        backend: ``sqlite`` | ``postgresql`` | ``mariadb`` (the kind of ``url``).
        url: an empty (or at least study-free) database; the caller drops it.
        workdir: scratch directory of this round (spec, epoch log, checkpoints, launcher logs).
        rng: every random choice of the round (study size, faults, their moments).
        n_faults: how many faults (default: ``rng.randint(*faults_range)``).
        kinds: the fault kinds to draw from (default: all that apply to ``backend`` here).
        faults: these faults in this order instead of drawn ones (their moments still are).
        timeout: seconds the round may take before its launcher counts as hung.
        restart: restarts the PostgreSQL server of ``url`` and returns the seconds it took
            (default: the machine's cluster, ``restart_postgresql``).
        pruner: the study's pruner: ``none``, or ``promotion`` (its trials pause at rungs and
            resume later: the checks count configurations, not trials).
        job: ``custom`` (the fast job in the worker's process) or ``script`` (the same job as
            a script task, ``tests/support/fastscript.py``: a process of its own per trial).
    """
    import optuna

    from workers import fast_env, make_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workdir.mkdir(parents=True, exist_ok=True)
    result = RoundResult(index=index, backend=backend, seed=seed, pruner=pruner)
    n_trials = result.n_trials = rng.randint(8, 12)
    low, high = 3, 5
    if kinds is None:
        kinds = tuple(k for k in FAULTS if (k != "restart_postgresql"
                      or (backend == "postgresql" and (restart or can_restart_postgresql())))
                      and (k != "kill9_pause" or pruner in PAUSING))
    if faults is None:
        count = n_faults if n_faults is not None else rng.randint(*faults_range)
        faults = [rng.choice(kinds) for _ in range(count)]
    planned = [Fault(kind) for kind in faults]
    delays = [rng.uniform(*FAULT_DELAY) for _ in planned]
    tag = uuid.uuid4().hex
    env = fast_env(workdir, epoch_seconds=EPOCH_SECONDS, **{TAG_VAR: tag})
    # The workers import this checkout's hpo (as benchmarks.studies.environment does).
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(ROOT)])
    started = time.monotonic()
    launchers: list[subprocess.Popen] = []
    poller = None
    try:
        result.study = make_study(workdir, url, n=n_trials, low=low, high=high, env=env,
                                  pruner=pruner, job=job)
        poller = _Poller(url, result.study)
        cmd = [sys.executable, "-m", "hpo", "launch", result.study, "--storage", url,
               "--workers", str(WORKERS)]
        full_env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
        full_env.update(PYTHONUNBUFFERED="1", **env)

        def launch() -> subprocess.Popen:
            log = open(workdir / f"launch-{len(launchers) + 1}.log", "w")
            proc = subprocess.Popen(cmd, cwd=workdir, env=full_env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            launchers.append(proc)
            return proc

        t0 = time.monotonic()
        deadline = t0 + timeout
        launch()
        # The faults are timed from the first running trial: earlier there is nothing to hit.
        _poll_until(lambda: poller.trials((optuna.trial.TrialState.RUNNING,)),
                    min(deadline, time.monotonic() + 60), lambda: launchers[-1].poll() is not None)
        for fault, delay in zip(planned, delays):
            fault_start = time.monotonic() + delay
            while time.monotonic() < fault_start and launchers[-1].poll() is None:
                time.sleep(0.05)
            fault.at = time.monotonic() - t0
            if launchers[-1].poll() is not None:
                fault.note = f"the launcher had exited ({launchers[-1].returncode})"
            else:
                _inject(fault, launchers, launch, poller, rng, tag, restart or restart_postgresql,
                        min(deadline, time.monotonic() + 20))
            result.faults.append(fault)
            say(f"  [{backend} round {index}] {fault}")
        try:
            launchers[-1].wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        result.launcher_codes = [p.poll() for p in launchers]
        strays = [_describe_proc(p) for p in _tagged(tag)]
        if strays and launchers[-1].poll() is not None:
            result.notes.append(f"worker processes alive after the last launcher exited: "
                                f"{', '.join(strays)}")
    except Exception as e:  # noqa: BLE001 - the round's own failure is a finding too
        result.notes.append(f"the round failed: {type(e).__name__}: {str(e)[:500]}")
        result.launcher_codes = [p.poll() for p in launchers]
    finally:
        alive = _kill_all(tag, launchers)
        if poller is not None:
            poller.close()
    if alive:
        result.notes.append(f"killed at the end of the round: {', '.join(alive)}")
    if launchers:
        text = (workdir / f"launch-{len(launchers)}.log").read_text(errors="replace")
        result.launcher_tail = "\n".join(text.splitlines()[-25:])
    if result.study:
        timed_out = bool(result.launcher_codes) and result.launcher_codes[-1] is None
        check(result, url, workdir, timed_out=timed_out, timeout=timeout)
    else:
        result.broken.setdefault(3, []).append("no study was created")
    result.seconds = time.monotonic() - started
    return result


def _poll_until(predicate, deadline: float, stop: Callable[[], bool]):
    while time.monotonic() < deadline and not stop():
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return None


def _inject(fault: Fault, launchers: list, launch: Callable[[], subprocess.Popen],
            poller: _Poller, rng: random.Random, tag: str, restart: Callable[[], float],
            deadline: float) -> None:
    """Inject ``fault`` now (waiting, up to ``deadline``, for something to hit)."""
    current = launchers[-1]
    stop = lambda: current.poll() is not None  # noqa: E731

    if fault.kind in ("kill9_worker", "sigterm_worker"):
        workers = _poll_until(lambda: _workers_of(current), deadline, stop)
        if not workers:
            fault.note = "no live worker"
            return
        victim = rng.choice(sorted(workers, key=lambda p: p.pid))
        sig = signal.SIGKILL if fault.kind == "kill9_worker" else signal.SIGTERM
        fault.target = f"{_describe_proc(victim)}{_running_on(poller, victim)}"
        _signal(victim, sig, tag, fault)
    elif fault.kind == "kill9_claim":
        _kill_at_claim(fault, current, poller, rng, tag, deadline)
    elif fault.kind == "kill9_pause":
        _kill_at_pause(fault, current, poller, tag, deadline)
    elif fault.kind == "kill9_launcher":
        workers = [_describe_proc(p) for p in _workers_of(current)]
        with contextlib.suppress(OSError):
            current.send_signal(signal.SIGKILL)
        current.wait(timeout=10)
        fault.injected = True
        new = launch()
        fault.target = (f"launcher pid {current.pid} (workers {', '.join(workers) or 'none'}); "
                        f"restarted as pid {new.pid}")
    elif fault.kind == "restart_postgresql":
        try:
            seconds = restart()
        except (subprocess.SubprocessError, OSError) as e:
            fault.note = f"the restart failed: {e}"
            return
        fault.injected = True
        fault.target = f"PostgreSQL restarted in {seconds:.1f}s"
    else:
        raise ValueError(f"unknown fault {fault.kind}")


def _running_on(poller: _Poller, proc) -> str:
    """`` running #N`` for the trial a worker process runs, as far as its attrs tell."""
    from optuna.trial import TrialState

    running = poller.trials((TrialState.RUNNING,)) or []
    try:
        index = proc.environ().get("HPO_WORKER_INDEX")
        born = proc.create_time() - 1.0
    except Exception:  # noqa: BLE001
        return ""
    # Without a pid attr: a trial of its slot claimed since the process started.
    mine = [t.number for t in running if t.user_attrs.get("pid") == proc.pid
            or ("pid" not in t.user_attrs
                and str(t.user_attrs.get("worker", "")).endswith(f":w{index}")
                and t.datetime_start is not None and t.datetime_start.timestamp() >= born)]
    return f", running #{', #'.join(map(str, mine))}" if mine else ", no trial running"


def _kill_at_pause(fault: Fault, current: subprocess.Popen, poller: _Poller, tag: str,
                   deadline: float) -> None:
    """SIGKILL the worker of the next trial seen pausing: RUNNING with ``prune_reason:
    paused`` written (the worker writes it, queues the continuation, then tells the trial)."""
    from optuna.trial import TrialState

    while time.monotonic() < deadline and current.poll() is None:
        seen = poller.trials((TrialState.RUNNING, TrialState.WAITING))
        pausing = [t for t in seen or () if t.state == TrialState.RUNNING
                   and t.user_attrs.get("prune_reason") == "paused"]
        if not pausing:
            time.sleep(0.005)
            continue
        trial = pausing[0]
        queued = any(t.user_attrs.get("paused_from") == trial.number for t in seen or ())
        pid = trial.user_attrs.get("pid")
        victim = None
        if isinstance(pid, int):
            with contextlib.suppress(*PROC_ERRORS):
                victim = _process(pid)
        if victim is None:
            continue
        fault.target = (f"{_describe_proc(victim)}, trial #{trial.number} pausing at step "
                        f"{trial.last_step}, its continuation "
                        + ("queued" if queued else "not queued yet") + " when seen")
        _signal(victim, signal.SIGKILL, tag, fault)
        return
    fault.note = "no trial was seen pausing in time"


def _kill_at_claim(fault: Fault, current: subprocess.Popen, poller: _Poller,
                   rng: random.Random, tag: str, deadline: float) -> None:
    """SIGKILL the worker of the next trial to become RUNNING, as soon as it is seen."""
    from optuna.trial import TrialState

    seen: set[int] | None = None
    while time.monotonic() < deadline and current.poll() is None:
        running = poller.trials((TrialState.RUNNING,))
        if running is None:
            time.sleep(0.05)
            continue
        numbers = {t.number for t in running}
        if seen is None:  # first look: only a trial with nothing reported yet is "just claimed"
            fresh = [t for t in running if not t.intermediate_values]
        else:
            fresh = [t for t in running if t.number not in seen]
        seen = numbers
        if not fresh:
            time.sleep(0.05)
            continue
        trial = fresh[0]
        steps = len(trial.intermediate_values)
        pid = trial.user_attrs.get("pid")
        how = "its pid attr"
        victim = None
        if isinstance(pid, int):
            with contextlib.suppress(*PROC_ERRORS):
                victim = _process(pid)
        if victim is None:
            index = str(trial.user_attrs.get("worker", "")).rpartition(":w")[2]
            matches = []
            for p in _workers_of(current):
                with contextlib.suppress(*PROC_ERRORS):
                    if p.environ().get("HPO_WORKER_INDEX") == index:
                        matches.append(p)
            how = "its worker attr (no pid attr)"
            if matches:
                victim = matches[0]
            else:
                workers = _workers_of(current)
                if not workers:
                    continue
                victim = rng.choice(workers)
                how = "a random worker (no pid attr, no worker matched)"
        fault.target = (f"{_describe_proc(victim)}, trial #{trial.number} claimed with "
                        f"{steps} value(s) reported, found by {how}")
        _signal(victim, signal.SIGKILL, tag, fault)
        return
    fault.note = "no trial was claimed in time"


def _signal(proc, sig: int, tag: str, fault: Fault) -> None:
    """Send ``sig`` to ``proc`` if it is one of this round's processes."""
    try:
        if proc.environ().get(TAG_VAR) != tag:
            fault.note = f"pid {proc.pid} is not a process of this round; left alone"
            return
        proc.send_signal(sig)
        fault.injected = True
    except PROC_ERRORS as e:
        fault.note = f"pid {proc.pid} gone before the signal ({type(e).__name__})"


# --------------------------------------------------------------------------------------------
# The invariants.


def _load_trials(url: str, study: str, attempts: int = 10):
    import optuna

    last = None
    for attempt in range(attempts):
        try:
            return optuna.load_study(study_name=study, storage=url).get_trials()
        except Exception as e:  # noqa: BLE001 - a server still restarting
            last = e
            time.sleep(1.0 + attempt)
    raise RuntimeError(f"cannot read the study: {last}")


def check(result: RoundResult, url: str, workdir: Path, *, timed_out: bool,
          timeout: float) -> None:
    """Fill ``result.broken`` with the invariants the study breaks."""
    from optuna.trial import TrialState

    from workers import epoch_log

    def broke(number: int, detail: str) -> None:
        result.broken.setdefault(number, []).append(detail)

    try:
        trials = _load_trials(url, result.study)
    except RuntimeError as e:
        broke(1, str(e))
        return
    log = []
    with contextlib.suppress(ValueError):
        log = epoch_log(workdir)
    result.trials_table = _trials_table(trials, log)
    states = Counter(t.state.name for t in trials)

    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    configurations = {_root(t) for t in finished}  # a trial's, with its retries and resumes
    if len(configurations) != result.n_trials:
        broke(1, f"{len(configurations)} finished configurations, expected {result.n_trials} "
                 f"(states: {dict(states)})")

    beats = _heartbeats(url) if states["RUNNING"] else {}
    problems, result.left_waiting = _leftovers(trials, beats)
    for detail in problems:
        broke(2, detail)

    codes = result.launcher_codes
    if timed_out:
        broke(3, f"the last launcher had not exited after {timeout:.0f}s")
    elif not codes or codes[-1] != 0:
        broke(3, f"the last launcher exited {codes[-1] if codes else None} (all: {codes})")

    numbers = Counter(t.number for t in trials)
    for number, n in numbers.items():
        if n > 1:
            broke(5, f"trial number {number} appears {n} times")
    chains: dict[int, list] = {}
    for t in trials:
        chains.setdefault(_root(t), []).append(t)
    for root, members in sorted(chains.items()):
        # A pause goes on; a COMPLETE trial counts whatever its attrs say (one re-queued after
        # its pause was queued kept prune_reason: paused, and its configuration ran twice).
        done = [t for t in members if t.state == TrialState.COMPLETE
                or (t.state == TrialState.PRUNED
                    and t.user_attrs.get("prune_reason") not in ("paused", "exploited"))]
        if len(done) > 1:
            broke(5, f"trial #{root} finished {len(done)} times: "
                     + ", ".join(f"#{t.number} {t.state.name}" for t in done))

    for detail in _concurrent_attempts(log, chains):
        broke(5, detail)
    for detail in _resume_violations(trials, log, chains):
        broke(4, detail)

    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if complete:
        best = min(complete, key=lambda t: t.value)
        path = best.user_attrs.get("checkpoint")
        if not path:
            broke(6, f"best trial #{best.number} has no checkpoint attr")
        elif not Path(path).exists():  # a file (custom job) or a directory (script task)
            broke(6, f"best trial #{best.number}: checkpoint {path} does not exist")

    went_on = {t.user_attrs.get("paused_from") for t in trials}
    for t in trials:
        if (t.state == TrialState.PRUNED
                and t.user_attrs.get("prune_reason") in ("paused", "exploited")
                and t.number not in went_on):
            broke(8, f"trial #{t.number} was told {t.user_attrs['prune_reason']} at step "
                     f"{t.last_step}, but no continuation of it exists (configuration "
                     f"#{_root(t)})")

    for t in complete:
        epochs = t.params.get("epochs")
        missing = sorted(set(range(1, int(epochs) + 1)) - set(t.intermediate_values)) \
            if epochs else []
        if missing:
            broke(7, f"trial #{t.number} ({_chain_text(t)}) lacks the values of epoch(s) "
                     f"{missing}")


def _leftovers(trials, beats: dict[int, float] | None = None) -> tuple[list[str], list[str]]:
    """Invariant 2: (what breaks it, the WAITING trials it allows).

    Every RUNNING trial breaks it (``beats``: seconds since each trial's last heartbeat, by
    trial id, for the detail). A WAITING trial is allowed if it is a queued retry or a
    re-queued trial with intermediate values: the by-design leftover of a failure or a
    preemption that the budget did not need in the end. Any other WAITING trial breaks it.
    """
    from optuna.trial import TrialState

    from hpo.records import is_paused

    problems, allowed = [], []
    for t in trials:
        values = f"{len(t.intermediate_values)} value(s)"
        if t.state == TrialState.RUNNING:
            age = (beats or {}).get(t._trial_id)
            beat = ", no heartbeat ever recorded" if age is None else \
                f", last heartbeat {age:.0f}s before the check"
            problems.append(f"trial #{t.number} RUNNING ({_who(t)}, {_chain_text(t)}, "
                            f"{values}{beat})")
        elif t.state == TrialState.WAITING:
            retry = "failed_trial" in t.system_attrs or "retry_history" in t.system_attrs
            if is_paused(t):
                allowed.append(f"trial #{t.number} paused at step {t.user_attrs['paused_at']}, "
                               f"never promoted (configuration #{_root(t)})")
                continue
            if retry or t.intermediate_values:
                allowed.append(f"trial #{t.number} WAITING, never needed "
                               f"({_who(t)}, {_chain_text(t)}, {values})")
                continue
            what = ("a fresh surplus trial: no params, no retry, no values" if not t.params
                    else f"re-queued without progress: params {t.params}, no retry, no values")
            problems.append(f"trial #{t.number} WAITING, {what} ({_who(t)})")
    return problems, allowed


def _heartbeats(url: str) -> dict[int, float]:
    """Seconds since each trial's last heartbeat (Optuna's ``trial_heartbeats`` table; best
    effort: {} if it cannot be read)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect() as con:
                rows = con.execute(sqlalchemy.text(
                    "SELECT trial_id, heartbeat FROM trial_heartbeats")).all()
                now = con.execute(sqlalchemy.text(
                    "SELECT CURRENT_TIMESTAMP" if not url.startswith("sqlite")
                    else "SELECT datetime('now')")).scalar()
        finally:
            engine.dispose()
    except Exception:  # noqa: BLE001 - a detail of the report, never its failure
        return {}
    if isinstance(now, str):
        now = datetime.datetime.fromisoformat(now)
    out = {}
    for trial_id, beat in rows:
        if isinstance(beat, str):
            beat = datetime.datetime.fromisoformat(beat)
        out[trial_id] = (now.replace(tzinfo=None) - beat.replace(tzinfo=None)).total_seconds()
    return out


def _root(t) -> int:
    """The configuration a trial ran: its first trial's number, for a retry
    (``failed_trial``) and for a continuation of a pause (``resumed_from``) alike."""
    if "resumed_from" in t.user_attrs:
        return int(t.user_attrs["resumed_from"])
    return t.system_attrs.get("failed_trial", t.number)


def _chain_text(t) -> str:
    history = t.system_attrs.get("retry_history")
    return f"retry of #{history[-1]}, chain {history}" if history else "no retry"


def _who(t) -> str:
    pid = t.user_attrs.get("pid")
    return f"{t.user_attrs.get('worker', '?')}" + (f" pid {pid}" if pid is not None else "")


def _attempts(log: list[tuple[int, int, int]], numbers: set[int]):
    """The attempts at one retry chain, in the order they first logged: each
    ``[(number, pid), first line index, [epochs]]``."""
    attempts: dict[tuple[int, int], list] = {}
    for i, (number, epoch, pid) in enumerate(log):
        if number in numbers:
            attempts.setdefault((number, pid), [(number, pid), i, []])[2].append(epoch)
    return sorted(attempts.values(), key=lambda a: a[1])


def _concurrent_attempts(log, chains) -> list[str]:
    """Invariant 5 in time: two processes logging epochs of one trial (or of its retries)
    at once ran it twice."""
    problems = []
    for root, members in sorted(chains.items()):
        spans = {}
        for i, (number, epoch, pid) in enumerate(log):
            if any(t.number == number for t in members):
                first, _, epochs = spans.get((number, pid), (i, i, []))
                spans[(number, pid)] = (first, i, epochs + [epoch])
        items = sorted(spans.items(), key=lambda kv: kv[1][0])
        for k, ((n1, p1), (f1, l1, e1)) in enumerate(items):
            for (n2, p2), (f2, l2, e2) in items[k + 1:]:
                if f2 < l1:  # the second began logging before the first stopped
                    problems.append(
                        f"trial #{root}{_as(root, n1, n2)} "
                        f"ran in two processes at once: pid {p1} epochs {e1}, pid {p2} "
                        f"epochs {e2}")
    return problems


def _as(root: int, *numbers: int) -> str:
    """`` (as #11)``: the numbers a retry chain ran under, where not its first."""
    shown = [n for n in dict.fromkeys(numbers) if n != root]
    return f" (as {' and '.join(f'#{n}' for n in shown)})" if shown else ""


def _resume_violations(trials, log, chains) -> list[str]:
    """Invariant 4 on every chain with more than one attempt."""
    from optuna.trial import TrialState

    problems = []
    for root, members in sorted(chains.items()):
        numbers = {t.number for t in members}
        attempts = _attempts(log, numbers)
        retried = len(members) > 1 or len(attempts) > 1
        if not retried:
            continue
        for (number, pid), first_line, epochs in attempts:
            before = [e for i, (n, e, _) in enumerate(log[:first_line]) if n in numbers]
            reached = max(before, default=0)
            redone = max(0, reached - epochs[0] + 1)
            if redone > 1:
                problems.append(
                    f"trial #{number} (pid {pid}, chain of #{root}) ran epochs {epochs} after "
                    f"the chain had logged up to epoch {reached}: {redone} epochs redone")
            if epochs != list(range(epochs[0], epochs[0] + len(epochs))):
                problems.append(f"trial #{number} (pid {pid}) logged epochs {epochs} out of order")
        for t in members:
            if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
                continue
            if t.user_attrs.get("prune_reason") == "exploited":
                continue  # a PBT member's continuation replaced unrun: it trained nothing
            mine = [a for a in attempts if a[0][0] == t.number]
            pid = t.user_attrs.get("pid")
            final = next((a for a in mine if a[0][1] == pid), None) if pid is not None \
                else (mine[-1] if mine else None)
            cut = final[1] if final is not None else len(log)
            reached = max((e for n, e, _ in log[:cut] if n in numbers), default=0)
            if reached == 0:
                continue  # nothing was checkpointed before: it started afresh
            resumed = t.user_attrs.get("resumed_from_epoch")
            if resumed is None:
                problems.append(f"trial #{t.number} ({_chain_text(t)}) finished without "
                                f"resuming though epoch {reached} was logged before it")
            elif resumed < reached:
                problems.append(f"trial #{t.number} ({_chain_text(t)}) resumed from epoch "
                                f"{resumed}, but epoch {reached} was logged before it")
            elif final is not None and final[2][0] != resumed + 1:
                problems.append(f"trial #{t.number}: resumed_from_epoch {resumed} but its last "
                                f"attempt (pid {final[0][1]}) began at epoch {final[2][0]}")
    return problems


def _trials_table(trials, log) -> str:
    """One line per trial: state, worker, chain, values, and the epochs each pid logged."""
    by_number: dict[int, dict[int, list[int]]] = {}
    for number, epoch, pid in log:
        by_number.setdefault(number, {}).setdefault(pid, []).append(epoch)
    lines = []
    for t in trials:
        runs = "; ".join(f"pid {pid}: {','.join(map(str, es))}"
                         for pid, es in by_number.get(t.number, {}).items()) or "-"
        extra = []
        if "retry_history" in t.system_attrs:
            extra.append(f"retry of {t.system_attrs['retry_history']}")
        if "resumed_from_epoch" in t.user_attrs:
            extra.append(f"resumed_from_epoch {t.user_attrs['resumed_from_epoch']}")
        if "fail_reason" in t.user_attrs:
            extra.append(f"fail_reason {t.user_attrs['fail_reason']}")
        if "prune_reason" in t.user_attrs:
            extra.append(f"prune_reason {t.user_attrs['prune_reason']}")
        lines.append(f"#{t.number:<3d} {t.state.name:8s} epochs {t.params.get('epochs', '?')} "
                     f"values {sorted(t.intermediate_values)} {_who(t)} "
                     f"{' '.join(extra)} | log {runs}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The command.


def summary(results: list[RoundResult], backends: list[str]) -> list[list[str]]:
    """Rows per backend and a total: rounds, rounds ok, faults injected / survived, by kind."""
    rows = []
    for name in [*backends, "total"]:
        rs = [r for r in results if (name == "total" or r.backend == name) and not r.skipped]
        skipped = [r for r in results if r.backend == name and r.skipped]
        if not rs and skipped:
            rows.append([name, "0", "", "", "", f"skipped: {skipped[0].skipped}"])
            continue
        injected = [f for r in rs for f in r.injected]
        survived = [f for r in rs if r.ok for f in r.injected]
        kinds = Counter(f.kind for f in injected)
        broken = Counter(i for r in rs for i in r.broken)
        rows.append([
            name, str(len(rs)), str(sum(r.ok for r in rs)), str(len(injected)),
            str(len(survived)),
            ", ".join(f"{k} {kinds[k]}" for k in FAULTS if kinds[k]) or "-",
            ", ".join(f"{i} ({INVARIANTS[i]}) in {n} round(s)" for i, n in sorted(broken.items()))
            or "none",
        ])
    return rows


HEADER = ["backend", "rounds", "rounds ok", "faults injected", "faults survived",
          "injected by kind", "invariants broken"]


def markdown(
    results: list[RoundResult], backends: list[str], context: list[str], section: str = SECTION
) -> str:
    lines = [f"## {section}", ""] + [f"- {c}" for c in context] + [""]
    lines += ["| " + " | ".join(HEADER) + " |",
              "|---|---:|---:|---:|---:|---|---|"]
    for row in summary(results, backends):
        row = row + [""] * (len(HEADER) - len(row))
        lines.append("| " + " | ".join(row) + " |")
    waiting = [r for r in results if r.left_waiting]
    if waiting:
        lines += ["", "Queued trials left WAITING that the budget did not need (invariant 2 "
                      "allows them):", ""]
        lines += [f"- round {r.index} ({r.backend}): " + "; ".join(r.left_waiting)
                  for r in waiting]
    failures = [r for r in results if not r.ok and not r.skipped]
    if failures:
        lines += ["", "Broken rounds:", ""]
        for r in failures:
            lines.append(f"- round {r.index} ({r.backend}, faults "
                         f"{', '.join(f.kind for f in r.injected) or 'none'}): "
                         + "; ".join(f"{i}: {d[0]}" + (f" (+{len(d) - 1} more)" if len(d) > 1
                                                        else "")
                                     for i, d in sorted(r.broken.items())))
    return "\n".join(lines) + "\n"


def _plain_table(rows: list[list[str]]) -> str:
    table = [HEADER] + [r + [""] * (len(HEADER) - len(r)) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="rounds to run (default 6)")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated, taken in turn (default: all three)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--pruner", choices=PRUNERS, default="none",
                        help="the studies' pruner: none, promotion (trials pause at rungs and "
                             "resume), pbt (population-based training), both (none and "
                             "promotion in turn) or all (none, promotion, pbt in turn)")
    parser.add_argument("--job", choices=("custom", "script"), default="custom",
                        help="the fast job as a custom task in the worker's process (default) "
                             "or as a script task, a process of its own per trial "
                             "(tests/support/fastscript.py)")
    parser.add_argument("--faults", default="1-4", metavar="MIN-MAX",
                        help="faults per round (default 1-4)")
    parser.add_argument("--only-round", type=int, metavar="K",
                        help="run round K alone (same backend and seed as in the full run)")
    parser.add_argument("--timeout", type=float, default=ROUND_TIMEOUT,
                        help=f"seconds per round before the launcher counts as hung "
                             f"(default {ROUND_TIMEOUT:.0f})")
    parser.add_argument("--out", type=Path, nargs="?", const=DEFAULT_OUT, metavar="FILE",
                        help="write the table into FILE's chaos section (default FILE: "
                             "benchmarks/RESULTS.md)")
    parser.add_argument("--verbose", action="store_true",
                        help="the fault sequence and the trials of every round, not only of "
                             "broken ones")
    parser.add_argument("--workdir", type=Path, metavar="DIR",
                        help="keep each round's files here (default: a temporary directory, "
                             "removed)")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in BACKENDS:
            parser.error(f"--backends: unknown backend {b!r} (expected {', '.join(BACKENDS)})")
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", args.faults)
    if not m:
        parser.error("--faults: expected MIN-MAX, e.g. 1-4")
    faults_range = (int(m.group(1)), int(m.group(2) or m.group(1)))

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hpo-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    missing = {b: unavailable(b) for b in backends}
    indices = [args.only_round] if args.only_round is not None else range(args.rounds)
    results: list[RoundResult] = []
    start = time.monotonic()
    try:
        for i in indices:
            backend = backends[i % len(backends)]
            cycle = {"both": ("none", "promotion"), "all": ("none", "promotion", "pbt")}
            pruner = (cycle[args.pruner][(i // len(backends)) % len(cycle[args.pruner])]
                      if args.pruner in cycle else args.pruner)
            seed = f"{args.seed}:{i}"
            if missing[backend]:
                r = RoundResult(index=i, backend=backend, seed=seed, skipped=missing[backend])
            else:
                scratch = workdir / f"round-{i}-{backend}"
                with fresh_database(backend, workdir, prefix="hpo_chaos") as url:
                    r = run_round(backend, url, scratch, random.Random(seed), index=i,
                                  seed=seed, faults_range=faults_range, timeout=args.timeout,
                                  say=lambda s: print(s, file=sys.stderr, flush=True),
                                  pruner=pruner, job=args.job)
            results.append(r)
            print(r.report() if args.verbose or not (r.ok or r.skipped) else r.line(),
                  flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.monotonic() - start
    rows = summary(results, backends)
    print()
    print(_plain_table(rows))
    if args.out is not None:
        from benchmarks.table import machine

        when = datetime.datetime.now().astimezone().isoformat(timespec="minutes")
        command = " ".join(["python -m benchmarks.chaos", *(argv if argv is not None
                                                              else sys.argv[1:])])
        context = [
            f"measured {when} on {machine()} ({seconds:.0f} s), hpo at {revision()}: "
            f"`{command}`",
            f"each round: `hpo launch --workers {WORKERS}` on a fresh database, 8-12 trials of "
            f"tests/support/{'fastjob' if args.job == 'custom' else 'fastscript'}.py as a "
            f"{args.job} task (3-5 epochs of {EPOCH_SECONDS} s, pruner: {args.pruner}, "
            f"heartbeat 1 s, "
            f"grace period 3 s), {faults_range[0]}-{faults_range[1]} faults at random moments; "
            "a fault counts as survived when every invariant of its round held",
            "invariants: " + "; ".join(f"{i} {t}" for i, t in INVARIANTS.items()),
        ]
        section = SECTION if args.job == "custom" else f"{SECTION}, script tasks"
        write_section(args.out, section, markdown(results, backends, context, section))
        print(f"\nwrote the chaos section of {args.out}")
    broken = [r for r in results if not r.ok and not r.skipped]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
