"""One trial's lifecycle on the worker's side: claim, run the job, tell; and what the job sees.

The job gets a ``StudyTrial``: the narrow trial of ``hpo.job.trial`` (report, should_prune,
attrs) backed by the study's Optuna trial. Claiming, heartbeat, telling and re-queueing go
through ``hpo._optuna``, the one package that uses Optuna's private API.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo import _optuna
from hpo.promotion import PromotionPruner, pause
from hpo.records import (
    CHECKPOINT_ATTR,
    FAIL_REASON_ATTR,
    PAUSED_REASON,
    PROMOTED_ATTR,
    PRUNE_REASON_ATTR,
    is_continuation,
    reason,
)
from hpo.spec import Spec, suggest
from hpo.worker._budget import over_budget
from hpo.worker._gang import GangBroken, run_on_devices
from hpo.worker._housekeeping import quietly, upload_if_among_best

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hpo.storage_url import StorageUrl

log = logging.getLogger("hpo")


class Preempted(BaseException):
    """Raised in the main thread by SIGTERM / SIGINT: stop the trial, re-queue it.

    A BaseException so that neither the job nor the trial loop turns it into a failure.
    """


class StudyTrial:
    """The job's trial (``hpo.job.trial.Trial``) backed by the study's Optuna trial; in a study
    of ``several_objectives`` its reports are the learning curve alone and it never prunes."""

    def __init__(self, trial: optuna.Trial, several_objectives: bool = False) -> None:
        self._trial = trial
        self.number = trial.number
        # Optuna refuses report and should_prune in a study of several objectives: the
        # learning curve is still kept, and nothing prunes (the spec allows no pruner).
        self._prunable = not several_objectives

    def report(self, value: float, step: int) -> None:
        if self._prunable:
            self._trial.report(value, step)
        else:
            _optuna.set_intermediate_value(self._trial, value, step)

    def should_prune(self) -> bool:
        return self._prunable and self._trial.should_prune()

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        _optuna.set_user_attrs(self._trial, attrs)  # one transaction for all of them


def job_function(spec: Spec) -> Callable[..., float]:
    """The function a trial runs, called with the Optuna trial: the built-in fine-tuning job
    (which sees a ``StudyTrial``), on a gang of ranks with ``resources.devices_per_trial`` > 1,
    or a custom task's own (which sees the Optuna trial)."""
    if spec.task.kind == "custom":
        from hpo.spec import load_entrypoint

        assert spec.task.entrypoint is not None  # parse_spec requires it of a custom task
        custom = load_entrypoint(spec.task.entrypoint)
        return lambda trial, task, params, context: custom(trial, params, context)
    devices = spec.resources.devices_per_trial
    return lambda trial, task, params, context: run_on_devices(
        StudyTrial(trial, spec.study.multi), task, params, context, devices
    )


def objective_values(spec: Spec, val_loss: float, attrs: dict[str, Any]) -> float | list[float]:
    """What the trial tells the study: its validation loss, or with several
    ``study.objectives`` the list of them, the others from the attrs the job measured."""
    if not spec.study.multi:
        return val_loss
    return [val_loss] + [float(attrs[name]) for name in spec.study.objectives[1:]]


def make_objective(
    study: optuna.Study,
    spec: Spec,
    cache: dict[str, Any],
    checkpoint_dir: Path,
    storage_url: str | StorageUrl | None,
) -> Callable[[optuna.Trial], float | list[float]]:
    """The objective of the worker's trials: params from the spec, the job, a resume from an
    earlier attempt's checkpoint, the upload of a checkpoint among the best, and a failed
    job's reason as ``fail_reason``.

    Args:
        study: the study.
        spec: its spec.
        cache: lives as long as the worker process (datasets, tokenized text).
        checkpoint_dir: this study's checkpoint folder.
        storage_url: whose artifact store receives the checkpoints of trials that complete
            among the best (None: no upload).
    """
    import optuna

    from hpo.convergence import repeat_task
    from hpo.job import JobContext

    run_job = job_function(spec)

    def objective(trial: optuna.Trial) -> float | list[float]:
        params = suggest(trial, spec)
        previous = trial.user_attrs.get(CHECKPOINT_ATTR)  # a re-queued or retried trial's
        resume = Path(previous) if previous and Path(previous).is_file() else None
        context = JobContext(
            cache=cache,
            checkpoint_path=checkpoint_dir / f"trial-{trial.number}.pt",
            resume_path=resume,
            latency=spec.study.latency,
            pauses=isinstance(study.pruner, PromotionPruner),
        )
        try:
            # A repeat (hpo.convergence) runs with its own seed.
            value = run_job(trial, repeat_task(trial, spec.task), params, context)
            if storage_url is not None and trial.user_attrs.get(CHECKPOINT_ATTR):
                quietly(upload_if_among_best, study, trial, value, storage_url)
            return objective_values(spec, value, trial.user_attrs)
        except optuna.TrialPruned:
            raise
        except Exception as e:
            if FAIL_REASON_ATTR not in trial.user_attrs:
                quietly(trial.set_user_attr, FAIL_REASON_ATTR, reason(e))
            raise

    return objective


def run_trial(
    study: optuna.Study,
    spec: Spec,
    objective: Callable[[optuna.Trial], float | list[float]],
    attrs: dict[str, Any],
    current: dict[str, Any],
    trials: list[FrozenTrial],
    promote: FrozenTrial | None = None,
) -> None:
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
    worker; ``TrialPruned`` prunes it (the ``promotion`` pruner's prune pauses it: its
    configuration is queued as a paused trial); a trial past the budget goes back to the
    queue unrun.

    With ``promote`` (a continuation, ``hpo.promotion.promotable``: a paused trial promoted
    now, or a promoted one queued again), that trial alone is claimed, outside the budget (it
    resumes a configuration the budget has counted); if another worker took it first, nothing
    runs.
    """
    import optuna
    from optuna.trial import TrialState

    if any(t.state == TrialState.RUNNING for t in trials):
        _optuna.fail_stale(study)
        # A stale trial it failed has a retry queued now: read the queue afresh.
        trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    with signals_held():
        if promote is not None:
            trial = _optuna.ask(study, {**attrs, PROMOTED_ATTR: True}, [promote], create=False)
        else:  # continuations run through ``promote`` alone, outside the budget
            queued = [t for t in trials if not is_continuation(t)]
            trial = _optuna.ask(study, attrs, queued, spec.budget.n_trials)
        if trial is None:
            return  # the rest of the budget was claimed a moment ago: the loop decides
        current["trial"] = trial
    if promote is None and over_budget(study, spec, trial.number):
        # Another worker claimed the last trial of the budget at the same moment.
        _optuna.requeue(study, current.pop("trial"))
        return
    value, state, error, paused_at = None, None, None, None
    with _optuna.heartbeat(study, trial):  # Optuna's heartbeat thread, as in optimize
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
            if isinstance(study.pruner, PromotionPruner):
                paused_at = study.pruner.take_pause(trial.number)
            if paused_at is not None:
                _optuna.set_user_attrs(trial, {PRUNE_REASON_ATTR: PAUSED_REASON})
        except GangBroken as e:  # a rank died: as if the worker had (retry from checkpoint)
            with signals_held():
                _optuna.fail_and_retry(study, [trial], reason(e))
            log.warning(
                "trial %d: %s; failed and re-queued to resume from its checkpoint", trial.number, e
            )
            return
        except Exception as e:
            state, error = TrialState.FAIL, e
    if paused_at is not None:
        # The pause is queued before the tell: a worker that dies between the two leaves the
        # pause queued and its trial running, which goes stale and fails without a retry
        # (``paused_from``, ``hpo._optuna._retry``). The other order lost the pause for good.
        def queue_paused() -> None:
            paused = _optuna.frozen(study, trial)
            if paused.state == TrialState.RUNNING:  # not failed as stale meanwhile
                pause(study, paused, paused_at)
                log.info("trial %d paused at step %d", trial.number, paused_at)

        with signals_held():
            quietly(queue_paused)
    with signals_held():
        told, message = _optuna.tell(study, trial, value, state)
    if told is None:
        log.warning("trial %d: result not recorded: %s", trial.number, message)
    elif told == TrialState.FAIL:
        log.info(
            "trial %d failed: %s",
            trial.number,
            reason(error) if error else message,
            exc_info=error if log.isEnabledFor(logging.DEBUG) else None,
        )


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGTERM / SIGINT back for a moment (they arrive when it ends)."""
    held = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
