"""Worker: one process that pulls trials of a study until the global budget is met.

The worker owns everything about *where* a trial runs (host, process, checkpoint directory,
the data cache that lives as long as the process); the job sees only the trial, its params and
the task. Every worker seeds its sampler differently (``seed + worker index``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from hpo.spec import Spec, suggest
from hpo.storage import no_experimental_warnings

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("hpo")

WORKER_INDEX_VAR = "HPO_WORKER_INDEX"
"""Set by the launcher: the worker's index, which offsets its sampler seed."""
CHECKPOINT_DIR_VAR = "HPO_CHECKPOINT_DIR"
DEFAULT_CHECKPOINT_DIR = "checkpoints"
MAX_CONSECUTIVE_FAILURES = 3
"""A worker whose trials fail this many times in a row stops (exit 1) instead of spinning."""


@dataclass
class WorkerReport:
    """What one worker did."""

    trials: int = 0
    states: dict[str, int] = field(default_factory=dict)
    stopped_because: str = ""
    last_failure: str = ""

    @property
    def failed(self) -> bool:
        return self.stopped_because == "failures"


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
    on_trial: Callable[["optuna.Study", "optuna.trial.FrozenTrial"], None] | None = None,
) -> WorkerReport:
    """Run trials until the budget is met, the timeout passes or trials keep failing.

    Args:
        study: loaded with ``hpo.study.load_study`` (its sampler and pruner come from the spec).
        spec: the study's spec, its budget possibly overridden on the command line.
        worker: this worker's name, recorded on each trial.
        checkpoint_dir: root of the trial checkpoints.
        on_trial: called after each finished trial (the progress display).

    Returns:
        What the worker did and why it stopped.
    """
    import optuna

    from hpo.job import JobContext, run_job

    report = WorkerReport()
    cache: dict[str, Any] = {}  # datasets, tokenized text: loaded once per process
    host = socket.gethostname()
    study_dir = checkpoint_dir / _safe(study.study_name)
    consecutive_failures = 0
    started = time.monotonic()

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("host", host)
        trial.set_user_attr("worker", worker)
        params = suggest(trial, spec)
        previous = trial.user_attrs.get("checkpoint")  # inherited by a retried trial
        resume = Path(previous) if previous and Path(previous).is_file() else None
        context = JobContext(
            cache=cache,
            checkpoint_path=study_dir / f"trial-{trial.number}.pt",
            resume_path=resume,
        )
        try:
            return run_job(trial, spec.task, params, context)
        except optuna.TrialPruned:
            raise
        except Exception as e:
            if "fail_reason" not in trial.user_attrs:
                trial.set_user_attr("fail_reason", _reason(e))
            raise

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal consecutive_failures
        report.trials += 1
        state = trial.state.name
        report.states[state] = report.states.get(state, 0) + 1
        if trial.state == optuna.trial.TrialState.FAIL:
            consecutive_failures += 1
            report.last_failure = str(trial.user_attrs.get("fail_reason", "unknown error"))
        else:
            consecutive_failures = 0
        if on_trial is not None:
            on_trial(study, trial)

    while True:
        reason = _should_stop(study, spec, started)
        if reason:
            report.stopped_because = reason
            break
        if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            report.stopped_because = "failures"
            break
        study.optimize(
            objective,
            n_trials=1,
            catch=(Exception,),
            callbacks=[after_trial],
            gc_after_trial=True,
        )
    return report


def _should_stop(study: "optuna.Study", spec: Spec, started: float) -> str:
    """Why to start no new trial, or '' to go on. The budget counts every worker's trials."""
    import optuna
    from optuna.trial import TrialState

    timeout = spec.budget.timeout
    if timeout is not None and time.monotonic() - started >= timeout:
        return "timeout"
    n_trials = spec.budget.n_trials
    if n_trials is None:
        return ""
    with no_experimental_warnings():
        optuna.storages.fail_stale_trials(study)  # re-queues trials of dead workers first
    counts = count_states(study)
    done = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    if done >= n_trials:
        return "budget"
    if counts[TrialState.WAITING]:
        return ""  # a re-queued trial: part of the budget already, run it
    if done + counts[TrialState.RUNNING] >= n_trials:
        return "budget"  # the rest of the budget is running on other workers
    return ""


def count_states(study: "optuna.Study") -> "dict[optuna.trial.TrialState, int]":
    """Trials of the study by state (every state present, zero where none)."""
    from optuna.trial import TrialState

    counts = {s: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state] += 1
    return counts


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
