"""Worker: one process that pulls trials of a study until the global budget is met.

The worker owns everything about *where* a trial runs (host, process, signals, checkpoint
directory, the data cache that lives as long as the process); the job sees only the trial, its
params and the task. Every worker seeds its sampler differently (``seed + worker index``).

Faults it survives:

- killed (SIGKILL, power loss): its launcher fails the trial at once and queues a retry that
  resumes from the last epoch checkpoint; without a launcher (a worker started by hand, a
  machine gone) its trial stops beating and any worker, or ``hpo reap``, does the same after
  the grace period. A trial has a heartbeat from the moment it is claimed;
- preempted (SIGTERM / SIGINT): the running trial goes back to the queue (state WAITING, same
  number, its intermediate values and checkpoint kept), not counted as a failure;
- the database restarting: each storage call is retried until it answers again (up to
  ``$HPO_OUTAGE_SECONDS``), never the training; past that the worker exits non-zero and its
  trial is retried elsewhere;
- memory creep: the process asks to be recycled when memory stays above its baseline.

A worker stops when the budget's trials are finished. While the rest of the budget is running
on other workers it waits: those trials may still fail, and their retries need a worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from hpo import _optuna
from hpo.housekeeping import retain_checkpoints, upload_if_among_best
from hpo.spec import Spec, suggest

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

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


class Preempted(BaseException):
    """Raised in the main thread by SIGTERM / SIGINT: stop the trial, re-queue it.

    A BaseException so that neither the job nor the trial loop turns it into a failure.
    """


@dataclass
class WorkerReport:
    """What one worker did."""

    trials: int = 0
    stopped_because: str = ""
    """budget | timeout | failures | preempted | recycle"""
    waited: float = 0.0
    """Seconds spent waiting for other workers' trials at the end of the budget."""
    last_failure: str = ""


def worker_identity() -> tuple[str, int]:
    """The worker's name (``host:pid`` or ``host:wN``) and its sampler seed offset."""
    host = socket.gethostname()
    index = os.environ.get(WORKER_INDEX_VAR)
    if index is not None and index.isdigit():
        return f"{host}:w{index}", int(index)
    # A worker started by hand: distinct per host and process, stable within the process.
    return f"{host}:{os.getpid()}", zlib.crc32(f"{host}:{os.getpid()}".encode()) % 100_000


def checkpoint_root(checkpoint_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where trial checkpoints go: the argument, else ``$HPO_CHECKPOINT_DIR``, else
    ``./checkpoints``. Workers on several machines need it on a shared filesystem to resume
    each other's trials."""
    return Path(checkpoint_dir or os.environ.get(CHECKPOINT_DIR_VAR) or DEFAULT_CHECKPOINT_DIR)


def run_worker(
    study: "optuna.Study",
    spec: Spec,
    *,
    worker: str,
    checkpoint_dir: Path,
    on_trial: Callable[["FrozenTrial", "list[FrozenTrial]"], None] | None = None,
    max_trials: int | None = None,
    artifacts_url: str | None = None,
) -> WorkerReport:
    """Run trials until the budget is met, the timeout passes or trials keep failing.

    Args:
        study: loaded with ``hpo.study.load_study`` (its sampler and pruner come from the spec).
        spec: the study's spec, its budget possibly overridden on the command line.
        worker: this worker's name, recorded on each trial.
        checkpoint_dir: root of the trial checkpoints.
        on_trial: called after each finished trial with it and the study's trials as read
            right after it (the progress display).
        max_trials: recycle the process after this many trials (None: never).
        artifacts_url: the storage URL whose artifact store receives the checkpoints of trials
            that complete among the best ``KEEP_BEST_CHECKPOINTS`` (None: no upload).

    Returns:
        What the worker did and why it stopped.
    """
    import optuna

    from hpo.job import JobContext

    run_job = job_function(spec)
    report = WorkerReport()
    cache: dict[str, Any] = {}  # datasets, tokenized text: loaded once per process
    # Recorded on every trial; the launcher finds a dead child's trial by host and pid.
    attrs = {"host": socket.gethostname(), "worker": worker, "pid": os.getpid()}
    study_dir = checkpoint_dir / _safe(study.study_name)
    started = time.monotonic()
    current: dict[str, Any] = {}  # the trial in progress, for the preemption handler
    consecutive_failures = 0
    baseline_mb: float | None = None

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, spec)
        previous = trial.user_attrs.get("checkpoint")  # a re-queued or retried trial's
        resume = Path(previous) if previous and Path(previous).is_file() else None
        context = JobContext(
            cache=cache,
            checkpoint_path=study_dir / f"trial-{trial.number}.pt",
            resume_path=resume,
        )
        try:
            value = run_job(trial, spec.task, params, context)
            if artifacts_url is not None and trial.user_attrs.get("checkpoint"):
                _quietly(upload_if_among_best, study, trial, value, artifacts_url)
            return value
        except optuna.TrialPruned:
            raise
        except Exception as e:
            if "fail_reason" not in trial.user_attrs:
                _quietly(trial.set_user_attr, "fail_reason", _reason(e))
            raise

    def after_trial(number: int, trials: list[FrozenTrial]) -> None:
        nonlocal consecutive_failures
        trial = next(t for t in reversed(trials) if t.number == number)
        report.trials += 1
        if trial.state == optuna.trial.TrialState.FAIL:
            consecutive_failures += 1
            report.last_failure = str(trial.user_attrs.get("fail_reason", "unknown error"))
        else:
            consecutive_failures = 0
        if trial.user_attrs.get("checkpoint"):
            _quietly(retain_checkpoints, trials, artifacts_url=artifacts_url)
        if on_trial is not None:
            on_trial(trial, trials)

    def on_signal(signum: int, frame: object) -> None:
        raise Preempted(signal.Signals(signum).name)

    def read_trials() -> list[FrozenTrial]:
        return study.get_trials(deepcopy=False)

    previous_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        # One read of the study's trials per trial, right after it, serves the progress line,
        # the checkpoint retention and the next budget check: reads cost more than the rest
        # of the service's work on a trial (benchmarks/overhead.py).
        trials = read_trials()
        while True:
            reason = _should_stop(study, spec, started, trials)
            if reason == "wait":
                time.sleep(BUDGET_WAIT_SECONDS)
                report.waited += BUDGET_WAIT_SECONDS
                trials = read_trials()
                continue
            if not reason and consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                reason = "failures"
            if not reason and max_trials is not None and report.trials >= max_trials:
                reason = "recycle"
            if not reason and baseline_mb is not None:
                if _rss_mb() > baseline_mb + MEMORY_GROWTH_LIMIT_MB:
                    log.warning("memory %.0f MB is above the baseline %.0f MB: recycling",
                                _rss_mb(), baseline_mb)
                    reason = "recycle"
            if reason:
                report.stopped_because = reason
                break
            # No garbage collection after the trial (Optuna's gc_after_trial): with torch
            # loaded a full collection costs 0.1-0.25 s, two thirds of a no-op trial
            # (benchmarks/overhead.py); the built-in job collects once in run.release, and
            # memory growth recycles the process.
            _run_trial(study, spec, objective, attrs, current, trials)
            finished = current.pop("trial", None)
            trials = read_trials()
            if finished is not None:
                after_trial(finished.number, trials)
            if baseline_mb is None and report.trials:
                baseline_mb = _rss_mb()  # after the first trial: data cached, code loaded
    except Preempted as e:
        for s in previous_handlers:  # a second signal must not cut the re-queue short
            signal.signal(s, signal.SIG_IGN)
        trial = current.pop("trial", None)
        if trial is not None:
            _optuna.requeue(study, trial)
            log.warning("%s: trial %d re-queued", e, trial.number)
        report.stopped_because = "preempted"
    finally:
        for s, handler in previous_handlers.items():
            signal.signal(s, handler)
    return report


def job_function(spec: Spec) -> Callable[..., float]:
    """The function a trial runs: the built-in fine-tuning job, or a custom task's own."""
    if spec.task.kind == "custom":
        from hpo.spec import load_entrypoint

        custom = load_entrypoint(spec.task.entrypoint)
        return lambda trial, task, params, context: custom(trial, params, context)
    from hpo.job import run_job

    return run_job


def _run_trial(study: "optuna.Study", spec: Spec, objective: Callable[["optuna.Trial"], float],
               attrs: dict[str, Any], current: dict[str, Any],
               trials: "list[FrozenTrial]") -> None:
    """One trial, start to finish: what Optuna's ``study.optimize(n_trials=1)`` does, in
    fewer database round trips (what a trial's coordination costs, benchmarks/overhead.py):

    - the trial is claimed with the worker's user attrs and a heartbeat in one transaction,
      which refuses it if the budget's trials are all running or finished;
    - stale trials are looked for only if some trial was running at the worker's last read,
      ``trials`` (a trial is stale only after running for the grace period, so it was running
      then);
    - if none was, the queue is not read again: ``trials``, read right after the worker's
      last trial, says which trials are queued.

    The trial is left in ``current["trial"]`` for the worker (and its preemption handler);
    SIGTERM / SIGINT wait while it is claimed and told, so that a claimed trial is always
    known to the handler. A failing job fails the trial (the progress line says why), not the
    worker; ``TrialPruned`` prunes it; a trial past the budget goes back to the queue unrun.
    """
    import optuna
    from optuna.trial import TrialState

    if any(t.state == TrialState.RUNNING for t in trials):
        _optuna.fail_stale(study)
        # A stale trial it failed has a retry queued now: read the queue afresh.
        trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    with _signals_held():
        trial = _optuna.ask(study, attrs, trials, spec.budget.n_trials)
        if trial is None:
            return  # the rest of the budget was claimed a moment ago: the loop decides
        current["trial"] = trial
    if _over_budget(study, spec, trial.number):
        # Another worker claimed the last trial of the budget at the same moment.
        _optuna.requeue(study, current.pop("trial"))
        return
    value, state, error = None, None, None
    with _optuna.heartbeat(study, trial):  # Optuna's heartbeat thread, as in optimize
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except Exception as e:
            state, error = TrialState.FAIL, e
    with _signals_held():
        told, message = _optuna.tell(study, trial, value, state)
    if told is None:
        log.warning("trial %d: result not recorded: %s", trial.number, message)
    elif told == TrialState.FAIL:
        log.info("trial %d failed: %s", trial.number, _reason(error) if error else message,
                 exc_info=error if log.isEnabledFor(logging.DEBUG) else None)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGTERM / SIGINT back for a moment (they arrive when it ends)."""
    held = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def _over_budget(study: "optuna.Study", spec: Spec, number: int) -> bool:
    """True if the budget's running + finished trials are all numbered before ``number``.

    Workers that ask at the same moment all see each other's new trials; counting only the
    trials *before* one's own makes exactly the later ones yield, however many asked at once.
    """
    from optuna.trial import TrialState

    n = spec.budget.n_trials
    if n is None or number < n:
        # A trial's number counts the trials created before it, so fewer than n running or
        # finished ones can precede it: no read needed for all but the budget's last trials.
        return False
    active = study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    return sum(t.number < number for t in active) >= n


def _should_stop(study: "optuna.Study", spec: Spec, started: float,
                 trials: "list[FrozenTrial]") -> str:
    """Why to start no new trial (``budget``, ``timeout``), ``wait`` while the rest of the
    budget is running on other workers, or '' to go on. The budget counts every worker's
    trials; ``trials`` is the study as last read (read again only when running trials decide
    it)."""
    from optuna.trial import TrialState

    timeout = spec.budget.timeout
    if timeout is not None and time.monotonic() - started >= timeout:
        return "timeout"
    n_trials = spec.budget.n_trials
    if n_trials is None:
        return ""
    counts = count_states(trials)
    if counts[TrialState.RUNNING] and _budget_taken(counts, n_trials):
        # Some of those running trials may belong to dead workers: fail and re-queue them
        # before deciding (Optuna does this itself before each trial it starts).
        _optuna.fail_stale(study)
        counts = count_states(study.get_trials(deepcopy=False))
    if counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] >= n_trials:
        return "budget"
    if _budget_taken(counts, n_trials):
        # The rest is running elsewhere; a trial of it may still fail and need this worker.
        return "wait"
    return ""


def _budget_taken(counts: dict, n_trials: int) -> bool:
    from optuna.trial import TrialState

    done = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    return done + counts[TrialState.RUNNING] >= n_trials


def count_states(trials: "Iterable[FrozenTrial]") -> "dict[optuna.trial.TrialState, int]":
    """Trials by state (every state present, zero where none)."""
    from optuna.trial import TrialState

    counts = {s: 0 for s in TrialState}
    for t in trials:
        counts[t.state] += 1
    return counts


def _quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Best-effort bookkeeping that must not turn a trial's outcome into a crash."""
    try:
        fn(*args, **kwargs)
    except Exception as e:
        log.warning("%s failed: %s", getattr(fn, "__name__", "call"), e)


def _rss_mb() -> float:
    """Resident memory of this process in MB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
