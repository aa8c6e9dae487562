"""The worker's loop: pull a trial, run it, look after it, until the budget says stop.

Also the worker's identity (its name and sampler seed offset) and where its checkpoints go.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.records import CHECKPOINT_ATTR, FAIL_REASON_ATTR, safe_name
from hpo.run.tracking import tracker_for
from hpo.run.worker._budget import Stop, should_stop
from hpo.run.worker._fused import run_fused_trials
from hpo.run.worker._housekeeping import quietly, retain_checkpoints
from hpo.run.worker._objective import Objective
from hpo.run.worker._signals import Preempted, stop_now_or_when_let
from hpo.run.worker._trial import run_trial
from hpo.search.schedulers import scheduler_of
from hpo.spec import Spec
from hpo.store.outage import clear_stop, request_stop

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hpo.store.url import StorageUrl

log = logging.getLogger("hpo")

WORKER_INDEX_VAR = "HPO_WORKER_INDEX"
"""Set by the launcher: the worker's index, which offsets its sampler seed."""
RESTART_SEED_STRIDE = 7919
"""A worker joining a study that has N trials adds N times this to its seed offset."""
CHECKPOINT_DIR_VAR = "HPO_CHECKPOINT_DIR"
DEFAULT_CHECKPOINT_DIR = "checkpoints"
MAX_CONSECUTIVE_FAILURES = 3
"""A worker whose trials fail this many times in a row stops (exit 1) instead of spinning."""
MEMORY_GROWTH_LIMIT_MB = 1024
"""Recycle the process when its memory after a trial exceeds the baseline by this much."""
BUDGET_WAIT_SECONDS = 2.0
"""How often a worker whose budget is all running elsewhere looks again."""


@dataclass
class WorkerReport:
    """What one worker did."""

    trials: int = 0
    stopped_because: Stop | None = None
    """Why it stopped (a ``str``: ``budget``, ``timeout``, ``converged``, ``failures``,
    ``preempted``, ``recycle``)."""
    waited: float = 0.0
    """Seconds spent waiting for other workers' trials at the end of the budget."""
    last_failure: str = ""


def worker_identity() -> tuple[str, int]:
    """The worker's name and its sampler seed offset.

    ``host:wN`` for the launcher's worker N, ``host:PID`` for a worker started by hand. In a
    Slurm job array the array task goes between them (``host:JOB_TASK:wN``, from
    ``$SLURM_ARRAY_JOB_ID`` and ``$SLURM_ARRAY_TASK_ID``). The array task, or the pod's index in
    an Indexed Kubernetes Job (``$JOB_COMPLETION_INDEX``), offsets the seed by 1000 per
    machine: every machine's worker 0 would otherwise draw the same parameters as the others.
    """
    where, machine = _machine()
    index = os.environ.get(WORKER_INDEX_VAR)
    if index is not None and index.isdigit():
        return f"{where}:w{index}", int(index) + 1000 * machine
    # A worker started by hand: distinct per host and process, stable within the process.
    name = f"{where}:{os.getpid()}"
    return name, zlib.crc32(name.encode()) % 100_000


def launched_worker_name(index: int) -> str:
    """The name ``worker_identity`` gives the launcher's worker ``index`` on this machine."""
    return f"{_machine()[0]}:w{index}"


def _machine() -> tuple[str, int]:
    """This machine's part of a worker name, and its index among the machines of a job array
    or an Indexed Kubernetes Job (else 0)."""
    host = socket.gethostname()
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID", ""), os.environ.get("SLURM_ARRAY_TASK_ID", "")
    array = job.isdigit() and task.isdigit()
    pod = os.environ.get("JOB_COMPLETION_INDEX", "")
    machine = int(task) if array else int(pod) if pod.isdigit() else 0
    return (f"{host}:{job}_{task}" if array else host), machine


def checkpoint_root(checkpoint_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where trial checkpoints go: the argument, else ``$HPO_CHECKPOINT_DIR``, else
    ``./checkpoints``. Workers on several machines need it on a shared filesystem to resume
    each other's trials."""
    return Path(checkpoint_dir or os.environ.get(CHECKPOINT_DIR_VAR) or DEFAULT_CHECKPOINT_DIR)


class StopSignals:
    """The worker's SIGTERM / SIGINT handler: the first signal raises ``Preempted`` where the
    worker is (or where a claim, a pause or a tell ends: ``signals_held``), and the trial is
    re-queued; every signal asks a storage call that waits out an
    outage to give up, in every thread. A later signal raises nothing, so that it cannot cut
    the re-queue short: a worker often gets two at once (Slurm signals every process of the
    step, and the launcher passes its own on)."""

    def __init__(self) -> None:
        self.first: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        request_stop()
        if self.first is None:
            self.first = signum
            stop_now_or_when_let(Preempted(stop_signal_words(signum)))


def run_worker(
    study: optuna.Study,
    spec: Spec,
    *,
    worker: str,
    checkpoint_dir: Path,
    on_trial: Callable[[FrozenTrial, list[FrozenTrial]], None] | None = None,
    max_trials: int | None = None,
    storage_url: str | StorageUrl | None = None,
) -> WorkerReport:
    """Run trials until the budget is met, the timeout passes or trials keep failing.

    Args:
        study: loaded with ``hpo.search.study.load_study`` (its sampler and pruner come
            from the spec).
        spec: the study's spec, its budget possibly overridden on the command line.
        worker: this worker's name, recorded on each trial.
        checkpoint_dir: root of the trial checkpoints.
        on_trial: called after each finished trial with it and the study's trials as read
            right after it (the progress display).
        max_trials: recycle the process after this many trials (None: never).
        storage_url: the study's storage URL, whose artifact store receives the checkpoints
            of trials that complete among the best ``KEEP_BEST_CHECKPOINTS`` and loses them
            when they leave the best (None: no uploads).

    Returns:
        What the worker did and why it stopped.
    """
    from optuna.trial import TrialState

    report = WorkerReport()
    scheduler = scheduler_of(study)
    cache: dict[str, Any] = {}  # datasets, tokenized text: loaded once per process
    # Recorded on every trial; the launcher finds a dead child's trial by host and pid.
    attrs = {"host": socket.gethostname(), "worker": worker, "pid": os.getpid()}
    tracker = tracker_for(spec, study.study_name, attrs)  # MLflow / TensorBoard, if named
    objective = Objective(
        study,
        spec,
        scheduler,
        cache,
        checkpoint_dir / safe_name(study.study_name),
        storage_url,
        tracker,
    )
    started = time.monotonic()
    consecutive_failures = 0
    baseline_mb: float | None = None

    def after_trial(number: int, trials: list[FrozenTrial]) -> None:
        nonlocal consecutive_failures
        trial = next(t for t in reversed(trials) if t.number == number)
        report.trials += 1
        if trial.state == TrialState.FAIL:
            consecutive_failures += 1
            report.last_failure = str(trial.user_attrs.get(FAIL_REASON_ATTR, "unknown error"))
        else:
            consecutive_failures = 0
        if tracker is not None:
            tracker.finish(trial)
        if trial.user_attrs.get(CHECKPOINT_ATTR):
            quietly(
                retain_checkpoints, trials, storage_url=storage_url, maximize=spec.study.maximize
            )
        if on_trial is not None:
            on_trial(trial, trials)

    def why_stop(trials: list[FrozenTrial]) -> tuple[Stop | None, list]:
        """Why to stop (``WAIT``: look again soon), or None and the scheduler's work first."""
        # A paused configuration the scheduler resumes goes first, budget or not: the budget
        # counted it when it started.
        work = scheduler.next_work(study, trials)
        why = should_stop(study, spec, started, trials)
        if not work and why == Stop.BUDGET:
            # Spent, and nothing runs: the scheduler's last work (promotion's rung leaders).
            work = scheduler.next_work(study, trials, finishing=True)
        if work and why in (Stop.BUDGET, Stop.WAIT):
            why = None
        if why is None and consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            why = Stop.FAILURES
        if why is None and max_trials is not None and report.trials >= max_trials:
            why = Stop.RECYCLE
        if (
            why is None
            and baseline_mb is not None
            and _rss_mb() > baseline_mb + MEMORY_GROWTH_LIMIT_MB
        ):
            log.warning(
                "memory %.0f MB is above the baseline %.0f MB: recycling", _rss_mb(), baseline_mb
            )
            why = Stop.RECYCLE
        return why, work

    clear_stop()
    on_signal = StopSignals()
    previous_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        # One read of the study's trials per trial, right after it, serves the progress line,
        # the checkpoint retention and the next budget check: reads cost more than the rest
        # of the service's work on a trial (benchmarks/overhead.py).
        trials = study.get_trials(deepcopy=False)
        while True:
            why, work = why_stop(trials)
            if why == Stop.WAIT:
                time.sleep(BUDGET_WAIT_SECONDS)
                report.waited += BUDGET_WAIT_SECONDS
                trials = study.get_trials(deepcopy=False)
                continue
            if why is not None:
                report.stopped_because = why
                break
            # No garbage collection after the trial (Optuna's gc_after_trial): with torch
            # loaded a full collection costs 0.1-0.25 s, two thirds of a no-op trial
            # (benchmarks/overhead.py); the built-in job collects once in run.release, and
            # memory growth recycles the process.
            if spec.resources.fuse > 1 and not work:  # new trials, several at once
                numbers = run_fused_trials(study, spec, objective, attrs, trials)
            else:
                number = run_trial(study, spec, objective, attrs, trials, work[0] if work else None)
                numbers = [] if number is None else [number]
            trials = study.get_trials(deepcopy=False)
            for number in numbers:
                after_trial(number, trials)
            if baseline_mb is None and report.trials:
                baseline_mb = _rss_mb()  # after the first trial: data cached, code loaded
    except Preempted as e:
        report.stopped_because = Stop.PREEMPTED  # run_trial re-queued its trial
        if tracker is not None:
            tracker.interrupt(str(e))
    finally:
        for s, handler in previous_handlers.items():
            signal.signal(s, handler)
        if tracker is not None:
            tracker.close(study_over=report.stopped_because in _STUDY_OVER)
    return report


_STUDY_OVER = (Stop.BUDGET, Stop.CONVERGED, Stop.TIMEOUT)
"""Why a worker stops when its study is over: the study's MLflow run ends."""


def stop_signal_words(signum: int) -> str:
    """How a worker or launcher says the signal that stops it: ``interrupted (SIGINT)`` for a
    Ctrl-C, else the signal's name (``SIGTERM``)."""
    name = signal.Signals(signum).name
    return f"interrupted ({name})" if signum == signal.SIGINT else name


def _rss_mb() -> float:
    """Resident memory of this process in MB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0
